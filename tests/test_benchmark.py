"""The benchmark's bookkeeping (cases, ratios, table, files); the timings themselves need a GPU."""

from __future__ import annotations

import json

import pytest

from vimamba import benchmark
from vimamba.benchmark import BenchResult


def fake_results():
    return [
        BenchResult("vim_tiny", "infer", 1248, 64, img_per_s=1100.0, ms_per_iter=58.2, peak_gib=2.0),
        BenchResult("deit_tiny_sdpa", "infer", 1248, 64, img_per_s=600.0, ms_per_iter=106.7, peak_gib=3.4),
        BenchResult("vim_tiny", "infer", 224, 128, img_per_s=15000.0, ms_per_iter=8.5, peak_gib=0.4),
        BenchResult("deit_tiny_sdpa", "infer", 224, 128, img_per_s=20000.0, ms_per_iter=6.4, peak_gib=0.3),
        BenchResult("deit_tiny_eager", "infer", 1248, 64, error="out of memory"),
    ]


def test_default_cases_cover_the_targets():
    cases = benchmark.default_cases(benchmark.MODELS, graph=True)
    keys = {(c.model, c.mode, c.img_size, c.batch) for c in cases}
    for _, vim, deit, mode, size, batch, _, _ in benchmark.TARGETS:
        assert (vim, mode, size, batch) in keys and (deit, mode, size, batch) in keys
    # CUDA-graph replays only on request, and then for every inference case of every model
    assert not any(c.mode == "graph" for c in benchmark.default_cases(benchmark.MODELS))
    infer = {(c.model, c.img_size, c.batch) for c in cases if c.mode == "infer"}
    assert infer == {(c.model, c.img_size, c.batch) for c in cases if c.mode == "graph"}
    train = {(c.model, c.img_size, c.batch) for c in cases if c.mode == "train"}
    assert train and train == {(c.model, c.img_size, c.batch) for c in cases if c.mode == "train-graph"}
    assert not any(c.mode == "train" and "eager" in c.model for c in cases)
    with pytest.raises(ValueError, match="unknown benchmark model"):
        benchmark.default_cases(["resnet50"])


def test_one_batch_for_every_size():
    cases = benchmark.default_cases(["vim_tiny", "deit_tiny_sdpa"], batch=16)
    infer = [(c.model, c.img_size, c.batch) for c in cases if c.mode == "infer"]
    sizes = sorted({s for s, _ in benchmark.TINY_INFER})
    assert sorted(infer) == sorted((m, s, 16) for m in ("vim_tiny", "deit_tiny_sdpa") for s in sizes)
    assert {c.batch for c in cases if c.mode == "train"} == {b for _, b in benchmark.TRAIN}
    with pytest.raises(ValueError, match="batch must be a positive number of images, got 0"):
        benchmark.default_cases(["vim_tiny"], batch=0)


def test_bench_cli_refuses_a_bad_batch_before_looking_for_a_gpu(capsys):
    from vimamba.cli.main import main

    assert main(["bench", "--batch-size", "0"]) == 2
    assert "batch must be a positive number of images, got 0" in capsys.readouterr().err


def test_ratios_table_and_files(tmp_path):
    results = fake_results()
    rows = {r["measure"]: r for r in benchmark.target_ratios(results)}
    big = rows["Vim-Ti inference 1248, batch 64"]
    assert big["speed_ratio"] == pytest.approx(1100 / 600, abs=1e-3) and big["speed_met"]
    assert big["memory_ratio"] == pytest.approx(2.0 / 3.4, abs=1e-3) and big["memory_met"]
    assert not rows["Vim-Ti inference 224, batch 128"]["speed_met"]
    table = benchmark.format_table(results)
    assert "out of memory" in table and "MISSED" in table and "1.83x" in table
    benchmark.write_json(results, {"device": "test"}, tmp_path / "b.json")
    payload = json.loads((tmp_path / "b.json").read_text())
    assert payload["environment"]["device"] == "test" and len(payload["results"]) == 5
    benchmark.plot_results(results, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_median_of_rounds_sizes_windows_and_reports_their_median():
    calls = []
    windows = iter([30.0, 10.0, 12.0, 11.0, 50.0])  # ms per call of the five timed windows

    def timer(fn, warmup, iters):
        calls.append((warmup, iters))
        if len(calls) == 1:
            return 4.0  # the probe: 4 ms a call
        if len(calls) == 2:
            return 4.0  # the warm-up window before the timed ones
        return next(windows)

    ms, iters, rounds = benchmark.median_of_rounds(lambda: None, min_ms=500.0, timer=timer)
    assert iters == 25  # 500 ms over 5 windows at 4 ms a call
    assert calls[0] == (1, 2) and calls[2:] == [(0, 25)] * benchmark.ROUNDS
    assert rounds == [10.0, 11.0, 12.0, 30.0, 50.0] and ms == 12.0  # the slow windows do not move the median

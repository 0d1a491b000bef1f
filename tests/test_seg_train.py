"""`vimamba seg train|eval|predict` on small photo sets: overfitting, exact resume, the non-finite guard, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from cli_helpers import assert_one_line_error, run_cli, run_torchrun
from seg_data import CLASSES, make_seg_data
from vimamba.cli.main import main
from vimamba.data import SeededTransformDataset
from vimamba.seg import build_seg_model, resolve_seg_config
from vimamba.seg import train as seg_train_module
from vimamba.seg.data import SegEvalTransform, load_split
from vimamba.seg.inference import predict
from vimamba.seg.train import evaluate_seg
from vimamba.train.distributed import DistInfo

# The tiny preset on 64x96 tiles: 64x64 crops of images kept at their size, no photometric change (the labels are
# colours), batch 4.
TINY_RUN = ["--preset", "tiny", "--img-scale", "none", "--ratio-range", "none", "--no-photometric", "-b", "4", "-j", "0",
            "--no-progress"]


def seg_args(data: Path, out: Path, *extra) -> list:
    return ["seg", "train", "--data", data, "-o", out, *TINY_RUN, *extra]


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory) -> Path:
    return make_seg_data(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def ade_data(tmp_path_factory) -> Path:
    return make_seg_data(tmp_path_factory.mktemp("ade"), ade20k=True)


def untrained_scores(run: Path, data: Path) -> dict:
    """The scores of the model the run started from (same seed, same construction), before any step."""
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved.pop("resolved")
    config = resolve_seg_config(base=saved)
    torch.manual_seed(config.seed)
    model = build_seg_model(config, len(CLASSES))
    source = load_split(data, "val")
    dataset = SeededTransformDataset(source, SegEvalTransform(config.img_scale), joint=True)
    return evaluate_seg(model, DataLoader(dataset, batch_size=1), DistInfo(), None, list(CLASSES), "slide",
                        config.crop_size, config.slide_stride, progress=False)


# ---- learning, and what a run writes ------------------------------------------------------------------------------
def test_a_short_run_overfits_a_small_photo_set(tmp_path, capsys, photo_data):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, *seg_args(photo_data, out, "--iterations", "100", "--eval-interval", "50",
                                                  "--lr", "3e-3", "--warmup-iters", "10"))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    start = untrained_scores(out, photo_data)
    assert summary["mIoU"] >= 0.5 and summary["mIoU"] >= start["mIoU"] + 0.3, (start["mIoU"], summary["mIoU"])
    assert summary["aAcc"] >= 0.7 and summary["iterations"] == 100
    assert set(summary["per_class_iou"]) == set(CLASSES)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [50, 100] and rows[-1]["mIoU"] == summary["mIoU"]
    assert rows[0]["train_loss"] > rows[1]["train_loss"]
    for key in ("best_checkpoint", "last_checkpoint", "best_weights", "last_weights", "plot", "metrics", "config"):
        assert Path(summary[key]).is_file(), key
    assert "mIoU" in stdout and "iteration 100/100" in stdout

    # eval reads the run's settings from the checkpoint and scores as training did
    code, stdout, err = run_cli(capsys, "seg", "eval", "--data", photo_data, "--checkpoint", out / "last.pth",
                                "--json", "-j", "0", "--no-progress")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["mIoU"] == pytest.approx(summary["mIoU"]) and report["aAcc"] == pytest.approx(summary["aAcc"])
    assert [c["class"] for c in report["per_class"]] == list(CLASSES) and report["images"] == 8
    # bare weights find the config.yaml beside them; the table has one row per class
    code, stdout, err = run_cli(capsys, "seg", "eval", "--data", photo_data, "--checkpoint", out / "last.safetensors",
                                "--mode", "whole", "-j", "0", "--no-progress")
    assert code == 0, err
    assert all(f"\n{name} " in stdout for name in CLASSES) and "whole): mIoU" in stdout

    # predict: an index mask and a colour overlay per image, the mask being the model's prediction
    images = [photo_data / "images" / "validation" / n for n in ("china_1.png", "flower_2.png")]
    code, stdout, err = run_cli(capsys, "seg", "predict", *images, "--checkpoint", out / "best.pth", "-o",
                                tmp_path / "pred", "--json")
    assert code == 0, err
    written = json.loads(stdout)
    assert [Path(r["image"]).name for r in written] == ["china_1.png", "flower_2.png"]
    config = resolve_seg_config(base={k: v for k, v in yaml.safe_load((out / "config.yaml").read_text()).items()
                                      if k != "resolved"})
    model = build_seg_model(config, len(CLASSES), load_initial=False)
    model.load_state_dict(torch.load(out / "best.pth", map_location="cpu", weights_only=True)["model"])
    model.eval()
    for record, path in zip(written, images):
        mask = np.asarray(Image.open(record["mask"]))
        overlay = Image.open(record["overlay"])
        assert mask.shape == (64, 96) and mask.max() < len(CLASSES) and overlay.size == (96, 64)
        assert overlay.mode == "RGB" and sum(record["classes"].values()) == pytest.approx(1.0, abs=1e-5)
        x, _ = SegEvalTransform(config.img_scale)(Image.open(path).convert("RGB"))
        want = predict(model, x[None], (64, 96), "slide", len(CLASSES), 64, config.slide_stride)[0]
        assert np.array_equal(mask, want.numpy())


# ---- resume ------------------------------------------------------------------------------------------------------
RESUME_EXTRA = ["--iterations", "12", "--checkpoint-interval", "4", "--eval-interval", "8", "--img-scale", "192", "64",
                "--ratio-range", "0.5", "2.0", "--photometric", "--drop-path", "0.1"]


def kill_at(monkeypatch, calls: int):
    seen = {"n": 0}
    original = seg_train_module.compute_loss

    def counting(outputs, targets, config):
        seen["n"] += 1
        if seen["n"] == calls:
            raise KeyboardInterrupt
        return original(outputs, targets, config)

    monkeypatch.setattr(seg_train_module, "compute_loss", counting)


@pytest.fixture(scope="module")
def straight_seg_run(ade_data, tmp_path_factory) -> Path:
    """12 iterations uninterrupted on ADE20K-layout data with random rescale, crop, flip, photometric distortion
    and drop path: every random state must come back on resume for the weights to match bit for bit."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main([str(a) for a in seg_args(ade_data, out, *RESUME_EXTRA)]) == 0
    return out


@pytest.mark.parametrize("kill", [7, 11], ids=["after-checkpoint-4", "after-evaluation-8"])
def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path, capsys, monkeypatch, ade_data, straight_seg_run,
                                                          kill):
    stopped = tmp_path / "stopped"
    kill_at(monkeypatch, kill)
    code, _, err = run_cli(capsys, *seg_args(ade_data, stopped, *RESUME_EXTRA))
    assert code == 130 and f"vimamba seg train --resume {stopped}" in err
    monkeypatch.undo()
    code, stdout, err = run_cli(capsys, "seg", "train", "--resume", stopped, "--no-progress")
    assert code == 0, err
    assert f"resuming at iteration {4 if kill == 7 else 8}" in stdout
    a = torch.load(straight_seg_run / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(stopped / "last.pth", map_location="cpu", weights_only=True)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][i]["exp_avg"])
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
    assert (straight_seg_run / "metrics.csv").read_text().splitlines()[1:] != []
    rows_a = [json.loads(r) for r in (straight_seg_run / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(r) for r in (stopped / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("iteration", "lr", "train_loss", "mIoU", "mAcc", "aAcc"):
            assert ra[key] == rb[key], key


# ---- non-finite losses ------------------------------------------------------------------------------------------
def poison(monkeypatch, first: int, last: int | None = None):
    seen = {"n": 0}
    original = seg_train_module.compute_loss

    def poisoned(outputs, targets, config):
        seen["n"] += 1
        loss = original(outputs, targets, config)
        return loss * float("nan") if seen["n"] >= first and (last is None or seen["n"] <= last) else loss

    monkeypatch.setattr(seg_train_module, "compute_loss", poisoned)


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, capsys, monkeypatch, photo_data):
    poison(monkeypatch, 2, 3)
    out = tmp_path / "skip"
    code, _, err = run_cli(capsys, *seg_args(photo_data, out, "--iterations", "5", "--eval-interval", "5"))
    assert code == 0, err
    assert err.count("non-finite loss or gradient") == 2
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["skipped_steps"] == 2 and np.isfinite(row["train_loss"])
    saved = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    monkeypatch.undo()
    poison(monkeypatch, 3)
    out = tmp_path / "stop"
    code, _, err = run_cli(capsys, *seg_args(photo_data, out, "--iterations", "20", "--max-bad-steps", "3"))
    assert_one_line_error(code, err, "seg train", "3 steps in a row", str(out / "last.pth"), "--resume")
    assert torch.load(out / "last.pth", map_location="cpu", weights_only=True)["iteration"] == 5


# ---- bad input: one line, exit status 2 ----------------------------------------------------------------------------
def test_bad_data_is_reported_in_one_line(tmp_path, capsys):
    root = make_seg_data(tmp_path / "d")
    (root / "annotations" / "training" / "flower_3.png").unlink()
    code, _, err = run_cli(capsys, *seg_args(root, tmp_path / "o1"))
    assert_one_line_error(code, err, "seg train", "do not match by name", "flower_3.png", "have no annotation")
    assert not (tmp_path / "o1").exists()

    root = make_seg_data(tmp_path / "labels")
    bad = root / "annotations" / "training" / "china_1.png"
    labels = np.asarray(Image.open(bad)).copy()
    labels[5, 5] = 9
    Image.fromarray(labels).save(bad)
    for workers in ("0", "1"):  # from a loader worker the error arrives inside the worker's traceback
        code, _, err = run_cli(capsys, *seg_args(root, tmp_path / f"o2{workers}", "-j", workers, "--iterations", "4"))
        line = assert_one_line_error(code, err, "seg train", str(bad), "label value(s) 9", "the 4 classes are 0..3")
        assert "Original Traceback" not in line

    code, _, err = run_cli(capsys, *seg_args(make_seg_data(tmp_path / "small"), tmp_path / "o3", "--crop-size", "80"))
    assert_one_line_error(code, err, "seg train", "smaller than the 80x80 crop", "--img-scale")
    code, _, err = run_cli(capsys, "seg", "train", "--preset", "tiny", "-o", tmp_path / "o4")
    assert_one_line_error(code, err, "seg train", "pass --data")
    code, _, err = run_cli(capsys, *seg_args(tmp_path / "missing", tmp_path / "o5"))
    assert_one_line_error(code, err, "seg train", "data folder not found")
    code, _, err = run_cli(capsys, *seg_args(tmp_path / "small", tmp_path / "o6", "-b", "1"))
    assert_one_line_error(code, err, "seg train", "at least 2 images per process")


def test_checkpoints_that_do_not_fit_are_refused(tmp_path, capsys, photo_data):
    classification = tmp_path / "cls.pth"
    torch.save({"model": {}, "optimizer": {}, "config": {"preset": "digits"}}, classification)
    code, _, err = run_cli(capsys, "seg", "train", "--resume", classification)
    assert_one_line_error(code, err, "seg train", "not a segmentation run's checkpoint", "vimamba train")
    code, _, err = run_cli(capsys, "seg", "eval", "--data", photo_data, "--checkpoint", classification)
    assert_one_line_error(code, err, "seg eval", "is a classification checkpoint")

    run = tmp_path / "run"
    assert run_cli(capsys, *seg_args(photo_data, run, "--iterations", "2", "--eval-interval", "2"))[0] == 0
    code, _, err = run_cli(capsys, *seg_args(photo_data, run, "--iterations", "2"))
    assert_one_line_error(code, err, "seg train", "already holds a run", "--resume")
    three = make_seg_data(tmp_path / "three")
    (three / "classes.txt").write_text("blue\ngreen\nred\nother\nextra\n")
    code, _, err = run_cli(capsys, "seg", "eval", "--data", three, "--checkpoint", run / "last.pth")
    assert_one_line_error(code, err, "seg eval", "predicts 4 classes", "has 5")
    code, _, err = run_cli(capsys, "seg", "train", "--resume", run, "--data", three, "--iterations", "4")
    assert_one_line_error(code, err, "seg train", "cannot resume", "4 classes", "5")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "w.safetensors").write_bytes((run / "last.safetensors").read_bytes())
    code, _, err = run_cli(capsys, "seg", "eval", "--data", photo_data, "--checkpoint", tmp_path / "loose" / "w.safetensors")
    assert_one_line_error(code, err, "seg eval", "bare weights", "--config")
    image = photo_data / "images" / "validation" / "china_0.png"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "china_0.png").write_bytes(image.read_bytes())
    code, _, err = run_cli(capsys, "seg", "predict", image, tmp_path / "other" / "china_0.png", "--checkpoint",
                           run / "last.pth", "-o", tmp_path / "p")
    assert_one_line_error(code, err, "seg predict", "two images are named china_0")


# ---- several processes -------------------------------------------------------------------------------------------
def test_torchrun_two_processes(tmp_path, capsys, photo_data):
    """DDP over gloo on the CPU (BatchNorm per process there; SyncBatchNorm on GPUs). Evaluation splits the images
    over the processes and sums the confusion matrices: a one-process eval of the result gives the same scores."""
    out = tmp_path / "ddp"
    stdout = run_torchrun(*seg_args(photo_data, out, "--iterations", "4", "--eval-interval", "4"))
    assert stdout.count("done: mIoU") == 1  # rank 0 reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    saved = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert len(saved["rng"]) == 2
    code, stdout, err = run_cli(capsys, "seg", "eval", "--data", photo_data, "--checkpoint", out / "last.pth", "--json",
                                "-j", "0", "--no-progress")
    assert code == 0, err
    assert json.loads(stdout)["mIoU"] == pytest.approx(summary["mIoU"], abs=1e-12)

"""`vimamba train` / `vimamba eval`: presets, outputs, exact resume, the non-finite guard, bad input, eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cli_helpers import assert_one_line_error, run_cli, run_torchrun
from vimamba.cli.main import main
from vimamba.train import trainer as trainer_module
from vimamba.train.config import PRESETS, ConfigError, resolve_config
from vimamba.train.optim import build_optimizer

TINY_MODEL = ["--model-kwargs", "embed_dim=32", "depth=1", "patch_size=8", "stride=8", "--img-size", "16"]


def make_folder_data(root: Path, classes=("bottom", "top"), per_class=(12, 4), size=16, seed=0) -> Path:
    """A learnable toy set: class i is bright in horizontal band i, plus noise; train/ and val/ splits."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class):
        for ci, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                pixels = rng.integers(0, 80, (size, size, 3))
                band = size // len(classes)
                pixels[ci * band:(ci + 1) * band] += 150
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{name}_{j}.png")
    return root


def tiny_args(data: Path, out: Path, *extra) -> list:
    return ["train", "--data", data, "-o", out, *TINY_MODEL, "-b", "4", "--epochs", "2", "--warmup-epochs", "0",
            "-j", "0", "--no-progress", "--crop-pct", "1.0", *extra]


def model_state(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)[key]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_folder_data(tmp_path_factory.mktemp("data"))


# ---- presets --------------------------------------------------------------------------------------------------
def test_presets_resolve_to_the_paper_recipe():
    ti = resolve_config("imagenet-vim-ti", overrides={"data": "/data/imagenet"})
    assert (ti.model, ti.batch_size, ti.opt, ti.weight_decay, ti.epochs) == (
        "vim_tiny_patch16_224", 1024, "adamw", 0.1, 300)
    assert ti.lr_base == 5e-4 and ti.lr_base_size == 512 and ti.resolved_lr() == pytest.approx(1e-3)
    assert (ti.sched, ti.warmup_epochs, ti.warmup_lr, ti.min_lr) == ("cosine", 5, 1e-6, 1e-5)
    assert (ti.aa, ti.color_jitter, ti.train_interpolation) == ("rand-m9-mstd0.5-inc1", 0.3, "bicubic")
    assert (ti.mixup, ti.cutmix, ti.smoothing, ti.reprob, ti.aug_repeats) == (0.8, 1.0, 0.1, 0.25, 3)
    assert (ti.model_ema, ti.model_ema_decay, ti.drop_path, ti.decay_a_log) == (True, 0.99996, 0.0, True)
    assert ti.opt_betas == (0.9, 0.999) and ti.opt_eps == 1e-8 and ti.clip_grad is None

    s = resolve_config("imagenet-vim-s", overrides={"data": "/data/imagenet"})
    assert (s.model, s.batch_size, s.resolved_lr(), s.weight_decay, s.drop_path) == (
        "vim_small_patch16_224", 512, pytest.approx(1e-3), 0.05, 0.05)
    assert (s.model_ema_decay, s.mixup, s.cutmix, s.aug_repeats, s.epochs) == (0.99996, 0.8, 1.0, 3, 300)

    ft = resolve_config("lsft", overrides={"data": "/data/imagenet", "initial_checkpoint": "vim_t.pth"})
    assert (ft.model, ft.epochs, ft.weight_decay) == ("vim_tiny_patch16_stride8_224", 30, 1e-8)
    assert ft.resolved_lr() == pytest.approx(1e-5) and ft.warmup_lr == ft.min_lr == pytest.approx(1e-5)

    with pytest.raises(ConfigError, match="--initial-checkpoint"):
        resolve_config("lsft", overrides={"data": "/data/imagenet"})

    digits = resolve_config()
    assert digits.preset == "digits" and digits.data == "digits" and digits.img_size == 32
    assert set(PRESETS) == {"digits", "imagenet-vim-ti", "imagenet-vim-s", "lsft"}


def test_lr_scales_with_the_batch_and_overrides_apply(tmp_path):
    config = resolve_config("imagenet-vim-ti", overrides={"data": "x", "batch_size": 256})
    assert config.resolved_lr() == pytest.approx(5e-4 * 256 / 512)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(yaml.safe_dump({"preset": "imagenet-vim-s", "data": "x", "weight_decay": 0.02,
                                         "scale": [0.5, 1.0]}))
    config = resolve_config(yaml_path=yaml_file, overrides={"weight_decay": 0.03})
    assert config.preset == "imagenet-vim-s" and config.weight_decay == 0.03 and config.scale == (0.5, 1.0)
    assert config.drop_path == 0.05
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("imagenet-vim-xl")
    with pytest.raises(ConfigError, match="pass --data"):
        resolve_config("imagenet-vim-ti")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        resolve_config(yaml_path=bad)


def test_weight_decay_groups_follow_the_reference():
    import vimamba

    model = vimamba.create_model("vim_tiny_patch16_224", depth=2, embed_dim=32, num_classes=3)
    names = {id(p): n for n, p in model.named_parameters()}

    def decayed(config):
        opt = build_optimizer(model, config, 1e-3)
        return {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}

    config = resolve_config()
    on = decayed(config)
    assert "layers.0.mixer.A_log" in on and "layers.1.mixer.A_b_log" in on
    assert "layers.0.mixer.in_proj.weight" in on and "head.weight" in on and "patch_embed.proj.weight" in on
    for name in ("pos_embed", "cls_token", "layers.0.mixer.D", "layers.0.mixer.D_b", "head.bias",
                 "layers.0.norm.weight", "norm_f.weight", "layers.0.mixer.dt_proj.bias"):
        assert name not in on, name
    config.decay_a_log = False
    off = decayed(config)
    assert "layers.0.mixer.A_log" not in off and "layers.1.mixer.A_b_log" not in off
    assert on - off == {n for n in on if n.endswith(("A_log", "A_b_log"))}


def test_cli_flags_reach_the_saved_config(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *tiny_args(data_root, out, "--epochs", "1", "--weight-decay", "0.07",
                                              "--no-decay-a-log", "--smoothing", "0.2"))
    assert code == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["weight_decay"] == 0.07 and saved["decay_a_log"] is False and saved["smoothing"] == 0.2
    assert saved["model_kwargs"] == {"embed_dim": 32, "depth": 1, "patch_size": 8, "stride": 8}
    assert saved["resolved"]["num_classes"] == 2 and saved["resolved"]["lr"] == pytest.approx(saved["lr_base"] * 4 / 512)
    again = resolve_config(yaml_path=out / "config.yaml")  # a run's config.yaml is a valid --config
    assert {k: v for k, v in saved.items() if k != "resolved"} == again.to_dict()


# ---- the learning-rate schedule -------------------------------------------------------------------------------
def reference_epoch_lrs(epochs: int, lr: float, warmup_epochs: int, warmup_lr: float, min_lr: float) -> list[float]:
    """Each epoch's lr as the reference's main.py (DeiT's) produces it: timm's create_scheduler on its argparse
    defaults, the lr read during epoch `epoch`, then `lr_scheduler.step(epoch)` after it."""
    import argparse

    from timm.scheduler import create_scheduler

    args = argparse.Namespace(  # the reference's get_args_parser() defaults for the schedule, lr scaled by batch
        sched="cosine", epochs=epochs, lr=lr, lr_noise=None, lr_noise_pct=0.67, lr_noise_std=1.0,
        warmup_lr=warmup_lr, min_lr=min_lr, decay_epochs=30, warmup_epochs=warmup_epochs, cooldown_epochs=10,
        patience_epochs=10, decay_rate=0.1, seed=0)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    lr_scheduler, _ = create_scheduler(args, optimizer)
    lrs = []
    for epoch in range(args.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])  # train_one_epoch runs at this lr
        lr_scheduler.step(epoch)
    return lrs


def test_per_epoch_lr_is_the_reference_scripts_for_the_vim_ti_preset():
    import math

    import vimamba
    from vimamba.train.optim import EpochSchedule, build_scheduler

    config = resolve_config("imagenet-vim-ti", overrides={"data": "/data/imagenet"})
    model = vimamba.create_model("vim_tiny_patch16_224", depth=1, embed_dim=32, num_classes=3)

    def fresh():
        optimizer = build_optimizer(model, config, config.resolved_lr())
        return optimizer, EpochSchedule(optimizer, build_scheduler(optimizer, config))

    optimizer, schedule = fresh()
    ours = []
    for epoch in range(config.epochs):
        ours.append(schedule.start_epoch(epoch))
        assert {g["lr"] for g in optimizer.param_groups} == {ours[-1]}  # decayed and exempt groups alike
    reference = reference_epoch_lrs(300, 5e-4 * 1024 / 512, 5, 1e-6, 1e-5)  # 8 GPUs x 128 at lr 5e-4 per 512
    assert ours[:8] == reference[:8] and ours[-4:] == reference[-4:]
    assert ours == reference

    # the quirk, independently of timm: two epochs at warmup_lr, then one behind the curve all the way
    def cosine(t):
        return 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 300))

    assert ours[0] == ours[1] == 1e-6
    assert ours[2:6] == pytest.approx([1e-6 + t * (1e-3 - 1e-6) / 5 for t in (1, 2, 3, 4)], rel=1e-12)
    assert ours[6] == pytest.approx(cosine(5), rel=1e-12) and ours[299] == pytest.approx(cosine(298), rel=1e-12)
    # a resumed run (new optimiser and scheduler) gets the epoch's lr from the epoch number alone
    for epoch in (299, 1, 150, 0, 7):
        assert fresh()[1].start_epoch(epoch) == reference[epoch]


def test_training_runs_each_epoch_at_the_reference_lr_through_a_resume(tmp_path, capsys, monkeypatch, data_root):
    out = tmp_path / "run"
    args = tiny_args(data_root, out, "--epochs", "4", "--warmup-epochs", "2", "--warmup-lr", "1e-5", "--min-lr",
                     "1e-6", "--lr", "2e-3", "--checkpoint-every-steps", "2")
    kill_after(monkeypatch, 9)  # epoch 2, batch 3: resumes from the checkpoint after its batch 2
    assert run_cli(capsys, *args)[0] == 130
    monkeypatch.undo()
    code, stdout, err = run_cli(capsys, "train", "--resume", out, "--no-progress")
    assert code == 0 and "resuming at epoch 2, batch 2" in stdout, err
    lrs = [json.loads(row)["lr"] for row in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == reference_epoch_lrs(4, 2e-3, 2, 1e-5, 1e-6)
    assert lrs[0] == lrs[1] == 1e-5 and lrs[2] == pytest.approx(1e-5 + (2e-3 - 1e-5) / 2)


# ---- the built-in job -------------------------------------------------------------------------------------------
def test_one_short_digits_epoch_learns_and_writes_the_run(tmp_path, capsys):
    out = tmp_path / "digits"
    code, stdout, err = run_cli(capsys, "train", "-o", out, "--epochs", "1", "--model-kwargs", "embed_dim=32",
                                "depth=2", "patch_size=8", "stride=8", "--no-progress")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_top1"] > 0.5, summary  # chance is 0.1
    assert 0 <= summary["val_top1"] <= summary["val_top5"] <= 1 and summary["epochs"] == 1
    for key in ("best_checkpoint", "last_checkpoint", "best_weights", "last_weights", "plot", "metrics"):
        assert Path(summary[key]).is_file(), key
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["val_top1"] == summary["val_top1"]
    assert (out / "metrics.csv").read_text().startswith("epoch,")
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "validation top-1" in stdout
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    val_top1 = events.Scalars("val_top1")
    assert [(e.step, round(e.value, 6)) for e in val_top1] == [(1, round(summary["val_top1"], 6))]
    # eval reads the training checkpoint's settings and gives the same accuracy
    code, stdout, err = run_cli(capsys, "eval", "--data", "digits", "--checkpoint", out / "last.pth", "--json",
                                "--no-progress", "-j", "0")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["images"] == 360 and report["top1"] == pytest.approx(summary["val_top1"])
    # a second run into the same folder is refused
    code, _, err = run_cli(capsys, "train", "-o", out, "--epochs", "1")
    assert_one_line_error(code, err, "train", "already holds a run", "--resume")


@pytest.mark.slow
def test_default_run_reaches_95_percent(tmp_path, capsys):
    out = tmp_path / "default"
    code, _, err = run_cli(capsys, "train", "-o", out, "--no-progress")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_top1"] >= 0.95, summary


# ---- resume ------------------------------------------------------------------------------------------------------
class Killed(Exception):
    pass


def kill_after(monkeypatch, calls: int):
    """Interrupt training (as Ctrl-C or a kill would) when the loss is computed for the `calls`-th time."""
    seen = {"n": 0}
    original = trainer_module.compute_loss

    def counting(criterion, output, target):
        seen["n"] += 1
        if seen["n"] == calls:
            raise KeyboardInterrupt
        return original(criterion, output, target)

    monkeypatch.setattr(trainer_module, "compute_loss", counting)


RESUME_EXTRA = ["--scale", "0.5", "1.0", "--hflip", "0.5", "--mixup", "0.4", "--cutmix", "0.5", "--drop-path", "0.1",
                "--model-ema", "--model-ema-decay", "0.9", "--checkpoint-every-steps", "2"]


@pytest.fixture(scope="module")
def straight_run(data_root, tmp_path_factory) -> Path:
    """Two epochs uninterrupted. 24 images, batch 4: 6 batches an epoch; last.pth also after batches 2 and 4.
    Random crops, flips, mixup/cutmix, drop path and EMA are on, so every random state must come back on resume
    for the weights to match bit for bit."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main([str(a) for a in tiny_args(data_root, out, *RESUME_EXTRA)]) == 0
    return out


@pytest.mark.parametrize("kill_at", [5, 7, 10], ids=["epoch1-batch5", "epoch2-start", "epoch2-batch4"])
def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path, capsys, monkeypatch, data_root, straight_run,
                                                          kill_at):
    # killed while computing batch `kill_at` (counting from 1 over the run): 5 and 10 replay a batch that was
    # done but not yet checkpointed, 7 resumes from the end-of-epoch checkpoint.
    stopped = tmp_path / "stopped"
    kill_after(monkeypatch, kill_at)
    code, _, err = run_cli(capsys, *tiny_args(data_root, stopped, *RESUME_EXTRA))
    assert code == 130, err
    assert f"vimamba train --resume {stopped}" in err
    monkeypatch.undo()
    assert not (stopped / "summary.json").exists()
    code, out, err = run_cli(capsys, "train", "--resume", stopped, "--no-progress")
    assert code == 0, err
    assert "resuming" in out

    for key in ("model", "model_ema", "optimizer"):
        a = torch.load(straight_run / "last.pth", map_location="cpu", weights_only=True)[key]
        b = torch.load(stopped / "last.pth", map_location="cpu", weights_only=True)[key]
        if key == "optimizer":
            a = {i: s["exp_avg"] for i, s in a["state"].items()}
            b = {i: s["exp_avg"] for i, s in b["state"].items()}
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
    rows_a = [json.loads(r) for r in (straight_run / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(r) for r in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b):
        for k in ("train_loss", "val_loss", "val_top1", "ema_val_top1", "lr"):
            assert ra[k] == rb[k], k


def test_sharded_and_unsharded_runs_resume_each_other_exactly(tmp_path, capsys, monkeypatch, data_root,
                                                              straight_run):
    """One process with --fsdp (FSDP2 over a group of one) picks up an unsharded run's checkpoint, writes its own
    through the DCP full-state helpers, and an unsharded run finishes from that: the weights, EMA and optimiser
    state end exactly as the uninterrupted unsharded run's (one shard holds everything, so nothing is summed in
    another order)."""
    stopped = tmp_path / "stopped"
    kill_after(monkeypatch, 5)  # unsharded, stopped in epoch 1 batch 5: checkpoint after batch 4
    assert run_cli(capsys, *tiny_args(data_root, stopped, *RESUME_EXTRA))[0] == 130
    kill_after(monkeypatch, 6)  # sharded from batch 5 on, stopped in epoch 2 batch 4: checkpoint after batch 2
    code, out, err = run_cli(capsys, "train", "--resume", stopped, "--fsdp", "--no-progress")
    assert code == 130 and "resuming at epoch 1, batch 4" in out, err
    sharded = torch.load(stopped / "last.pth", map_location="cpu", weights_only=True)
    assert sharded["config"]["fsdp"] and (sharded["epoch"], sharded["step_in_epoch"]) == (1, 2)
    assert all(type(v) is torch.Tensor for v in sharded["model"].values())  # plain tensors, not DTensors
    assert sorted(sharded["optimizer"]["state"]) == list(range(len(sharded["model"])))  # keyed by position
    monkeypatch.undo()
    code, out, err = run_cli(capsys, "train", "--resume", stopped, "--no-fsdp", "--no-progress")
    assert code == 0 and "resuming at epoch 2, batch 2" in out, err
    a = torch.load(straight_run / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(stopped / "last.pth", map_location="cpu", weights_only=True)
    for key in ("model", "model_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, state in a["optimizer"]["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], b["optimizer"]["state"][i][name]), (i, name)


def test_epoch_order_is_a_function_of_seed_and_epoch_and_splits_over_processes():
    from vimamba.data import EpochSampler

    def share(world, rank, epoch, start=0, **kw):
        sampler = EpochSampler(23, world, rank, seed=5, **kw)
        sampler.set_epoch(epoch, start)
        return list(sampler)

    one = share(1, 0, 3)
    assert one == share(1, 0, 3) and one != share(1, 0, 4)
    assert sorted(i for i, _ in one) == list(range(23)) and len({s for _, s in one}) == 23
    two = [share(3, r, 3) for r in range(3)]
    merged = [two[p % 3][p // 3] for p in range(23)]
    assert merged == one  # item p of the epoch (and its augmentation seed) is the same however it is dealt
    assert share(3, 1, 3, start=2) == two[1][2:] and len(EpochSampler(23, 3, 1)) == 8
    rep = [i for i, _ in share(1, 0, 0, repeats=3)]
    assert len(rep) == 23 and rep[:3] == [rep[0]] * 3
    val = [share(2, r, 0, shuffle=False, pad=False) for r in range(2)]
    assert sorted(i for part in val for i, _ in part) == list(range(23))


def test_a_finished_run_can_be_extended(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    assert run_cli(capsys, *tiny_args(data_root, out, "--epochs", "1"))[0] == 0
    code, stdout, err = run_cli(capsys, "train", "--resume", out, "--epochs", "2", "--no-progress")
    assert code == 0, err
    assert "resuming at epoch 2" in stdout and "schedule now spans 2 epochs" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # resuming into another folder that holds a run is refused like any other overwrite
    code, _, err = run_cli(capsys, "train", "--resume", out, "-o", out.parent / "other", "--no-progress")
    assert code == 0, err
    other = json.loads((out.parent / "other" / "summary.json").read_text())
    assert Path(other["best_checkpoint"]).is_file() and Path(other["last_checkpoint"]).is_file()
    code, _, err = run_cli(capsys, "train", "--resume", out, "-o", out.parent / "other")
    assert_one_line_error(code, err, "train", "already holds a run")


def test_resume_with_another_batch_is_refused_unless_accepted(tmp_path, capsys, monkeypatch, data_root):
    out = tmp_path / "run"
    kill_after(monkeypatch, 5)  # epoch 1 of 6 batches of 4, stopped in batch 5: the checkpoint after batch 4
    assert run_cli(capsys, *tiny_args(data_root, out, "--checkpoint-every-steps", "2"))[0] == 130
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "train", "--resume", out, "-b", "8", "--no-progress")
    assert_one_line_error(code, err, "train", "cannot resume", "1 process with batch 4",
                          "this run has 1 process with batch 8", "--batch-size 4", "--resume-any-world-size")
    code, stdout, err = run_cli(capsys, "train", "--resume", out, "-b", "8", "--resume-any-world-size",
                                "--no-progress")
    assert code == 0, err
    assert "warning: resuming" in err and "data order" in err and "peaks at lr" in stdout
    # 16 images were done: 2 batches of 8, then 1 more in epoch 1 and 3 in epoch 2
    saved = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert "resuming at epoch 1, batch 2" in stdout and saved["optimizer_steps"] == 4 + 1 + 3
    assert saved["config"]["batch_size"] == 8 and len(saved["rng"]) == 1


# ---- non-finite losses ----------------------------------------------------------------------------------------
def nan_from(monkeypatch, first: int, last: int | None = None):
    """Make the loss NaN for calls first..last (counting from 1)."""
    seen = {"n": 0}
    original = trainer_module.compute_loss

    def poisoned(criterion, output, target):
        seen["n"] += 1
        loss = original(criterion, output, target)
        if seen["n"] >= first and (last is None or seen["n"] <= last):
            return loss * float("nan")
        return loss

    monkeypatch.setattr(trainer_module, "compute_loss", poisoned)


def test_a_non_finite_loss_is_skipped_and_logged(tmp_path, capsys, monkeypatch, data_root):
    nan_from(monkeypatch, 3, 4)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *tiny_args(data_root, out, "--epochs", "1"))
    assert code == 0, err
    assert err.count("non-finite loss or gradient") == 2 and "step skipped" in err
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["skipped_steps"] == 2 and np.isfinite(row["train_loss"])
    assert all(torch.isfinite(v).all() for v in model_state(out / "last.pth").values())


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped(tmp_path, capsys, monkeypatch, data_root):
    seen = {"n": 0}
    original = trainer_module.compute_loss

    def nan_gradient(criterion, output, target):
        seen["n"] += 1
        loss = original(criterion, output, target)
        if seen["n"] in (2, 3):  # sqrt at 0: the value is 0, its gradient 0/0
            loss = loss + 0.0 * torch.sqrt(output * 0.0).sum()
        return loss

    monkeypatch.setattr(trainer_module, "compute_loss", nan_gradient)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *tiny_args(data_root, out, "--epochs", "1"))
    assert code == 0, err
    assert err.count("non-finite loss or gradient") == 2
    saved = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert saved["optimizer_steps"] == 4 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_repeated_non_finite_losses_stop_with_a_usable_checkpoint(tmp_path, capsys, monkeypatch, data_root):
    nan_from(monkeypatch, 3)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *tiny_args(data_root, out, "--max-bad-steps", "3"))
    assert_one_line_error(code, err, "train", "3 steps in a row", "non-finite", str(out / "last.pth"), "--resume")
    saved = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert saved["optimizer_steps"] == 2 and (saved["epoch"], saved["step_in_epoch"]) == (0, 5)
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "train", "--resume", out, "--no-progress")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


# ---- bad input: one line, exit status 2 -----------------------------------------------------------------------
def test_missing_and_empty_data_folders(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "nope", "-o", tmp_path / "o1")
    assert_one_line_error(code, err, "train", "data folder not found", "nope")
    assert not (tmp_path / "o1").exists()  # a run that cannot start leaves no folder behind
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "empty", "-o", tmp_path / "o2")
    assert_one_line_error(code, err, "train", "no train/ folder")
    (tmp_path / "empty" / "train").mkdir()
    (tmp_path / "empty" / "val").mkdir()
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "empty", "-o", tmp_path / "o3")
    assert_one_line_error(code, err, "train", "is empty", "one sub-folder of images per class")


def test_class_folder_without_images(tmp_path, capsys):
    root = make_folder_data(tmp_path / "d")
    (root / "train" / "ghost").mkdir()
    (root / "train" / "ghost" / "notes.txt").write_text("no images here")
    code, _, err = run_cli(capsys, *tiny_args(root, tmp_path / "o"))
    assert_one_line_error(code, err, "train", "class folder", "ghost", "holds no images")


def test_corrupt_image_is_skipped_with_a_warning_or_fatal_when_strict(tmp_path, capsys):
    root = make_folder_data(tmp_path / "d")
    bad = root / "train" / "top" / "top_3.png"
    bad.write_bytes(b"this is not a png")
    code, _, err = run_cli(capsys, *tiny_args(root, tmp_path / "o1", "--epochs", "1"))
    assert code == 0, err
    assert f"warning: skipping unreadable image {bad}" in err
    for workers in ("0", "1"):  # in a loader worker the error comes back wrapped in the worker's traceback
        code, _, err = run_cli(capsys, *tiny_args(root, tmp_path / f"o2{workers}", "--epochs", "1", "--strict-data",
                                                  "-j", workers))
        line = assert_one_line_error(code, err, "train", "cannot read image", str(bad), "--strict-data")
        assert "Original Traceback" not in line


def test_unknown_preset_model_and_setting(tmp_path, capsys, data_root):
    code, _, err = run_cli(capsys, "train", "--preset", "imagenet-vim-xl", "-o", tmp_path / "o1")
    assert_one_line_error(code, err, "train", "unknown preset 'imagenet-vim-xl'", "imagenet-vim-ti")
    code, _, err = run_cli(capsys, *tiny_args(data_root, tmp_path / "o2", "--model", "vim_huge"))
    assert_one_line_error(code, err, "train", "unknown Vim model 'vim_huge'")


def test_checkpoints_that_do_not_fit(tmp_path, capsys, data_root):
    import vimamba

    # a checkpoint of another width as the starting point
    other = vimamba.create_model("vim_tiny_patch16_224", embed_dim=48, depth=1, patch_size=8, stride=8, img_size=16,
                                 num_classes=2)
    torch.save({"model": other.state_dict()}, tmp_path / "other.pth")
    code, _, err = run_cli(capsys, *tiny_args(data_root, tmp_path / "o1", "--initial-checkpoint",
                                              tmp_path / "other.pth"))
    assert_one_line_error(code, err, "train", "does not fit", "different shapes")
    # resuming a 2-class run on 3-class data
    run = tmp_path / "run"
    assert run_cli(capsys, *tiny_args(data_root, run, "--epochs", "1"))[0] == 0
    three = make_folder_data(tmp_path / "three", classes=("a", "b", "c"), per_class=(4, 2))
    code, _, err = run_cli(capsys, "train", "--resume", run, "--data", three)
    assert_one_line_error(code, err, "train", "cannot resume", "2 classes", "3")
    # evaluating it on 3-class data
    code, _, err = run_cli(capsys, "eval", "--data", three, "--checkpoint", run / "best.pth")
    assert_one_line_error(code, err, "eval", "2 classes", "3 class folders")
    # and --resume of something that is not a training checkpoint
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "other.pth")
    assert_one_line_error(code, err, "train", "not a vimamba training checkpoint", "--initial-checkpoint")


def test_initial_checkpoint_with_another_class_count_keeps_the_rest(tmp_path, capsys, data_root):
    import vimamba

    start = vimamba.create_model("vim_tiny_patch16_224", embed_dim=32, depth=1, patch_size=8, stride=8,
                                 img_size=32, num_classes=7)  # other size (pos_embed resampled) and classes
    torch.save({"model": start.state_dict()}, tmp_path / "start.pth")
    out = tmp_path / "ft"
    code, _, err = run_cli(capsys, *tiny_args(data_root, out, "--epochs", "1", "--lr", "0",
                                              "--initial-checkpoint", tmp_path / "start.pth"))
    assert code == 0, err
    trained = model_state(out / "last.pth")
    assert trained["head.weight"].shape == (2, 32)
    assert torch.equal(trained["layers.0.mixer.in_proj.weight"], start.state_dict()["layers.0.mixer.in_proj.weight"])
    (tmp_path / "start.pth").unlink()  # resuming does not need the starting weights any more
    code, _, err = run_cli(capsys, "train", "--resume", out, "--epochs", "2", "--no-progress")
    assert code == 0, err


# ---- eval ----------------------------------------------------------------------------------------------------
def test_eval_on_a_folder_with_a_plain_state_dict(tmp_path, capsys, data_root):
    run = tmp_path / "run"
    assert run_cli(capsys, *tiny_args(data_root, run, "--epochs", "1"))[0] == 0
    summary = json.loads((run / "summary.json").read_text())
    # the training checkpoint: its own preprocessing, the same numbers as training's evaluation
    code, out, err = run_cli(capsys, "eval", "--data", data_root, "--checkpoint", run / "last.pth", "--json",
                             "-j", "0", "--no-progress")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 8 and report["top1"] == pytest.approx(summary["val_top1"])
    assert report["loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    # bare safetensors weights: the model is named, preprocessing from the pretrained config
    code, out, err = run_cli(capsys, "eval", "--data", data_root / "val", "--checkpoint", run / "last.safetensors",
                             "--model", "vim_tiny_patch16_224", "--model-kwargs", "embed_dim=32", "depth=1",
                             "patch_size=8", "stride=8", "img_size=16", "-j", "0", "--no-progress")
    assert code == 0, err
    assert "top-1" in out and "(8 images)" in out
    code, _, err = run_cli(capsys, "eval", "--data", tmp_path / "missing", "--checkpoint", run / "last.pth")
    assert_one_line_error(code, err, "eval", "data folder not found")


# ---- several processes -------------------------------------------------------------------------------------
PROCESS_EXTRA = ["--checkpoint-every-steps", "4", "--model-ema", "--model-ema-decay", "0.9"]


def torchrun(*argv, processes: int = 2) -> None:
    """A multi-process classification run; the result is reported by rank 0 only."""
    assert run_torchrun(*argv, processes=processes).count("validation top-1") == 1


@pytest.fixture(scope="module")
def one_process_run(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    assert main([str(a) for a in tiny_args(data_root, out, *PROCESS_EXTRA)]) == 0
    return out


@pytest.fixture(scope="module")
def ddp_run(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    torchrun(*tiny_args(data_root, out, *PROCESS_EXTRA))
    return out


def load_last(run: Path) -> dict:
    return torch.load(run / "last.pth", map_location="cpu", weights_only=True)


def assert_same_training(run: Path, reference: Path, exact: bool) -> None:
    """Weights, EMA and Adam's first moments of two runs' last.pth, equal or within float summation noise.

    Not exact: one process takes the mean over the batch of 4, two average two means of 2, so the gradients
    differ by float rounding (about 1 ulp); after the 12 steps the weights differ by at most 1.2e-7 here.
    Adam moves every weight by about lr = 1.25e-4 per step whatever the gradient's scale, so a wrong gradient
    (a shard on the wrong parameter, a missing reduction) misses atol 2e-6 by far; a gradient of the right
    direction but the wrong scale (summed instead of averaged) shows in Adam's first moment instead, compared
    relative to its largest value.
    """
    a, b = load_last(run), load_last(reference)
    assert a["optimizer_steps"] == b["optimizer_steps"] == 12
    for key in ("model", "model_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            if exact:
                assert torch.equal(a[key][name], b[key][name]), (key, name)
            else:
                torch.testing.assert_close(a[key][name], b[key][name], rtol=1e-5, atol=2e-6, msg=f"{key} {name}")
    for i, state in b["optimizer"]["state"].items():
        first = a["optimizer"]["state"][i]["exp_avg"]
        if exact:
            assert torch.equal(first, state["exp_avg"]), i
        else:
            torch.testing.assert_close(first, state["exp_avg"], rtol=1e-3, atol=1e-4 * state["exp_avg"].abs().max(),
                                       msg=f"exp_avg of parameter {i}")
    summary_a = json.loads((run / "summary.json").read_text())
    summary_b = json.loads((reference / "summary.json").read_text())
    assert summary_a["val_top1"] == pytest.approx(summary_b["val_top1"], abs=0.13)  # one of the 8 images at most
    assert summary_a["val_loss"] == pytest.approx(summary_b["val_loss"], rel=1e-4)


def test_torchrun_two_processes_agree_with_one(data_root, ddp_run, one_process_run):
    """DDP over gloo on the CPU: the same global batch, so the same updates up to float summation order."""
    assert len(load_last(ddp_run)["rng"]) == 2
    assert json.loads((ddp_run / "summary.json").read_text())["world_size"] == 2
    assert_same_training(ddp_run, one_process_run, exact=False)


def test_torchrun_fsdp_trains_like_ddp_and_its_checkpoint_serves_one_process(tmp_path, capsys, data_root, ddp_run,
                                                                            one_process_run):
    """FSDP2 (fully_shard per block, then the root) over two gloo processes on the CPU."""
    out = tmp_path / "fsdp"
    torchrun(*tiny_args(data_root, out, *PROCESS_EXTRA, "--fsdp"))
    saved = load_last(out)
    assert saved["config"]["fsdp"] and len(saved["rng"]) == 2
    assert all(type(v) is torch.Tensor for v in saved["model"].values())  # full tensors, not DTensors
    # Two processes give every gradient element as (g0 + g1) / 2 under DDP's all-reduce and FSDP's
    # reduce-scatter alike (one commutative addition, an exact halving), so FSDP matches DDP bit for bit;
    # against one process, float summation order makes the difference (see assert_same_training).
    assert_same_training(out, ddp_run, exact=True)
    assert_same_training(out, one_process_run, exact=False)
    # one process without FSDP evaluates the checkpoint ...
    code, stdout, err = run_cli(capsys, "eval", "--data", data_root, "--checkpoint", out / "last.pth", "--json",
                                "--use-ema", "-j", "0", "--no-progress")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(stdout)["top1"] == pytest.approx(summary["ema_val_top1"])
    # ... and continues the run, once it accepts that two processes' data order cannot be replayed by one
    code, _, err = run_cli(capsys, "train", "--resume", out, "--no-fsdp", "--epochs", "3", "--no-progress")
    assert_one_line_error(code, err, "train", "cannot resume", "trained by 2 processes with batch 4",
                          "this run has 1 process with batch 4", "--resume-any-world-size")
    code, _, err = run_cli(capsys, "train", "--resume", out, "--no-fsdp", "--epochs", "3", "--resume-any-world-size",
                           "--no-progress")
    assert code == 0, err
    assert "warning: resuming" in err
    resumed = load_last(out)
    assert resumed["optimizer_steps"] == 18 and len(resumed["rng"]) == 1 and not resumed["config"]["fsdp"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_the_cpu(tmp_path, capsys, data_root, amp):
    out = tmp_path / amp
    code, stdout, err = run_cli(capsys, *tiny_args(data_root, out, "--epochs", "1", "--amp", amp))
    assert code == 0, err
    assert {"bf16": "bfloat16", "fp16": "float16"}[amp] in stdout
    saved = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert (saved["scaler"] is not None) == (amp == "fp16")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in saved["model"].values())

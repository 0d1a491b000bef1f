"""The `vimamba` command line: info, predict, convert, and one-line errors (exit status 2, no traceback)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import vimamba
from vimamba.cli.flops import arch_of_model, arch_of_variant, count_flops, count_params
from cli_helpers import assert_one_line_error, run_cli

TINY = "vim_tiny_patch16_224"
SMALL_KWARGS = ["--model-kwargs", "depth=2"]


def write_image(path: Path, seed: int = 0, size=(320, 240)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def reference_style(model, **extra) -> dict:
    """What the reference training script writes: the weights under 'model' beside the run's state."""
    return {
        "model": model.state_dict(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "epoch": 299,
        "args": argparse.Namespace(
            model="vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
            batch_size=128, lr=5e-4),
        **extra,
    }


def logits(model, images):
    with torch.no_grad():
        return model.eval()(images)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def two_block(workdir) -> tuple[torch.nn.Module, Path]:
    """A 2-block Vim-Ti classifier over 1000 classes, saved as a bare state dict."""
    torch.manual_seed(0)
    model = vimamba.create_model(TINY, depth=2).eval()
    path = workdir / "two_block.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def pictures(workdir) -> Path:
    folder = workdir / "pictures"
    (folder / "sub").mkdir(parents=True)
    write_image(folder / "b.png", 1)
    write_image(folder / "a.jpg", 2, size=(200, 300))
    write_image(folder / "sub" / "c.png", 3)
    (folder / "notes.txt").write_text("not an image")
    return folder


# ---- info ------------------------------------------------------------------------------------------------
def test_info_table_lists_every_variant(capsys):
    code, out, err = run_cli(capsys, "info")
    assert code == 0, err
    for name in vimamba.list_models():
        assert name in out
    assert "7.15M" in out and "97.60M" in out  # Vim-Ti and Vim-B parameters
    assert "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2" in out


def test_info_json_matches_the_anchors(capsys):
    code, out, err = run_cli(capsys, "info", "--model", TINY, "vim_small_patch16_224", "--img-size", "224", "1248",
                             "--json")
    assert code == 0, err
    rows = {(r["model"], r["img_size"]): r for r in json.loads(out)["models"]}
    assert len(rows) == 4
    tiny = rows[(TINY, 224)]
    assert tiny["tokens"] == 197 and tiny["embed_dim"] == 192 and tiny["depth"] == 24 and tiny["stride"] == 16
    assert tiny["params"] == sum(p.numel() for p in vimamba.create_model(TINY).parameters())
    flops = tiny["flops"]
    # Papers (fvcore: a multiply-add counts once) give Vim-Ti 1.5G; here a multiply-add is 2 FLOPs.
    assert flops["total"] / 2 == pytest.approx(1.5e9, rel=0.10)
    # shared/spec/anchors.md: about 0.61 MFLOP per token per layer, 14.6 per token over the 24 layers.
    per_token_layer = (flops["total"] - flops["patch_embed"] - flops["head"]) / 197 / 24
    assert per_token_layer == pytest.approx(0.61e6, rel=0.05)
    # ... and 1.79 billion exps per 1248x1248 image (6,085 tokens).
    big = rows[(TINY, 1248)]
    assert big["tokens"] == 6085
    assert big["flops"]["exps"] == pytest.approx(1.79e9, rel=0.01)
    assert big["flops"]["total"] / 1e9 == pytest.approx(89, rel=0.05)


@pytest.mark.parametrize("name", list(vimamba.list_models()))
def test_param_count_matches_the_model(name):
    model = vimamba.create_model(name, depth=2, img_size=96, num_classes=10, weight_init="skip")
    arch = arch_of_variant(name, depth=2, num_classes=10)
    assert arch == arch_of_model(model)
    assert count_params(arch, 96) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, img_size", [(TINY, 64), ("vim_small_patch16_stride8_224", 48)])
def test_dense_flops_equal_flop_counter(name, img_size):
    model = vimamba.create_model(name, depth=2, img_size=img_size, num_classes=10).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, img_size, img_size))
    arch = arch_of_model(model)
    # The reference's causal conv is a padded conv1d whose K - 1 extra outputs are dropped: FlopCounterMode
    # counts them, count_flops does not.
    padding = arch.depth * 2 * 2 * arch.d_inner * arch.d_conv * (arch.d_conv - 1)
    assert counter.get_total_flops() == count_flops(arch, img_size)["dense"] + padding


def test_entry_point_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "vimamba", "info", "--model", TINY, "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["model"] == TINY


def test_unknown_model_name(capsys, two_block, pictures):
    code, _, err = run_cli(capsys, "info", "--model", "vim_huge")
    assert_one_line_error(code, err, "info", "'vim_huge'", TINY)
    code, _, err = run_cli(capsys, "predict", pictures / "b.png", "--model", "vim_huge", "--checkpoint", two_block[1])
    assert_one_line_error(code, err, "predict", "'vim_huge'")


# ---- predict ---------------------------------------------------------------------------------------------
def test_predict_prints_top5_with_imagenet_names(capsys, two_block, pictures):
    code, out, err = run_cli(capsys, "predict", pictures / "b.png", pictures / "a.jpg", "--checkpoint", two_block[1],
                             "--model", TINY, "--device", "cpu", *SMALL_KWARGS)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == str(pictures / "b.png") and lines[6] == str(pictures / "a.jpg")
    assert len(lines) == 12
    assert all(line.strip().endswith(")") and "%" in line for line in lines[1:6])


def test_predict_json_matches_the_model(capsys, two_block, pictures):
    model, path = two_block
    code, out, err = run_cli(capsys, "predict", pictures / "b.png", "--checkpoint", path, "--model", TINY,
                             "--topk", 3, "--json", *SMALL_KWARGS)
    assert code == 0, err
    result = json.loads(out)
    assert result["num_classes"] == 1000 and result["input_size"] == [3, 224, 224]
    (pred,) = result["predictions"]
    assert pred["image"] == str(pictures / "b.png") and len(pred["topk"]) == 3
    probs = [t["probability"] for t in pred["topk"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6

    # The same preprocessing and forward, by hand: timm's eval transform from the model's pretrained cfg.
    config = timm.data.resolve_data_config({}, model=model)
    assert config["interpolation"] == "bicubic" and config["crop_pct"] == 0.875
    image = timm.data.create_transform(**config)(Image.open(pictures / "b.png").convert("RGB"))
    expected = logits(model, image[None]).softmax(-1).topk(3)
    assert [t["index"] for t in pred["topk"]] == expected.indices[0].tolist()
    assert probs == pytest.approx(expected.values[0].tolist(), rel=1e-4)
    first = pred["topk"][0]
    assert first["label"] == timm.data.ImageNetInfo().index_to_description(first["index"])


def test_predict_expands_folders(capsys, two_block, pictures):
    code, out, err = run_cli(capsys, "predict", pictures, "--checkpoint", two_block[1], "--json", "--topk", 1,
                             *SMALL_KWARGS)
    assert_one_line_error(code, err, "predict", "cannot tell which Vim variant", "--model")  # 2 blocks: no variant
    code, out, err = run_cli(capsys, "predict", pictures, "--checkpoint", two_block[1], "--model", TINY, "--json",
                             "--topk", 1, "-b", 2, "--img-size", 160, *SMALL_KWARGS)
    assert code == 0, err
    result = json.loads(out)
    assert result["input_size"] == [3, 160, 160]  # position embedding resampled, images cropped to match
    images = [p["image"] for p in result["predictions"]]
    assert images == [str(pictures / "a.jpg"), str(pictures / "b.png"), str(pictures / "sub" / "c.png")]


def test_predict_other_class_count_prints_indices(capsys, workdir, pictures):
    torch.manual_seed(1)
    model = vimamba.create_model(TINY, depth=2, num_classes=10)
    path = workdir / "ten.safetensors"
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(path))
    code, out, err = run_cli(capsys, "predict", pictures / "b.png", "--checkpoint", path, "--model", TINY,
                             *SMALL_KWARGS)
    assert code == 0, err
    assert out.splitlines()[1].strip().split("  ")[-1].startswith("class ")
    code, out, err = run_cli(capsys, "predict", pictures / "b.png", "--checkpoint", path, "--model", TINY, "--json",
                             "--topk", 20, *SMALL_KWARGS)
    topk = json.loads(out)["predictions"][0]["topk"]
    assert len(topk) == 10 and all(t["label"] is None for t in topk)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_predict_corrupt_image(capsys, workdir, two_block, pictures, damage):
    bad = workdir / f"{damage}.jpg"
    if damage == "garbage":
        bad.write_bytes(b"this is not a JPEG at all")
    else:
        data = (pictures / "a.jpg").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(capsys, "predict", pictures / "b.png", bad, "--checkpoint", two_block[1], "--model", TINY,
                           *SMALL_KWARGS)
    assert_one_line_error(code, err, "predict", str(bad))


def test_predict_missing_files(capsys, workdir, two_block, pictures):
    code, _, err = run_cli(capsys, "predict", workdir / "nope.png", "--checkpoint", two_block[1], "--model", TINY)
    assert_one_line_error(code, err, "predict", "image not found", "nope.png")
    code, _, err = run_cli(capsys, "predict", pictures / "b.png", "--checkpoint", workdir / "nope.pth")
    assert_one_line_error(code, err, "predict", "not found", "nope.pth")
    empty = workdir / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "predict", empty, "--checkpoint", two_block[1])
    assert_one_line_error(code, err, "predict", "no image files", str(empty))


def test_predict_needs_weights(capsys, pictures):
    code, _, err = run_cli(capsys, "predict", pictures / "b.png", "--model", TINY)
    assert_one_line_error(code, err, "predict", "--checkpoint", "--pretrained")


def test_predict_pretrained_offline(capsys, pictures, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    code, _, err = run_cli(capsys, "predict", pictures / "b.png", "--model", TINY, "--pretrained", *SMALL_KWARGS)
    assert_one_line_error(code, err, "predict", "Hugging Face Hub could not be reached", "--checkpoint")


def test_predict_mismatched_and_corrupt_checkpoints(capsys, workdir, pictures):
    small = vimamba.create_model("vim_small_patch16_224", depth=2)
    wrong = workdir / "small.pth"
    torch.save({"model": small.state_dict()}, wrong)
    code, _, err = run_cli(capsys, "predict", pictures / "b.png", "--checkpoint", wrong, "--model", TINY,
                           *SMALL_KWARGS)
    line = assert_one_line_error(code, err, "predict", "does not fit", "different shapes", "patch_embed.proj.weight")
    assert "384" in line and "192" in line

    corrupt = workdir / "corrupt.pth"
    corrupt.write_bytes(os.urandom(1000))
    code, _, err = run_cli(capsys, "predict", pictures / "b.png", "--checkpoint", corrupt, "--model", TINY)
    assert_one_line_error(code, err, "predict", "cannot read checkpoint", "corrupt.pth")


# ---- convert ---------------------------------------------------------------------------------------------
def test_convert_reference_checkpoint_round_trip(capsys, workdir, pictures):
    """Full-depth Vim-Ti (so its variant is inferred) with 10 classes: .pth -> folder -> both loaders."""
    torch.manual_seed(2)
    model = vimamba.create_model(TINY, num_classes=10).eval()
    src = workdir / "vim_t_reference.pth"
    torch.save(reference_style(model), src)
    out = workdir / "converted"
    code, stdout, err = run_cli(capsys, "convert", src, out)
    assert code == 0, err
    assert "vim_tiny_patch16_224, 10 classes" in stdout
    assert str(out / "config.json") in stdout and str(out / "model.safetensors") in stdout
    assert json.loads((out / "config.json").read_text())["architecture"] == TINY

    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    loaded = vimamba.VisionMamba.from_pretrained(out)
    torch.testing.assert_close(logits(loaded, images), logits(model, images), rtol=0, atol=0)
    # timm's own loader builds the same model with the same weights (so the same logits; one forward is enough).
    via_timm = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert type(via_timm) is vimamba.VisionMamba and len(via_timm.layers) == 24 and via_timm.num_classes == 10
    expected = model.state_dict()
    assert via_timm.state_dict().keys() == expected.keys()
    for key, value in via_timm.state_dict().items():
        assert torch.equal(value, expected[key]), key

    code, _, err = run_cli(capsys, "convert", src, out)
    assert_one_line_error(code, err, "convert", "--force")


def test_convert_ema_weights_then_predict_from_the_folder(capsys, workdir, pictures):
    torch.manual_seed(4)
    model, ema = vimamba.create_model(TINY, depth=2).eval(), vimamba.create_model(TINY, depth=2).eval()
    src = workdir / "with_ema.pth"
    torch.save(reference_style(model, model_ema=ema.state_dict()), src)
    out = workdir / "ema_folder"
    code, stdout, err = run_cli(capsys, "convert", src, out, "--model", TINY, "--ema", *SMALL_KWARGS)
    assert code == 0, err
    assert "EMA" in stdout
    loaded = vimamba.VisionMamba.from_pretrained(out)
    images = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(logits(loaded, images), logits(ema, images), rtol=0, atol=0)

    # The folder is a --checkpoint for predict (its config.json holds the depth): same top class as EMA's.
    code, stdout, err = run_cli(capsys, "predict", pictures / "b.png", "--checkpoint", out, "--json", "--topk", 1)
    assert code == 0, err
    config = timm.data.resolve_data_config({}, model=ema)
    image = timm.data.create_transform(**config)(Image.open(pictures / "b.png").convert("RGB"))
    top = json.loads(stdout)["predictions"][0]["topk"][0]
    assert top["index"] == logits(ema, image[None]).argmax().item()


def test_convert_errors(capsys, workdir, two_block):
    code, _, err = run_cli(capsys, "convert", two_block[1], workdir / "unknown_out")
    assert_one_line_error(code, err, "convert", "cannot tell which Vim variant", "--model", TINY, "2 blocks")
    code, _, err = run_cli(capsys, "convert", workdir / "missing.pth", workdir / "x")
    assert_one_line_error(code, err, "convert", "not found", "missing.pth")
    code, _, err = run_cli(capsys, "convert", two_block[1], workdir / "x", "--model", TINY, "--ema", *SMALL_KWARGS)
    assert_one_line_error(code, err, "convert", "no EMA weights")
    code, _, err = run_cli(capsys, "convert", two_block[1], workdir / "x", "--model", "vim_small_patch16_224",
                           *SMALL_KWARGS)
    assert_one_line_error(code, err, "convert", "does not fit", "patch_embed.proj.weight")
    assert not (workdir / "x" / "model.safetensors").exists()

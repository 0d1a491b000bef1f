"""Checkpoint formats, round trips, position-embedding resampling, dynamic sizes and readable failures."""

from __future__ import annotations

import argparse
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

import vimamba
from vimamba import CheckpointError, VisionMamba
from vimamba.layers import resample_mid_cls_pos_embed


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return timm.create_model("vim_tiny_patch16_224", depth=2, num_classes=10).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def reference_style(model) -> dict:
    """What the reference training script writes: the weights under 'model' beside the run's state."""
    return {
        "model": model.state_dict(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "lr_scheduler": {"last_epoch": 299},
        "epoch": 299,
        "args": argparse.Namespace(model="vim_tiny_patch16_224", batch_size=128, lr=5e-4, drop_path=0.0),
    }


def logits(model, images):
    with torch.no_grad():
        return model.eval()(images)


@pytest.mark.parametrize("fmt", ["reference", "bare", "safetensors", "ddp"])
def test_checkpoint_formats_load_strictly(tmp_path, tiny, images, fmt):
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(tiny.state_dict(), str(path))
    else:
        path = tmp_path / "w.pth"
        sd = tiny.state_dict()
        obj = {"reference": reference_style(tiny), "bare": sd,
               "ddp": {"model": {f"module.{k}": v for k, v in sd.items()}}}[fmt]
        torch.save(obj, path)
    model = vimamba.create_model("vim_tiny_patch16_224", depth=2, num_classes=10, checkpoint_path=path)
    torch.testing.assert_close(logits(model, images), logits(tiny, images), rtol=0, atol=0)


def test_ema_entry(tmp_path, tiny, images):
    other = timm.create_model("vim_tiny_patch16_224", depth=2, num_classes=10)
    path = tmp_path / "ema.pth"
    torch.save({"model": other.state_dict(), "model_ema": tiny.state_dict()}, path)
    model = timm.create_model("vim_tiny_patch16_224", depth=2, num_classes=10)
    vimamba.load_checkpoint(model, path, use_ema=True)
    torch.testing.assert_close(logits(model, images), logits(tiny, images))
    with pytest.raises(CheckpointError, match="no EMA weights"):
        torch.save({"model": other.state_dict()}, path)
        vimamba.load_checkpoint(model, path, use_ema=True)


def test_save_pretrained_round_trip(tmp_path, tiny, images):
    folder = tmp_path / "folder"
    tiny.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "vim_tiny_patch16_224" and config["num_classes"] == 10
    assert config["model_args"]["depth"] == 2
    assert (folder / "model.safetensors").is_file()
    loaded = VisionMamba.from_pretrained(folder)
    torch.testing.assert_close(logits(loaded, images), logits(tiny, images), rtol=0, atol=0)
    via_timm = timm.create_model(f"local-dir:{folder}", pretrained=True)
    torch.testing.assert_close(logits(via_timm, images), logits(tiny, images), rtol=0, atol=0)


def test_from_pretrained_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not found"):
        VisionMamba.from_pretrained(tmp_path / "nowhere" / "folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        VisionMamba.from_pretrained(tmp_path / "empty")


def test_pos_embed_resampling_keeps_the_middle_class_row():
    torch.manual_seed(0)
    pos = torch.randn(1, 197, 8)
    out = resample_mid_cls_pos_embed(pos, (32, 32))
    assert out.shape == (1, 32 * 32 + 1, 8)
    torch.testing.assert_close(out[:, 512], pos[:, 98])
    same = resample_mid_cls_pos_embed(pos, (14, 14))
    torch.testing.assert_close(same, pos)
    # The grid goes through timm's 2-D resampler with the class row out of the way.
    grid = torch.cat([pos[:, :98], pos[:, 99:]], 1)
    want = timm.layers.resample_abs_pos_embed(grid, [32, 32], [14, 14], num_prefix_tokens=0)
    torch.testing.assert_close(torch.cat([out[:, :512], out[:, 513:]], 1), want)
    dropped = resample_mid_cls_pos_embed(pos, (14, 14), keep_class_token=False)
    torch.testing.assert_close(dropped, grid)


def test_legacy_first_row_resampling_reproduces_the_reference_quirk():
    pos = torch.randn(1, 197, 4)
    out = resample_mid_cls_pos_embed(pos, (27, 27), legacy_first_row_prefix=True, antialias=False)
    assert out.shape == (1, 730, 4)
    torch.testing.assert_close(out[:, 0], pos[:, 0])  # patch 0's row is kept whole
    grid = torch.nn.functional.interpolate(
        pos[:, 1:].reshape(1, 14, 14, 4).permute(0, 3, 1, 2), size=(27, 27), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], grid.permute(0, 2, 3, 1).reshape(1, 729, 4))


def test_224_checkpoint_runs_at_other_sizes(tmp_path, tiny):
    path = tmp_path / "w.pth"
    torch.save(reference_style(tiny), path)
    for size in (512, 1248):
        model = vimamba.create_model("vim_tiny_patch16_224", depth=2, num_classes=10, img_size=size,
                                     checkpoint_path=path)
        grid = size // 16
        assert model.pos_embed.shape == (1, grid * grid + 1, 192)
        torch.testing.assert_close(model.pos_embed[:, grid * grid // 2], tiny.pos_embed[:, 98])
    assert logits(model, torch.randn(1, 3, 1248, 1248)).shape == (1, 10)


def test_dynamic_img_size_equals_a_model_built_for_that_size(tmp_path, tiny):
    path = tmp_path / "w.pth"
    torch.save(tiny.state_dict(), path)
    dynamic = vimamba.create_model("vim_tiny_patch16_224", depth=2, num_classes=10, dynamic_img_size=True,
                                   checkpoint_path=path)
    fixed = vimamba.create_model("vim_tiny_patch16_224", depth=2, num_classes=10, img_size=(288, 320),
                                 checkpoint_path=path)
    x = torch.randn(1, 3, 288, 320)
    torch.testing.assert_close(logits(dynamic, x), logits(fixed, x))
    torch.testing.assert_close(logits(dynamic, torch.ones(1, 3, 224, 224)), logits(tiny, torch.ones(1, 3, 224, 224)))
    # set_input_size rebuilds a fixed-size model in place, with the same resampling.
    resized = vimamba.create_model("vim_tiny_patch16_224", depth=2, num_classes=10, checkpoint_path=path)
    resized.set_input_size((288, 320))
    torch.testing.assert_close(logits(resized, x), logits(fixed, x))


def test_pretrained_head_is_dropped_for_other_class_counts(tmp_path, tiny):
    path = tmp_path / "w.pth"
    torch.save(tiny.state_dict(), path)
    model = timm.create_model("vim_tiny_patch16_224", depth=2, num_classes=3, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    torch.testing.assert_close(model.patch_embed.proj.weight, tiny.patch_embed.proj.weight)
    assert model.head.out_features == 3


def test_wrong_architecture_names_the_differences(tmp_path):
    small = timm.create_model("vim_small_patch16_224", weight_init="skip")
    path = tmp_path / "small.pth"
    torch.save({"model": small.state_dict(), "epoch": 3}, path)
    with pytest.raises(CheckpointError) as info:
        vimamba.create_model("vim_tiny_patch16_224", checkpoint_path=path)
    text = str(info.value)
    assert "does not fit vim_tiny_patch16_224" in text
    assert "patch_embed.proj.weight: file (384, 3, 16, 16) vs model (192, 3, 16, 16)" in text
    assert "looks like vim_small_patch16_224" in text


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny):
    sd = dict(tiny.state_dict())
    sd.pop("layers.1.mixer.D_b")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    model = timm.create_model("vim_tiny_patch16_224", depth=2, num_classes=10)
    with pytest.raises(CheckpointError, match=r"missing from the file \(1\): layers.1.mixer.D_b") as info:
        vimamba.load_checkpoint(model, path)
    assert "in the file but not in the model (1): extra.weight" in str(info.value)
    vimamba.load_checkpoint(model, path, strict=False)
    assert "D_b" in model.load_report


def test_class_count_mismatch_hints_at_num_classes(tmp_path, tiny):
    path = tmp_path / "w.pth"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(CheckpointError, match="num_classes="):
        vimamba.create_model("vim_tiny_patch16_224", depth=2, num_classes=5, checkpoint_path=path)


@pytest.mark.parametrize("content,match", [
    (b"this is not a checkpoint", "cannot read checkpoint"),
    (b"PK\x03\x04garbage", "cannot read checkpoint"),
])
def test_corrupt_files(tmp_path, content, match):
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=match):
            vimamba.create_model("vim_tiny_patch16_224", depth=1, checkpoint_path=path)


def test_missing_file_and_wrong_payload(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        vimamba.create_model("vim_tiny_patch16_224", depth=1, checkpoint_path=tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        vimamba.create_model("vim_tiny_patch16_224", depth=1, checkpoint_path=path)
    with pytest.raises(CheckpointError, match="is a folder"):
        vimamba.create_model("vim_tiny_patch16_224", depth=1, checkpoint_path=tmp_path)

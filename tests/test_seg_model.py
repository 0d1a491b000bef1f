"""The segmentation model: pyramid shapes for every variant, the reference's features and heads, the ImageNet
weights, optimiser groups and schedule, the loss, sliding-window inference."""

from __future__ import annotations

import math

import pytest
import torch

import vimamba
from vimamba.layers import resample_mid_cls_pos_embed
from vimamba.models import VARIANT_ARGS
from vimamba.seg import SegConfig, VimSegBackbone, VimUperNet, build_seg_model, resolve_seg_config, seg_loss
from vimamba.seg.inference import slide_inference, slide_windows, whole_inference
from vimamba.seg.optim import PolyWithWarmup, build_seg_optimizer, seg_param_groups

TINY = dict(embed_dim=32, depth=4, patch_size=8, stride=8)


def tiny_backbone(**kwargs) -> VimSegBackbone:
    kwargs = {"img_size": 64, "out_indices": (0, 1, 2, 3), **TINY, **kwargs}
    return VimSegBackbone("vim_tiny_patch16_224", **kwargs)


def tiny_model(num_classes: int = 5, **kwargs) -> VimUperNet:
    torch.manual_seed(0)
    return VimUperNet(tiny_backbone(**kwargs), num_classes, channels=16, aux_channels=8)


# ---- the pyramid ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("crop", [512, 640])
@pytest.mark.parametrize("name", list(VARIANT_ARGS))
def test_four_maps_at_strides_4_8_16_32_for_every_variant(name, crop):
    """Full width, one block (its feature feeds all four necks): the shapes depend on the width and patch grid."""
    args = VARIANT_ARGS[name]
    backbone = VimSegBackbone(name, img_size=crop, out_indices=(0, 0, 0, 0), depth=1).eval()
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, crop, crop))
    grid = (crop - args["patch_size"]) // args["stride"] + 1
    if args["stride"] == 16:  # 4x up, 2x up, as is, 2x down
        want = [4 * grid, 2 * grid, grid, grid // 2]
        assert want == [crop // 4, crop // 8, crop // 16, crop // 32]
    else:  # stride-8 grid: 2x up, as is, 2x and 4x down ((crop - 16) / 8 + 1 cells, one short of crop / 8)
        want = [2 * grid, grid, grid // 2, grid // 4]
    assert [tuple(m.shape) for m in maps] == [(1, args["embed_dim"], s, s) for s in want]
    assert backbone.reductions == [4, 8, 16, 32] and backbone.out_channels == [args["embed_dim"]] * 4
    assert backbone.model.pos_embed.shape == (1, grid * grid, args["embed_dim"])  # no class row
    assert backbone.model.cls_token is None


def test_reference_necks_for_16_pixel_patches():
    backbone = VimSegBackbone("vim_tiny_patch16_224", img_size=64, depth=4, out_indices=(0, 1, 2, 3))
    kinds = [[type(m).__name__ for m in (neck if isinstance(neck, torch.nn.Sequential) else [neck])]
             for neck in (backbone.fpn1, backbone.fpn2, backbone.fpn3, backbone.fpn4)]
    assert kinds == [["ConvTranspose2d", "BatchNorm2d", "GELU", "ConvTranspose2d"], ["ConvTranspose2d"],
                     ["Identity"], ["MaxPool2d"]]


def test_features_are_the_blocks_mixer_outputs_or_the_normalised_stream():
    backbone = tiny_backbone(out_indices=(0, 1, 1, 3), drop_path_rate=0.0).eval()
    vim = backbone.model
    seen = {}
    hooks = [vim.layers[i].mixer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
             for i in range(4)]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        mixer = vim.forward_intermediates(x, indices=[0, 1, 3], mixer_output=True, output_fmt="NLC",
                                          intermediates_only=True)
    for h in hooks:
        h.remove()
    for feature, i in zip(mixer, (0, 1, 3)):
        torch.testing.assert_close(feature, seen[i], rtol=0, atol=0)  # what the block adds, before the residual
    with pytest.raises(ValueError, match="does not combine with mixer_output"):
        vim.forward_intermediates(x, indices=[0], mixer_output=True, norm=True)
    # the backbone hands neck k the feature of block out_indices[k], reshaped to the 8x8 patch grid
    with torch.no_grad():
        maps = backbone(x)
        grid = [seen[i].transpose(1, 2).reshape(2, 32, 8, 8) for i in (0, 1, 1, 3)]
    torch.testing.assert_close(maps[1], grid[1])  # stride-8 model: the second neck is the identity
    torch.testing.assert_close(maps[2], backbone.fpn3(grid[2]))
    torch.testing.assert_close(maps[3], backbone.fpn4(grid[3]))
    # the 'norm' option: the residual stream through the final RMSNorm, which is kept for it (pruned otherwise)
    normed = tiny_backbone(feature="norm").eval()
    assert isinstance(backbone.model.norm_f, torch.nn.Identity) and not isinstance(normed.model.norm_f,
                                                                                  torch.nn.Identity)
    normed.load_state_dict(backbone.state_dict(), strict=False)
    with torch.no_grad():
        want = normed.model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        assert not torch.allclose(normed(x)[3], backbone(x)[3])
    torch.testing.assert_close(normed(x)[3], normed.fpn4(want))


def test_imagenet_weights_lose_the_class_row_and_are_resampled(tmp_path):
    torch.manual_seed(1)
    classifier = vimamba.create_model("vim_tiny_patch16_224", img_size=32, num_classes=10, **TINY)  # 4x4 grid + cls
    torch.save({"model": classifier.state_dict(), "epoch": 3}, tmp_path / "in1k.pth")  # the reference's layout
    backbone = tiny_backbone(checkpoint_path=tmp_path / "in1k.pth", feature="norm")  # 64 px: an 8x8 grid
    want = resample_mid_cls_pos_embed(classifier.pos_embed.detach(), (8, 8), keep_class_token=False)
    assert backbone.model.pos_embed.shape == (1, 64, 32)
    torch.testing.assert_close(backbone.model.pos_embed.detach(), want)
    ours = backbone.model.state_dict()
    for key in ("patch_embed.proj.weight", "layers.3.mixer.A_log", "layers.0.mixer.in_proj.weight", "norm_f.weight"):
        assert torch.equal(ours[key], classifier.state_dict()[key]), key
    assert "cls_token" not in ours and not any(k.startswith("head.") for k in ours)
    with pytest.raises(vimamba.CheckpointError, match="different shapes"):
        tiny_backbone(checkpoint_path=tmp_path / "in1k.pth", embed_dim=48)
    with pytest.raises(ValueError, match="do not fit a 4-block model"):
        tiny_backbone(out_indices=(0, 1, 2, 4))
    with pytest.raises(ValueError, match="exactly 4 blocks"):
        tiny_backbone(out_indices=(0, 1, 2))


# ---- heads and the whole model --------------------------------------------------------------------------------
def test_heads_have_mmsegmentations_layout():
    model = tiny_model()
    keys = set(model.state_dict())
    for key in ("decode_head.psp_modules.3.1.conv.weight", "decode_head.psp_modules.0.1.bn.running_mean",
                "decode_head.bottleneck.conv.weight", "decode_head.lateral_convs.2.conv.weight",
                "decode_head.fpn_convs.2.bn.weight", "decode_head.fpn_bottleneck.conv.weight",
                "decode_head.conv_seg.weight", "auxiliary_head.convs.0.conv.weight", "auxiliary_head.conv_seg.bias",
                "backbone.fpn1.0.weight"):
        assert key in keys, key
    head = model.decode_head
    assert [m[0].output_size for m in head.psp_modules] == [1, 2, 3, 6]
    assert head.bottleneck.conv.in_channels == 32 + 4 * 16 and head.fpn_bottleneck.conv.in_channels == 4 * 16
    assert head.bottleneck.conv.bias is None and head.dropout.p == 0.1
    assert model.auxiliary_head.in_index == 2 and model.auxiliary_head.convs[0].conv.out_channels == 8
    assert 0.005 < head.conv_seg.weight.std() < 0.02  # N(0, 0.01)


def test_forward_shapes_and_every_parameter_learns():
    model = tiny_model(num_classes=7)
    x = torch.randn(2, 3, 64, 72)  # not a multiple of the patch: scores still cover every input pixel
    out = model(x)
    assert out["out"].shape == out["aux"].shape == (2, 7, 64, 72)
    seg_loss(out, torch.randint(0, 7, (2, 64, 72))).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    model.eval()
    assert set(model(x)) == {"out"}  # no auxiliary head at inference


def test_loss_averages_like_mmsegmentation():
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 2], [255, 1]]])
    per_pixel = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert per_pixel[0, 1, 0] == 0
    assert seg_loss({"out": logits}, target) == pytest.approx(per_pixel.sum() / 4)  # ignored pixels count 0
    assert seg_loss({"out": logits}, target, avg_non_ignore=True) == pytest.approx(per_pixel.sum() / 3)
    aux = torch.randn(1, 3, 2, 2)
    both = seg_loss({"out": logits, "aux": aux}, target, aux_weight=0.4)
    assert both == pytest.approx(per_pixel.sum() / 4 + 0.4 * seg_loss({"out": aux}, target))


# ---- optimiser groups and schedule ----------------------------------------------------------------------------
def scale_of(model, config) -> dict[str, tuple[float, float]]:
    groups = seg_param_groups(model, config.weight_decay, config.layer_decay, config.layer_decay_mode)
    return {name: (g["lr_scale"], g["weight_decay"]) for g in groups for name in g["param_names"]}


def test_layer_decay_reference_mode_reaches_only_the_embeddings():
    model = tiny_model()
    config = SegConfig(layer_decay=0.92)  # 4 blocks here: embeddings at 0.92 ** 5
    got = scale_of(model, config)
    stem = 0.92 ** 5
    assert got["backbone.model.patch_embed.proj.weight"] == (pytest.approx(stem), 0.05)
    assert got["backbone.model.patch_embed.proj.bias"] == (pytest.approx(stem), 0.0)
    assert got["backbone.model.pos_embed"] == (pytest.approx(stem), 0.05)  # decayed: the reference's name check
    assert got["backbone.model.layers.0.mixer.in_proj.weight"] == (1.0, 0.05)
    assert got["backbone.model.layers.3.mixer.A_log"] == (1.0, 0.05)
    assert got["backbone.model.layers.3.mixer.D"] == (1.0, 0.0)
    assert got["decode_head.conv_seg.weight"] == (1.0, 0.05) and got["decode_head.conv_seg.bias"] == (1.0, 0.0)
    assert got["decode_head.bottleneck.bn.weight"] == (1.0, 0.0)  # a BatchNorm weight is 1-D
    assert len(got) == sum(1 for _ in model.parameters())


def test_layer_decay_layerwise_mode_decays_through_the_blocks():
    model = tiny_model()
    got = scale_of(model, SegConfig(layer_decay=0.92, layer_decay_mode="layerwise"))
    assert got["backbone.model.pos_embed"] == (pytest.approx(0.92 ** 5), 0.0)
    for i in range(4):
        assert got[f"backbone.model.layers.{i}.mixer.out_proj.weight"] == (pytest.approx(0.92 ** (4 - i)), 0.05)
    assert got["auxiliary_head.conv_seg.weight"][0] == 1.0
    with pytest.raises(ValueError, match="layer_decay_mode"):
        seg_param_groups(model, 0.05, 0.9, "blocks")


def test_poly_schedule_with_linear_warmup_as_mmcv():
    poly = PolyWithWarmup(1e-4, total=60000, warmup=1500, warmup_ratio=1e-6, power=1.0)
    assert poly.lr(0) == pytest.approx(1e-4 * 1e-6)
    assert poly.lr(750) == pytest.approx(1e-4 * (1 - 750 / 60000) * (1 - 0.5 * (1 - 1e-6)))
    assert poly.lr(1500) == pytest.approx(1e-4 * (1 - 1500 / 60000))
    assert poly.lr(30000) == pytest.approx(0.5e-4) and poly.lr(60000) == 0.0
    config = resolve_seg_config("ade20k-vim-ti", overrides={"data": "x", "model_kwargs": {"depth": 4, "embed_dim": 32},
                                                            "out_indices": [0, 1, 2, 3], "iterations": 100,
                                                            "warmup_iters": 10})
    model = build_seg_model(config, 3)
    optimizer, scheduler = build_seg_optimizer(model, config)
    lrs = []
    for _ in range(100):
        lrs.append({g["group_name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert lrs[0]["layer_5_decay"] == pytest.approx(1e-4 * 1e-6)
    assert lrs[10]["layer_5_decay"] == pytest.approx(1e-4 * 0.9)
    assert lrs[10]["layer_0_decay"] == pytest.approx(1e-4 * 0.9 * 0.92 ** 5)
    assert lrs[99]["layer_5_decay"] == pytest.approx(1e-6)
    assert type(optimizer).__name__ == "AdamW" and optimizer.defaults["betas"] == (0.9, 0.999)


def test_presets_are_the_reference_recipe():
    ti = resolve_seg_config("ade20k-vim-ti", overrides={"data": "/data/ade"})
    assert (ti.model, ti.crop_size, ti.out_indices, ti.feature) == ("vim_tiny_patch16_224", 512, (5, 11, 17, 23),
                                                                    "mixer")
    assert (ti.lr, ti.weight_decay, ti.opt, ti.opt_betas, ti.batch_size) == (1e-4, 0.05, "adamw", (0.9, 0.999), 16)
    assert (ti.warmup_iters, ti.warmup_ratio, ti.poly_power, ti.min_lr, ti.iterations) == (1500, 1e-6, 1.0, 0.0, 60000)
    assert (ti.layer_decay, ti.layer_decay_mode, ti.drop_path, ti.residual_in_fp32) == (0.92, "reference", 0.1, False)
    assert (ti.decode_channels, ti.aux_channels, ti.aux_weight, ti.dropout) == (192, 256, 0.4, 0.1)
    assert (ti.img_scale, ti.ratio_range, ti.cat_max_ratio, ti.hflip, ti.photometric) == (
        (2048, 512), (0.5, 2.0), 0.75, 0.5, True)
    assert (ti.eval_mode, ti.slide_stride) == ("slide", 341)
    s = resolve_seg_config("ade20k-vim-s", overrides={"data": "/data/ade"})
    assert (s.model, s.decode_channels, s.residual_in_fp32) == ("vim_small_patch16_224", 384, True)
    # the reference's Vim-S config rotates hidden states and stream (if_rope, if_rope_residual); Vim-Ti's does not
    assert s.model_kwargs == {"rope": True, "rope_residual": True} and ti.model_kwargs == {}
    from vimamba.seg import build_seg_model

    small = resolve_seg_config("ade20k-vim-s", overrides={"data": "x", "crop_size": 64, "slide_stride": 43})
    vim_s = build_seg_model(small, 150)
    assert vim_s.backbone.model.rope is not None and vim_s.backbone.model.rope_residual
    from vimamba.train.config import ConfigError

    with pytest.raises(ConfigError, match="pass --data"):
        resolve_seg_config("ade20k-vim-ti")
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_seg_config("cityscapes")
    with pytest.raises(ConfigError, match="out_indices must be whole numbers"):
        resolve_seg_config("tiny", overrides={"data": "x", "out_indices": [0, 1.5, 2, 3]})
    with pytest.raises(ConfigError, match="slide_stride"):
        resolve_seg_config("tiny", overrides={"data": "x", "slide_stride": 65})


# ---- inference ------------------------------------------------------------------------------------------------
def test_slide_windows_follow_mmsegmentation():
    # 512 crops every 341 pixels over a 512x683 image: one row, two windows, the last moved back to the border
    assert slide_windows(512, 683, 512, 341) == [(0, 0, 512, 512), (0, 171, 512, 683)]
    # 700 high: starts 0 and 341, the second moved to 188 so it ends at 700
    assert [(t, b) for t, _, b, _ in slide_windows(700, 512, 512, 341)] == [(0, 512), (188, 700)]
    assert slide_windows(300, 400, 512, 341) == [(0, 0, 300, 400)]  # smaller than the crop: the image itself
    assert len(slide_windows(512, 2048, 512, 341)) == 6


def test_slide_and_whole_inference_agree_on_a_crop_sized_image():
    model = tiny_model().eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(slide_inference(model, x, 5, 64, 43), whole_inference(model, x))
    wide = torch.randn(2, 3, 64, 100)
    slide = slide_inference(model, wide, 5, 64, 43)
    windows = [model(wide[:, :, :, left:left + 64])["out"] for left in (0, 36)]
    torch.testing.assert_close(slide[..., :36], windows[0][..., :36])
    torch.testing.assert_close(slide[..., 36:64], (windows[0][..., 36:] + windows[1][..., :28]) / 2)
    torch.testing.assert_close(slide[..., 64:], windows[1][..., 28:])
    small = slide_inference(model, torch.randn(1, 3, 40, 48), 5, 64, 43)  # smaller than the crop
    assert small.shape == (1, 5, 40, 48) and torch.isfinite(small).all()
    assert math.isfinite(float(whole_inference(model, torch.randn(1, 3, 80, 120)).sum()))

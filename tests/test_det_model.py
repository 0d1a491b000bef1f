"""Detection model parts: cascade box coding and stage matching, the cascade's inference, aligned multi-level RoI
pooling, the simple feature pyramid's shapes and strides, the padded transform, optimiser groups and schedule, and
whole tiny models of both architectures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import roi_align

from vimamba.det.backbone import VimDetBackbone
from vimamba.det.cascade import (CASCADE_IOUS, CASCADE_WEIGHTS, AlignedMultiScaleRoIAlign, CascadeRoIHeads,
                                 match_stage, stage_loss)
from vimamba.det.config import DET_PRESETS
from vimamba.det.model import PadToSquareTransform, build_det_model, detection_loss
from vimamba.det.optim import WarmupMultiStep, build_det_optimizer, det_param_groups
from vimamba.det.pyramid import SimpleFeaturePyramid


def _box_with_iou(iou: float, gt=(0.0, 0.0, 100.0, 100.0)) -> list[float]:
    """A box sharing gt's top-left corner and height, whose width makes its IoU with gt exactly ``iou`` (< 1)."""
    x0, y0, x1, y1 = gt
    return [x0, y0, x0 + (x1 - x0) * iou, y1]


# ---- cascade box coding and matching --------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", range(3))
def test_stage_box_coding_follows_the_rcnn_definition(stage):
    wx, wy, ww, wh = CASCADE_WEIGHTS[stage]
    coder = det_utils.BoxCoder(CASCADE_WEIGHTS[stage])
    proposals = torch.tensor([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 8.0, 4.0]])
    gt = torch.tensor([[12.0, 18.0, 60.0, 90.0], [1.0, 1.0, 7.0, 5.0]])
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    px, py = proposals[:, 0] + pw / 2, proposals[:, 1] + ph / 2
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + gw / 2, gt[:, 1] + gh / 2
    expected = torch.stack([wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)],
                           dim=1)
    deltas = coder.encode_single(gt, proposals)
    torch.testing.assert_close(deltas, expected)
    torch.testing.assert_close(coder.decode_single(deltas, proposals), gt, rtol=0, atol=1e-4)
    # later stages scale the same displacement up (x2, x3 for the stage weights): finer boxes, same target range
    unit = det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(gt, proposals)
    torch.testing.assert_close(deltas, unit * torch.tensor(CASCADE_WEIGHTS[stage]))


def test_stage_matching_uses_each_stages_iou_threshold():
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 260.0, 260.0]])
    gt_labels = torch.tensor([2, 5])
    boxes = torch.tensor([_box_with_iou(0.55), _box_with_iou(0.65), _box_with_iou(0.75), [300.0, 300.0, 310.0, 310.0],
                          [201.0, 199.0, 259.0, 261.0]])
    expected = {0.5: [2, 2, 2, 0, 5], 0.6: [0, 2, 2, 0, 5], 0.7: [0, 0, 2, 0, 5]}
    for stage, iou in enumerate(CASCADE_IOUS):
        matcher = det_utils.Matcher(iou, iou, allow_low_quality_matches=False)
        coder = det_utils.BoxCoder(CASCADE_WEIGHTS[stage])
        labels, matched, targets = match_stage([boxes], [gt], [gt_labels], matcher, coder)
        assert labels[0].tolist() == expected[iou], iou
        assert matched[0].tolist()[-1] == 1 and matched[0].tolist()[:3] == [0, 0, 0]
        torch.testing.assert_close(targets[0], coder.encode_single(gt[matched[0]], boxes))
    labels, _, _ = match_stage([boxes], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)], matcher, coder)
    assert labels[0].tolist() == [0] * 5


def test_stage_loss_is_cross_entropy_plus_l1_over_all_boxes():
    logits = torch.randn(4, 3)
    deltas = torch.randn(4, 4)
    labels, targets = [torch.tensor([1, 0]), torch.tensor([2, 0])], [torch.randn(2, 4), torch.randn(2, 4)]
    loss_cls, loss_box = stage_loss(logits, deltas, labels, targets)
    torch.testing.assert_close(loss_cls, nn.functional.cross_entropy(logits, torch.tensor([1, 0, 2, 0])))
    t = torch.cat(targets)
    expected = ((deltas[0] - t[0]).abs().sum() + (deltas[2] - t[2]).abs().sum()) / 4
    torch.testing.assert_close(loss_box, expected)


class _FixedPredictor(nn.Module):
    """Stage stand-in: the same class logits for every box and a fixed (class-agnostic) delta."""

    def __init__(self, logits, delta):
        super().__init__()
        self.logits, self.delta = torch.tensor(logits), torch.tensor(delta)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        n = x.shape[0]
        return self.logits.expand(n, -1).clone() + 0 * self.dummy, self.delta.expand(n, -1).clone()


class _MeanPool(nn.Module):
    def forward(self, features, boxes, image_shapes):
        return torch.zeros(sum(len(b) for b in boxes), 1)


def test_cascade_inference_averages_stage_scores_and_chains_the_boxes():
    stage_logits = [[0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]
    delta = [1.0, 0.0, 0.0, 0.0]  # moves a box right by width / weight_x at each stage
    heads = CascadeRoIHeads(_MeanPool(), [nn.Identity()] * 3, [_FixedPredictor(s, delta) for s in stage_logits],
                            score_thresh=0.0, nms_thresh=0.5, detections_per_img=10).eval()
    proposal = torch.tensor([[100.0, 100.0, 140.0, 120.0]])
    with torch.no_grad():
        result, losses = heads({}, [proposal], [(400, 400)])
    assert losses == {}
    expected_scores = sum(torch.softmax(torch.tensor(s), 0) for s in stage_logits) / 3
    got = {int(label): float(score) for label, score in zip(result[0]["labels"], result[0]["scores"])}
    assert got == pytest.approx({1: float(expected_scores[1]), 2: float(expected_scores[2])})
    shift = 40.0 * sum(1.0 / w[0] for w in CASCADE_WEIGHTS)  # each stage regresses the previous stage's box
    torch.testing.assert_close(result[0]["boxes"][0], proposal[0] + torch.tensor([shift, 0.0, shift, 0.0]))


def test_cascade_training_losses_per_stage_and_gradient_scaling():
    torch.manual_seed(0)
    pool = AlignedMultiScaleRoIAlign(["0"], [4], 7)
    head = lambda: nn.Sequential(nn.Flatten(), nn.Linear(8 * 49, 16), nn.ReLU())  # noqa: E731
    from vimamba.det.cascade import CascadeBoxPredictor

    heads = CascadeRoIHeads(pool, [head() for _ in range(3)], [CascadeBoxPredictor(16, 4) for _ in range(3)],
                            batch_size_per_image=32)
    features = {"0": torch.randn(1, 8, 32, 32, requires_grad=True)}
    proposals = [torch.tensor([[10.0, 10.0, 60.0, 60.0], [70.0, 70.0, 120.0, 110.0], [0.0, 0.0, 30.0, 30.0]])]
    targets = [{"boxes": torch.tensor([[12.0, 8.0, 58.0, 62.0]]), "labels": torch.tensor([3])}]
    heads.train()
    _, losses = heads(features, proposals, [(128, 128)], targets)
    assert sorted(losses) == sorted(f"loss_{k}_stage{s}" for k in ("classifier", "box_reg") for s in range(3))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grad_scaled = features["0"].grad.clone()
    features["0"].grad = None
    # without the 1/3 scaling the features' gradient would be three times larger
    from vimamba.det import cascade

    original = cascade._ScaleGradient.apply
    try:
        cascade._ScaleGradient.apply = lambda x, scale: x
        _, losses = heads(features, proposals, [(128, 128)], targets)
        sum(losses.values()).backward()
    finally:
        cascade._ScaleGradient.apply = original
    torch.testing.assert_close(features["0"].grad, 3 * grad_scaled, rtol=1e-4, atol=1e-6)


# ---- pooling, pyramid, transform -------------------------------------------------------------------------------------
def test_aligned_roi_pool_takes_each_box_from_its_fpn_level():
    torch.manual_seed(0)
    maps = {str(i): torch.randn(1, 4, 64 // 2 ** i, 64 // 2 ** i) for i in range(4)}
    pool = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], [4, 8, 16, 32], 7)
    boxes = torch.tensor([[0.0, 0.0, 50.0, 50.0], [10.0, 10.0, 130.0, 130.0], [0.0, 0.0, 240.0, 240.0],
                          [0.0, 0.0, 250.0, 250.0]])
    out = pool(maps, [boxes], [(256, 256)])
    # FPN rule: level = floor(4 + log2(sqrt(area) / 224)), clamped to 2..5 -> map index level - 2
    for k, box in enumerate(boxes):
        side = math.sqrt(float((box[2] - box[0]) * (box[3] - box[1])))
        level = min(max(math.floor(4 + math.log2(side / 224) + 1e-6), 2), 5) - 2
        ref = roi_align(maps[str(level)], [box[None]], 7, spatial_scale=1 / 4 / 2 ** level, sampling_ratio=0,
                        aligned=True)
        torch.testing.assert_close(out[k:k + 1], ref)
    assert out.shape == (4, 4, 7, 7)


def test_simple_feature_pyramid_shapes_and_strides():
    pyramid = SimpleFeaturePyramid(64, in_stride=16, out_channels=32)
    out = pyramid(torch.randn(2, 64, 8, 8))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert pyramid.strides == [4, 8, 16, 32, 64]
    assert [tuple(v.shape) for v in out.values()] == [(2, 32, 32, 32), (2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4),
                                                      (2, 32, 2, 2)]
    # ViTDet's channel plan: dim/4 after the 4x branch, dim/2 after the 2x branch, then 1x1 and 3x3 convs
    first = [stage[0] for stage in pyramid.stages[:2]]
    assert (first[0].out_channels, first[1].out_channels) == (32, 32)
    assert pyramid.stages[0][3].out_channels == 16 and pyramid.stages[0][4].in_channels == 16
    torch.testing.assert_close(out["pool"], out["3"][:, :, ::2, ::2])


def test_detection_backbone_pyramid_from_the_last_stream():
    torch.manual_seed(0)
    backbone = VimDetBackbone(img_size=128, drop_path_rate=0.0, out_channels=32, embed_dim=64, depth=2).eval()
    vim = backbone.model
    assert vim.rope is not None and vim.rope_residual and not vim.has_class_token
    assert isinstance(vim.norm_f, nn.Identity)
    x = torch.randn(1, 3, 128, 128)
    out = backbone(x)
    assert backbone.strides == [4, 8, 16, 32, 64]
    for (name, level), stride in zip(out.items(), backbone.strides):
        assert level.shape == (1, 32, 128 // stride, 128 // stride), name
        assert level.dtype == torch.float32
    with torch.no_grad():  # the pyramid reads residual + last block output, reshaped to the 8x8 grid
        state, args = [vim._embed(x), None], vim._rope_args(x)
        for block in vim.layers:
            vim._run_block(block, state, args)
        hidden, residual = state
        grid = (residual + hidden).reshape(1, 8, 8, 64).permute(0, 3, 1, 2)
        torch.testing.assert_close(out["2"], backbone.pyramid(grid)["2"])
    with pytest.raises(ValueError, match="padded to 128x128"):
        backbone(torch.randn(1, 3, 96, 128))


def test_transform_pads_to_the_square_canvas():
    transform = PadToSquareTransform(128)
    transform.train()
    batch, _ = transform([torch.rand(3, 100, 60), torch.rand(3, 128, 90)])
    assert batch.tensors.shape == (2, 3, 128, 128) and batch.image_sizes == [(100, 60), (128, 90)]
    assert (batch.tensors[0, :, 100:] == 0).all() and (batch.tensors[0, :, :, 60:] == 0).all()
    with pytest.raises(ValueError, match="larger than the 128x128 canvas"):
        transform([torch.rand(3, 130, 60)])
    transform.eval()  # at inference the longest side goes to the canvas
    batch, _ = transform([torch.rand(3, 300, 150)])
    assert batch.image_sizes == [(128, 64)]


# ---- optimiser ---------------------------------------------------------------------------------------------------------
def _tiny_config(**changes):
    config = DET_PRESETS["tiny"]()
    config.data = "unused"
    for k, v in changes.items():
        setattr(config, k, v)
    return config


def test_layer_decay_and_weight_decay_groups():
    config = _tiny_config(layer_decay=0.5, weight_decay=0.1)
    model = build_det_model(config, 2)
    groups = det_param_groups(model, 0.1, 0.5)
    where = {name: g for g in groups for name in g["param_names"]}
    depth = 4
    assert where["backbone.model.pos_embed"]["lr_scale"] == 0.5 ** (depth + 1)
    assert where["backbone.model.pos_embed"]["weight_decay"] == 0.0
    assert where["backbone.model.patch_embed.proj.weight"]["weight_decay"] == 0.1
    assert where["backbone.model.layers.0.mixer.in_proj.weight"]["lr_scale"] == 0.5 ** depth
    assert where["backbone.model.layers.3.mixer.in_proj.weight"]["lr_scale"] == 0.5
    assert where["backbone.model.layers.3.norm.weight"]["weight_decay"] == 0.0
    assert where["backbone.pyramid.stages.0.1.weight"]["weight_decay"] == 0.0  # LayerNorm2d
    assert where["roi_heads.box_predictors.0.bbox_pred.bias"]["weight_decay"] == 0.1  # detectron2 decays biases
    assert where["rpn.head.cls_logits.weight"]["lr_scale"] == 1.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer, scheduler = build_det_optimizer(model, config)
    lrs = {g["group_name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["layer_1_decay"] == pytest.approx(config.lr * 0.5 ** depth * config.warmup_factor)


def test_warmup_multistep_schedule():
    schedule = WarmupMultiStep((100, 150), gamma=0.1, warmup=10, warmup_factor=0.001)
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert schedule(10) == 1.0 and schedule(99) == 1.0
    assert schedule(100) == pytest.approx(0.1) and schedule(150) == pytest.approx(0.01)
    vitdet = DET_PRESETS["coco-vim-ti"]()
    assert (vitdet.iterations, vitdet.batch_size, vitdet.lr, vitdet.weight_decay, vitdet.layer_decay) == (
        184375, 64, 1e-4, 0.1, 0.837)
    assert vitdet.lr_steps == (163889, 177546) and vitdet.img_size == 1024 and vitdet.scale_range == (0.1, 2.0)


# ---- whole models -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["cascade_mask_rcnn", "mask_rcnn"])
def test_tiny_model_trains_and_detects(architecture):
    torch.manual_seed(0)
    model = build_det_model(_tiny_config(architecture=architecture), 3)
    images = [torch.rand(3, 120, 100), torch.rand(3, 96, 128)]
    masks = torch.zeros(2, 120, 100, dtype=torch.uint8)
    masks[0, 10:60, 10:50] = 1
    masks[1, 20:80, 60:90] = 1
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [60.0, 20.0, 90.0, 80.0]]),
                "labels": torch.tensor([1, 3]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 96, 128, dtype=torch.uint8)}]
    model.train()
    losses = model(images, targets)
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_mask"}
    if architecture == "cascade_mask_rcnn":
        expected |= {f"loss_{k}_stage{s}" for k in ("classifier", "box_reg") for s in range(3)}
    else:
        expected |= {"loss_classifier", "loss_box_reg"}
    assert set(losses) == expected
    loss = detection_loss(losses)
    assert torch.isfinite(loss)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused  # DistributedDataParallel needs every parameter to take part
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 200, 150)])[0]
    n = len(out["boxes"])
    assert out["masks"].shape == (n, 1, 200, 150) and out["scores"].shape == (n,)
    if n:
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3
        assert (out["boxes"][:, 2] <= 150).all() and (out["boxes"][:, 3] <= 200).all()
        assert (out["scores"][:-1] >= out["scores"][1:]).all()
    model.roi_heads.score_thresh = 1.0  # nothing passes: empty outputs of the right shapes
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])[0]
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 1, 64, 80) and out["labels"].shape == (0,)

"""Every Vim variant: shapes, state dict, parameter counts, the timm interface, faithfulness to the spec."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vimamba
from vimamba.models import VARIANT_ALIASES, VARIANT_ARGS
from vim_spec import spec_forward

VARIANTS = list(VARIANT_ARGS)
# From shared/spec/vim-architecture.md (millions, rounded to 2 decimals there).
SPEC_PARAMS = {
    "vim_tiny_patch16_224": 7.15,
    "vim_small_patch16_224": 25.80,
    "vim_base_patch16_224": 97.60,
    "vim_tiny_patch16_stride8_224": 7.25,
}


def small(name="vim_tiny_patch16_224", **kwargs):
    """A 2-block model of a variant's width: same code paths, a fraction of the time."""
    kwargs.setdefault("depth", 2)
    return timm.create_model(name, **kwargs)


def expected_state_dict_shapes(name: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """The spec's key/shape table, built independently of the model code."""
    args = VARIANT_ARGS[name]
    D, E, N, K = args["embed_dim"], 2 * args["embed_dim"], 16, 4
    R = math.ceil(D / 16)
    grid = (224 - 16) // args["stride"] + 1
    T = grid * grid + 1
    shapes = {
        "cls_token": (1, 1, D),
        "pos_embed": (1, T, D),
        "patch_embed.proj.weight": (D, 3, 16, 16),
        "patch_embed.proj.bias": (D,),
        "norm_f.weight": (D,),
        "head.weight": (num_classes, D),
        "head.bias": (num_classes,),
    }
    for i in range(args["depth"]):
        p = f"layers.{i}."
        shapes[p + "norm.weight"] = (D,)
        shapes[p + "mixer.in_proj.weight"] = (2 * E, D)
        shapes[p + "mixer.out_proj.weight"] = (D, E)
        for s in ("", "_b"):
            shapes[p + f"mixer.conv1d{s}.weight"] = (E, 1, K)
            shapes[p + f"mixer.conv1d{s}.bias"] = (E,)
            shapes[p + f"mixer.x_proj{s}.weight"] = (R + 2 * N, E)
            shapes[p + f"mixer.dt_proj{s}.weight"] = (E, R)
            shapes[p + f"mixer.dt_proj{s}.bias"] = (E,)
        shapes[p + "mixer.A_log"] = shapes[p + "mixer.A_b_log"] = (E, N)
        shapes[p + "mixer.D"] = shapes[p + "mixer.D_b"] = (E,)
    return shapes


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_matches_spec_table(name):
    model = timm.create_model(name, weight_init="skip")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_state_dict_shapes(name)
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert not list(model.buffers())
    if name in SPEC_PARAMS:
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == SPEC_PARAMS[name]


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward_shapes(name):
    model = small(name, num_classes=7)
    stride = VARIANT_ARGS[name]["stride"]
    grid = (224 - 16) // stride + 1
    x = torch.randn(2, 3, 224, 224)
    feats = model.forward_features(x)
    assert feats.shape == (2, grid * grid + 1, VARIANT_ARGS[name]["embed_dim"])
    logits = model.forward_head(feats)
    assert logits.shape == (2, 7)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("name", ["vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224"])
def test_full_depth_logits_match_the_spec(name):
    """The modules and an independent float64 transcription of the spec agree on real-size models."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    # Perturb the parameters the init leaves at constants so every term of the spec is exercised.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("D", "D_b", "norm.weight", "norm_f.weight")):
                p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        got = model(x).double()
    want = spec_forward(model.state_dict(), x, stride=VARIANT_ARGS[name]["stride"])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_aliases_and_registry():
    for alias, short in VARIANT_ALIASES.items():
        assert timm.is_model(alias)
        model = timm.create_model(alias, depth=1, num_classes=3)
        assert model.pretrained_cfg["architecture"] == short or model.pretrained_cfg["architecture"] == alias
        assert model.patch_embed.stride == (VARIANT_ARGS[short]["stride"],) * 2
    assert set(timm.list_models("vim_*")) >= set(VARIANTS)
    assert set(timm.list_models("vim_*", pretrained=True)) >= {f"{v}.in1k" for v in VARIANTS}
    with pytest.raises(ValueError, match="unknown Vim model 'vit_tiny'"):
        vimamba.create_model("vit_tiny")


def test_issue_example_call():
    model = timm.create_model("vim_small_patch16_224", num_classes=10, drop_path_rate=0.1, img_size=512)
    assert model.pos_embed.shape == (1, 32 * 32 + 1, 384)
    assert model.head.out_features == 10
    assert isinstance(model.drop_path, timm.layers.DropPath) and model.drop_path.drop_prob == 0.1
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.layers]
    want = [0.0] + torch.linspace(0, 0.1, 24).tolist()[:-1]
    assert rates == pytest.approx(want)


@pytest.mark.parametrize("name", VARIANTS)
def test_pretrained_cfg(name):
    cfg = timm.create_model(name, depth=1).pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head"
    assert cfg["hf_hub_id"].startswith("hustvl/Vim-") and cfg["hf_hub_filename"].endswith(".pth")
    data_cfg = timm.data.resolve_data_config({}, model=timm.create_model(name, depth=1))
    assert data_cfg["input_size"] == (3, 224, 224)


def test_reset_classifier_and_pools():
    model = small()
    model.reset_classifier(5)
    x = torch.randn(1, 3, 224, 224)
    assert model(x).shape == (1, 5)
    model.reset_classifier(0)
    assert model(x).shape == (1, 192)
    model.reset_classifier(4, "avg")
    feats = model.forward_features(x)
    mid = (feats.shape[1] - 1) // 2
    patches = torch.cat([feats[:, :mid], feats[:, mid + 1:]], 1)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), patches.mean(1))
    model.reset_classifier(0, "")
    assert model(x).shape == feats.shape
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, "max")
    no_cls = small(class_token=False, global_pool="avg", num_classes=2)
    assert no_cls.forward_features(x).shape == (1, 196, 192) and no_cls(x).shape == (1, 2)
    with pytest.raises(ValueError, match="needs class_token=True"):
        small(class_token=False)


def test_grad_checkpointing_gives_same_result():
    torch.manual_seed(0)
    model = small(num_classes=3)
    x = torch.randn(2, 3, 224, 224)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_no_weight_decay_and_groups():
    model = small()
    nwd = model.no_weight_decay()
    assert {"pos_embed", "cls_token", "layers.0.mixer.A_log", "layers.1.mixer.A_b_log",
            "layers.0.mixer.D", "layers.1.mixer.D_b"} <= nwd
    assert "layers.0.mixer.in_proj.weight" not in nwd
    from timm.optim import create_optimizer_v2
    groups = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.layers[0].mixer.A_log) not in decayed
    assert id(model.layers[0].mixer.in_proj.weight) in decayed
    from timm.models import group_parameters
    grouped = group_parameters(model, model.group_matcher())
    assert len(grouped) == 2 + 2  # stem, two blocks, final norm + head


def test_init_follows_the_reference():
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224")
    mixer = model.layers[3].mixer
    assert torch.equal(mixer.A_log[5], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert torch.equal(mixer.A_b_log, mixer.A_log) and torch.all(mixer.D == 1) and torch.all(mixer.D_b == 1)
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert mixer.dt_proj.weight.abs().max() <= 12 ** -0.5
    # The quirk: the backward dt projection keeps PyTorch's default weight and a zero bias.
    assert torch.all(mixer.dt_proj_b.bias == 0)
    assert mixer.dt_proj_b.weight.abs().max() <= 1 / math.sqrt(12) + 1e-6
    bound = math.sqrt(6 / ((1 + 5) * 384)) / math.sqrt(24)  # kaiming_uniform(a=sqrt 5) / sqrt(depth)
    assert mixer.out_proj.weight.abs().max() <= bound + 1e-7
    assert mixer.out_proj.weight.abs().max() > 0.9 * bound
    assert torch.all(model.patch_embed.proj.bias == 0) and torch.all(model.head.bias == 0)
    assert 0.015 < model.pos_embed.std() < 0.025 and 0.015 < model.head.weight.std() < 0.025
    symmetric = timm.create_model("vim_tiny_patch16_224", depth=1, symmetric_dt_init=True).layers[0].mixer
    assert torch.all(torch.nn.functional.softplus(symmetric.dt_proj_b.bias) >= 1e-4 - 1e-7)
    assert torch.all(symmetric.dt_proj_b.bias != 0)


@pytest.mark.parametrize("output_fmt", ["NCHW", "NLC"])
def test_forward_intermediates(output_fmt):
    model = small("vim_tiny_patch16_stride8_224", depth=4).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[1, 3], output_fmt=output_fmt)
        torch.testing.assert_close(final, model.forward_features(x))
        grid = 27
        want = (2, 192, grid, grid) if output_fmt == "NCHW" else (2, grid * grid, 192)
        assert [tuple(t.shape) for t in inter] == [want, want]
        only = model.forward_intermediates(x, indices=2, intermediates_only=True, output_fmt=output_fmt)
        assert len(only) == 2
        torch.testing.assert_close(only[1], inter[1])
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True, output_fmt="NLC")
        feats = model.forward_features(x)
        mid = (feats.shape[1] - 1) // 2
        torch.testing.assert_close(normed[0], torch.cat([feats[:, :mid], feats[:, mid + 1:]], 1))
        with_prefix = model.forward_intermediates(x, indices=[3], return_prefix_tokens=True, norm=True,
                                                  intermediates_only=True, output_fmt="NLC")
        torch.testing.assert_close(with_prefix[0][1], feats[:, mid:mid + 1])
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True,
                                            output_fmt=output_fmt)
        torch.testing.assert_close(early[0], inter[0])


def test_prune_and_features_only():
    model = small(depth=4)
    kept = model.prune_intermediate_layers([0, 2])
    assert kept == [0, 2] and len(model.layers) == 3 and isinstance(model.head, torch.nn.Identity)
    feat_model = timm.create_model("vim_tiny_patch16_224", depth=4, features_only=True, out_indices=(1, 3))
    outs = feat_model(torch.randn(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outs] == [(1, 192, 14, 14)] * 2
    assert feat_model.feature_info.reduction() == [16, 16]
    s8 = timm.create_model("vim_small_patch16_stride8_224", depth=2, features_only=True, out_indices=(1,))
    assert s8.feature_info.reduction() == [8] and s8.feature_info.channels() == [384]


def test_bad_input_images():
    model = small()
    with pytest.raises(ValueError, match="built for 224x224.*dynamic_img_size=True"):
        model(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        model(torch.randn(1, 1, 224, 224))
    dyn = small(dynamic_img_size=True)
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        dyn(torch.randn(1, 3, 8, 224))


@pytest.mark.parametrize("size", [(32, 48), (37, 50)], ids=["even", "cropped"])
def test_patch_embed_matmul_path_equals_conv(size):
    """The GEMM over unfolded patches (taken on CUDA for stride == patch) is the strided conv, remainder
    pixels dropped as the conv drops them; overlapping patches are refused."""
    from vimamba.layers import StridedPatchEmbed

    torch.manual_seed(0)
    embed = StridedPatchEmbed(img_size=size, patch_size=16, embed_dim=24, strict_img_size=False)
    x = torch.randn(2, 3, *size)
    want = embed.proj(x).flatten(2).transpose(1, 2)
    got = embed.embed_as_matmul(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_bf16 = embed.embed_as_matmul(x)
    assert got_bf16.dtype == torch.bfloat16
    assert ((got_bf16.float() - want).norm() / want.norm()).item() < 1e-2
    overlapping = StridedPatchEmbed(img_size=32, patch_size=16, stride=8, embed_dim=24)
    with pytest.raises(ValueError, match="overlap"):
        overlapping.embed_as_matmul(x)


@pytest.mark.parametrize("one_in_proj_max", [None, 0])
def test_inference_path_matches_autograd_path(monkeypatch, one_in_proj_max):
    """Under no_grad the blocks take their inputs out of a list (released early) and the mixer's reverse scan
    writes over the forward branch's output: the same logits and intermediates as with autograd on, with x and
    z from one in_proj product (small inputs) or from two (large ones; forced here)."""
    if one_in_proj_max is not None:
        monkeypatch.setattr("vimamba.layers.mamba_mixer.ONE_IN_PROJ_MAX_ELEMENTS", one_in_proj_max)
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224", img_size=64, depth=3, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    want = model(x)
    feats_want = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True, mixer_output=True)
    with torch.no_grad():
        got = model(x)
        feats = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True, mixer_output=True)
    torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-6)
    for f, fw in zip(feats, feats_want):
        torch.testing.assert_close(f, fw.detach(), rtol=1e-6, atol=1e-6)


def test_block_releases_its_inputs_before_the_mixer_runs():
    """forward_state drops the previous output and stream once the new stream exists, and the mixer drops
    the normalised input once its projections have read it (peak memory)."""
    import weakref

    from vimamba.layers import VimBlock

    block = VimBlock(16, d_state=4, expand=2).eval()
    seen = {}
    hidden, residual = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    refs = weakref.ref(hidden), weakref.ref(residual)
    real_mixer, real_convs = block.mixer.forward_list, block.mixer._convs

    def mixer(box, weights=None):
        seen["alive"] = [r() is not None for r in refs]
        seen["normed"] = weakref.ref(box[0])
        return real_mixer(box, weights)

    def conv(*args, **kwargs):
        seen["normed_alive_at_conv"] = seen["normed"]() is not None
        return real_convs(*args, **kwargs)

    block.mixer.forward_list, block.mixer._convs = mixer, conv
    state = [hidden, residual]
    del hidden, residual
    with torch.no_grad():
        block.forward_state(state)
    assert seen["alive"] == [False, False] and seen["normed_alive_at_conv"] is False
    assert len(state) == 2 and state[0].shape == (1, 5, 16) and state[1].dtype == torch.float32


@pytest.mark.parametrize("path", ["branches", "stacked"])
def test_mixer_releases_the_conv_input_once_the_convs_have_read_it(monkeypatch, path):
    """Without autograd x (in_proj's first half, the convs' input) is gone by the time the projections' outputs
    reach the scan, on both inference paths: a frame that keeps a reference to it holds one more activation at
    the peak (Vim-Ti 1248, batch 64: 2.91 -> 3.21 GiB on the H200 while the caller kept x and z as locals)."""
    import weakref

    from vimamba.layers import BiMambaMixer, ProductWeightCasts

    mixer = BiMambaMixer(16, d_state=4).eval()
    casts = None
    if path == "stacked":
        casts = ProductWeightCasts().refresh([mixer], torch.bfloat16)[0]
    else:
        monkeypatch.setattr("vimamba.layers.mamba_mixer.ONE_IN_PROJ_MAX_ELEMENTS", 0)
    seen = {}
    real_convs, real_inputs = mixer._convs, mixer._scan_inputs

    def convs(x, stacked=False):
        seen["x"] = weakref.ref(x)
        return real_convs(x, stacked)

    def scan_inputs(*args):
        seen["x_alive"] = seen["x"]() is not None
        return real_inputs(*args)

    monkeypatch.setattr(mixer, "_convs", convs)
    monkeypatch.setattr(mixer, "_scan_inputs", scan_inputs)
    hidden = torch.randn(1, 7, 16, dtype=torch.bfloat16 if casts else torch.float32)
    with torch.no_grad():
        out = mixer.forward_list([hidden], casts)
    assert out.shape == (1, 7, 16)
    assert seen["x_alive"] is False


class _CountCasts(TorchDispatchMode):
    """Counts the operators that change a tensor's dtype, and every operator by name."""

    def __init__(self):
        super().__init__()
        self.casts = 0
        self.ops = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.ops[name] = self.ops.get(name, 0) + 1
        if (isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor)
                and out.dtype != args[0].dtype):
            self.casts += 1
        return out


def _relative_error(got, want):
    got, want = got.float(), want.float()
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("stacked", [False, True], ids=["branches", "stacked"])
def test_product_weights_cast_once_per_forward_under_autocast(monkeypatch, stacked):
    """Without autograd under autocast, one multi-tensor copy per forward casts every mixer's product weights
    (out_proj's halving in fp32 first) instead of a cast per product (by default on CUDA devices only; forced on
    here). Large problems keep each branch's products: bit-identical logits and intermediates under
    inference_mode and no_grad. Small ones (``stacked``) put both branches' convs in one tensor and batch their
    products (x_proj, dt_proj: one product each for both; out_proj of the sum: one): the same logits up to
    bf16 rounding. Either way a weight changed through ``.data`` between forwards is seen, no cast per product
    is left, training releases the buffers and a forward with autograd makes none."""
    if not stacked:
        monkeypatch.setattr("vimamba.layers.mamba_mixer.ONE_IN_PROJ_MAX_ELEMENTS", 0)
    torch.manual_seed(0)
    depth = 3
    model = timm.create_model("vim_tiny_patch16_224", img_size=64, depth=depth, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)

    def run(once, grad_mode, intermediates=False):
        model.cast_products_once = once
        with grad_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            if intermediates:
                return model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
            return model(x)

    def same(got, want):
        if stacked:
            return _relative_error(got, want) < 2e-2
        return torch.equal(got, want)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert not model._product_casts._buffers  # by default only on CUDA devices
    for grad_mode in (torch.inference_mode, torch.no_grad):  # inference tensors first: later writes must work
        assert same(run(True, grad_mode), run(False, grad_mode))
    for got, want in zip(run(True, torch.no_grad, True), run(False, torch.no_grad, True)):
        assert same(got, want)
    before = run(True, torch.no_grad)
    model.layers[1].mixer.out_proj.weight.data.mul_(3.0)  # .data: no version bump
    after = run(True, torch.no_grad)
    assert not same(after, before) and same(after, run(False, torch.no_grad))

    counters = {}
    for once in (True, False):
        model.cast_products_once = once
        with _CountCasts() as counter, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
        counters[once] = counter
    # per block: in_proj, both branches' x_proj and dt_proj, out_proj; the rest (patch embedding, head, the
    # one multi-tensor copy) alike
    assert counters[False].casts - counters[True].casts >= 6 * depth, (counters[False].casts, counters[True].casts)
    ops = counters[True].ops
    # (out_proj: two products, the second accumulating in place, or one product over both branches)
    if stacked:
        assert ops.get("bmm", 0) >= 2 * depth and ops.get("addmm_", 0) == 0, ops
    else:
        assert ops.get("addmm_", 0) == depth, ops

    model.train()
    assert not model._product_casts._buffers
    model.eval()
    model.cast_products_once = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
    assert not model._product_casts._buffers


@pytest.mark.parametrize("divide_out", [True, False])
def test_stacked_mixer_path_matches_the_branches_in_fp32(monkeypatch, divide_out):
    """The side-by-side inference path (one conv output for both branches, batched x_proj and dt_proj, one
    out_proj product over both) computes what the per-branch path and the plain module do: fp32 casts of an fp64
    mixer, so that only the products' summation order differs."""
    from vimamba.layers import BiMambaMixer, ProductWeightCasts

    torch.manual_seed(0)
    mixer = BiMambaMixer(32, d_state=4, divide_out=divide_out).double().eval()
    hidden = torch.randn(2, 11, 32)
    casts = ProductWeightCasts().refresh([mixer], torch.float32)[0]
    with torch.no_grad():
        stacked = mixer.forward_list([hidden.clone()], casts)
        monkeypatch.setattr("vimamba.layers.mamba_mixer.ONE_IN_PROJ_MAX_ELEMENTS", 0)
        branches = mixer.forward_list([hidden.clone()], casts)
        plain = mixer.float().forward(hidden)
    assert stacked.dtype == torch.float32
    torch.testing.assert_close(stacked, branches, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stacked, plain, rtol=1e-5, atol=1e-6)

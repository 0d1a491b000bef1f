"""Parameter and FLOP counts of a Vim configuration, computed from its sizes (no model is built).

FLOPs count a multiply-add as 2 FLOPs. Papers' tables and fvcore count it as 1, so their "1.5G" for Vim-Ti
at 224 is this module's ~3.0 GFLOPs.

The dense part (patch embedding, the projections, the depthwise convs, the head) is what
``torch.utils.flop_counter.FlopCounterMode`` counts on a real forward; tests check the two agree exactly.
The selective scans are a loop of element-wise ops that FlopCounterMode does not see; they are added here
from the formula in ``scan_flops``. Norms, residual adds, the convs' SiLU and the mean of the two directions
are not counted (under 1% of the total).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields

from ..models import VARIANT_ALIASES, VARIANT_ARGS, VisionMamba

__all__ = ["VimArch", "arch_of_model", "arch_of_variant", "count_flops", "count_params"]


@dataclass(frozen=True)
class VimArch:
    """The sizes that determine a Vim model's parameters and arithmetic."""

    embed_dim: int
    depth: int
    patch_size: int
    stride: int
    in_chans: int = 3
    num_classes: int = 1000
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0: "auto", ceil(embed_dim / 16)
    class_token: bool = True
    pos_embed: bool = True

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def rank(self) -> int:
        return self.dt_rank or math.ceil(self.embed_dim / 16)

    def grid(self, img_size: int | tuple[int, int]) -> tuple[int, int]:
        height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is smaller than one {self.patch_size}x{self.patch_size} patch")
        return (height - self.patch_size) // self.stride + 1, (width - self.patch_size) // self.stride + 1

    def num_tokens(self, img_size: int | tuple[int, int]) -> int:
        grid_h, grid_w = self.grid(img_size)
        return grid_h * grid_w + int(self.class_token)


_ARCH_FIELDS = {f.name for f in fields(VimArch)}


def arch_of_variant(name: str, **model_kwargs) -> VimArch:
    """The sizes ``create_model(name, **model_kwargs)`` would build, from VisionMamba's defaults and the variant's."""
    defaults = {
        key: p.default for key, p in inspect.signature(VisionMamba.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    unknown = sorted(set(model_kwargs) - set(defaults))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not an argument of VisionMamba")
    args = {**defaults, **VARIANT_ARGS[VARIANT_ALIASES.get(name, name)], **model_kwargs}
    args["stride"] = args.get("stride") or args["patch_size"]
    args["dt_rank"] = math.ceil(args["embed_dim"] / 16) if args["dt_rank"] == "auto" else int(args["dt_rank"])
    return VimArch(**{k: v for k, v in args.items() if k in _ARCH_FIELDS})


def arch_of_model(model: VisionMamba) -> VimArch:
    """The sizes of a built model."""
    mixer = model.layers[0].mixer
    head = model.head
    return VimArch(
        embed_dim=model.embed_dim,
        depth=len(model.layers),
        patch_size=model.patch_embed.patch_size[0],
        stride=model.patch_embed.stride[0],
        in_chans=model.patch_embed.in_chans,
        num_classes=head.out_features if hasattr(head, "out_features") else 0,
        d_state=mixer.d_state,
        d_conv=mixer.conv1d.kernel_size[0],
        expand=mixer.d_inner // mixer.dim,
        dt_rank=mixer.dt_rank,
        class_token=model.has_class_token,
        pos_embed=model.pos_embed is not None,
    )


def count_params(arch: VimArch, img_size: int | tuple[int, int] = 224) -> int:
    """Parameters of a model built for ``img_size`` (only the position embedding depends on it)."""
    D, E, N, K, R = arch.embed_dim, arch.d_inner, arch.d_state, arch.d_conv, arch.rank
    patch = arch.in_chans * arch.patch_size ** 2 * D + D
    prefix = D * int(arch.class_token) + (arch.num_tokens(img_size) * D if arch.pos_embed else 0)
    direction = (E * K + E) + E * (R + 2 * N) + (R * E + E) + E * N + E  # conv1d, x_proj, dt_proj, A_log, D
    layer = D + D * 2 * E + 2 * direction + E * D  # norm, in_proj, two directions, out_proj
    head = D * arch.num_classes + arch.num_classes
    return patch + prefix + arch.depth * layer + D + head  # + norm_f


def scan_flops(arch: VimArch, tokens: int) -> int:
    """FLOPs of one selective scan (one direction of one layer) over ``tokens`` tokens.

    Per token, for each of the E = d_inner channels and each of its N = d_state state elements:
        delta * A (1), exp(.) (1, counted as one FLOP), (delta * u) * B (1),
        s = exp(delta * A) * s + (delta * u) * B (2), y += C * s (2)            -> 7 per state element
    and per channel: delta + dt bias (1), softplus (1), delta * u (1), y + D * u (2), silu(z) (1), y * silu(z) (1)
                                                                                -> 7 per channel
    so tokens * E * (7 * N + 7). For Vim-Ti (E=384, N=16) both directions give 0.09 MFLOP per token and layer.
    """
    return tokens * arch.d_inner * (7 * arch.d_state + 7)


def count_flops(arch: VimArch, img_size: int | tuple[int, int] = 224) -> dict[str, int]:
    """FLOPs of one image's forward (a multiply-add = 2), by part; ``dense`` and ``total`` sum them up.

    Also ``exps``: the exponentials the scans evaluate (one per token, channel, state, direction and layer),
    the special-function work that bounds a fused scan kernel (see shared/spec/anchors.md).
    """
    D, E, N, K, R = arch.embed_dim, arch.d_inner, arch.d_state, arch.d_conv, arch.rank
    grid_h, grid_w = arch.grid(img_size)
    T = arch.num_tokens(img_size)
    L = arch.depth
    parts = {
        "patch_embed": 2 * arch.in_chans * arch.patch_size ** 2 * D * grid_h * grid_w,
        "in_proj": L * 2 * T * D * 2 * E,
        # Depthwise causal conv, both directions: K multiply-adds per output. The reference computes it as a
        # padded conv1d and drops the K - 1 extra outputs; those are not counted here.
        "conv1d": L * 2 * 2 * T * E * K,
        "x_proj": L * 2 * 2 * T * E * (R + 2 * N),
        "dt_proj": L * 2 * 2 * T * R * E,
        "out_proj": L * 2 * T * E * D,
        "head": 2 * D * arch.num_classes,
    }
    parts["dense"] = sum(parts.values())
    parts["scan"] = L * 2 * scan_flops(arch, T)
    parts["total"] = parts["dense"] + parts["scan"]
    parts["exps"] = L * 2 * T * E * N
    return parts

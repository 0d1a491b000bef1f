"""Vision Mamba (Vim), Zhu et al. 2024, arXiv:2401.09417.

A plain ViT-like backbone whose attention is replaced by bidirectional Mamba blocks, with the class token in
the middle of the patch sequence and absolute position embeddings. Parameter names, shapes and the forward
pass are the reference implementation's (hustvl/Vim), so the released checkpoints load with ``strict=True``
and give the same logits.

File order follows timm's ``vision_transformer.py``: model, checkpoint filter, builder, configs, variants.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, RmsNorm, lecun_normal_, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from huggingface_hub import PyTorchModelHubMixin

from ..layers import (MixerCasts, ProductWeightCasts, StridedPatchEmbed, VimBlock, VisionRope,
                      resample_mid_cls_pos_embed)
from ..ops import add_rms_norm
from .hub import load_hub_folder, save_hub_folder

__all__ = ["VisionMamba", "checkpoint_filter_fn", "VARIANT_ALIASES"]


class VisionMamba(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="timm",
    tags=["image-classification", "vision-mamba", "vimamba"],
    paper_url="https://arxiv.org/abs/2401.09417",
):
    """Vim: patch embedding, middle class token, absolute position embedding, bidirectional Mamba blocks.

    Args:
        img_size: input size the position embedding is made for.
        patch_size: side of the square patches.
        stride: step between patches (``patch_size`` unless given; 8 for the long-sequence variants).
        in_chans, num_classes: image channels and classifier outputs (0 for no classifier).
        global_pool: ``'token'`` takes the middle class token, ``'avg'`` the mean of the patch tokens,
            ``''`` returns the whole sequence from ``forward_head``.
        embed_dim, depth: width and number of blocks.
        d_state, d_conv, expand, dt_rank: Mamba's state size, conv width, inner expansion, rank of dt.
        class_token: put a class token in the middle of the sequence.
        pos_embed: add an absolute position embedding.
        drop_rate, pos_drop_rate, drop_path_rate: head dropout, dropout after the position embedding,
            stochastic depth (block i uses rate i-1 of linspace(0, rate, depth), as the reference does).
        norm_eps: RMSNorm epsilon.
        residual_in_fp32: keep the residual stream in fp32 under mixed precision.
        dynamic_img_size: accept any image size, resampling the position embedding on the fly.
        symmetric_dt_init: give the backward branch's dt projection Mamba's init too (the reference does not).
        rope: 2-D rotary position embedding (EVA-02's, on top of the absolute one) applied to the hidden states
            entering every block, as the reference's ``if_rope`` (its detection backbone uses it).
        rope_residual: rotate the residual stream before every block too (the reference's ``if_rope_residual``).
        rope_pt_grid: side of the pretraining patch grid the rotary positions are scaled to (``pt_hw_seq_len``).
        weight_init: ``''`` for the reference init, ``'skip'`` to leave parameters as constructed.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        stride: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        class_token: bool = True,
        pos_embed: bool = True,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        dynamic_img_size: bool = False,
        symmetric_dt_init: bool = False,
        rope: bool = False,
        rope_residual: bool = False,
        rope_pt_grid: int = 14,
        weight_init: str = "",
    ):
        super().__init__()
        self._product_casts = ProductWeightCasts()
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg' without one")
        stride = stride or patch_size
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.has_class_token = class_token
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        self.patch_embed = StridedPatchEmbed(
            img_size, patch_size, stride, in_chans, embed_dim, strict_img_size=not dynamic_img_size)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim)) if pos_embed else None)
        self.pos_drop = nn.Dropout(pos_drop_rate)

        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        block_rates = [0.0] + rates[:-1]
        self.layers = nn.ModuleList([
            VimBlock(
                embed_dim, drop_path=block_rates[i], norm_eps=norm_eps, residual_in_fp32=residual_in_fp32,
                d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, num_layers=depth,
                symmetric_dt_init=symmetric_dt_init)
            for i in range(depth)
        ])
        # The final add before the last norm uses the full rate, not the scheduled one (as the reference).
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = RmsNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        if rope_residual and not rope:
            raise ValueError("rope_residual=True rotates the residual stream by the rotary embedding: it needs rope=True")
        # No parameters or persistent buffers: the state dict stays the reference's, with or without rope.
        self.rope = VisionRope(embed_dim, rope_pt_grid) if rope else None
        self.rope_residual = rope_residual

        self.feature_info = [dict(module=f"layers.{i}", num_chs=embed_dim, reduction=stride) for i in range(depth)]
        if weight_init != "skip":
            self.init_weights()

    # ---- initialisation -------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """The reference init for the parts outside the mixer; each mixer initialises itself."""
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # ---- timm interface -------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters Mamba means to exempt from weight decay: position/class embeddings and A_log, D.

        timm's optimiser factory already exempts 1-D tensors; A_log is 2-D, hence the explicit names.
        """
        names = {"pos_embed", "cls_token"}
        for name, _ in self.named_parameters():
            if name.rsplit(".", 1)[-1] in ("A_log", "A_b_log", "D", "D_b"):
                names.add(name)
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            if global_pool == "token" and not self.has_class_token:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def set_input_size(self, img_size: int | tuple[int, int] | None = None, **_: Any) -> None:
        """Rebuild for another input size, resampling the position embedding in place."""
        if img_size is None:
            return
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size)
        if self.pos_embed is not None and self.patch_embed.grid_size != old_grid:
            with torch.no_grad():
                new = resample_mid_cls_pos_embed(
                    self.pos_embed.data, self.patch_embed.grid_size, old_grid, self.has_class_token)
            self.pos_embed = nn.Parameter(new)

    # ---- forward --------------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patches, the class token in the middle, position embedding."""
        height, width = x.shape[-2:]
        x = self.patch_embed(x)
        num_patches = x.shape[1]
        if self.cls_token is not None:
            mid = num_patches // 2
            x = torch.cat([x[:, :mid], self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x[:, mid:]], dim=1)
        if self.pos_embed is not None:
            pos_embed = self.pos_embed
            if self.dynamic_img_size:
                grid = self.patch_embed.dynamic_feat_size((height, width))
                pos_embed = resample_mid_cls_pos_embed(
                    pos_embed, grid, self.patch_embed.grid_size, self.has_class_token)
            x = x + pos_embed
        return self.pos_drop(x)

    def _rope_args(self, x: torch.Tensor) -> tuple[tuple[int, int], int | None] | None:
        """The patch grid and class-token index the rotary embedding needs for images ``x`` (None without rope)."""
        if self.rope is None:
            return None
        grid = self.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
        return grid, (grid[0] * grid[1]) // 2 if self.has_class_token else None

    # Forwards without autograd under autocast cast every mixer's product weights in one go (``ProductWeightCasts``):
    # None on CUDA devices only (where each cast is a kernel launch the host issues; on the CPU the one copy took
    # ~1.5 ms longer than autocast's own casts per Vim-Ti forward), True on any device, False never.
    cast_products_once: bool | None = None

    def train(self, mode: bool = True):
        if mode:  # (the casts' buffers serve forwards without autograd)
            self._product_casts.release()
        return super().train(mode)

    def _cast_products(self, images: torch.Tensor, layers) -> list[MixerCasts | None]:
        """Each of ``layers``' mixer product weights cast for this forward, or Nones (autograd, torch.compile, no
        autocast, blocks with hooks (called as modules: FSDP's unshard their parameters there), or parameters
        already in autocast's dtype: each product then does what autocast says)."""
        casts = None
        device_type = images.device.type
        once = self.cast_products_once
        if ((once or (once is None and device_type == "cuda")) and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling() and torch.is_autocast_enabled(device_type)
                and not any(block._forward_hooks or block._forward_pre_hooks for block in layers)):
            casts = self._product_casts.refresh([block.mixer for block in layers],
                                                torch.get_autocast_dtype(device_type))
        return casts or [None] * len(layers)

    def _run_block(self, block: nn.Module, state: list, rope_args=None, weights: MixerCasts | None = None) -> None:
        """Block ``block`` on ``state = [hidden, residual]``, replaced by the block's outputs (``weights``: its
        mixer's cast product weights, see ``_cast_products``).

        The stream travels in a list so that no frame here holds a block's inputs while it runs: without
        autograd (which keeps them anyway) and module hooks (FSDP's, users'), the block releases them early.
        """
        if rope_args is not None:  # the reference rotates what enters each block, before the block's own add
            state[0] = self.rope(state[0], *rope_args)
            if state[1] is not None and self.rope_residual:
                state[1] = self.rope(state[1], *rope_args)
        if torch.is_grad_enabled() or block._forward_hooks or block._forward_pre_hooks:
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                state[:] = checkpoint(block, *state, use_reentrant=False)
            else:
                state[:] = block(*state)
        else:
            block.forward_state(state, weights)

    def _final_norm(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """Add the last block's output to the stream and normalise (the sum alone once the norm is pruned)."""
        if isinstance(self.norm_f, nn.Identity):
            return hidden if residual is None else residual + hidden
        return add_rms_norm(hidden, residual, self.norm_f.weight, self.norm_f.eps, True)[0]

    def _finish(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """The reference's last step: the last block's output joins the stream through the full-rate drop path."""
        return self._final_norm(self.drop_path(hidden) if residual is not None else hidden, residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) to the normalised token sequence (B, T, D), class token included."""
        rope_args = self._rope_args(x)
        casts = self._cast_products(x, self.layers)
        state = [self._embed(x), None]
        for block, weights in zip(self.layers, casts):
            self._run_block(block, state, rope_args, weights)
        return self._finish(*state)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "token":
            x = x[:, (x.shape[1] - 1) // 2]
        elif self.global_pool == "avg":
            if self.has_class_token:
                mid = (x.shape[1] - 1) // 2
                x = torch.cat([x[:, :mid], x[:, mid + 1:]], dim=1)
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        mixer_output: bool = False,
    ):
        """Forward that also returns the residual stream after the chosen blocks, as timm's ViT does.

        Block i's intermediate is the stream its successor would normalise: ``residual + output``.
        ``norm=True`` applies the final RMSNorm to each. ``mixer_output=True`` returns instead what block i
        adds to the stream, its mixer output before any drop path (the reference's segmentation backbone
        takes these). The class token is split off as a prefix token.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        if mixer_output and norm:
            raise ValueError("norm=True normalises the residual stream; it does not combine with mixer_output=True")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        height, width = x.shape[-2:]
        batch = x.shape[0]

        rope_args = self._rope_args(x)
        state = [self._embed(x), None]
        layers = self.layers[: max_index + 1] if stop_early else self.layers
        casts = self._cast_products(x, layers)
        intermediates = []
        for i, (block, weights) in enumerate(zip(layers, casts)):
            self._run_block(block, state, rope_args, weights)
            if i in take_indices:
                if mixer_output:
                    intermediates.append(state[0])
                else:
                    intermediates.append(self._final_norm(*state) if norm else state[1] + state[0])

        prefix_tokens = None
        if self.has_class_token:
            mid = (intermediates[0].shape[1] - 1) // 2 if intermediates else 0
            prefix_tokens = [y[:, mid:mid + 1] for y in intermediates]
            intermediates = [torch.cat([y[:, :mid], y[:, mid + 1:]], dim=1) for y in intermediates]
        if output_fmt == "NCHW":
            grid_h, grid_w = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [
                y.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self._finish(*state), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        self.feature_info = self.feature_info[: max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    # ---- Hugging Face Hub mixin, routed through timm's folder format -------------------------------------
    def _save_pretrained(self, save_directory) -> None:
        save_hub_folder(self, save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "VisionMamba":
        """Load a folder written by ``save_pretrained`` (or a Hub id holding one), strictly."""
        return load_hub_folder(pretrained_model_name_or_path, **kwargs)


# ---- checkpoints ------------------------------------------------------------------------------------------
_WRAPPER_KEYS = ("model", "state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


def unwrap_state_dict(checkpoint: dict[str, Any], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint (the reference stores it under ``model``)."""
    if use_ema:
        for key in ("model_ema", "state_dict_ema", "ema"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
        else:
            raise KeyError(f"no EMA weights in this checkpoint; its top-level keys are {sorted(checkpoint)[:12]}")
    for key in _WRAPPER_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, dict) and not isinstance(checkpoint.get("pos_embed"), torch.Tensor):
            checkpoint = inner
            break
    state_dict = {}
    for name, value in checkpoint.items():
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        state_dict[name] = value
    return state_dict


def checkpoint_filter_fn(
    state_dict: dict[str, Any],
    model: VisionMamba,
    interpolation: str = "bicubic",
    antialias: bool = True,
    legacy_first_row_prefix: bool = False,
) -> dict[str, torch.Tensor]:
    """Convert a reference or vimamba checkpoint to fit ``model``.

    Unwraps training checkpoints, strips DDP/compile prefixes, resamples the position embedding to the
    model's grid (around the middle class row) and drops the class token for models built without one.
    """
    state_dict = unwrap_state_dict(state_dict)
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is not None and model.pos_embed is not None and pos_embed.shape != model.pos_embed.shape:
        ckpt_has_cls = "cls_token" in state_dict
        state_dict["pos_embed"] = resample_mid_cls_pos_embed(
            pos_embed,
            model.patch_embed.grid_size,
            has_class_token=ckpt_has_cls,
            keep_class_token=model.has_class_token,
            interpolation=interpolation,
            antialias=antialias,
            legacy_first_row_prefix=legacy_first_row_prefix,
        )
    if not model.has_class_token:
        state_dict.pop("cls_token", None)
    return state_dict


def _create_vim(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        VisionMamba,
        VARIANT_ALIASES.get(variant, variant),
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(hf_hub_id: str, filename: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "hf_hub_id": hf_hub_id,
        "hf_hub_filename": filename,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2401.09417",
        "paper_name": "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model",
        "origin_url": "https://github.com/hustvl/Vim",
        **kwargs,
    }


# The reference implementation's registry names, accepted everywhere as aliases of the short names.
VARIANT_ALIASES = {
    "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2": "vim_tiny_patch16_224",
    "vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2":
        "vim_tiny_patch16_stride8_224",
    "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2": "vim_small_patch16_224",
    "vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2":
        "vim_small_patch16_stride8_224",
    "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2": "vim_base_patch16_224",
}

_PRETRAINED = {
    "vim_tiny_patch16_224.in1k": _cfg("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"),
    "vim_tiny_patch16_stride8_224.in1k": _cfg("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small_patch16_224.in1k": _cfg("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth"),
    "vim_small_patch16_stride8_224.in1k": _cfg("hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth"),
    "vim_base_patch16_224.in1k": _cfg("hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth"),
}
default_cfgs = generate_default_cfgs({
    **_PRETRAINED,
    **{f"{alias}.in1k": _PRETRAINED[f"{short}.in1k"] for alias, short in VARIANT_ALIASES.items()},
})

# Sizes of each variant; every registered function below only picks one of these.
VARIANT_ARGS = {
    "vim_tiny_patch16_224": dict(patch_size=16, stride=16, embed_dim=192, depth=24),
    "vim_tiny_patch16_stride8_224": dict(patch_size=16, stride=8, embed_dim=192, depth=24),
    "vim_small_patch16_224": dict(patch_size=16, stride=16, embed_dim=384, depth=24),
    "vim_small_patch16_stride8_224": dict(patch_size=16, stride=8, embed_dim=384, depth=24),
    "vim_base_patch16_224": dict(patch_size=16, stride=16, embed_dim=768, depth=24),
}


def _variant(name: str, pretrained: bool, kwargs: dict[str, Any]) -> VisionMamba:
    return _create_vim(name, pretrained=pretrained, **dict(VARIANT_ARGS[VARIANT_ALIASES.get(name, name)], **kwargs))


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti: 192 wide, 24 blocks, 16x16 patches (7.15M parameters, 76.1% ImageNet top-1)."""
    return _variant("vim_tiny_patch16_224", pretrained, kwargs)


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti with 16x16 patches every 8 pixels, long-sequence fine-tuned (78.3% top-1)."""
    return _variant("vim_tiny_patch16_stride8_224", pretrained, kwargs)


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S: 384 wide, 24 blocks (25.8M parameters, 80.5% top-1)."""
    return _variant("vim_small_patch16_224", pretrained, kwargs)


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S with 16x16 patches every 8 pixels, long-sequence fine-tuned (81.6% top-1)."""
    return _variant("vim_small_patch16_stride8_224", pretrained, kwargs)


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-B: 768 wide, 24 blocks (97.6M parameters, 81.9% top-1)."""
    return _variant("vim_base_patch16_224", pretrained, kwargs)


def _register_alias(alias: str, short: str) -> None:
    def create(pretrained: bool = False, **kwargs) -> VisionMamba:
        return _variant(alias, pretrained, kwargs)

    create.__name__ = alias
    create.__qualname__ = alias
    create.__doc__ = f"Reference-implementation name of ``{short}``."
    create.__module__ = __name__
    register_model(create)


for _alias, _short in VARIANT_ALIASES.items():
    _register_alias(_alias, _short)

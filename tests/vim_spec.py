"""Vim's forward pass written a second time, functionally, straight from shared/spec/vim-architecture.md.

It reads a state dict and shares no code with vimamba's modules (only the reference scan, itself tested
against a naive loop), so agreement between the two is evidence that the modules implement the spec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vimamba.ops import selective_scan_ref


def _rms(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _branch(x, z, sd, prefix, suffix, rank, state):
    conv_w = sd[f"{prefix}conv1d{suffix}.weight"]  # (E, 1, K)
    width = conv_w.shape[-1]
    u = F.silu(F.conv1d(F.pad(x, (width - 1, 0)), conv_w, sd[f"{prefix}conv1d{suffix}.bias"], groups=x.shape[1]))
    x_dbl = torch.einsum("bet,ce->btc", u, sd[f"{prefix}x_proj{suffix}.weight"])
    dt, B, C = x_dbl[..., :rank], x_dbl[..., rank:rank + state], x_dbl[..., rank + state:]
    delta = F.softplus(torch.einsum("btr,er->bet", dt, sd[f"{prefix}dt_proj{suffix}.weight"])
                       + sd[f"{prefix}dt_proj{suffix}.bias"][None, :, None])
    a_name = "A_log" if not suffix else "A_b_log"
    A = -torch.exp(sd[prefix + a_name])
    y = selective_scan_ref(u, delta, A, B.transpose(1, 2), C.transpose(1, 2))
    y = y + sd[prefix + ("D" if not suffix else "D_b")][None, :, None] * u
    return y * F.silu(z)


def spec_forward(state_dict, images, stride=16, patch=16):
    sd = {k: v.double() for k, v in state_dict.items()}
    x = images.double()
    depth = sum(1 for k in sd if k.endswith(".norm.weight") and k.startswith("layers."))
    state = sd["layers.0.mixer.A_log"].shape[1]
    rank = sd["layers.0.mixer.dt_proj.weight"].shape[1]

    # 1-2: patches, class token at P // 2, position embedding.
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=stride)
    tokens = tokens.flatten(2).transpose(1, 2)
    num_patches = tokens.shape[1]
    mid = num_patches // 2
    cls = sd["cls_token"].expand(x.shape[0], -1, -1)
    h = torch.cat([tokens[:, :mid], cls, tokens[:, mid:]], dim=1) + sd["pos_embed"]

    # 3: blocks with a residual stream.
    residual = None
    hidden = h
    for i in range(depth):
        p = f"layers.{i}."
        residual = hidden if residual is None else residual + hidden
        normed = _rms(residual, sd[p + "norm.weight"])
        xz = torch.einsum("btd,cd->bct", normed, sd[p + "mixer.in_proj.weight"])
        xs, z = xz[:, : xz.shape[1] // 2], xz[:, xz.shape[1] // 2:]
        y_f = _branch(xs, z, sd, p + "mixer.", "", rank, state)
        y_b = _branch(xs.flip(-1), z.flip(-1), sd, p + "mixer.", "_b", rank, state).flip(-1)
        hidden = torch.einsum("bet,de->btd", (y_f + y_b) / 2, sd[p + "mixer.out_proj.weight"])

    # 4: last add, final norm, class token, head.
    out = _rms(residual + hidden, sd["norm_f.weight"])
    return out[:, mid] @ sd["head.weight"].T + sd["head.bias"]

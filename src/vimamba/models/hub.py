"""Weight folders in timm's Hugging Face format (``config.json`` + ``model.safetensors``).

One folder serves every idiom: ``timm.create_model("local-dir:PATH")`` / ``"hf-hub:ID"``, transformers'
``TimmWrapper``, and our ``save_pretrained`` / ``from_pretrained`` (the Hub mixin's methods delegate here,
so the mixin's own flat config.json never replaces timm's).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_hub_folder", "load_hub_folder", "model_args_of"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_ARCHITECTURE = "vim_tiny_patch16_224"


def model_args_of(model: torch.nn.Module) -> dict[str, Any]:
    """The constructor arguments that rebuild ``model``, JSON-ready."""
    pe = model.patch_embed
    mixer = model.layers[0].mixer if len(model.layers) else None
    args = dict(
        img_size=list(pe.img_size),
        patch_size=pe.patch_size[0],
        stride=pe.stride[0],
        in_chans=pe.in_chans,
        global_pool=model.global_pool,
        embed_dim=model.embed_dim,
        depth=len(model.layers),
        class_token=model.has_class_token,
        pos_embed=model.pos_embed is not None,
        norm_eps=model.norm_f.eps if hasattr(model.norm_f, "eps") else 1e-5,
        dynamic_img_size=model.dynamic_img_size,
    )
    if mixer is not None:
        args.update(d_state=mixer.d_state, d_conv=mixer.conv1d.kernel_size[0],
                    expand=mixer.d_inner // mixer.dim, dt_rank=mixer.dt_rank)
        args["residual_in_fp32"] = model.layers[0].residual_in_fp32
    return args


def save_hub_folder(model: torch.nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` through timm's own exporter."""
    from timm.models import get_pretrained_cfg
    from timm.models._hub import save_for_hf

    if not hasattr(model, "pretrained_cfg"):
        cfg = get_pretrained_cfg(DEFAULT_ARCHITECTURE).to_dict()
        cfg["architecture"] = DEFAULT_ARCHITECTURE
        model.pretrained_cfg = cfg
    save_directory = Path(save_directory)
    save_for_hf(model, str(save_directory), model_args=model_args_of(model), safe_serialization=True)
    return save_directory


def _resolve_folder_files(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> tuple[Path, Path]:
    path = Path(name_or_path)
    if path.is_dir():
        config, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in (config, weights):
            if not f.is_file():
                raise FileNotFoundError(f"{path} is not a vimamba/timm weight folder: {f.name} is missing")
        return config, weights
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    looks_local = str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1
    if looks_local:
        raise FileNotFoundError(f"weight folder not found: {name_or_path}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        config = hf_hub_download(str(name_or_path), CONFIG_NAME, **hub_kwargs)
        weights = hf_hub_download(str(name_or_path), WEIGHTS_NAME, **hub_kwargs)
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a local folder nor in the Hugging Face cache, and the Hub cannot be "
            f"reached (offline?): {err}") from err
    return Path(config), Path(weights)


def load_hub_folder(
    name_or_path: str | os.PathLike,
    *,
    force_download: bool = False,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    revision: str | None = None,
    **model_kwargs: Any,
):
    """Build the model a folder (or Hub repository) describes and load its weights strictly."""
    from .. import create_model

    hub_kwargs = dict(force_download=force_download, token=token, cache_dir=cache_dir,
                      local_files_only=local_files_only, revision=revision)
    config_file, weights_file = _resolve_folder_files(name_or_path, **hub_kwargs)
    config = json.loads(Path(config_file).read_text())
    if "architecture" not in config:
        raise ValueError(f"{config_file} has no 'architecture' entry; it was not written by timm or vimamba")
    kwargs = dict(config.get("model_args", {}))
    kwargs["num_classes"] = config.get("num_classes", kwargs.get("num_classes", 1000))
    kwargs.update(model_kwargs)
    kwargs.setdefault("weight_init", "skip")
    return create_model(config["architecture"], checkpoint_path=weights_file, **kwargs)

"""Training checkpoints: written atomically (temporary file, then ``os.replace``), read back to resume.

A checkpoint is a dict in the reference's layout (the weights under ``model``, so ``vimamba predict`` and
``load_checkpoint`` read it) with everything needed to continue: EMA weights, optimiser, scheduler and
loss-scaler states, the position (epoch, batches done in it, optimiser steps), each process's random
states, the metrics so far and the full config.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_save", "atomic_save_safetensors", "capture_rng", "restore_rng", "read_training_checkpoint",
           "resolve_resume_path", "check_same_settings"]

LAST = "last.pth"
BEST = "best.pth"


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` so that a reader sees the old file or the new one, never half of one."""
    _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata or {"format": "pt"}))


def capture_rng() -> dict[str, Any]:
    """This process's random states (python, numpy, torch CPU and CUDA), in types ``weights_only`` loads."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_resume_path(path: str | os.PathLike) -> Path:
    """``--resume``: a checkpoint file, or a run folder (its ``last.pth``)."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} not found")
    return path


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    from ..models import CheckpointError

    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged file fails inside the unpickler in many ways
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "optimizer" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a vimamba training checkpoint (it has no config and optimiser state); to start "
            f"from its weights use --initial-checkpoint instead of --resume")
    return checkpoint


def check_same_settings(saved_config: dict[str, Any], settings: dict[str, Any], keys: tuple[str, ...],
                        path: str | os.PathLike) -> None:
    """Refuse to resume from ``path`` when a setting in ``keys`` (those that shape the model) differs between
    the run's saved config and this run's ``settings``."""
    from ..models import CheckpointError

    for key in keys:
        if saved_config.get(key) != settings[key]:
            raise CheckpointError(f"cannot resume from {path}: it was trained with {key}={saved_config.get(key)!r}, "
                                  f"this run has {key}={settings[key]!r}")

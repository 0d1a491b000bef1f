"""Per-epoch metrics as CSV and JSON lines (rewritten whole each epoch), TensorBoard scalars when
TensorBoard is installed (the ``tensorboard`` extra), and the learning-curve plots (per epoch for classification,
per iteration for segmentation and detection)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["replace_text", "write_metrics", "write_tensorboard", "plot_curves", "plot_iteration_curves"]


def replace_text(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file, so a reader sees the old text or the new, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(rows: list[dict[str, Any]], folder: Path) -> None:
    """``metrics.csv`` and ``metrics.jsonl`` from all rows so far (a resumed run rewrites them consistently)."""
    if not rows:
        return
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    replace_text(folder / "metrics.csv", buf.getvalue())
    replace_text(folder / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def write_tensorboard(row: dict[str, Any], folder: Path) -> bool:
    """Add one epoch's numeric metrics under ``folder/tensorboard`` (step = epoch); False when TensorBoard
    is not installed. One event file per call: TensorBoard merges a folder's files, and a resumed run only
    adds the epochs it runs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    with SummaryWriter(log_dir=str(folder / "tensorboard")) as writer:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, value, global_step=int(row["epoch"]))
    return True


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy against epochs (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(epochs, [100 * r["val_top1"] for r in rows], marker="o", label="top-1")
    ax_acc.plot(epochs, [100 * r["val_top5"] for r in rows], marker="o", label="top-5")
    if any("ema_val_top1" in r for r in rows):
        ax_acc.plot(epochs, [100 * r.get("ema_val_top1", float("nan")) for r in rows], marker="o", label="EMA top-1")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy (%)")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_iteration_curves(rows: list[dict[str, Any]], path: Path, score_keys: tuple[str, ...], score_label: str) -> None:
    """Training loss and the validation scores ``score_keys`` (fractions, drawn as %) against iterations; a score
    no row has (mask AP of a box-only model) is left out, a missing value drawn as 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["iteration"] for r in rows]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(steps, [r["train_loss"] for r in rows], marker="o")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    for key in score_keys:
        if any(r.get(key) is not None for r in rows):
            ax_score.plot(steps, [100 * (r.get(key) or 0.0) for r in rows], marker="o", label=key)
    ax_score.set_xlabel("iteration")
    ax_score.set_ylabel(score_label)
    ax_score.legend()
    ax_score.grid(alpha=0.3)
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")  # ends in .png: savefig picks the format from the name
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)

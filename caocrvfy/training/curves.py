"""Training curves: losses, full-match and learning rate per epoch, warmup and reductions marked."""

from __future__ import annotations

import csv
from pathlib import Path


def read_history(path: Path) -> dict[str, list[float]]:
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(float("nan"))
    return columns


def plot_curves(history_csv: Path, out_png: Path, warmup_epochs: float = 0.0,
                reductions: list[int] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = read_history(history_csv)
    epochs = [e + 1 for e in h.get("epoch", [])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        ("loss", [("loss", "train"), ("val_loss", "validation")], "log"),
        ("full-match accuracy", [("full_match", "train"), ("val_full_match", "validation"),
                                 ("val_char_accuracy", "validation, per character")], "linear"),
        ("learning rate", [("lr", "learning rate")], "log"),
    ]
    for ax, (title, series, scale) in zip(axes, panels):
        for key, label in series:
            if key in h and any(v == v for v in h[key]):
                ax.plot(epochs, h[key], label=label, marker="." if len(epochs) < 40 else None)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_yscale(scale)
        if warmup_epochs:
            ax.axvspan(0.5, 0.5 + warmup_epochs, color="orange", alpha=0.15, label="warmup")
        for i, epoch in enumerate(reductions or []):
            ax.axvline(epoch + 0.5, color="red", linestyle=":", label="rate reduced" if i == 0 else None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png

"""The report's plots (matplotlib, Agg): reliability, coverage, confusions, hardest examples."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from caocrvfy.evaluation.scores import Record, aligned_pairs, coverage_curve, differences, kind


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt



def _named(c: str | None) -> str:
    return "∅ none" if c is None else f"{c} {kind(c)}"



def plot_reliability(figures: dict, out_png: Path) -> Path:
    plt = _pyplot()
    bins = figures["calibration"]["bins"]
    width = bins[0]["high"] - bins[0]["low"]
    mids = [b["low"] + width / 2 for b in bins]
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(6.5, 7), height_ratios=[3, 1.3], sharex=True)
    filled = [(m, b) for m, b in zip(mids, bins) if b["count"]]
    ax.bar([m for m, _ in filled], [b["accuracy"] for _, b in filled], width=width * 0.9,
           color="tab:blue", edgecolor="black", label="accuracy in bin")
    ax.scatter([m for m, _ in filled], [b["confidence"] for _, b in filled], color="tab:red",
               zorder=3, label="mean confidence in bin")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share of strings read right")
    fig.suptitle(f"Reliability (ECE {figures['calibration']['ece']:.4f}, {len(bins)} bins)")
    # above the plot: inside it the legend hides the bars of one calibration or the other
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8.5, frameon=False)
    ax.grid(alpha=0.3)
    axn.bar(mids, [b["count"] for b in bins], width=width * 0.9, color="grey", edgecolor="black")
    axn.set_yscale("symlog", linthresh=1)
    axn.set_ylabel("strings (log)")
    axn.set_xlabel("confidence")
    axn.set_xlim(0, 1)
    axn.set_xticks([b["low"] for b in bins] + [1.0])
    axn.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_coverage(records: Sequence[Record], figures: dict, out_png: Path) -> Path:
    """Share answered and accuracy among answered against the threshold, and against each other.

    The threshold axis is logit-scaled: confidences crowd near 1, where the choice is made."""
    plt = _pyplot()
    curve = coverage_curve(records)
    target = figures["coverage"]["target"]
    best = figures["coverage"]["recommended"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    eps = 1e-6
    xs = [min(max(p["threshold"], eps), 1 - eps) for p in curve]
    # a threshold just above one confidence answers the same as the next one up: step "pre"
    ax.step(xs, [p["coverage"] for p in curve], where="pre", label="share answered")
    ax.step(xs, [p["accuracy"] for p in curve], where="pre", label="accuracy among answered")
    ax.axhline(target, color="grey", ls=":", lw=1, label=f"{target:.0%} accuracy")
    ax.set_xscale("logit")
    ax.set_xlabel("threshold t (answer when confidence ≥ t), logit scale")
    ax.set_ylim(0, 1.02)
    ax.set_title("Answering only confident readings")
    ax2.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], color="tab:orange")
    ax2.axhline(target, color="grey", ls=":", lw=1)
    ax2.set_xlabel("share answered (coverage)")
    ax2.set_ylabel("accuracy among answered")
    ax2.set_xlim(0, 1.02)
    low = min(p["accuracy"] for p in curve)
    ax2.set_ylim(max(0.0, min(low, target) - 0.02), 1.005)
    ax2.set_title("Accuracy against coverage")
    if best:
        ax.axvline(min(max(best["threshold"], eps), 1 - eps), color="red", ls="--", lw=1,
                   label=f"t = {best['threshold']:.6g}")
        ax2.scatter([best["coverage"]], [best["accuracy"]], color="red", zorder=3,
                    label=f"t = {best['threshold']:.6g}: {best['coverage']:.1%} answered")
        stable = figures["coverage"]["stable"]
        if stable and stable["threshold"] != best["threshold"]:
            ax2.scatter([stable["coverage"]], [stable["accuracy"]], facecolors="none", edgecolors="red",
                        zorder=3, label=f"t = {stable['threshold']:.6g}: {stable['coverage']:.1%} answered, "
                                        "every higher t stays above")
        ax2.legend(loc="lower left", fontsize=9)
    ax.legend(loc="lower left", fontsize=9)
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_confusions(figures: dict, out_png: Path, charset: str = "") -> Path | None:
    """Heat map of the most frequent substitutions (true rows, read columns); None if none."""
    pairs = [c for c in figures["confusions"] if c["truth"] is not None and c["prediction"] is not None]
    if not pairs:
        return None
    plt = _pyplot()
    order = {c: i for i, c in enumerate(charset)}
    key = lambda c: (order.get(c, len(order)), c)  # noqa: E731
    rows = sorted({c["truth"] for c in pairs}, key=key)
    cols = sorted({c["prediction"] for c in pairs}, key=key)
    grid = [[0] * len(cols) for _ in rows]
    for c in pairs:
        grid[rows.index(c["truth"])][cols.index(c["prediction"])] = c["count"]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(cols) + 3), max(4, 0.4 * len(rows) + 2.5)))
    image = ax.imshow(grid, cmap="Reds", vmin=0)
    peak = max(max(r) for r in grid)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=9,
                        color="white" if v > peak * 0.6 else "black")
    ax.set_xticks(range(len(cols)), [_named(c) for c in cols], family="monospace", fontsize=10,
                  rotation=90)
    ax.set_yticks(range(len(rows)), [_named(c) for c in rows], family="monospace", fontsize=10)
    ax.set_xlabel("read as")
    ax.set_ylabel("true character")
    ax.set_title(f"Most frequent confusions (top {len(pairs)})")
    fig.colorbar(image, ax=ax, shrink=0.8, label="count")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_hardest(records: Sequence[Record], paths: Sequence[Path], indices: list[int], out_png: Path,
                 columns: int = 4) -> Path | None:
    """Grid of images with truth, reading and confidence; wrong readings titled in red."""
    if not indices:
        return None
    from PIL import Image

    plt = _pyplot()
    n_rows = -(-len(indices) // columns)
    with Image.open(paths[indices[0]]) as im:
        aspect = im.height / im.width
    height = (1.2 + 3.3 * aspect) * n_rows + 0.5  # four title lines above each image
    fig, axes = plt.subplots(n_rows, columns, figsize=(3.6 * columns, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        truth, read, confidence = records[i]
        with Image.open(paths[i]) as im:
            ax.imshow(im.convert("RGB"))
        diffs = differences(truth, read)
        # carets under the differing positions, then what they are: fonts draw O and 0 alike
        marks = "".join("^" if a != b else " " for a, b in aligned_pairs(truth, read)).rstrip()
        said = ", ".join(f"{_named(a)}→{_named(b)}" for _, a, b in diffs[:2]) + (" …" if len(diffs) > 2 else "")
        lines = [f"true {truth}", f"read {read or '∅'}  conf {confidence:.3f}"]
        lines += [f"     {marks}", said] if diffs else ["", "right"]
        ax.set_title("\n".join(lines), family="monospace", fontsize=9.5, loc="left",
                     color="tab:red" if diffs else "tab:green")
    fig.suptitle("Hardest examples: wrong readings (red), least confident first, "
                 "then the least confident right ones (green)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png

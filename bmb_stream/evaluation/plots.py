"""Plots of a run: per-class accuracy, bank composition and class weights over time; in stream mode
the class x experience accuracy beside the stream's prior, and prequential and test accuracy."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bmb_stream.errors import WriteFailed  # noqa: E402
from bmb_stream.storage.atomic import atomic_write, write_failure  # noqa: E402


def save_figure(fig, path: str | Path) -> None:
    """The figure as a PNG at `path`, written whole or not at all (WriteFailed, as for a full disk); closes it."""
    path = Path(path)
    image = io.BytesIO()
    try:
        fig.savefig(image, format="png", dpi=110)
    finally:
        plt.close(fig)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteFailed(path, write_failure(path, e)) from None
    with atomic_write(path) as f:
        f.write(image.getvalue())


def _lines(ax, x, series: np.ndarray, names: list[str]) -> None:
    cmap = plt.get_cmap("viridis")
    for c in range(series.shape[1]):
        ax.plot(x, series[:, c], color=cmap(c / max(1, series.shape[1] - 1)), lw=1,
                label=names[c] if series.shape[1] <= 20 else None)
    if series.shape[1] <= 20:
        ax.legend(fontsize=6, ncol=2)


def continual_plots(history: list[dict], out: Path, priors: list) -> list[Path]:
    """The class x evaluation accuracy heatmap beside the class x experience prior (each experience's
    share of its images per class), and the prequential accuracy of the experiences before each
    evaluation beside the test set's balanced accuracy after them, over the stream's samples."""
    accuracy = np.asarray([r["per_class_acc"] for r in history], dtype=float).T
    prior = np.asarray(priors, dtype=float)
    prior = (prior / np.clip(prior.sum(axis=1, keepdims=True), 1, None)).T
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [len(history), len(priors)]})
    image = ax1.imshow(accuracy, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ax1.set(xlabel="evaluation after experience", ylabel="class", title="test accuracy per class",
            xticks=range(len(history)), xticklabels=[r["experience"] for r in history])
    fig.colorbar(image, ax=ax1)
    image = ax2.imshow(prior, aspect="auto", cmap="magma", interpolation="nearest")
    ax2.set(xlabel="experience", ylabel="class", title="the stream's prior")
    fig.colorbar(image, ax=ax2)
    fig.tight_layout()
    written = [out / "accuracy_matrix.png"]
    save_figure(fig, written[-1])
    prequential = [(r["samples_seen"], r["prequential_accuracy"]) for r in history
                   if r.get("prequential_accuracy") is not None]
    if prequential:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["samples_seen"] for r in history], [r["balanced_acc"] for r in history], "o-",
                label="test, balanced (after the experience)")
        ax.plot(*zip(*prequential), "s-", label="prequential (its images, before training on them)")
        ax.set(xlabel="samples seen", ylabel="accuracy", ylim=(0, 1), title="accuracy over the stream")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "prequential.png")
        save_figure(fig, written[-1])
    return written


def write_plots(history: list[dict], out_dir: str | Path, class_names: list[str], x_key: str = "step",
                priors: list | None = None) -> list[Path]:
    """Write the run's plots (PNG) and return their paths; classes are ordered head to tail. `priors`
    (stream mode): each experience's class histogram."""
    out = Path(out_dir)
    if not history:
        return []
    x = [r[x_key] for r in history]
    written = []
    per_class = np.asarray([r["per_class_acc"] for r in history], dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    _lines(ax1, x, per_class, class_names)
    ax1.plot(x, [r["balanced_acc"] for r in history], color="red", lw=2, label="balanced")
    ax1.set(xlabel=x_key, ylabel="accuracy", title="per-class accuracy (red: balanced)", ylim=(0, 1))
    ax2.bar(range(per_class.shape[1]), per_class[-1])
    ax2.set(xlabel="class (head to tail)", ylabel="accuracy", title="final per-class accuracy", ylim=(0, 1))
    fig.tight_layout()
    written.append(out / "per_class_acc.png")
    save_figure(fig, written[-1])
    for key, title in (("bank_class_counts", "memory bank composition"), ("class_weights", "unlabeled class weights")):
        if history[-1].get(key) is None:
            continue
        series = np.asarray([r[key] for r in history], dtype=float)
        fig, ax = plt.subplots(figsize=(6, 4))
        _lines(ax, x, series, class_names)
        ax.set(xlabel=x_key, title=title)
        fig.tight_layout()
        written.append(out / f"{key}.png")
        save_figure(fig, written[-1])
    if priors is not None and "experience" in history[-1]:
        written += continual_plots(history, out, priors)
    return written


def mean_band(histories: list[list[dict]], key: str) -> tuple[str, list, np.ndarray, np.ndarray]:
    """`key` over training across runs (seeds): (x key, the x values at which every run evaluated, the mean
    over the runs, their sample standard deviation: 0 for one run). x is the samples seen in stream mode,
    the step offline."""
    x_key = "samples_seen" if histories and all("experience" in r for h in histories for r in h) else "step"
    common = sorted(set.intersection(*({r[x_key] for r in h} for h in histories))) if histories else []
    values = np.asarray([[next(r.get(key) for r in h if r[x_key] == x) for x in common] for h in histories],
                        dtype=float).reshape(len(histories), len(common))
    std = np.nanstd(values, axis=0, ddof=1) if len(histories) > 1 else np.zeros(len(common))
    return x_key, common, np.nanmean(values, axis=0) if histories else values, std


def group_curves(groups: dict[str, list[list[dict]]], path: str | Path) -> Path:
    """Balanced accuracy over training per group of runs: the mean over its runs and a band of one standard
    deviation (`mean_band`), for the evaluated (EMA) model and the raw weights. `groups`: name -> each
    run's history (eval.jsonl)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, histories in groups.items():
        for ax, key in zip(axes, ("balanced_acc", "raw_balanced_acc")):
            x_key, x, mean, std = mean_band(histories, key)
            if not x:
                continue
            line, = ax.plot(x, mean, lw=1.5, label=f"{name} (n={len(histories)})")
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
            ax.set(xlabel=x_key.replace("_", " "))
    axes[0].set(ylabel="balanced accuracy", title="evaluated model (EMA), mean and 1 std over runs", ylim=(0, 1))
    axes[1].set(title="raw weights")
    if any(ax.get_legend_handles_labels()[0] for ax in axes):
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)

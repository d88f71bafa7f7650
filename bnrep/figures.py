"""Figures: the paper's Figures 1-6 and two extras, from the result tables (the only matplotlib user).

One colour per normalisation in every figure (`bnrep.results.COLORS`: BatchNorm
blue and no BatchNorm orange as in the paper, GroupNorm green, LayerNorm
purple). Each function takes one `Results` or a list (a panel or row per
experiment, side by side) and returns a Figure, or None when its table is
missing. No pyplot: no global state, renders headless (Agg).

    >>> fig = fig_layer_sparsity(results); png = figure_bytes(fig, "png")
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bnrep.results import (COLORS, NORMS, Results, at_eps, n_seeds, norm_labels, optimal_k, ordered,
                            present_norms, seed_stats, seeds_text, shown)

DPI = 150


def _grid(nrows: int, ncols: int, w: float = 4.2, h: float = 3.2) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _as_list(results) -> list[Results]:
    return [results] if isinstance(results, Results) else list(results)


def _labels(rs: list[Results]) -> dict[str, str]:
    """Legend labels over every experiment of the figure (the same wording in every panel)."""
    return norm_labels({n for r in rs for n in r.norms})


def _panel_title(res: Results, i: int, n: int) -> str:
    return f"({'abcdefghijklmnop'[i]}) {res.label}" if n > 1 else res.label


def _layer_ticks(ax, s: pd.DataFrame) -> None:
    ticks = s.drop_duplicates("layer_index").sort_values("layer_index")
    ax.set_xticks(ticks["layer_index"].tolist(), ticks["layer"].tolist(),
                  rotation=45 if len(ticks) > 6 else 0)


def plot_per_layer(ax, df: pd.DataFrame, value: str, ylabel: str, labels: dict[str, str],
                   hline: float | None = None) -> None:
    """Seed mean per layer with std error bars, one colour per normalisation."""
    s = seed_stats(df, ["norm", "layer_index", "layer"], value)
    for norm in ordered(s["norm"]):
        d = s[s["norm"] == norm]
        ax.errorbar(d["layer_index"], d["mean"], yerr=d["std"].fillna(0), color=COLORS[norm],
                    marker="o", capsize=3, label=labels[norm])
    if hline is not None:
        ax.axhline(hline, color="grey", ls="--", lw=1, label=f"{hline:g} classes")
    _layer_ticks(ax, s)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def fig_per_layer(results, get, value: str, ylabel: str, title: str, hline=None) -> Figure | None:
    """One panel per experiment, side by side (the paper's (a)/(b) layout); seeds in panel titles."""
    rs = [(r, get(r)) for r in _as_list(results)]
    rs = [(r, d) for r, d in rs if len(d)]
    if not rs:
        return None
    labels = _labels([r for r, _ in rs])
    fig, axes = _grid(1, len(rs), h=3.5)
    for i, (r, d) in enumerate(rs):
        plot_per_layer(axes[0, i], d, value, ylabel, labels, hline)
        axes[0, i].set_title(f"{_panel_title(r, i, len(rs))}, {seeds_text(d)}", fontsize=10)
    entries = {}  # every panel's legend entries once, normalisations first in display order
    for ax in axes[0]:
        entries.update(zip(*reversed(ax.get_legend_handles_labels())))
    norm_rank = {labels[n]: i for i, n in enumerate(NORMS)}
    names = sorted(entries, key=lambda l: norm_rank.get(l, len(NORMS)))
    fig.legend([entries[l] for l in names], names, loc="outside lower center", ncols=len(names), fontsize=9)
    fig.suptitle(title)
    return fig


def fig_layer_sparsity(results) -> Figure | None:
    """Paper Figure 3: layer sparsity for every layer."""
    return fig_per_layer(results, lambda r: at_eps(r.table("layer_sparsity")), "sparsity",
                         "layer sparsity (fraction of zeros)", "Layer sparsity per layer")


def fig_class_dbi(results) -> Figure | None:
    """Paper Figure 4: class-based DBI from the first shown layer."""
    return fig_per_layer(results, lambda r: shown(r.table("class_dbi"), r.experiment.first_shown_layer),
                         "dbi", "class-based DBI (lower = purer)", "Class-based DBI per layer")


def _shown_optimal_k(r: Results) -> pd.DataFrame:
    return shown(optimal_k(r.table("kmeans")), r.experiment.first_shown_layer)


def fig_optimal_k(results) -> Figure | None:
    """Paper Figure 5: optimal number of k-means clusters (lowest DBI) per layer."""
    rs = _as_list(results)
    fig = fig_per_layer(rs, _shown_optimal_k, "k_opt", "optimal k (lowest k-means DBI)",
                        "Optimal number of k-means clusters per layer", hline=rs[0].n_classes if rs else None)
    for ax in fig.axes if fig else []:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def fig_kmeans_dbi(results) -> Figure | None:
    """Paper Figure 6: k-means DBI at the optimal k per layer."""
    return fig_per_layer(results, _shown_optimal_k, "dbi", "k-means DBI at optimal k (lower = purer)",
                         "Class-agnostic (k-means) DBI at the optimal k per layer")


def plot_band(ax, df: pd.DataFrame, x: str, value: str, norm: str, label: str | None = None,
              ls: str = "-", scale: float = 1.0) -> None:
    """Seed mean of `value` against `x` as a line, std as shading."""
    s = seed_stats(df[df["norm"] == norm], [x], value)
    if s.empty:
        return
    m, sd = s["mean"] * scale, s["std"].fillna(0) * scale
    ax.plot(s[x], m, color=COLORS[norm], ls=ls, lw=1.2, label=label)
    ax.fill_between(s[x], m - sd, m + sd, color=COLORS[norm], alpha=0.25, lw=0)


def _channel_layers(r: Results) -> list[int]:
    cs = r.table("channel_sparsity")
    have = set(cs["layer_index"]) if len(cs) else set()
    return [i for i in r.experiment.channel_layers if i in have] or sorted(have)[:4]


def fig_channel_sparsity(results) -> Figure | None:
    """Paper Figures 1-2: sparsity per channel, one panel per selected layer, a row per experiment."""
    rs = [r for r in _as_list(results) if len(r.table("channel_sparsity"))]
    if not rs:
        return None
    labels = _labels(rs)
    fig, axes = _grid(len(rs), max(len(_channel_layers(r)) for r in rs), w=3.6, h=2.9)
    for row, r in enumerate(rs):
        cs, layers = at_eps(r.table("channel_sparsity")), _channel_layers(r)
        for col, li in enumerate(layers):
            ax, d = axes[row, col], cs[cs["layer_index"] == li]
            for norm in present_norms(d):
                plot_band(ax, d, "channel", "sparsity", norm, f"{labels[norm]} ({n_seeds(d).get(norm, 0)} seeds)")
            ax.set(title=f"{r.label}: {d['layer'].iloc[0]} (layer {li})", xlabel="channel",
                   ylabel="channel sparsity", ylim=(-0.02, 1.02))
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
        axes[row, 0].legend(fontsize=7)
        for ax in axes[row, len(layers):]:
            ax.set_axis_off()
    fig.suptitle(f"Channel sparsity (mean over seeds, shading: std), {seeds_text(rs[0].table('channel_sparsity'))}")
    return fig


SWEEP_COLS = 4  # k-sweep panels per row


def fig_kmeans_sweep(results) -> Figure | None:
    """Beyond the paper: k-means DBI against k for every shown layer, rows of 4 per experiment."""
    rs = [(r, shown(r.table("kmeans"), r.experiment.first_shown_layer)) for r in _as_list(results)]
    rs = [(r, d) for r, d in rs if len(d)]
    if not rs:
        return None
    labels = _labels([r for r, _ in rs])
    nl = [d["layer_index"].nunique() for _, d in rs]
    fig, axes = _grid(sum(math.ceil(n / SWEEP_COLS) for n in nl), min(SWEEP_COLS, max(nl)), w=3.2, h=2.5)
    used, row0 = [], 0
    for (r, d), n in zip(rs, nl):
        layers = d.drop_duplicates("layer_index").sort_values("layer_index")
        for i, (li, name) in enumerate(zip(layers["layer_index"], layers["layer"])):
            ax, dl = axes[row0 + i // SWEEP_COLS, i % SWEEP_COLS], d[d["layer_index"] == li]
            for norm in present_norms(dl):
                plot_band(ax, dl, "k", "dbi", norm, labels[norm])
            ax.set(title=f"{r.label}: {name}", xlabel="k", ylabel="k-means DBI")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
            used.append(ax)
        row0 += math.ceil(n / SWEEP_COLS)
    for ax in axes.flat:
        if ax not in used:
            ax.set_axis_off()
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"k-means DBI against k (mean over seeds, shading: std), {seeds_text(rs[0][1])}")
    return fig


def fig_learning_curves(results) -> Figure | None:
    """Beyond the paper: training loss and train/validation accuracy per epoch, a row per experiment."""
    rs = [r for r in _as_list(results) if len(r.table("training_history"))]
    if not rs:
        return None
    labels = _labels(rs)
    fig, axes = _grid(len(rs), 2, w=5.0, h=3.2)
    for row, r in enumerate(rs):
        h = r.table("training_history")
        loss, acc = axes[row]
        for norm in present_norms(h):
            plot_band(loss, h, "epoch", "train_loss", norm, f"{labels[norm]} ({n_seeds(h).get(norm, 0)} seeds)")
            plot_band(acc, h, "epoch", "train_acc", norm, f"{labels[norm]} train", scale=100)
            plot_band(acc, h, "epoch", "val_acc", norm, f"{labels[norm]} validation", ls="--", scale=100)
        loss.set(title=f"{r.label}: training loss", xlabel="epoch", ylabel="cross-entropy", yscale="log")
        acc.set(title=f"{r.label}: accuracy", xlabel="epoch", ylabel="accuracy (%)")
        for ax in (loss, acc):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Learning curves (mean over the seeds still training at each epoch, shading: std)")
    return fig


@dataclass(frozen=True)
class FigureSpec:
    name: str
    make: object  # results -> Figure | None
    tables: tuple[str, ...]
    caption: str  # {colours}, {seeds}, {layers} and {nan} filled in per report


FIGURES = [
    FigureSpec("fig_channel_sparsity", fig_channel_sparsity, ("channel_sparsity",),
               "Paper Figures 1-2: average channel sparsity (fraction of exactly-zero post-ReLU values per "
               "channel) for {colours} models in the selected layers, "
               "channels in index order. Shading: standard deviation across {seeds}."),
    FigureSpec("fig_layer_sparsity", fig_layer_sparsity, ("layer_sparsity",),
               "Paper Figure 3: average layer sparsity for {colours} models. "
               "Error bars: standard deviation across {seeds}."),
    FigureSpec("fig_class_dbi", fig_class_dbi, ("class_dbi",),
               "Paper Figure 4: average class-based DBI per layer ({layers}) for {colours} "
               "models; lower is purer. Error bars: standard deviation across {seeds}.{nan}"),
    FigureSpec("fig_optimal_k", fig_optimal_k, ("kmeans",),
               "Paper Figure 5: average optimal number of k-means clusters (the k with the lowest DBI) per "
               "layer ({layers}); dashed line: number of classes. Error bars: standard deviation across {seeds}."),
    FigureSpec("fig_kmeans_dbi", fig_kmeans_dbi, ("kmeans",),
               "Paper Figure 6: average class-agnostic (k-means) DBI at the optimal k per layer ({layers}); "
               "lower is purer. Error bars: standard deviation across {seeds}.{nan}"),
    FigureSpec("fig_kmeans_sweep", fig_kmeans_sweep, ("kmeans",),
               "Beyond the paper: k-means DBI against k for each layer ({layers}), {colours}. "
               "Shading: standard deviation across {seeds}."),
    FigureSpec("fig_learning_curves", fig_learning_curves, ("training_history",),
               "Beyond the paper: training loss (left) and training (solid) / validation (dashed) accuracy "
               "(right) per epoch, mean over the seeds still training at that epoch ({seeds} in all); "
               "shading: standard deviation."),
]

_COLOUR_NAMES = {"tab:blue": "blue", "tab:orange": "orange", "tab:green": "green", "tab:purple": "purple"}


def colours_text(norms) -> str:
    """'BatchNorm (blue) and no-BatchNorm (orange)' style legend for captions."""
    labels = norm_labels(norms)
    parts = [f"{labels[n]} ({_COLOUR_NAMES[COLORS[n]]})" for n in ordered(norms)]
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts)


def caption(spec: FigureSpec, rs: list[Results]) -> str:
    df = pd.concat([r.table(spec.tables[0]) for r in rs], ignore_index=True)
    layers = "; ".join(f"{r.label}: from layer {r.experiment.first_shown_layer}" for r in rs)
    nan = ""
    if "dbi" in df and df["dbi"].isna().any():
        nan = (f" {int(df['dbi'].isna().sum())} of {len(df)} DBI values are NaN (dead layers) "
               f"and left out of the means.")
    norms = {n for r in rs for n in r.norms}
    return spec.caption.format(seeds=seeds_text(df), layers=layers, nan=nan, colours=colours_text(norms))


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    meta = {"Date": None} if fmt == "svg" else {}  # reproducible SVG
    fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", metadata=meta)
    return buf.getvalue()

"""Figures: the paper's Figures 1-6 and the measures beyond it, from the result tables (with
bnrep.plotting, their building blocks, the only matplotlib users).

One colour per condition in every figure (`bnrep.results.COLORS`: BatchNorm
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

from bnrep.epoch_figures import fig_cka_epochs, fig_initialisation, measured_at_epochs, through_training
from bnrep.experiments import layer_indices
from bnrep.findings import snapshot_measures
from bnrep.measures import MEASURES, all_nan
from bnrep.plotting import (CKA_BOUNDS, _as_list, _end_row, _grid, _height, _labels, _layer_groups_of, _layer_ticks,
                            _log_if_positive, _panel, _panel_title, _width, cka_line, cka_lines, condition_lines,
                            fig_per_layer, fraction_range, group_lines, panels_legend, styles_legend)
from bnrep.results import (COLORS, SHORT, Results, at_eps, cka_pairs, eps_values, label_and_tag, n_seeds, norm_pairs,
                           optimal_k, present_norms, seed_stats, seeds_text, shown)

DPI = 150


def fig_layer_sparsity(results) -> Figure | None:
    """Paper Figure 3: layer sparsity for every layer."""
    return fig_per_layer(results, lambda r: at_eps(r.table("layer_sparsity")), "sparsity",
                         "layer sparsity (fraction of zeros)", "Layer sparsity per layer", clip=lambda r: (0.0, 1.0))


def fig_class_dbi(results) -> Figure | None:
    """Paper Figure 4: class-based DBI from the first shown layer."""
    return fig_per_layer(results, lambda r: shown(r.table("class_dbi"), r.experiment.first_shown_layer),
                         "dbi", "class-based DBI (lower = purer)", "Class-based DBI per layer")


def _shown_optimal_k(r: Results) -> pd.DataFrame:
    return shown(optimal_k(r.table("kmeans")), r.experiment.first_shown_layer)


def k_searched(r: Results) -> tuple[int, int]:
    """The smallest and largest k of the study's k-means sweep (its table; else as its experiment asks)."""
    km = r.table("kmeans")
    k = km["k"] if "k" in km else pd.Series(dtype=float)
    return (int(k.min()), int(k.max())) if k.notna().any() else (r.experiment.k_min, r.experiment.k_max)


DODGE = 0.4  # layers between the first and the last condition at a layer of the optimal-k figure


def fig_optimal_k(results) -> Figure | None:
    """Paper Figure 5: optimal number of k-means clusters (lowest DBI) per layer. Each panel's y axis is
    the k its sweep searched (an error bar past it is cut there: no seed's k lies beyond), the number of
    classes a dashed line where it lies within; the conditions side by side at each layer (their k are often
    equal: one line hid the others)."""
    def within(r):
        lo, hi = k_searched(r)
        return r.n_classes if lo <= r.n_classes <= hi else None

    rs = [r for r in _as_list(results) if len(_shown_optimal_k(r))]  # fig_per_layer's panels
    fig = fig_per_layer(rs, _shown_optimal_k, "k_opt", "optimal k (lowest k-means DBI)",
                        "Optimal number of k-means clusters per layer", hline=within, dodge=DODGE, clip=k_searched)
    for ax, r in zip(fig.axes if fig else [], rs):
        lo, hi = k_searched(r)
        ax.set_ylim(lo - 0.5, hi + 0.5)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def fig_kmeans_dbi(results) -> Figure | None:
    """Paper Figure 6: k-means DBI at the optimal k per layer."""
    return fig_per_layer(results, _shown_optimal_k, "dbi", "k-means DBI at optimal k\n(lower = purer)",
                         "Class-agnostic (k-means) DBI at the optimal k per layer")


def measure_figure(m):
    """The per-layer figure of a measure of bnrep.measures: its headline value, a line per condition."""
    def make(results) -> Figure | None:
        if all_nan(m, _as_list(results)):  # (the report's note says why instead: bnrep.report.skipped_note)
            return None
        fig = fig_per_layer(results, lambda r: r.table(m.table), m.values[0], m.ylabel, m.title,
                            clip=(lambda r: m.bounds) if m.bounds else None, dodge=DODGE if m.bounds else 0.0)
        return _log_if_positive(fig) if m.log else fig
    make.__name__ = f"fig_{m.table}"
    return make


SIDES = (("input", "-", "o"), ("output", "--", "x"))  # signal propagation: an activation's input, its output
OUTPUT = ", output"  # (the output lines' legend suffix: they share the condition's entry)


def fig_signal_propagation(results) -> Figure | None:
    """Brock, De & Smith 2021: the average channel variance and squared channel mean of each activation's
    input (solid) and output (dashed) against depth, a line per condition; panels per experiment."""
    rs = [(r, r.table("signal_propagation")) for r in _as_list(results)]
    rs = [(r, d) for r, d in rs if len(d)]
    if not rs:
        return None
    labels = _labels([r for r, _ in rs])
    fig, axes = _grid(2, len(rs), w=_width([d for _, d in rs]), h=_height([d for _, d in rs], 3.2))
    for i, (r, d) in enumerate(rs):
        for row, (what, name) in enumerate((("var", "average channel variance"),
                                            ("mean_sq", "average squared channel mean"))):
            ax = axes[row, i]
            for side, ls, marker in SIDES:
                s = condition_lines(ax, d, f"{side}_{what}", labels, "" if side == "input" else OUTPUT, ls=ls,
                                    marker=marker, capsize=2)
            _layer_ticks(ax, s)
            _panel(ax, title=f"{_panel_title(r, i, len(rs))}: {name}", xlabel="layer", ylabel=name)
    # below the panels (in a panel, ten entries hid the curves)
    styles_legend(fig, axes[0], [("pre-activation", "-", "o"), ("output", "--", "x")], skip=OUTPUT)
    _log_if_positive(fig)
    fig.suptitle("Signal propagation: activation statistics against depth")
    return fig


# ==== CKA: does a normalisation change what a layer represents, beyond seed noise? ====



CKA_COLS = 3  # panels (pairs of norms) per row


def fig_cka(results) -> Figure | None:
    """Beyond the paper: per layer, CKA(norm A vs norm B, same seed) next to CKA(seed vs seed) of each norm;
    a panel per pair of norms, a row per experiment."""
    rs = [(r, cka_pairs(r.table("cka"))) for r in _as_list(results)]
    rs = [(r, p, norm_pairs(p)) for r, p in rs if len(p) and norm_pairs(p)]
    if not rs:
        return None
    w = _width([p for _, p, _ in rs], least=4.4)  # wider for deep models, one column when that is wide
    cols = min(CKA_COLS if w <= 2 * 4.4 else 1, max(len(pairs) for _, _, pairs in rs))
    fig, axes = _grid(sum(math.ceil(len(pairs) / cols) for _, _, pairs in rs), cols, w=w,
                      h=_height([p for _, p, _ in rs], 3.4))
    used, row0 = [], 0
    for r, p, pairs in rs:
        for i, (a, b) in enumerate(pairs):
            ax = axes[row0 + i // cols, i % cols]
            used.append(ax)
            (cross, style), *seeds = cka_lines(p, a, b)
            cka_line(ax, cross, "layer_index", style, keys=("layer",))
            debiased = "cka_debiased" in cross and cross["cka_debiased"].notna().any()
            if debiased:  # parts written before it have no such column
                cka_line(ax, cross, "layer_index", dict(label="the same, debiased", color="gray", ls=":", marker="x"),
                         "cka_debiased", keys=("layer",))
            for d, style in seeds:
                cka_line(ax, d, "layer_index", style, keys=("layer",))
            _layer_ticks(ax, cross)
            ax.set(title=f"{r.label}: {SHORT[a]} vs {SHORT[b]}", xlabel="layer", ylabel="linear CKA",
                   ylim=(-0.1 if debiased else 0, 1.05))
            ax.title.set_fontsize(10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")  # low CKA (often conv1 across conditions) sits lower left
        row0 += math.ceil(len(pairs) / cols)
    for ax in axes.flat:
        if ax not in used:
            ax.set_axis_off()
    fig.suptitle("Linear CKA per layer: two conditions (same seed) against two seeds (same condition)")
    return fig


# ==== sparsity against the threshold eps ====

def fig_sparsity_thresholds(results) -> Figure | None:
    """Beyond the paper: layer sparsity against the threshold eps, a panel per layer group, a row per experiment.
    None unless some experiment measured at least two thresholds."""
    rs = [(r, r.table("layer_sparsity")) for r in _as_list(results)]
    rs = [(r, d) for r, d in rs if len(eps_values(d)) > 1]
    if not rs:
        return None
    labels = _labels([r for r, _ in rs])
    groups = [_layer_groups_of(d) for _, d in rs]
    fig, axes = _grid(len(rs), max(map(len, groups)), w=3.8, h=3.0)
    for row, ((r, d), gs) in enumerate(zip(rs, groups)):
        eps = eps_values(d)
        for col, (name, idx) in enumerate(gs):
            ax = axes[row, col]
            group_lines(ax, d, idx, "eps", "sparsity", labels, clip=(0, 1))
            ax.set_xscale("symlog", linthresh=min(e for e in eps if e > 0))  # eps = 0 stays on the axis
            ax.set_xticks(eps, [f"{e:g}" for e in eps])
            _panel(ax, title=f"{r.label}: {name}", xlabel="threshold eps (|x| <= eps counts as zero)",
                   ylabel="layer sparsity")
        fraction_range(axes[row, :len(gs)])
        _end_row(axes, row, len(gs))
    panels_legend(fig, axes)
    fig.suptitle(f"Layer sparsity against the zero threshold, {seeds_text(rs[0][1])}")
    return fig


def plot_band(ax, df: pd.DataFrame, x: str, value: str, norm: str, label: str | None = None,
              ls: str = "-", scale: float = 1.0, clip: tuple[float, float] = (-np.inf, np.inf)) -> None:
    """Seed mean of `value` against `x` as a line, std as shading, cut at `clip` (the values there can be)."""
    s = seed_stats(df[df["condition"] == norm], [x], value)
    if s.empty:
        return
    m, sd = s["mean"] * scale, s["std"].fillna(0) * scale
    ax.plot(s[x], m, color=COLORS[norm], ls=ls, lw=1.2, label=label)
    fin = m.notna().to_numpy()
    alone = fin & ~np.r_[False, fin[:-1]] & ~np.r_[fin[1:], False]  # no line reaches it (one epoch, or NaN around)
    if alone.any():
        ax.plot(s[x][alone], m[alone], color=COLORS[norm], ls="none", marker="o" if ls == "-" else "x", ms=4)
    ax.fill_between(s[x], np.maximum(m - sd, clip[0] * scale), np.minimum(m + sd, clip[1] * scale), color=COLORS[norm],
                    alpha=0.25, lw=0)


def _channel_layers(r: Results) -> list[int]:
    """The experiment's channel layers (indices or fractions of depth) among those measured: each
    the first measured layer at or after it."""
    cs = r.table("channel_sparsity")
    have = sorted(set(cs["layer_index"])) if len(cs) else []
    if not have:
        return []
    want = layer_indices(r.experiment.channel_layers, have[-1])
    return list(dict.fromkeys(next((h for h in have if h >= w), have[-1]) for w in want))


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
                plot_band(ax, d, "channel", "sparsity", norm,
                          label_and_tag(labels[norm], f"{n_seeds(d).get(norm, 0)} seeds"), clip=(0.0, 1.0))
            _panel(ax, title=f"{r.label}: {d['layer'].iloc[0]} (layer {li})", xlabel="channel",
                   ylabel="channel sparsity", ylim=(-0.02, 1.02))
            ax.set_xlim(d["channel"].min(), d["channel"].max())  # (a margin ticked channel 64 of conv3's 0-63)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 4, 8, 10]))  # whole, widths of 2^n
        _end_row(axes, row, len(layers))
    panels_legend(fig, axes)
    fig.suptitle(f"Channel sparsity (mean over seeds, shading: std), {seeds_text(rs[0].table('channel_sparsity'))}")
    return fig


SWEEP_COLS = 4  # k-sweep panels per row
MAX_SWEEP_PANELS = 16  # per experiment; deeper models show this many layers, evenly over the depth


def _spread(layer_indices: list[int], k: int) -> list[int]:
    """At most k of the (sorted) layer indices, evenly over the list, first and last kept."""
    n = len(layer_indices)
    return layer_indices if n <= k else [layer_indices[round(i * (n - 1) / (k - 1))] for i in range(k)]


def fig_kmeans_sweep(results) -> Figure | None:
    """Beyond the paper: k-means DBI against k for every shown layer, rows of 4 per experiment."""
    rs = [(r, shown(r.table("kmeans"), r.experiment.first_shown_layer)) for r in _as_list(results)]
    rs = [(r, d) for r, d in rs if len(d)]
    if not rs:
        return None
    all_layers = max(d["layer_index"].nunique() for _, d in rs)
    rs = [(r, d[d["layer_index"].isin(_spread(sorted(set(d["layer_index"])), MAX_SWEEP_PANELS))]) for r, d in rs]
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
            _panel(ax, title=f"{r.label}: {name}", xlabel="k", ylabel="k-means DBI")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            used.append(ax)
        row0 += math.ceil(n / SWEEP_COLS)
    for ax in axes.flat:
        if ax not in used:
            ax.set_axis_off()
    panels_legend(fig, axes)
    some = f"; {max(nl)} of {all_layers} layers, evenly over the depth" if max(nl) < all_layers else ""
    fig.suptitle(f"k-means DBI against k (mean over seeds, shading: std), {seeds_text(rs[0][1])}{some}")
    return fig


def fig_learning_curves(results) -> Figure | None:
    """Beyond the paper: training loss and train/validation accuracy per epoch, a row per experiment."""
    rs = [r for r in _as_list(results) if len(r.table("training_history"))]
    if not rs:
        return None
    labels, running = _labels(rs), False
    fig, axes = _grid(len(rs), 2, w=5.0, h=3.2)
    for row, r in enumerate(rs):
        h = r.table("training_history").replace([np.inf, -np.inf], np.nan)  # a diverged epoch's loss: a gap
        loss, acc = axes[row]
        # since 0.2.0 train_acc is a full pass only where one decided something; the curve is the
        # running accuracy of each epoch's own batches (older results: the full pass of every epoch)
        train_col = "train_acc_running" if "train_acc_running" in h and h["train_acc_running"].notna().any() \
            else "train_acc"
        for norm in present_norms(h):
            plot_band(loss, h, "epoch", "train_loss", norm,
                      label_and_tag(labels[norm], f"{n_seeds(h).get(norm, 0)} seeds"))
            plot_band(acc, h, "epoch", train_col, norm, scale=100, clip=(0.0, 1.0))
            plot_band(acc, h, "epoch", "val_acc", norm, ls="--", scale=100, clip=(0.0, 1.0))
        log = bool((h["train_loss"].dropna() > 0).any())  # every loss NaN (all diverged at once): linear
        _panel(loss, title=f"{r.label}: training loss", xlabel="epoch", ylabel="cross-entropy",
               yscale="log" if log else "linear")
        _panel(acc, title=f"{r.label}: accuracy", xlabel="epoch", ylabel="accuracy (%)")
        for ax in (loss, acc):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        running |= train_col != "train_acc"
    # below the panels (a legend inside hid the curves)
    styles_legend(fig, axes[:, 0], [("train (running)" if running else "train", "-", None), ("validation", "--", None)])
    fig.suptitle("Learning curves (mean over the seeds still training at each epoch, shading: std)")
    return fig


@dataclass(frozen=True)
class FigureSpec:
    name: str
    make: object  # results -> Figure | None
    tables: tuple[str, ...]
    caption: str  # its placeholders filled per report: bnrep.captions
    title: str = ""  # how a note names the figure when it is not drawn (default: its name)
    needs: str = ""  # why it may not be drawn although its table is there
    noted: bool = True  # the report says when it is not drawn (False: another figure's note says it)
    epochs: bool = False  # it draws the snapshots' rows too, not only the final models' (its caption counts them)
    from_training: bool = False  # it needs what bnrep's own training keeps (snapshots): never for imported models


# under a figure whose conditions sit apart at each layer (a bounded measure's values often meet at its bound)
SIDE_BY_SIDE = " At each layer the conditions sit side by side, slightly apart, so that equal values stay visible."
# under a figure with a log y axis and error bars (a bar cannot reach 0 or below there)
LOG_BARS = " On the log axis, a bar whose mean - std is 0 or below runs to the panel's lower edge."

FIGURES = [
    FigureSpec("fig_channel_sparsity", fig_channel_sparsity, ("channel_sparsity",),
               "Paper Figures 1-2: average channel sparsity (fraction of exactly-zero post-ReLU values per "
               "channel) for {colours} models in the selected layers, "
               "channels in index order. Shading: standard deviation across {seeds}, cut at 0 and 1."),
    FigureSpec("fig_layer_sparsity", fig_layer_sparsity, ("layer_sparsity",),
               "Paper Figure 3: average layer sparsity for {colours} models. "
               "Error bars: standard deviation across {seeds}, cut at 0 and 1."),
    FigureSpec("fig_class_dbi", fig_class_dbi, ("class_dbi",),
               "Paper Figure 4: average class-based DBI per layer ({layers}) for {colours} "
               "models; lower is purer. Error bars: standard deviation across {seeds}.{nan}"),
    FigureSpec("fig_optimal_k", fig_optimal_k, ("kmeans",),
               "Paper Figure 5: average optimal number of k-means clusters (the k with the lowest DBI) per "
               "layer ({layers}) for {colours} models; the y axis spans the k searched, {k_searched}. Error bars: "
               "standard deviation across {seeds}, cut at the k searched. At each layer the conditions sit side by "
               "side, slightly apart, so that equal values stay visible."),
    FigureSpec("fig_kmeans_dbi", fig_kmeans_dbi, ("kmeans",),
               "Paper Figure 6: average class-agnostic (k-means) DBI at the optimal k per layer ({layers}) for "
               "{colours} models; lower is purer. Error bars: standard deviation across {seeds}.{nan}"),
    FigureSpec("fig_kmeans_sweep", fig_kmeans_sweep, ("kmeans",),
               f"Beyond the paper: k-means DBI against k per layer ({{layers}}; at most {MAX_SWEEP_PANELS} layers, "
               "evenly over the depth, the first and last kept), {colours}. "
               "Shading: standard deviation across {seeds}."),
    FigureSpec("fig_sparsity_thresholds", fig_sparsity_thresholds, ("layer_sparsity",),
               "Beyond the paper: layer sparsity (fraction of post-ReLU values with |x| <= eps) against the "
               "threshold eps, averaged over the layers of each group per model, for {colours} models; eps = 0 is "
               "the paper's exact zero. Error bars: standard deviation across {seeds}. The y axis spans the values "
               "drawn (at least 0.2 of the 0..1 a sparsity can take), one range per row.",
               "Layer sparsity against the threshold eps",
               "it needs layer sparsity at two or more thresholds: run the analysis with --eps 0,1e-3,1e-2,1e-1"),
    *[FigureSpec(f"fig_{m.table}", measure_figure(m), (m.table,),
                 m.caption + (LOG_BARS if m.log else "") + (SIDE_BY_SIDE if m.bounds else ""), f"{m.name} per layer")
      for m in MEASURES.values() if m.caption],  # bnrep.measures
    FigureSpec("fig_cka", fig_cka, ("cka",),
               "Beyond the paper: linear CKA (Kornblith et al. 2019) per layer between the reduced "
               "representations of two models on the same samples. Black squares: two conditions "
               "at the same seed; dashed, in each condition's colour: two seeds of one condition (the seed-noise "
               "baseline). Mean over the pairs, error bars: standard deviation over the pairs ({seeds}), cut at "
               f"{CKA_BOUNDS['cka'][0]:g} and {CKA_BOUNDS['cka'][1]:g}. A cross-condition CKA clearly below both "
               "seed baselines means the condition changes what "
               "the layer represents beyond seed noise; at the baseline, it does not.{shared} Gray dotted: the cross-"
               "condition CKA debiased (unbiased HSIC; Nguyen, Raghu & Kornblith 2021), which is about 0 for "
               "unrelated representations at any sample count, where linear CKA is inflated at small ones (its "
               f"bars cut at {CKA_BOUNDS['cka_debiased'][0]:g} and {CKA_BOUNDS['cka_debiased'][1]:g}).",
               "CKA per layer",
               "it needs CKA between two conditions at the same seed"),
    FigureSpec("fig_signal_propagation", fig_signal_propagation, ("signal_propagation",),
               "Beyond the paper: signal propagation (Brock, De & Smith 2021) of the analysis samples through "
               "{colours} models: per layer, the average over channels of the channel variance (top) and of the "
               "squared channel mean (bottom), over every sample and position, of each activation's input (the "
               "pre-activation, solid) and output (dashed). Error bars: standard deviation across {seeds}."
               + LOG_BARS, "Signal propagation"),
    FigureSpec("fig_initialisation", fig_initialisation, ("training",),
               "Beyond the paper: each per-layer measure of the models at initialisation (epoch 0, dashed, the "
               "weights each model's seed gives before any step; norms with running statistics normalise with "
               "batch statistics there, at the condition's batch size, as the first step did) and at the final "
               "epoch (solid), for {colours} "
               "models. Error bars: standard deviation across {seeds}. A difference between conditions already "
               "there at initialisation is the architecture's, not training's; except between conditions that "
               "are one network at initialisation (the same norm with another recipe, or BatchNorm and a norm "
               "built on it, ghost BatchNorm or Batch Renorm: the same weights at one seed), where it is the "
               "batch size the batch statistics were measured at (not in the gradient norms: every model's are "
               "measured in the same batches of analysis samples, so such conditions are equal there at epoch 0"
               "<<ghost: , except ghost BatchNorm's, which normalises each in its virtual batches as in training>>). "
               "Train- against eval-mode CKA has no epoch-0 point: the running statistics are still 0 and 1. "
               "Measures that span orders of magnitude have a log y axis: there, a bar whose mean - std "
               "is 0 or below runs to the panel's lower edge.",
               "Measures at initialisation and through training",
               "it needs the analysis run with --snapshots (0: the initialisation; e.g. 0,1,5, with the grid "
               "trained with the same --snapshots)", from_training=True),
    *[FigureSpec(f"fig_{m.table}_epochs", through_training(m), (m.table,),
                 f"Beyond the paper: {m.name or m.table} against training epoch, averaged over the layers of each "
                 f"group per model, for {{colours}} models: at each snapshot epoch (0: the initialisation) and at "
                 f"the final model (the weights kept: the interpolating or best-validation epoch, which differs "
                 f"between seeds). Epochs are evenly spaced. {measured_at_epochs(m)} A model that stopped before a "
                 f"snapshot epoch has no point there. Error bars: standard deviation across {{seeds}}."
                 + (LOG_BARS if m.log else "") + "{nan}", noted=False, epochs=True)
      for m in snapshot_measures()],
    FigureSpec("fig_cka_epochs", fig_cka_epochs, ("cka",),
               "Beyond the paper: linear CKA against training epoch, per pair of conditions, averaged over the "
               "layers of each group per pair of models: at each snapshot epoch (0: the initialisation) and at the "
               "final models. Black squares: the two conditions at the same seed; dashed, in each condition's "
               "colour: two seeds of one condition (the seed-noise baseline). A cross-condition CKA that falls "
               "below both baselines as training goes on is a difference that training made.{shared} Epochs are "
               "evenly spaced. {measured} A model that stopped before a snapshot epoch has no pair there. Mean "
               f"over the pairs ({{seeds}}), error bars: standard deviation over the pairs, cut at "
               f"{CKA_BOUNDS['cka'][0]:g} and {CKA_BOUNDS['cka'][1]:g}.{{nan}}",
               "CKA through training", noted=False, epochs=True),
    FigureSpec("fig_learning_curves", fig_learning_curves, ("training_history",),
               "Beyond the paper: training loss (left) and accuracy (right) per epoch for {colours} models, mean "
               "over the seeds still training at that epoch ({seeds} in all); shading: standard deviation. Solid, "
               "train (running): the fraction of each epoch's own training batches classified correctly as they "
               "trained (train mode, each batch before its optimiser step; results before 0.2.0: a full pass in "
               "eval mode after each epoch); dashed: validation accuracy, eval mode after each epoch. Table 1's "
               "training accuracy is a full pass over the training split in eval mode after training, so for "
               "norms with running statistics{running} it can differ from the last running value, by much where "
               "those statistics lag the weights. An epoch with "
               "no line to it (the only epoch of models that stopped after one) is a point: o train, x validation."),
]

def figure(name: str) -> FigureSpec:
    return next(f for f in FIGURES if f.name == name)


def png_and_svg(fig: Figure) -> tuple[bytes, bytes]:
    """The figure as PNG and as SVG, laid out once: the PNG's constrained layout is kept for the SVG
    (the layout is about a third of drawing a figure; the SVG's coordinates move by under 0.2 pt)."""
    png = figure_bytes(fig, "png")
    fig.set_layout_engine("none")  # the axes keep the positions the layout gave them
    return png, figure_bytes(fig, "svg")


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    meta = {"Date": None} if fmt == "svg" else {}  # reproducible SVG
    fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", metadata=meta)
    return buf.getvalue()

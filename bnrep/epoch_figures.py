"""The figures of the snapshots (bnrep.figures' table lists them): each per-layer measure at
initialisation against the final epoch, and each measure against training epoch."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from bnrep.findings import headline_rows, snapshot_measures
from bnrep.measures import FINAL
from bnrep.plotting import (_as_list, _end_row, _grid, _height, _labels, _layer_groups_of, _layer_ticks, _panel,
                            _width, cka_line, cka_lines, condition_lines, group_lines, log_y, panels_legend,
                            styles_legend, ylabel_lines)
from bnrep.norms import get_norm
from bnrep.results import SHORT, and_list, cka_pairs, norm_labels, norm_pairs, ordered, seeds_text

# How a snapshot's model is run for a measure, said under each figure against epoch: the representations'
# measures as bnrep.represent.snapshot_mode runs it; gradient norms and train- against eval-mode as
# bnrep.measures' functions do (always batch statistics; both modes, from epoch 1).
MEASURED = "{measured}"  # (bnrep.captions fills it for the conditions drawn: measured_text)
MEASURED_BY = {
    "gradient_norms": "Every epoch is measured as a training step runs (norms with running statistics in training "
                      "mode on each analysis batch, whatever batch size the model trained with: BatchNorm with the "
                      "batch's own statistics, its running statistics not used<<ghost: ; ghost BatchNorm with each of its "
                      "virtual batches'>><<renorm: ; Batch Renorm with them, corrected toward its running statistics "
                      "as they stood>>); nothing is updated.",
    "train_eval": "It starts at epoch 1 (at epoch 0 the running statistics are still 0 and 1: nothing to compare): "
                  "at each epoch, batch statistics against the running statistics as they stood then, which have "
                  "not converged yet at early epochs.",
}


def measured_at_epochs(m) -> str:
    """How the measure `m` (bnrep.measures) is measured at each epoch, in words (norms with running statistics)."""
    return MEASURED_BY.get(m.table, MEASURED)


def measured_text(norms) -> str:
    """How the snapshots of the conditions `norms` run (bnrep.represent.snapshot_mode), for the figures against
    epoch: the conditions with running statistics named; none named where no condition keeps them."""
    labels = norm_labels(norms)
    kept = [n for n in ordered(norms) if get_norm(n).batch_statistics]
    if not kept:
        return ("No condition here keeps running statistics: every epoch is measured as training normalised, "
                "eval mode throughout.")
    virtual = any(get_norm(n).norm.startswith("ghost:") for n in kept)
    return ("At epoch 0 (the initialisation) norms with running statistics normalise with batch statistics, at "
            "the condition's batch size, as the first step did; at every later snapshot and in the final model "
            f"they run in eval mode, with the running statistics as they stood then, so the values of "
            f"{and_list(labels[n] for n in kept)} at early epochs reflect running statistics that have not "
            "converged yet" + (" (ghost BatchNorm's, updated once per virtual batch, converge sooner)." if virtual
                               else "."))


INIT = ", init"  # (the initialisation's lines' legend suffix: they share the condition's entry)


def fig_initialisation(results) -> Figure | None:
    """Each per-layer measure at initialisation (epoch 0, dashed) and at the final epoch (solid), a line per
    condition, a panel per measure (the first experiment with snapshots)."""
    r = next((r for r in _as_list(results) if any((d["epoch"] == 0).any() for d in r.snapshots.values())), None)
    ms = [m for m in snapshot_measures() if r is not None and m.table in r.snapshots and len(r.table(m.table))]
    if not ms:
        return None
    cols = min(4, len(ms))
    fig, axes = _grid(math.ceil(len(ms) / cols), cols, w=_width([r.table(ms[0].table)]),
                      h=_height([r.table(ms[0].table)], 3.0))
    labels = _labels([r])
    for ax, m in zip(axes.flat, ms):
        early = r.snapshots[m.table]
        drawn = {when: condition_lines(ax, headline_rows(m, d), m.values[0], labels, "" if when == "final" else INIT,
                                       ls=ls, marker=marker, capsize=2, clip=m.bounds)
                 for when, d, ls, marker in (("final", r.table(m.table), "-", "o"),
                                             ("init", early[early["epoch"] == 0], "--", "x"))}
        _layer_ticks(ax, drawn["final"])  # (a measure may have no rows at initialisation)
        _panel(ax, title=m.name or m.table, xlabel="layer", ylabel=ylabel_lines(m.ylabel or m.values[0]))
        if m.log:  # spans orders of magnitude over depth
            log_y(ax)
    _end_row(axes, 0, cols)
    for ax in axes.flat[len(ms):]:
        ax.set_axis_off()
    styles_legend(fig, axes, [("final epoch", "-", "o"), ("initialisation (epoch 0)", "--", "x")], skip=INIT)
    fig.suptitle(f"{r.label}: at initialisation (dashed) and at the final epoch (solid)")
    return fig


def epoch_axis(d: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows `d` with `x`, their place on an axis of training epochs: the snapshot epochs evenly spaced, the
    final models last; and the axis' tick labels."""
    epochs = sorted(set(d["epoch"]) - {FINAL})
    at = {**{e: i for i, e in enumerate(epochs)}, FINAL: len(epochs)}
    return d.assign(x=d["epoch"].map(at).astype(float)), [f"{e}" for e in epochs] + ["final"]




def through_training(m):
    """The figure of a measure (bnrep.measures) against training epoch: at each snapshot epoch and at the
    final model, the measure averaged over the layers of each group per model; a panel per layer group, a row
    per experiment with snapshots, a line per condition (seed mean, std error bars)."""
    def make(results) -> Figure | None:
        rs = [(r, headline_rows(m, r.at_epochs(m.table))) for r in _as_list(results) if m.table in r.snapshots]
        rs = [(r, d) for r, d in rs if len(d)]
        if not rs:
            return None
        labels = _labels([r for r, _ in rs])
        groups = [_layer_groups_of(d) for _, d in rs]
        fig, axes = _grid(len(rs), max(map(len, groups)), w=3.6, h=2.9)
        for row, ((r, d), gs) in enumerate(zip(rs, groups)):
            d, ticks = epoch_axis(d)
            for col, (name, idx) in enumerate(gs):
                ax = axes[row, col]
                g = group_lines(ax, d, idx, "x", m.values[0], labels, clip=m.bounds)
                ax.set_xticks(range(len(ticks)), ticks)
                _panel(ax, title=f"{r.label}: {name}", xlabel="epoch",  # (a long label ran into the next panel)
                       ylabel=ylabel_lines(m.ylabel or m.values[0]) if col == 0 else "")
                if m.log and (g[m.values[0]].dropna() > 0).all():
                    log_y(ax)
            _end_row(axes, row, len(gs))
        panels_legend(fig, axes)
        fig.suptitle(f"{m.name or m.table} through training ({seeds_text(rs[0][1])})")
        return fig
    make.__name__ = f"fig_{m.table}_epochs"
    return make


def fig_cka_epochs(results) -> Figure | None:
    """Linear CKA against training epoch: a row per pair of conditions (of each experiment with the snapshots'
    CKA), a panel per layer group; per pair of models, the CKA averaged over the group's layers, then the mean
    over the pairs (std error bars) of two conditions at one seed (black) and of two seeds of each condition
    (dashed, its colour)."""
    rows = []
    for r in _as_list(results):
        p = cka_pairs(r.at_epochs("cka")) if "cka" in r.snapshots else pd.DataFrame()
        rows += [(r, p, a, b) for a, b in (norm_pairs(p) if len(p) else [])]
    if not rows:
        return None
    groups = [_layer_groups_of(p) for _, p, _, _ in rows]
    fig, axes = _grid(len(rows), max(map(len, groups)), w=3.6, h=2.9)
    for row, ((r, p, a, b), gs) in enumerate(zip(rows, groups)):
        p, ticks = epoch_axis(p)
        (cross, style), *seeds = cka_lines(p, a, b)  # the row's title names its pair: one legend entry for all rows
        lines = [(cross, {**style, "label": "the row's two conditions, same seed"}), *seeds]
        for col, (name, idx) in enumerate(gs):
            ax = axes[row, col]
            for d, style in lines:
                cka_line(ax, d[d["layer_index"].isin(idx)].groupby(["model_a", "model_b", "x"], as_index=False)["cka"]
                         .mean(), "x", style)
            ax.set_xticks(range(len(ticks)), ticks)
            _panel(ax, title=f"{r.label}: {SHORT[a]} vs {SHORT[b]}, {name}", xlabel="epoch",
                   ylabel="linear CKA" if col == 0 else "", ylim=(0, 1.05))
        _end_row(axes, row, len(gs))
    panels_legend(fig, axes)
    fig.suptitle("Linear CKA through training: two conditions at one seed against two seeds of one condition")
    return fig

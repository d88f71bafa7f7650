"""The building blocks of bnrep.figures: grids of panels, layer axes, and the per-layer plot every
per-layer figure is made of (seed mean with std error bars, one colour per condition)."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib import rcParams
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import LogFormatterSciNotation

from bnrep.axis import hue_family
from bnrep.norms import sort_key
from bnrep.results import (COLORS, NORMS, SHORT, Results, norm_labels, not_rectified, ordered, present_norms,
                           seed_stats, seeds_text)


def _grid(nrows: int, ncols: int, w: float = 4.2, h: float = 3.2) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


LEGEND_ROW = 3  # entries per row of a legend below a figure: a longer row widens the figure, not the panels


def legend_below(fig: Figure, handles, names, fontsize: float = 8, row: int = LEGEND_ROW) -> None:
    """One legend for the whole figure, below its panels, in rows of at most `row` entries."""
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), row), fontsize=fontsize)


PANEL_TITLE_CHARS = 48  # a panel title wraps at spaces after this many characters (a model and a layer's path)


def _panel(ax, **props) -> None:
    """One panel of a grid figure: its title and labels (`ax.set`), small title (wrapped: a long one ran
    into its neighbours), light grid."""
    if len(props.get("title", "")) > PANEL_TITLE_CHARS:
        props["title"] = textwrap.fill(props["title"], PANEL_TITLE_CHARS, break_long_words=False)
    ax.set(**props)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)


def styles_legend(fig: Figure, axes, styles: list[tuple[str, str, str | None]], skip: str | None = None) -> None:
    """legend_below with a colour per condition (every panel's entries once; those ending in `skip` left out:
    the same conditions in another line style), then one black entry per line style, (name, ls, marker).
    A condition drawn in two styles took two long entries each, wider than the figure."""
    from matplotlib.lines import Line2D

    entries = {name: h for ax in np.ravel(axes) for h, name in zip(*ax.get_legend_handles_labels())
               if not (skip and name.endswith(skip))}
    legend_below(fig, [*entries.values(), *(Line2D([], [], color="black", ls=ls, marker=marker, lw=1.2)
                                            for _, ls, marker in styles)], [*entries, *(s[0] for s in styles)])


def panels_legend(fig: Figure, axes: np.ndarray, row: int = LEGEND_ROW) -> None:
    """legend_below with every panel's entries once (panels full from edge to edge leave a legend inside no room)."""
    entries = {name: h for ax in np.ravel(axes) for h, name in zip(*ax.get_legend_handles_labels())}
    legend_below(fig, list(entries.values()), list(entries), row=row)


FRACTION_SPAN = 0.2  # the least y range of fraction_range: a smaller gap than a tenth of it is not made to look large


def fraction_range(axes) -> None:
    """One y range for panels of a fraction (0..1): the range their lines and bars take, with a margin, at least
    FRACTION_SPAN wide and never beyond 0..1. On the whole 0..1, lines a few points apart (five conditions
    at one sparsity) were drawn over each other; the panels share it, so that their heights compare."""
    drawn = [ax.dataLim.intervaly for ax in axes if np.isfinite(ax.dataLim.intervaly).all()]  # (bars included)
    lo, hi = (max(min(a for a, _ in drawn), 0.0), min(max(b for _, b in drawn), 1.0)) if drawn else (0.0, 1.0)
    if hi - lo < FRACTION_SPAN:
        mid = min(max((lo + hi) / 2, FRACTION_SPAN / 2), 1 - FRACTION_SPAN / 2)
        lo, hi = mid - FRACTION_SPAN / 2, mid + FRACTION_SPAN / 2
    for ax in axes:
        ax.set_ylim(lo - 0.02, hi + 0.02)


def _end_row(axes: np.ndarray, row: int, used: int) -> None:
    """A grid row of `used` panels: the rest of the row blank (the figure's legend: panels_legend)."""
    for ax in axes[row, used:]:
        ax.set_axis_off()


def _as_list(results) -> list[Results]:
    return [results] if isinstance(results, Results) else list(results)


def _labels(rs: list[Results]) -> dict[str, str]:
    """Legend labels over every experiment of the figure (the same wording in every panel)."""
    return norm_labels({n for r in rs for n in r.norms})


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # a line's markers among conditions of one family of hues


def condition_markers(names) -> dict[str, str]:
    """A marker per condition of `names` (every condition of the figure's studies, so that it is the same in each
    figure that marks conditions by shape: the per-layer and through-training lines; the signal-propagation,
    initialisation and CKA figures keep their markers for what else they tell apart): "o", unless earlier
    conditions (display order) share its family of hues (BatchNorm, BatchNorm at batch size 16, ghost BatchNorm:
    three blues), then the next of MARKERS, so that they differ in shape too."""
    out, seen = {}, {}
    for n in ordered(names):
        family = hue_family(n) or n  # (the other norms' colours are apart from each other)
        out[n] = MARKERS[seen.get(family, 0) % len(MARKERS)]
        seen[family] = seen.get(family, 0) + 1
    return out


def _panel_title(res: Results, i: int, n: int) -> str:
    return f"({'abcdefghijklmnop'[i]}) {res.label}" if n > 1 else res.label


CKA_BOUNDS = {"cka": (0.0, 1.0), "cka_debiased": (-1.0, 1.0)}  # the values each can take (Cauchy-Schwarz)


MAX_TICK_LABELS = 24  # a layer axis labels at most this many layers (ResNet-50 has 49 probes)


def _layer_ticks(ax, s: pd.DataFrame, marked: set[int] = frozenset()) -> None:
    """Layer names on the x axis, thinned to MAX_TICK_LABELS (every k-th, the last always);
    layers in `marked` get a '*' (not a rectifier)."""
    ticks = s.drop_duplicates("layer_index").sort_values("layer_index")
    step = math.ceil(len(ticks) / MAX_TICK_LABELS)
    keep = ticks.iloc[[i for i in range(len(ticks)) if i % step == 0 or i == len(ticks) - 1]]
    names = [f"{n}*" if i in marked else n for i, n in zip(keep["layer_index"], _tick_names(keep["layer"].tolist()))]
    ax.set_xticks(keep["layer_index"].tolist(), names, rotation=0 if len(keep) <= 6 else 45 if len(keep) <= 12 else 90,
                  fontsize=8 if len(keep) > 12 else None)


MAX_TICK_CHARS = 24  # a longer layer name shows its last components on an axis (a panel's height is fixed)


def _tick_names(names: list[str]) -> list[str]:
    """Layer names for an axis: a long module path shortened to its last dotted components that fit
    MAX_TICK_CHARS, after '…' (features.denseblock3.denselayer14.norm2.act -> …denselayer14.norm2.act);
    names that would then be the same keep more components until they differ."""
    def tail(name: str, parts: int) -> str:
        short = ".".join(name.split(".")[-parts:])
        return name if short == name else "…" + short[-MAX_TICK_CHARS:] if parts == 1 else "…" + short

    def fits(name: str) -> int:  # components kept: as many as fit, at least one
        comps = name.split(".")
        return max([1] + [k for k in range(1, len(comps) + 1) if len(".".join(comps[-k:])) <= MAX_TICK_CHARS])

    keep = [fits(n) for n in names]
    while True:
        shown = [tail(n, k) for n, k in zip(names, keep)]
        clash = {t for t in shown if shown.count(t) > 1}
        if not clash:
            return shown
        keep = [k + 1 if t in clash else k for t, k in zip(shown, keep)]


def _width(rs_frames, per_layer: float = 0.22, least: float = 4.2, most: float = 16.0) -> float:
    """Panel width in inches: wider for models with many layers, up to `most` (DenseNet-121's 121 probes)."""
    n = max((d["layer_index"].nunique() for d in rs_frames if len(d)), default=0)
    return min(most, max(least, per_layer * n))


def _height(rs_frames, base: float) -> float:
    """Panel height in inches: `base`, taller for long layer names written upright on the axis."""
    names = [t for d in rs_frames if len(d)
             for t in _tick_names(d.drop_duplicates("layer_index").sort_values("layer_index")["layer"].tolist())]
    return base + 0.07 * max(0, max(map(len, names), default=0) - 10)


def layer_groups(layers: list[tuple[int, str]]) -> list[tuple[str, list[int]]]:
    """(name, layer indices): each layer alone when there are at most 4, else early / middle / late thirds."""
    if len(layers) <= 4:
        return [(name, [li]) for li, name in layers]
    thirds = np.array_split(np.arange(len(layers)), 3)  # sizes differ by at most one, the larger first
    return [(f"{part} layers ({layers[t[0]][1]}-{layers[t[-1]][1]})" if len(t) > 1 else
             f"{part} layer ({layers[t[0]][1]})", [layers[i][0] for i in t])
            for part, t in zip(("early", "middle", "late"), thirds)]


def _layer_groups_of(d: pd.DataFrame) -> list[tuple[str, list[int]]]:
    """`layer_groups` of the layers a table's rows name."""
    return layer_groups(list(d.drop_duplicates("layer_index").sort_values("layer_index")[["layer_index", "layer"]]
                             .itertuples(index=False, name=None)))


def _bars(mean: pd.Series, sd: pd.Series, clip: tuple[float, float] | None):
    """Error bars of +-sd about `mean`, cut at `clip` (low, high: the values there can be) where given."""
    sd = sd.fillna(0)  # (a mean a rounding past its bound, as a CKA of 1 + 2e-16: a bar of 0 there, not below)
    return sd if clip is None else [np.maximum(np.minimum(sd, mean - clip[0]), 0),
                                    np.maximum(np.minimum(sd, clip[1] - mean), 0)]


def cka_lines(p: pd.DataFrame, a: str, b: str) -> list[tuple[pd.DataFrame, dict]]:
    """The lines of a CKA panel for conditions a and b (`cka_pairs` rows): the two at one seed (black), then two
    seeds of each (dashed, its colour); each its rows and its style."""
    cross = p[(p["kind"] == "cross") & (p["first"] == a) & (p["second"] == b)]
    return [(cross, dict(label=f"{SHORT[a]} vs {SHORT[b]}, same seed", color="black", ls="-", marker="s")),
            *((p[(p["kind"] == "seeds") & (p["first"] == n)],
               dict(label=f"{SHORT[n]} seed vs seed", color=COLORS[n], ls="--", marker="o")) for n in (a, b))]


def cka_line(ax, d: pd.DataFrame, x: str, style: dict, value: str = "cka", keys: tuple[str, ...] = ()) -> None:
    """Mean CKA over the pairs of models per `x` (and `keys`), error bars: std over the pairs (ddof=1), cut at
    CKA_BOUNDS; nothing where no pair has a value."""
    s = seed_stats(d, [x, *keys], value)
    if len(s) and s["mean"].notna().any():
        ax.errorbar(s[x], s["mean"], yerr=_bars(s["mean"], s["std"], CKA_BOUNDS[value]), capsize=3, **style)


def group_lines(ax, d: pd.DataFrame, idx: list[int], x: str, value: str, labels: dict[str, str],
                clip: tuple[float, float] | None = None) -> pd.DataFrame:
    """Per model and `x`, `value` averaged over the group's layers `idx`; then a line per condition of the seed
    mean against `x`, std error bars (cut at `clip`); a condition without a finite value is neither drawn nor in
    the legend (train_eval of a norm with no running statistics). Returns the per-model means."""
    g = d[d["layer_index"].isin(idx)].groupby(["condition", "model_id", x], as_index=False)[value].mean()
    markers = condition_markers(labels)
    for c in present_norms(g):
        s = seed_stats(g[g["condition"] == c], [x], value)
        if s["mean"].isna().all():
            continue
        ax.errorbar(s[x], s["mean"], yerr=_bars(s["mean"], s["std"], clip), color=COLORS[c],
                    marker=markers[c], capsize=3, label=labels[c])
    return g


def condition_lines(ax, df: pd.DataFrame, value: str, labels: dict[str, str], suffix: str = "",
                    dodge: float = 0.0, clip: tuple[float, float] | None = None, **style) -> pd.DataFrame:
    """A line per condition of the seed mean of `value` per layer, std error bars, in the condition's colour
    (`style`: line style, marker (else condition_markers'), ...; `suffix` follows each label); a condition without
    a finite value is neither drawn nor in the legend (train_eval of a norm with no running statistics). `dodge`:
    the conditions side by side at each layer, this far apart from the first to the last (in layers), so that
    equal values stay visible; `clip`: (low, high), the values there can be, where an error bar is cut. Returns
    the seed statistics."""
    s = seed_stats(df, ["condition", "layer_index", "layer"], value)
    drawn = [c for c in ordered(s["condition"]) if s.loc[s["condition"] == c, "mean"].notna().any()]
    markers = condition_markers(labels)
    for i, c in enumerate(drawn):
        d = s[s["condition"] == c]
        x = d["layer_index"] + (dodge * (i / (len(drawn) - 1) - 0.5) if len(drawn) > 1 else 0.0)
        ax.errorbar(x, d["mean"], yerr=_bars(d["mean"], d["std"], clip), color=COLORS[c], label=labels[c] + suffix,
                    **{"marker": markers[c], **style})
    return s


def plot_per_layer(ax, df: pd.DataFrame, value: str, ylabel: str, labels: dict[str, str],
                   hline: float | None = None, marked: set[int] = frozenset(), **lines) -> None:
    """Seed mean per layer with std error bars, one colour per normalisation (`lines`: condition_lines')."""
    s = condition_lines(ax, df, value, labels, capsize=3, **lines)
    if hline is not None:
        ax.axhline(hline, color="grey", ls="--", lw=1, label=f"{hline:g} classes")
    _layer_ticks(ax, s, marked)
    ax.set_xlabel("layer" + (" (*: not a rectifier)" if marked & set(s["layer_index"]) else ""))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def fig_per_layer(results, get, value: str, ylabel: str, title: str, hline=None, dodge: float = 0.0,
                  clip=None) -> Figure | None:
    """One panel per experiment, side by side (the paper's (a)/(b) layout); seeds in panel titles.
    `hline(r)`: a panel's dashed line (None: none); `clip(r)`: where its error bars are cut, and `dodge`
    (condition_lines)."""
    rs = [(r, get(r)) for r in _as_list(results)]
    rs = [(r, d) for r, d in rs if len(d)]
    if not rs:
        return None
    labels = _labels([r for r, _ in rs])
    fig, axes = _grid(1, len(rs), w=_width([d for _, d in rs]), h=_height([d for _, d in rs], 3.5))
    for i, (r, d) in enumerate(rs):
        marked = set(not_rectified(d)["layer_index"]) if value == "sparsity" else set()
        plot_per_layer(axes[0, i], d, value, ylabel, labels, hline(r) if hline else None, marked, dodge=dodge,
                       clip=clip(r) if clip else None)
        axes[0, i].set_title(f"{_panel_title(r, i, len(rs))}, {seeds_text(d)}", fontsize=10)
    entries = {}  # every panel's legend entries once, normalisations first in display order
    for ax in axes[0]:
        entries.update(zip(*reversed(ax.get_legend_handles_labels())))
    norm_rank = {labels[n]: sort_key(n) for n in labels}
    names = sorted(entries, key=lambda l: norm_rank.get(l, (len(NORMS), 0)))
    legend_below(fig, [entries[l] for l in names], names, fontsize=9)
    fig.suptitle(title)
    return fig


# The coefficients between powers of ten labelled on a log axis, densest first: a panel labels the densest set
# whose labels stand LABEL_GAP label heights apart on it (2, 3, 4 and 6 of two decades on a short panel collided)
MINOR_LABELS = ((2, 3, 4, 5, 6, 7, 8, 9), (2, 3, 4, 6), (2, 3, 5), (2, 5), (3,), ())
LABEL_GAP = 2.0


class _SpacedLogFormatter(LogFormatterSciNotation):
    """Labels of the ticks between powers of ten (minor ticks) only where they cannot collide on the panel."""

    def set_locs(self, locs=None):
        super().set_locs(locs)
        lo, hi = sorted(self.axis.get_view_interval())
        box = self.axis.axes.get_window_extent()
        size = (box.height if self.axis.axis_name == "y" else box.width) * 72 / self.axis.figure.dpi  # points
        if lo <= 0 or hi <= lo or size <= 0:
            return
        per_decade = size / math.log10(hi / lo)  # points
        need = LABEL_GAP * FontProperties(size=rcParams[f"{self.axis.axis_name}tick.labelsize"]).get_size_in_points()
        for subs in MINOR_LABELS:
            gaps = np.diff(np.log10([1, *subs, 10]))  # (the powers of ten are labelled too)
            if gaps.min() * per_decade >= need:
                self._sublabels = {1, *subs}
                return


YLABEL_WIDTH = 24  # characters per line of a panel's y label in a row of panels 3.6 inches wide


def ylabel_lines(label: str, width: int = YLABEL_WIDTH) -> str:
    """A y label in lines of at most `width` characters where it can be, its parenthesis whole on a line of its
    own ("NC1" / "(lower = more collapsed)"), not broken inside ("CKA (train mode, eval" / "mode)")."""
    if len(label) <= width:
        return label
    head, paren, tail = label.partition(" (")
    if paren and len(tail) + 1 <= width:
        return textwrap.fill(head, width, break_long_words=False) + "\n(" + tail
    return textwrap.fill(label, width, break_long_words=False)


def log_y(ax) -> None:
    """A log y axis whose labels say where the values sit also within a decade or two (NC1 at 0.2-3: only
    10^0 was labelled): the ticks between powers of ten labelled as well, as many as fit the panel."""
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(_SpacedLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _log_if_positive(fig: Figure | None) -> Figure | None:
    """Log y axis where every plotted value is positive (NC1 spans orders of magnitude over depth)."""
    for ax in fig.axes if fig else []:
        ys = np.concatenate([np.asarray(c.lines[0].get_ydata(), float) for c in ax.containers] or [np.ones(1)])
        finite = ys[np.isfinite(ys)]
        if len(finite) and np.all(finite > 0):  # no finite value (every model diverged): linear
            log_y(ax)
    return fig

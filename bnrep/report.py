"""Reports: the paper's Table 1, Figures 1-6 and section 6 findings, for your runs.

Reads only the Parquet datasets the training and analysis stages wrote, and
writes one self-contained report per experiment (no Ray here):

    <out>/<experiment>/
      config.json                     resolved experiment (else the preset by name)
      results/training/               model_id, experiment, dataset, arch, bn, seed, lr,
                                      momentum, epochs, train_acc, val_acc, test_acc, interpolated
      results/training_history/       model_id, bn, seed, epoch, lr, train_loss, train_acc, val_acc
      results/channel_sparsity/       model_id, bn, seed, layer, layer_index, channel, sparsity
      results/layer_sparsity/         model_id, bn, seed, layer, layer_index, sparsity
      results/class_dbi/              model_id, bn, seed, layer, layer_index, dbi
      results/kmeans/                 model_id, bn, seed, layer, layer_index, k, dbi, inertia
      report/                         <- written here
        report.md, report.html        settings, provenance, Table 1, figures, findings
        table1.md, table1.csv, table1.tex
        fig_channel_sparsity, fig_layer_sparsity, fig_class_dbi,      (.png and .svg;
        fig_optimal_k, fig_kmeans_dbi, fig_kmeans_sweep,               paper Figures 1-6
        fig_learning_curves                                            + two extras)
        findings.json                 verdicts and numbers, for machines
        report_inputs.json            fingerprint of the input parts (report_is_current)

Accuracies and sparsities are fractions in [0, 1] in the tables and percent
in the report. Means and standard deviations are over seeds (pandas' sample
std, ddof=1); NaN values (a DBI of a dead layer) are left out of means and
counted in the captions.

    >>> res = build_report("runs", "digits-cnn"); print(res.summary)
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import html
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
from matplotlib.figure import Figure  # no pyplot: no global state, renders headless (Agg)
from matplotlib.ticker import MaxNLocator
from scipy import stats

import bnrep
from bnrep.experiments import Experiment, get_experiment
from bnrep.store import Store, git_commit

TRAINING_TABLES = ("training", "training_history")
ANALYSIS_TABLES = ("channel_sparsity", "layer_sparsity", "class_dbi", "kmeans")
TABLES = TRAINING_TABLES + ANALYSIS_TABLES

COLORS = {True: "tab:blue", False: "tab:orange"}  # as in the paper
LABELS = {True: "BatchNorm", False: "no BatchNorm"}
SHORT = {True: "BN", False: "NBN"}
DPI = 150
N_CLASSES = 10  # every dataset here has 10 classes

# ---- findings rules (documented in the report, RULES below) ----
SPARSITY_TOL = 0.01  # layer sparsity differences within 1 percentage point count as equal
MOSTLY = 0.75  # one direction in >= 75% of layers (but not all) is a tendency: "mixed"
R_MIN = 0.5  # a correlation counts when |r| >= 0.5 ...
P_MAX = 0.05  # ... and p < 0.05
MIN_MODELS = 4  # fewer models than this: no correlation is computed
K_TOL = 1  # "reaches the number of classes": seed-mean optimal k within +-1 of it

CLAIMS = {
    1: "BatchNorm does not consistently induce nor prevent sparsity in hidden representations.",
    2: "Sparse representations do not correlate with better generalization.",
    3: "BatchNorm tends to produce purer representational clusters than models trained without, especially "
       "in the case of class-based representations. For class-agnostic representation, results are less "
       "clear, except at the final layer, where BatchNorm clusters are again purer.",
    4: "BatchNorm forms class-agnostic clusters earlier in the network, and these early clusters "
       "are more consistent with the actual number of classes.",
}

RULES = [
    f"1 (sparsity): per layer, compare the seed-mean layer sparsity with and without BatchNorm; "
    f"differences within {SPARSITY_TOL * 100:g} percentage point count as equal. BN sparser in every "
    f"layer, or less sparse in every layer: not supported (it consistently induces / prevents). "
    f"Only one direction (other layers equal), or one direction in at least {MOSTLY:.0%} of the layers: "
    f"mixed. Otherwise (both directions, or no difference anywhere): supported.",
    f"2 (sparsity vs generalisation): per model, mean layer sparsity over all layers against test "
    f"accuracy and against the generalisation gap (train - test accuracy), Pearson and Spearman, "
    f"across all models (BN and no BN). A correlation counts when |r| >= {R_MIN} and p < {P_MAX}. "
    f"One that links sparser to better generalisation (higher test accuracy or smaller gap): not "
    f"supported. Only links to worse generalisation: mixed. None: supported. Needs >= {MIN_MODELS} models. "
    f"BN changes both sparsity and accuracy, so an across-model correlation can be the BN effect "
    f"alone; the Spearman correlation within each BN setting is shown for that reason.",
    "3 (purer clusters): over the shown layers, (a) class-based DBI lower with BN in more than half "
    "the layers and lower on average; (b) k-means DBI at the optimal k lower with BN at the last "
    "shown layer. Both hold: supported; one: mixed; neither: not supported (a missing table leaves "
    "only the other part to decide).",
    f"4 (early clusters): the optimal k is the k with the lowest k-means DBI per model and layer. "
    f"(a) earlier: the first shown layer whose seed-mean optimal k is within +-{K_TOL} of the number "
    f"of classes comes strictly earlier with BN (or only BN reaches it); (b) closer: over the first "
    f"half of the shown layers, the mean |optimal k - classes| is smaller with BN. Both: supported; "
    f"one: mixed; neither: not supported.",
]


class ReportError(RuntimeError):
    """No results to report on; the message is one line naming the stage to run."""


# ==== loading ====

@dataclass(eq=False)
class Results:
    """One experiment's tables (empty DataFrame where a table is missing)."""
    experiment: Experiment
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    n_classes: int = N_CLASSES

    def table(self, name: str) -> pd.DataFrame:
        df = self.tables.get(name)
        return df if df is not None else pd.DataFrame()

    @property
    def missing(self) -> list[str]:
        return [t for t in TABLES if self.table(t).empty]

    @property
    def label(self) -> str:
        return experiment_label(self.experiment)


def model_label(arch: str, dataset: str) -> str:
    """As in the paper's Table 1: 'CNN MNIST', 'VGG-16 CIFAR10'."""
    arch = {"cnn": "CNN", "vgg16": "VGG-16"}.get(arch, arch)
    data = {"digits": "Digits", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
            "cifar10": "CIFAR10", "synthetic": "Synthetic"}.get(dataset, dataset)
    return f"{arch} {data}"


def experiment_label(e: Experiment) -> str:
    return model_label(e.arch, e.dataset)


def load_experiment(store: Store, name: str) -> Experiment:
    """The resolved experiment from config.json, else the preset called `name`."""
    if store.exists("config.json"):
        try:
            return Experiment.from_dict(store.read_json("config.json")["experiment"])
        except (KeyError, TypeError, ValueError, OSError):
            pass  # unreadable or from another version: the preset still names the layers
    return get_experiment(name)


def load_results(out: str, name: str) -> Results:
    store = Store(out, name)
    exp = load_experiment(store, name)
    return Results(exp, {t: store.read_table(t) for t in (*TABLES, "samples")})


def stage_command(table: str, experiment: str, out: str = "runs") -> str:
    script = "sweeps/final.py" if table in TRAINING_TABLES else "analysis/run.py"
    flag = "" if out.rstrip("/") in ("runs", "./runs") else f" --out {out}"
    return f"python {script} --experiment {experiment}{flag}"


def find_experiments(out: str) -> list[str]:
    """Experiments under `out` with at least one valid part of a report table."""
    fs_store = Store(out, "")
    base = fs_store.root.rstrip("/")
    infos = fs_store.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
    return [n for n in names if any(Store(out, n).has_table(t) for t in TABLES)]


# ==== aggregation ====

def seed_stats(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """mean, std (ddof=1), n (non-NaN) and n_nan of `value` per `keys`, over seeds."""
    g = df.groupby(keys, sort=True)[value]
    s = g.agg(mean="mean", std="std", n="count", size="size").reset_index()
    s["n_nan"] = s.pop("size") - s["n"]
    return s


def n_seeds(df: pd.DataFrame) -> dict[bool, int]:
    return {bool(b): int(n) for b, n in df.groupby("bn")["seed"].nunique().items()} if len(df) else {}


def seeds_text(df: pd.DataFrame) -> str:
    n = n_seeds(df)
    if len(set(n.values())) == 1:
        k = next(iter(n.values()))
        return f"{k} seed" + ("s" if k != 1 else "")
    return " / ".join(f"{n.get(b, 0)} ({SHORT[b]})" for b in (True, False)) + " seeds"


def shown(df: pd.DataFrame, first_layer: int) -> pd.DataFrame:
    return df[df["layer_index"] >= first_layer] if len(df) else df


def optimal_k(kmeans: pd.DataFrame) -> pd.DataFrame:
    """Per model and layer, the k with the lowest DBI (ties: smallest k) and that DBI.

    A (model, layer) whose DBI is NaN for every k (dead layer) is dropped.
    """
    cols = ["model_id", "bn", "seed", "layer", "layer_index", "k_opt", "dbi"]
    km = kmeans.dropna(subset=["dbi"]) if len(kmeans) else kmeans
    if km.empty:
        return pd.DataFrame(columns=cols)
    km = km.sort_values(["model_id", "layer_index", "k"])
    best = km.loc[km.groupby(["model_id", "layer_index"])["dbi"].idxmin()]
    return best.rename(columns={"k": "k_opt"})[cols].reset_index(drop=True)


def compare_layers(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """Per layer, seed-mean of `value` with BN (`bn`) and without (`nobn`); layers with both only."""
    if df.empty:
        return pd.DataFrame(columns=["layer_index", "layer", "bn", "nobn"])
    m = df.groupby(["layer_index", "layer", "bn"])[value].mean().unstack("bn")
    m = m.rename(columns={True: "bn", False: "nobn"}).reindex(columns=["bn", "nobn"])
    return m.dropna().reset_index().sort_values("layer_index", ignore_index=True)


def table1(training: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 1: accuracies in percent, mean and std over seeds, per (experiment, BN)."""
    t = training.assign(**{c: training[c] * 100 for c in ("train_acc", "val_acc", "test_acc")})
    order = list(dict.fromkeys(t["experiment"]))
    rows = []
    for (exp, bn), g in t.groupby(["experiment", "bn"], sort=False):
        row = {"experiment": exp, "model": model_label(g["arch"].iloc[0], g["dataset"].iloc[0]), "bn": SHORT[bool(bn)],
               "seeds": g["seed"].nunique(), "interpolated": int(g["interpolated"].sum())}
        for c in ("train_acc", "val_acc", "test_acc"):
            row[f"{c}_mean"], row[f"{c}_std"] = g[c].mean(), g[c].std()
        rows.append(row)
    df = pd.DataFrame(rows)
    df["_o"] = df["experiment"].map(order.index)
    return df.sort_values(["_o", "bn"], ignore_index=True).drop(columns="_o")


def fmt_pm(mean: float, std: float, digits: int = 3) -> str:
    s = "n/a" if pd.isna(std) else f"{std:.{digits}f}"  # one seed: no std
    return f"{mean:.{digits}f} ± {s}"


ACC_COLS = [("train_acc", "Training acc (%)"), ("val_acc", "Validation acc (%)"),
            ("test_acc", "Evaluation (test) acc (%)")]


def table1_rows(t: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["Model", "BN", "Seeds"] + [h for _, h in ACC_COLS]
    rows = [[r.model, r.bn, str(r.seeds)] + [fmt_pm(getattr(r, f"{c}_mean"), getattr(r, f"{c}_std"))
                                              for c, _ in ACC_COLS] for r in t.itertuples()]
    return header, rows


def table1_tex(t: pd.DataFrame) -> str:
    header, rows = table1_rows(t)
    esc = lambda s: s.replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
    lines = [r"\begin{tabular}{llr" + "c" * len(ACC_COLS) + "}", r"\hline",
             " & ".join(esc(h) for h in header) + r" \\", r"\hline"]
    lines += [" & ".join(esc(c) for c in r) + r" \\" for r in rows]
    return "\n".join(lines + [r"\hline", r"\end{tabular}"]) + "\n"


# ==== figures ====

def _grid(nrows: int, ncols: int, w: float = 4.2, h: float = 3.2) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _as_list(results) -> list[Results]:
    return [results] if isinstance(results, Results) else list(results)


def _panel_title(res: Results, i: int, n: int) -> str:
    return f"({'abcdefghijklmnop'[i]}) {res.label}" if n > 1 else res.label


def _layer_ticks(ax, s: pd.DataFrame) -> None:
    ticks = s.drop_duplicates("layer_index").sort_values("layer_index")
    ax.set_xticks(ticks["layer_index"].tolist(), ticks["layer"].tolist(),
                  rotation=45 if len(ticks) > 6 else 0)


def plot_per_layer(ax, df: pd.DataFrame, value: str, ylabel: str, hline: float | None = None) -> None:
    """Seed mean per layer with std error bars, BN blue and no-BN orange."""
    s = seed_stats(df, ["bn", "layer_index", "layer"], value)
    for bn in (True, False):
        d = s[s["bn"] == bn]
        if len(d):
            ax.errorbar(d["layer_index"], d["mean"], yerr=d["std"].fillna(0), color=COLORS[bn],
                        marker="o", capsize=3, label=LABELS[bn])
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
    fig, axes = _grid(1, len(rs), h=3.5)
    for i, (r, d) in enumerate(rs):
        plot_per_layer(axes[0, i], d, value, ylabel, hline)
        axes[0, i].set_title(f"{_panel_title(r, i, len(rs))}, {seeds_text(d)}", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] not in LABELS.values())  # BN, no BN, rest
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9)
    fig.suptitle(title)
    return fig


def fig_layer_sparsity(results) -> Figure | None:
    """Paper Figure 3: layer sparsity for every layer."""
    return fig_per_layer(results, lambda r: r.table("layer_sparsity"), "sparsity",
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


def plot_band(ax, df: pd.DataFrame, x: str, value: str, bn: bool, label: str | None = None,
              ls: str = "-", scale: float = 1.0) -> None:
    """Seed mean of `value` against `x` as a line, std as shading."""
    s = seed_stats(df[df["bn"] == bn], [x], value)
    if s.empty:
        return
    m, sd = s["mean"] * scale, s["std"].fillna(0) * scale
    ax.plot(s[x], m, color=COLORS[bn], ls=ls, lw=1.2, label=label)
    ax.fill_between(s[x], m - sd, m + sd, color=COLORS[bn], alpha=0.25, lw=0)


def _channel_layers(r: Results) -> list[int]:
    cs = r.table("channel_sparsity")
    have = set(cs["layer_index"]) if len(cs) else set()
    return [i for i in r.experiment.channel_layers if i in have] or sorted(have)[:4]


def fig_channel_sparsity(results) -> Figure | None:
    """Paper Figures 1-2: sparsity per channel, one panel per selected layer, a row per experiment."""
    rs = [r for r in _as_list(results) if len(r.table("channel_sparsity"))]
    if not rs:
        return None
    fig, axes = _grid(len(rs), max(len(_channel_layers(r)) for r in rs), w=3.6, h=2.9)
    for row, r in enumerate(rs):
        cs, layers = r.table("channel_sparsity"), _channel_layers(r)
        for col, li in enumerate(layers):
            ax, d = axes[row, col], cs[cs["layer_index"] == li]
            for bn in (True, False):
                plot_band(ax, d, "channel", "sparsity", bn, f"{LABELS[bn]} ({n_seeds(d).get(bn, 0)} seeds)")
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
    nl = [d["layer_index"].nunique() for _, d in rs]
    fig, axes = _grid(sum(math.ceil(n / SWEEP_COLS) for n in nl), min(SWEEP_COLS, max(nl)), w=3.2, h=2.5)
    used, row0 = [], 0
    for (r, d), n in zip(rs, nl):
        layers = d.drop_duplicates("layer_index").sort_values("layer_index")
        for i, (li, name) in enumerate(zip(layers["layer_index"], layers["layer"])):
            ax, dl = axes[row0 + i // SWEEP_COLS, i % SWEEP_COLS], d[d["layer_index"] == li]
            for bn in (True, False):
                plot_band(ax, dl, "k", "dbi", bn, LABELS[bn])
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
    fig, axes = _grid(len(rs), 2, w=5.0, h=3.2)
    for row, r in enumerate(rs):
        h = r.table("training_history")
        loss, acc = axes[row]
        for bn in (True, False):
            plot_band(loss, h, "epoch", "train_loss", bn, f"{LABELS[bn]} ({n_seeds(h).get(bn, 0)} seeds)")
            plot_band(acc, h, "epoch", "train_acc", bn, f"{LABELS[bn]} train", scale=100)
            plot_band(acc, h, "epoch", "val_acc", bn, f"{LABELS[bn]} validation", ls="--", scale=100)
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
    caption: str  # {seeds} and {layers} filled in per report


FIGURES = [
    FigureSpec("fig_channel_sparsity", fig_channel_sparsity, ("channel_sparsity",),
               "Paper Figures 1-2: average channel sparsity (fraction of exactly-zero post-ReLU values per "
               "channel) for BatchNorm (blue) and no-BatchNorm (orange) models in the selected layers, "
               "channels in index order. Shading: standard deviation across {seeds}."),
    FigureSpec("fig_layer_sparsity", fig_layer_sparsity, ("layer_sparsity",),
               "Paper Figure 3: average layer sparsity for models trained with (blue) and without (orange) "
               "BatchNorm. Error bars: standard deviation across {seeds}."),
    FigureSpec("fig_class_dbi", fig_class_dbi, ("class_dbi",),
               "Paper Figure 4: average class-based DBI per layer ({layers}) for BatchNorm (blue) and "
               "no-BatchNorm (orange) models; lower is purer. Error bars: standard deviation across {seeds}.{nan}"),
    FigureSpec("fig_optimal_k", fig_optimal_k, ("kmeans",),
               "Paper Figure 5: average optimal number of k-means clusters (the k with the lowest DBI) per "
               "layer ({layers}); dashed line: number of classes. Error bars: standard deviation across {seeds}."),
    FigureSpec("fig_kmeans_dbi", fig_kmeans_dbi, ("kmeans",),
               "Paper Figure 6: average class-agnostic (k-means) DBI at the optimal k per layer ({layers}); "
               "lower is purer. Error bars: standard deviation across {seeds}.{nan}"),
    FigureSpec("fig_kmeans_sweep", fig_kmeans_sweep, ("kmeans",),
               "Beyond the paper: k-means DBI against k for each layer ({layers}), BatchNorm (blue) and "
               "no BatchNorm (orange). Shading: standard deviation across {seeds}."),
    FigureSpec("fig_learning_curves", fig_learning_curves, ("training_history",),
               "Beyond the paper: training loss (left) and training (solid) / validation (dashed) accuracy "
               "(right) per epoch, mean over the seeds still training at that epoch ({seeds} in all); "
               "shading: standard deviation."),
]


def caption(spec: FigureSpec, rs: list[Results]) -> str:
    df = pd.concat([r.table(spec.tables[0]) for r in rs], ignore_index=True)
    layers = "; ".join(f"{r.label}: from layer {r.experiment.first_shown_layer}" for r in rs)
    nan = ""
    if "dbi" in df and df["dbi"].isna().any():
        nan = (f" {int(df['dbi'].isna().sum())} of {len(df)} DBI values are NaN (dead layers) "
               f"and left out of the means.")
    return spec.caption.format(seeds=seeds_text(df), layers=layers, nan=nan)


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    meta = {"Date": None} if fmt == "svg" else {}  # reproducible SVG
    fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", metadata=meta)
    return buf.getvalue()


# ==== findings (paper section 6) ====

@dataclass
class Finding:
    number: int
    claim: str
    verdict: str  # supported | not supported | mixed | not evaluated
    detail: str
    numbers: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"[{self.verdict}] {self.number}. {self.claim}\n    {self.detail}"


def _not_evaluated(number: int, tables: list[str]) -> Finding:
    return Finding(number, CLAIMS[number], "not evaluated",
                   f"needs results/{' and results/'.join(tables)}, which are missing.")


def _names(layers) -> str:
    return ", ".join(map(str, layers)) or "none"


def finding_sparsity(layer_sparsity: pd.DataFrame) -> Finding:
    """Claim 1: BN neither consistently increases nor decreases layer sparsity."""
    c = compare_layers(layer_sparsity, "sparsity")
    if c.empty:
        return _not_evaluated(1, ["layer_sparsity"])
    d = c["bn"] - c["nobn"]
    more, less, n = c["layer"][d > SPARSITY_TOL], c["layer"][d < -SPARSITY_TOL], len(c)
    if len(more) == n or len(less) == n:
        verdict = "not supported"
    elif (len(more) == 0) != (len(less) == 0) or max(len(more), len(less)) >= MOSTLY * n:
        verdict = "mixed"
    else:
        verdict = "supported"
    detail = (f"BN sparser in {len(more)} of {n} layers ({_names(more)}), less sparse in {len(less)} "
              f"({_names(less)}), within {SPARSITY_TOL * 100:g} pp in {n - len(more) - len(less)}; "
              f"mean difference BN - no BN {d.mean() * 100:+.1f} pp.")
    numbers = {"layers": n, "bn_sparser": list(more), "bn_less_sparse": list(less),
               "diff_pp": {l: round(v * 100, 3) for l, v in zip(c["layer"], d)}}
    return Finding(1, CLAIMS[1], verdict, detail, numbers)


def model_sparsity(training: pd.DataFrame, layer_sparsity: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean layer sparsity over all layers, test accuracy, gap (train - test)."""
    s = layer_sparsity.groupby("model_id")["sparsity"].mean().rename("sparsity")
    t = training.set_index("model_id")[["bn", "train_acc", "test_acc"]]
    m = t.join(s, how="inner").dropna(subset=["sparsity", "test_acc", "train_acc"])
    return m.assign(gap=m["train_acc"] - m["test_acc"]).reset_index()


def _corr(x: pd.Series, y: pd.Series) -> dict:
    if x.nunique() < 2 or y.nunique() < 2:
        return {"pearson_r": math.nan, "pearson_p": math.nan, "spearman_r": math.nan, "spearman_p": math.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, s = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return {"pearson_r": float(p[0]), "pearson_p": float(p[1]),
            "spearman_r": float(s[0]), "spearman_p": float(s[1])}


def _significant_signs(c: dict) -> set[int]:
    """Signs (+1/-1) of the correlations in `c` that count (|r| >= R_MIN, p < P_MAX)."""
    return {int(np.sign(c[f"{m}_r"])) for m in ("pearson", "spearman")
            if abs(c[f"{m}_r"]) >= R_MIN and c[f"{m}_p"] < P_MAX}


def finding_generalisation(training: pd.DataFrame, layer_sparsity: pd.DataFrame) -> Finding:
    """Claim 2: sparsity does not correlate with better generalisation."""
    if training.empty or layer_sparsity.empty:
        return _not_evaluated(2, [t for t, d in [("training", training), ("layer_sparsity", layer_sparsity)]
                                  if d.empty])
    m = model_sparsity(training, layer_sparsity)
    if len(m) < MIN_MODELS:
        return Finding(2, CLAIMS[2], "not evaluated", f"only {len(m)} models with both tables; need {MIN_MODELS}.")
    test, gap = _corr(m["sparsity"], m["test_acc"]), _corr(m["sparsity"], m["gap"])
    st, sg = _significant_signs(test), _significant_signs(gap)
    better, worse = (1 in st or -1 in sg), (-1 in st or 1 in sg)
    verdict = "not supported" if better else "mixed" if worse else "supported"
    within = {LABELS[b]: _corr(g["sparsity"], g["test_acc"])["spearman_r"]
              for b in (True, False) for g in [m[m["bn"] == b]] if len(g) >= 3}
    detail = (f"across {len(m)} models, mean layer sparsity vs test accuracy: Pearson r = {test['pearson_r']:.2f} "
              f"(p = {test['pearson_p']:.3g}), Spearman {test['spearman_r']:.2f} (p = {test['spearman_p']:.3g}); "
              f"vs generalisation gap: Pearson r = {gap['pearson_r']:.2f} (p = {gap['pearson_p']:.3g}), "
              f"Spearman {gap['spearman_r']:.2f} (p = {gap['spearman_p']:.3g}). Within one BN setting, "
              f"Spearman vs test accuracy: " + (", ".join(f"{k} {_num(v)}" for k, v in within.items()) or "n/a") + ".")
    return Finding(2, CLAIMS[2], verdict, detail,
                   {"models": len(m), "test_acc": test, "gap": gap, "within_spearman_test_acc": within})


def _num(v: float) -> str:
    return "n/a (constant)" if pd.isna(v) else f"{v:.2f}"


def _nan_note(df: pd.DataFrame) -> str:
    n = int(df["dbi"].isna().sum()) if len(df) else 0
    return f" {n} of {len(df)} DBI values NaN (dead layers), left out." if n else ""


def finding_purity(class_dbi: pd.DataFrame, kmeans: pd.DataFrame, first_layer: int) -> Finding:
    """Claim 3: class DBI lower with BN in most shown layers; k-means DBI lower at the final layer."""
    parts, notes, numbers = [], [], {}
    c = compare_layers(shown(class_dbi, first_layer), "dbi")
    if len(c):
        lower, gap = c["layer"][c["bn"] < c["nobn"]], float((c["nobn"] - c["bn"]).mean())
        parts.append(len(lower) > len(c) / 2 and gap > 0)
        notes.append(f"class DBI lower with BN in {len(lower)} of {len(c)} shown layers "
                     f"(mean gap no BN - BN {gap:+.2f}).{_nan_note(shown(class_dbi, first_layer))}")
        numbers["class_dbi"] = {"layers": len(c), "bn_lower": list(lower), "mean_gap": gap}
    k = compare_layers(shown(optimal_k(kmeans), first_layer), "dbi")
    if len(k):
        lower, last = k["layer"][k["bn"] < k["nobn"]], k.iloc[-1]
        parts.append(bool(last["bn"] < last["nobn"]))
        notes.append(f"k-means DBI at optimal k lower with BN in {len(lower)} of {len(k)} layers; final "
                     f"shown layer {last['layer']}: BN {last['bn']:.2f} vs no BN {last['nobn']:.2f}.")
        numbers["kmeans_dbi"] = {"layers": len(k), "bn_lower": list(lower), "final_layer": last["layer"],
                                 "final_bn": float(last["bn"]), "final_nobn": float(last["nobn"])}
    if not parts:
        return _not_evaluated(3, ["class_dbi", "kmeans"])
    verdict = "supported" if all(parts) else "not supported" if not any(parts) else "mixed"
    if len(parts) == 1:
        notes.append("(only one of the two parts could be evaluated.)")
    return Finding(3, CLAIMS[3], verdict, " ".join(notes), numbers)


def _first_reach(curve: pd.Series, n_classes: int):
    hit = curve[(curve - n_classes).abs() <= K_TOL]
    return int(hit.index.min()) if len(hit) else None


def finding_early_clusters(kmeans: pd.DataFrame, first_layer: int, n_classes: int = N_CLASSES) -> Finding:
    """Claim 4: BN reaches ~n_classes clusters earlier; early optimal k closer to n_classes."""
    best = shown(optimal_k(kmeans), first_layer)
    if best.empty or best["bn"].nunique() < 2:
        return _not_evaluated(4, ["kmeans"])
    layers = sorted(best["layer_index"].unique())
    early = layers[: math.ceil(len(layers) / 2)]
    e = best[best["layer_index"].isin(early)]
    dist = (e["k_opt"] - n_classes).abs().groupby(e["bn"]).mean()
    curve = best.groupby(["bn", "layer_index"])["k_opt"].mean()
    reach = {bn: _first_reach(curve.loc[bn], n_classes) if bn in curve.index.get_level_values(0) else None
             for bn in (True, False)}
    earlier = reach[True] is not None and (reach[False] is None or reach[True] < reach[False])
    closer = bool(dist.get(True, math.inf) < dist.get(False, math.inf))
    verdict = "supported" if earlier and closer else "mixed" if earlier or closer else "not supported"
    kmax = int(kmeans["k"].max())
    at = {bn: "never" if v is None else f"at layer {v}" for bn, v in reach.items()}
    detail = (f"seed-mean optimal k first within +-{K_TOL} of {n_classes} classes {at[True]} with BN, "
              f"{at[False]} without; mean |optimal k - {n_classes}| "
              f"over early layers {_names(early)}: BN {dist.get(True, math.nan):.2f}, "
              f"no BN {dist.get(False, math.nan):.2f}.")
    if kmax < n_classes - K_TOL:
        detail += f" Note: k only goes up to {kmax}, so {n_classes} clusters cannot be found."
    return Finding(4, CLAIMS[4], verdict, detail,
                   {"first_layer_reaching": {SHORT[b]: v for b, v in reach.items()}, "early_layers": early,
                    "early_distance": {SHORT[bool(b)]: float(v) for b, v in dist.items()}})


def findings(r: Results) -> list[Finding]:
    first = r.experiment.first_shown_layer
    return [finding_sparsity(r.table("layer_sparsity")),
            finding_generalisation(r.table("training"), r.table("layer_sparsity")),
            finding_purity(r.table("class_dbi"), r.table("kmeans"), first),
            finding_early_clusters(r.table("kmeans"), first, r.n_classes)]


def finding_sparsity_across(per_exp: dict[str, Finding]) -> Finding:
    """Claim 1 across experiments: does BN's dominant direction differ between experiments?"""
    dirs = {}
    for name, f in per_exp.items():
        if f.verdict != "not evaluated":
            more, less = len(f.numbers["bn_sparser"]), len(f.numbers["bn_less_sparse"])
            dirs[name] = "sparser" if more > less else "less sparse" if less > more else "neither"
    if not dirs:
        return _not_evaluated(1, ["layer_sparsity"])
    same = len(set(dirs.values())) == 1 and "neither" not in dirs.values()
    all_consistent = all(per_exp[n].verdict == "not supported" for n in dirs)
    verdict = "supported" if not same else "not supported" if all_consistent else "mixed"
    detail = "direction in most layers: " + "; ".join(f"{n}: BN {d}" for n, d in dirs.items()) + "."
    return Finding(1, CLAIMS[1] + " (across experiments)", verdict, detail, {"direction": dirs})


# ==== documents: Markdown and self-contained HTML from one block list ====

def _md_table(header: list[str], rows: list[list[str]]) -> str:
    cells = [header, ["---"] * len(header)] + rows
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def render_md(blocks: list[tuple]) -> str:
    out = []
    for kind, *a in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + a[0])
        elif kind == "p":
            out.append(a[0])
        elif kind == "note":
            out.append("> **Note:** " + a[0])
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in a[0]))
        elif kind == "table":
            out.append(_md_table(*a))
        elif kind == "fig":
            name, cap, _ = a
            out.append(f"![{name}]({name}.png)\n\n*{cap}* ([SVG]({name}.svg))")
    return "\n\n".join(out) + "\n"


CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
       "text-align:left;vertical-align:top}th{background:#f3f3f3}figure{margin:1.5em 0}"
       "figure img{max-width:100%}figcaption{font-size:.9em;color:#444}"
       ".note{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em 1em}")


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def render_html(blocks: list[tuple], title: str) -> str:
    out = []
    for kind, *a in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(a[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(a[0])}</p>")
        elif kind == "note":
            out.append(f'<p class="note"><b>Note:</b> {_inline(a[0])}</p>')
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in a[0]) + "</ul>")
        elif kind == "table":
            out.append(_html_table(*a))
        elif kind == "fig":
            name, cap, png = a
            src = "data:image/png;base64," + base64.b64encode(png).decode()
            out.append(f'<figure id="{name}"><img src="{src}" alt="{html.escape(name)}">'
                       f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    body = "\n".join(out)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def findings_blocks(fs: list[Finding]) -> list[tuple]:
    rows = [[str(f.number), f.claim, f.verdict, f.detail] for f in fs]
    return [("table", ["#", "Claim (paper section 6)", "Verdict", "Evidence"], rows),
            ("p", "How verdicts are decided:"), ("ul", RULES)]


def _n_samples(r: Results, purpose: str, asked: int) -> str:
    """How many images the analysis used (results/samples), next to what the preset asked."""
    s = r.table("samples")
    used = int((s["purpose"] == purpose).sum()) if len(s) else None
    return str(asked) if used in (None, asked) else f"{used} (of {asked} asked: all the split holds)"


def settings_rows(r: Results) -> list[list[str]]:
    e, t = r.experiment, r.table("training")
    rows = [["experiment", f"{e.name} ({e.description})" if e.description else e.name],
            ["dataset / model", f"{e.dataset} / {e.arch}"],
            ["optimiser", f"{e.optimizer}, lr {e.lr:g} (BN) / {e.lr_for(False):g} (no BN), momentum {e.momentum:g}, "
                          f"x{e.lr_gamma:g} every {e.lr_step_epochs} epochs, batch {e.batch_size}"],
            ["stopping", f"{e.stop}, at most {e.max_epochs} epochs"],
            ["seeds", f"{e.seeds} per BN setting"],
            ["analysis", f"{_n_samples(r, 'sparsity', e.samples_sparsity)} training images for sparsity, "
                         f"{_n_samples(r, 'cluster', e.samples_cluster)} for clustering, "
                         f"k = {e.k_min}..{e.k_max}, zero threshold eps = {e.eps:g}"],
            ["layers shown", f"channel sparsity: {_names(e.channel_layers)}; Figures 4-6 from layer "
                             f"{e.first_shown_layer}"],
            ["config hash", e.config_hash()]]
    for bn in (True, False):
        g = t[t["bn"] == bn] if len(t) else t
        if len(g):
            ep = sorted({g["epochs"].min(), g["epochs"].max()})
            rows.append([f"trained ({SHORT[bn]})", f"{len(g)} models, lr {_names(sorted(g['lr'].unique()))}, "
                         f"momentum {_names(sorted(g['momentum'].unique()))}, epochs {'-'.join(map(str, ep))}, "
                         f"interpolated {int(g['interpolated'].sum())}/{len(g)}"])
    return rows


def provenance_rows(rs: list[Results]) -> list[list[str]]:
    models = set()
    for r in rs:
        for t in TABLES:
            if "model_id" in r.table(t):
                models |= {(r.experiment.name, m) for m in r.table(t)["model_id"]}
    return [["bnrep version", bnrep.__version__], ["git commit", git_commit() or "unknown"],
            ["written", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
            ["models", str(len(models))],
            ["tables", "; ".join(f"{r.experiment.name}: " + ", ".join(
                f"{t} ({len(r.table(t))} rows)" for t in TABLES if t not in r.missing) for r in rs)]]


def missing_notes(r: Results, out: str) -> list[str]:
    notes = []
    for group in (TRAINING_TABLES, ANALYSIS_TABLES):
        miss = [t for t in group if t in r.missing]
        if miss:
            notes.append(f"{r.experiment.name}: no results/{', results/'.join(miss)} yet; run "
                         f"`{stage_command(miss[0], r.experiment.name, out)}` to produce "
                         f"{'them' if len(miss) > 1 else 'it'}; the parts below that need "
                         f"{'them' if len(miss) > 1 else 'it'} are left out.")
    return notes


# ==== writing ====

@dataclass
class ReportResult:
    experiment: str  # experiment name, or "combined"
    report_dir: str  # where the files are (path or URI)
    files: list[str]  # names inside report_dir
    missing: list[str]  # tables that were absent
    findings: list[Finding]
    summary: str  # Table 1 and findings as plain text, for printing

    @property
    def html(self) -> str:
        return f"{self.report_dir}/report.html"


def inputs_fingerprint(store: Store) -> dict:
    """Hash of the input part listing (name, size, mtime) and bnrep version."""
    listing = []
    for t in TABLES:
        sel = pafs.FileSelector(store.path("results", t), allow_not_found=True)
        for i in store.fs.get_file_info(sel):
            if i.base_name.endswith(".parquet") and not i.base_name.startswith("."):
                listing.append([t, i.base_name, i.size, i.mtime_ns])
    if store.exists("config.json"):
        i = store.fs.get_file_info(store.path("config.json"))
        listing.append(["config.json", "", i.size, i.mtime_ns])
    listing.sort(key=str)
    blob = json.dumps({"bnrep": bnrep.__version__, "parts": listing}, default=str).encode()
    return {"inputs_hash": hashlib.sha256(blob).hexdigest(), "parts": len(listing),
            "tables": {t: sum(1 for x in listing if x[0] == t) for t in TABLES}}


def report_is_current(out: str, experiment: str) -> bool:
    """True when the report exists and its inputs have not changed since it was written."""
    store = Store(out, experiment)
    try:
        rec = store.read_json("report/report_inputs.json")
    except (OSError, ValueError):
        return False
    return (rec.get("inputs_hash") == inputs_fingerprint(store)["inputs_hash"]
            and store.exists("report/report.html"))


class _Writer:
    """Writes report files through a Store (works on s3:// too) and remembers their names."""

    def __init__(self, store: Store, prefix: str):
        self.store, self.prefix, self.files = store, prefix, []

    def put(self, name: str, data: bytes | str) -> None:
        self.store.write_bytes(f"{self.prefix}{name}", data.encode() if isinstance(data, str) else data)
        self.files.append(name)

    def figures(self, rs: list[Results]) -> list[tuple]:
        blocks = []
        for spec in FIGURES:
            fig = spec.make(rs)
            if fig is None:
                continue
            png = figure_bytes(fig, "png")
            self.put(f"{spec.name}.png", png)
            self.put(f"{spec.name}.svg", figure_bytes(fig, "svg"))
            blocks.append(("fig", spec.name, caption(spec, rs), png))
        return blocks

    def table1(self, training: pd.DataFrame) -> tuple[list[tuple], str]:
        if training.empty:
            return [("p", "No training results yet.")], ""
        t = table1(training)
        header, rows = table1_rows(t)
        self.put("table1.md", _md_table(header, rows) + "\n")
        self.put("table1.csv", t.to_csv(index=False, float_format="%.4f"))
        self.put("table1.tex", table1_tex(t))
        text = pd.DataFrame(rows, columns=header).to_string(index=False)
        cap = ("Train, validation and evaluation (test) accuracy in percent for the BatchNorm (BN) and "
               "no-BatchNorm (NBN) models; ± is the standard deviation across seeds.")
        return [("p", cap), ("table", header, rows)], text

    def documents(self, blocks: list[tuple], title: str) -> None:
        self.put("report.md", render_md(blocks))
        self.put("report.html", render_html(blocks, title))


def _summary(title: str, table_text: str, fs: dict[str, list[Finding]], notes: list[str], where: str) -> str:
    """Plain text for the terminal; `fs` maps a heading to its findings."""
    parts = [title, "", "Table 1 (accuracy %, mean ± std over seeds):", table_text or "(no training results)"]
    for head, group in fs.items():
        parts += ["", f"{head}:"] + [f.line() for f in group]
    return "\n".join(parts + [f"Note: {n}" for n in notes] + ["", f"report: {where}"])


def _no_results(name: str, out: str) -> ReportError:
    return ReportError(f"no results for {name} under {out}: run `{stage_command('training', name, out)}` "
                       f"(or `bnrep run --experiment {name}`) first")


def build_report(out: str, experiment: str) -> ReportResult:
    """Write <out>/<experiment>/report/ from the result tables.

    Raises ReportError when no table has results, ConfigError when `experiment`
    is neither a preset nor has a config.json under `out`.
    """
    store = Store(out, experiment)
    exp = load_experiment(store, experiment)
    fingerprint = inputs_fingerprint(store)  # before reading: a part landing meanwhile marks it stale
    r = Results(exp, {t: store.read_table(t) for t in (*TABLES, "samples")})
    if len(r.missing) == len(TABLES):
        raise _no_results(experiment, out)
    store.delete("report/report_inputs.json")
    w = _Writer(store, "report/")
    notes, fs = missing_notes(r, out), findings(r)
    t1_blocks, t1_text = w.table1(r.table("training"))
    fig_blocks = w.figures([r])
    title = f"bnrep report: {exp.name} ({r.label})"
    blocks = [("h1", title), *[("note", n) for n in notes],
              ("h2", "Settings"), ("table", ["setting", "value"], settings_rows(r)),
              ("h2", "Provenance"), ("table", ["item", "value"], provenance_rows([r])),
              ("h2", "Table 1: accuracy"), *t1_blocks,
              ("h2", "Findings (paper section 6)"), *findings_blocks(fs),
              ("h2", "Figures"), *fig_blocks]
    w.documents(blocks, title)
    w.put("findings.json", json.dumps([dataclasses.asdict(f) for f in fs], indent=2, default=str) + "\n")
    where = store.uri("report")
    summary = _summary(title, t1_text, {"Findings": fs}, notes, store.uri("report", "report.html"))
    w.put("summary.txt", summary + "\n")
    store.write_json("report/report_inputs.json", fingerprint)  # last: marks the report complete
    w.files.append("report_inputs.json")
    return ReportResult(exp.name, where, w.files, r.missing, fs, summary)


def _dest_store(out: str, dest: str | None) -> tuple[Store, str]:
    """A Store whose root is the combined report's directory (default <out>/combined)."""
    if dest is None:
        return Store(out, "combined"), "combined"
    parent, sep, name = str(dest).rstrip("/").rpartition("/")
    return Store((parent or "/") if sep else ".", name), name


def combined_findings_blocks(across: Finding, per_exp: dict[str, list[Finding]]) -> list[tuple]:
    """Claim 1 across experiments, a verdict matrix (claim x experiment), then each experiment's evidence."""
    blocks = [("h2", "Findings (paper section 6)"), ("p", "Claim 1 across experiments:"),
              ("table", ["Verdict", "Evidence"], [[across.verdict, across.detail]]),
              ("table", ["#", "Claim"] + list(per_exp),
               [[str(i), CLAIMS[i]] + [fs[i - 1].verdict for fs in per_exp.values()] for i in CLAIMS])]
    for name, fs in per_exp.items():
        blocks += [("h2", f"Findings: {name}"), ("table", ["#", "Verdict", "Evidence"],
                                                  [[str(f.number), f.verdict, f.detail] for f in fs])]
    return blocks + [("p", "How verdicts are decided:"), ("ul", RULES)]


def build_combined_report(out: str, experiments: list[str], dest: str | None = None) -> ReportResult:
    """One report with a panel per experiment side by side; experiments without results are noted."""
    loaded = [load_results(out, n) for n in experiments]
    rs = [r for r in loaded if len(r.missing) < len(TABLES)]
    if not rs:
        raise _no_results(" / ".join(experiments), out)
    store, _ = _dest_store(out, dest)
    w = _Writer(store, "")
    notes = [f"{r.experiment.name}: no results; run `{stage_command('training', r.experiment.name, out)}`."
             for r in loaded if r not in rs] + [n for r in rs for n in missing_notes(r, out)]
    per_exp = {r.experiment.name: findings(r) for r in rs}
    t1 = pd.concat([r.table("training") for r in rs if len(r.table("training"))] or [pd.DataFrame()],
                   ignore_index=True)
    t1_blocks, t1_text = w.table1(t1)
    fig_blocks = w.figures(rs)
    across = finding_sparsity_across({n: f[0] for n, f in per_exp.items()})
    title = "bnrep combined report: " + ", ".join(f"{r.experiment.name} ({r.label})" for r in rs)
    blocks = [("h1", title), *[("note", n) for n in notes],
              *[b for r in rs for b in (("h2", f"Settings: {r.experiment.name}"),
                                         ("table", ["setting", "value"], settings_rows(r)))],
              ("h2", "Provenance"), ("table", ["item", "value"], provenance_rows(rs)),
              ("h2", "Table 1: accuracy"), *t1_blocks,
              *combined_findings_blocks(across, per_exp), ("h2", "Figures"), *fig_blocks]
    w.documents(blocks, title)
    all_fs = [across] + [f for fs in per_exp.values() for f in fs]
    w.put("findings.json", json.dumps({"across": dataclasses.asdict(across),
                                       **{n: [dataclasses.asdict(f) for f in fs] for n, fs in per_exp.items()}},
                                      indent=2, default=str) + "\n")
    where = store.uri()
    missing = sorted({f"{r.experiment.name}/{t}" for r in loaded for t in r.missing})
    return ReportResult("combined", where, w.files, missing, all_fs,
                        _summary(title, t1_text, {"Findings across experiments": [across],
                                                  **{f"Findings {n}": f for n, f in per_exp.items()}},
                                 notes, f"{where}/report.html"))

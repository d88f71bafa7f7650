"""One experiment's result tables in memory, and the normalisation axis they are read along.

The vocabulary every report part shares (one home): the order, colour, label
and short tag of each normalisation; the `Results` container; seed means and
standard deviations (pandas' sample std, ddof=1); the optimal-k rows of the
kmeans table; the rankings of several normalisations and the side-by-side
table of several architectures. No file access (bnrep.report loads) and no
plotting.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bnrep.datasets import DATASETS, FOLDER, DatasetError, num_classes
from bnrep.experiments import Experiment, layer_indices
from bnrep.models import model_label as spec_label
from bnrep.probes import RECTIFIERS
from bnrep.axis import axis_word
from bnrep.config import DEFAULT_OUT
from bnrep.measures import FINAL, MEASURES
from bnrep.norms import COLORS, LABELS, NORMS as NORM_TABLE, REF, SHORT, ordered, sort_key  # noqa: F401 (re-exported)
from bnrep.store import with_norm


# ==== the normalisation axis: colour, label and tag of each norm come from bnrep.norms ====

NORMS = tuple(NORM_TABLE)  # display order; `none`, the reference, last
NORM_NAMES = LABELS


def is_paper_pair(norms) -> bool:
    """Only BatchNorm and no normalisation: the paper's study, worded as the paper words it."""
    return set(norms) <= {"batch", "none"}


def norm_labels(norms) -> dict[str, str]:
    """Legend labels of `norms` (and of the reference); 'no BatchNorm' while the study is the paper's pair."""
    labels = {n: LABELS.get(n, n) for n in {*norms, *NORMS}}
    return {**labels, REF: "no BatchNorm" if is_paper_pair(norms) else LABELS[REF]}


def present_norms(*dfs: pd.DataFrame) -> list[str]:
    return ordered({n for df in dfs if "condition" in df for n in df["condition"].dropna().unique()})


def pair_names(norm: str, norms, ref: str = REF) -> tuple[str, str]:
    """How the evidence names the two sides: ('BN', 'no BN'), ('GN', 'no norm'), or against another
    reference condition its tag ('bn-b4', 'BN')."""
    if ref != REF:
        return SHORT[norm], SHORT[ref]
    return SHORT[norm], "no BN" if is_paper_pair(norms) else "no norm"


# ==== one experiment's tables ====

@dataclass(eq=False)
class Results:
    """One experiment's tables (empty DataFrame where a table is missing) and its config.json record."""
    experiment: Experiment
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # the stage hashes of config.json: train_hash, analysis_hash
    classes: tuple[str, ...] = ()  # the data's class names, as config.json records them (() : from the table)
    snapshots: dict[str, pd.DataFrame] = field(default_factory=dict)  # the rows of earlier epochs, per table
    shown_as: str = ""  # its label beside experiments of the same model and data (distinct_labels); "": label's own
    out: str = DEFAULT_OUT  # the results root it was read from (the commands the findings suggest name it)

    def __post_init__(self) -> None:
        """`tables` keeps the final models' rows (what the paper's figures and claims read); the rows of
        snapshot epochs (analysis --snapshots) move to `snapshots`."""
        tables = {k: with_norm(v.copy()) for k, v in self.tables.items() if v is not None}
        early = {k: v["epoch"] != FINAL for k, v in tables.items() if "epoch" in v and "layer_index" in v}
        self.snapshots = {**self.snapshots, **{k: tables[k][m].reset_index(drop=True) for k, m in early.items() if m.any()}}
        self.tables = {k: v[~early[k]].reset_index(drop=True) if k in early and early[k].any() else v
                       for k, v in tables.items()}

    def at_epochs(self, name: str) -> pd.DataFrame:
        """Every row of a table: the final models' (epoch -1) and the snapshots'."""
        return pd.concat([self.table(name), self.snapshots.get(name, pd.DataFrame())], ignore_index=True)

    @property
    def n_classes(self) -> int:
        """The data's class count (claim 4, Figure 5's line): config.json's classes, else the dataset table's;
        0 when neither knows (an image folder that is not here, results from before it was recorded)."""
        if self.classes:
            return len(self.classes)
        try:
            return num_classes(self.experiment.dataset)
        except DatasetError:
            return 0

    def table(self, name: str) -> pd.DataFrame:
        df = self.tables.get(name)
        return df if df is not None else pd.DataFrame()

    @property
    def norms(self) -> list[str]:
        """Normalisations with results, else those the experiment lists."""
        have = present_norms(*self.tables.values())
        return have or ordered(self.experiment.norms)

    @property
    def ref(self) -> str:
        """The condition every claim is judged against (Experiment.reference; none by default)."""
        return self.experiment.reference

    @property
    def label(self) -> str:
        """'CNN Digits' (the paper's Table 1 names), or `shown_as` where a combined report sets it."""
        return self.shown_as or experiment_label(self.experiment)

    @property
    def imported(self) -> bool:
        """Its models were imported (bnrep import), not trained by bnrep: training facts are not known."""
        return bool(self.config.get("imported")) or bool(imported_mask(self.table("training")).any())


def imported_mask(training: pd.DataFrame) -> pd.Series:
    """Models `bnrep import` recorded (no training history, no sweep); tables without the column: none."""
    if "imported" not in training:
        return pd.Series(False, index=training.index)
    return training["imported"].astype("boolean").fillna(False).astype(bool)


def model_label(arch: str, dataset: str) -> str:
    """As in the paper's Table 1: 'CNN MNIST', 'VGG-16 CIFAR10'; an image folder by its name, 'cnn leaves'
    for imagefolder:/data/leaves (its whole path made panel titles run into each other)."""
    arch = spec_label(arch)
    data = DATASETS[dataset].label or dataset if dataset in DATASETS else dataset
    if dataset.startswith(f"{FOLDER}:"):
        data = os.path.basename(os.path.normpath(dataset[len(FOLDER) + 1:])) or dataset
    return f"{arch} {data}"


def experiment_label(e: Experiment) -> str:
    return model_label(e.model, e.dataset)


def distinct_labels(labels: dict[str, str]) -> dict[str, str]:
    """Experiment name -> its label ('CNN Digits'), the name added where experiments share a label (a combined
    report of digits-cnn and digits-cnn-norms: 'CNN Digits (digits-cnn)', 'CNN Digits (digits-cnn-norms)')."""
    shared = {l for l in labels.values() if list(labels.values()).count(l) > 1}
    return {n: f"{l} ({n})" if l in shared else l for n, l in labels.items()}


def tell_apart(rs: list[Results]) -> None:
    """Each of `rs` labelled apart from the others (distinct_labels): a combined report's panel titles."""
    labels = distinct_labels({r.experiment.name: experiment_label(r.experiment) for r in rs})
    for r in rs:  # (an experiment named twice: the same label twice)
        r.shown_as = labels[r.experiment.name]


# ==== aggregation ====

def seed_stats(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """mean, std (ddof=1), n (non-NaN) and n_nan of `value` per `keys`, over seeds."""
    g = df.groupby(keys, sort=True)[value]
    s = g.agg(mean="mean", std="std", n="count", size="size").reset_index()
    s["n_nan"] = s.pop("size") - s["n"]
    return s


def n_seeds(df: pd.DataFrame) -> dict[str, int]:
    return {n: int(k) for n, k in df.groupby("condition")["seed"].nunique().items()} if len(df) else {}


def label_and_tag(label: str, tag: str) -> str:
    """'BatchNorm (BN)'; a label ending in parentheses takes the tag inside them: 'ghost BatchNorm (8 per
    virtual batch; GBN8)', not '... batch) (GBN8)'."""
    return f"{label[:-1]}; {tag})" if label.endswith(")") else f"{label} ({tag})"


def and_list(names) -> str:
    """'a', 'a and b', 'a, b and c': a list in prose."""
    names = list(names)
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def seeds_text(df: pd.DataFrame) -> str:
    n = n_seeds(df)
    if len(set(n.values())) == 1:
        k = next(iter(n.values()))
        return f"{k} seed" + ("s" if k != 1 else "")
    return " / ".join(f"{n[m]} ({SHORT.get(m, m)})" for m in ordered(n)) + " seeds"


def shown(df: pd.DataFrame, first_layer: float) -> pd.DataFrame:
    """Rows from the first shown layer on (an index, or a fraction of the depth)."""
    if not len(df):
        return df
    return df[df["layer_index"] >= layer_indices([first_layer], int(df["layer_index"].max()))[0]]


def early_layers(best: pd.DataFrame) -> list[int]:
    """Claim 4's early layers: the first half (rounded up) of the layer indices in `best` (the shown layers)."""
    layers = sorted(best["layer_index"].unique())
    return [int(x) for x in layers[: math.ceil(len(layers) / 2)]]  # numbers in findings.json, not numpy's


def first_shown_text(r: Results) -> str:
    """The first layer Figures 4-6 show, as captions and the Settings say it: by name, as the figures' axes
    and the claims do, with its position ('2 (layer 1)' for a Sequential's child 2); its position alone
    before any table names it."""
    first = r.experiment.first_shown_layer
    fraction = f"{first:g} of the depth" if first < 1 else ""
    t = next((t for t in (r.table(n) for n in ("kmeans", "class_dbi", "layer_sparsity")) if len(t)), None)
    if t is None:
        return f"layer {first:g}" + (f" ({fraction})" if fraction else "")
    i = layer_indices([first], int(t["layer_index"].max()))[0]
    name = t.loc[t["layer_index"] == i, "layer"]
    where = f"layer {i}" + (f", {fraction}" if fraction else "")
    return f"{name.iloc[0]} ({where})" if len(name) else where


def rectified(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of probes after a rectifier (probes.RECTIFIERS), where exact zeros mean something (paper
    eq. 3-4); tables written before the activation column hold ReLU probes only."""
    return df[df["activation"].isin(RECTIFIERS)] if len(df) and "activation" in df else df


def not_rectified(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(rectified(df).index) if len(df) else df


def eps_values(df: pd.DataFrame) -> list[float]:
    """The sparsity thresholds in a table, ascending ([] without an eps column: one threshold)."""
    return sorted(float(x) for x in df["eps"].dropna().unique()) if len(df) and "eps" in df else []


def at_eps(df: pd.DataFrame, eps: float | None = None) -> pd.DataFrame:
    """Sparsity rows at threshold `eps`, default the smallest (the paper's exact zero when eps = 0 was asked)."""
    if not len(df) or "eps" not in df:
        return df
    return df[df["eps"] == (df["eps"].min() if eps is None else eps)]


def optimal_k(kmeans: pd.DataFrame) -> pd.DataFrame:
    """Per model and layer, the optimal k (the analysis stage's `optimal` row) and its DBI.

    The analysis stage marks at most one row per (model, layer) and none for a
    dead layer (every DBI NaN), so such a layer has no row here.
    """
    cols = ["model_id", "bn", "norm", "condition", "seed", "layer", "layer_index", "k_opt", "dbi"]
    if kmeans.empty or "optimal" not in kmeans:
        return pd.DataFrame(columns=cols)
    best = kmeans[kmeans["optimal"].astype(bool)].sort_values(["model_id", "layer_index"])
    cols += ["epoch"] if "epoch" in best else []  # snapshots (--snapshot-kmeans): a row per epoch
    return best.rename(columns={"k": "k_opt"})[cols].reset_index(drop=True)


def cka_pairs(cka: pd.DataFrame) -> pd.DataFrame:
    """The cka rows with `first`/`second` (the pair's two norms in display order) and `kind`:
    'cross' (two norms, one seed) or 'seeds' (one norm, two seeds); any other pair dropped."""
    if cka.empty:
        return cka.assign(first=[], second=[], kind=[])
    same_norm, same_seed = cka["condition_a"] == cka["condition_b"], cka["seed_a"] == cka["seed_b"]
    d = cka[same_norm != same_seed]
    rank = {n: i for i, n in enumerate(ordered(set(d["condition_a"]) | set(d["condition_b"])))}
    swap = d["condition_a"].map(rank) > d["condition_b"].map(rank)
    return d.assign(first=d["condition_b"].where(swap, d["condition_a"]), second=d["condition_a"].where(swap, d["condition_b"]),
                    kind=np.where(d["condition_a"] == d["condition_b"], "seeds", "cross"))


def norm_pairs(p: pd.DataFrame) -> list[tuple[str, str]]:
    """The pairs of conditions compared in cka_pairs' rows `p`, in display order."""
    cross = p[p["kind"] == "cross"]
    return sorted(set(zip(cross["first"], cross["second"])), key=lambda ab: tuple(sort_key(n) for n in ab))


def measure_numbers(r: Results) -> dict[str, list[dict]]:
    """Seed mean, std and counts per layer of each measure with a per-layer figure (bnrep.measures: NC1,
    effective rank, ...; per condition) and of CKA (per kind of pair: over the pairs), for findings.json."""
    out = {m.table: seed_stats(r.table(m.table), ["condition", "layer_index", "layer"], m.values[0]).to_dict("records")
           for m in MEASURES.values() if m.caption and len(r.table(m.table))}
    p = cka_pairs(r.table("cka"))
    if len(p):
        out["cka"] = seed_stats(p, ["kind", "first", "second", "layer_index", "layer"], "cka").to_dict("records")
    return out


def pair(df: pd.DataFrame, norm: str, ref: str = REF) -> pd.DataFrame:
    """The rows of `norm` and of the reference `ref` (none unless the experiment names another)."""
    return df[df["condition"].isin([norm, ref])] if len(df) else df


# ==== rankings: several normalisations side by side ====

def _ranked(s: pd.DataFrame, lowest_first: bool, fmt: str) -> str:
    """'1. GN 0.80 ± 0.01; 2. BN 0.85 ± 0.02' from seed_stats rows keyed by norm; means equal as shown share a
    rank ('1. BN 100.00 ± 0.00; 1. GBN4 100.00 ± 0.00; 3. ...'), in display order."""
    s = s.dropna(subset=["mean"])
    s = s.iloc[[list(s["condition"]).index(c) for c in ordered(s["condition"])]]  # ties in display order
    s = s.assign(shown=[format(m, fmt) for m in s["mean"]])  # (99.996 and 99.998 show alike: a tie)
    s = s.sort_values("shown", key=lambda x: x.astype(float), ascending=lowest_first, kind="stable")  # ties kept
    sd = lambda v: "n/a" if pd.isna(v) else format(v, fmt)  # noqa: E731  one seed: no std
    shown = list(s["shown"])
    ranks = [shown.index(x) + 1 for x in shown]  # (sorted: equal shown means are neighbours)
    return "; ".join(f"{k}. {SHORT.get(r.condition, r.condition)} {m} ± {sd(r.std)}"
                     for k, m, r in zip(ranks, shown, s.itertuples()))


def rankings(r: Results) -> list[list[str]]:
    """[measure, ranking best first with mean ± std over seeds]; empty with two normalisations or fewer."""
    if len(r.norms) <= 2:
        return []
    rows = []
    t = r.table("training")
    if len(t):
        rows.append(["best test accuracy (%, per model)",
                     _ranked(seed_stats(t.assign(pct=t["test_acc"] * 100), ["condition"], "pct"), False, ".2f")])
    ls = at_eps(r.table("layer_sparsity"))
    if len(ls):
        per_model = _per_model(ls, "sparsity")
        rows.append(["sparsest layers (mean layer sparsity over layers, %)",
                     _ranked(seed_stats(per_model.assign(pct=per_model["sparsity"] * 100), ["condition"], "pct"),
                             False, ".1f")])
    cd = shown(r.table("class_dbi"), r.experiment.first_shown_layer)
    for (li, name), g in cd.groupby(["layer_index", "layer"]) if len(cd) else []:
        rows.append([f"purest class clusters, {name} (class DBI, lower first)",
                     _ranked(seed_stats(g, ["condition"], "dbi"), True, ".3f")])
    return rows


def fmt_pm(mean: float, std: float, digits: int = 3) -> str:
    s = "n/a" if pd.isna(std) else f"{std:.{digits}f}"  # one seed: no std
    return f"{mean:.{digits}f} ± {s}"


def side_by_side(rs: list[Results]) -> tuple[list[str], list[list[str]]]:
    """Architectures side by side: a row per (measure, norm), a column per experiment; mean ± std over seeds."""
    measures = [("test accuracy (%)", lambda r: r.table("training"), "test_acc", 100, 2),
                ("mean layer sparsity (%)", lambda r: _per_model(at_eps(r.table("layer_sparsity")), "sparsity"),
                 "sparsity", 100, 1),
                ("class DBI, last layer", lambda r: _last_layer(r.table("class_dbi")), "dbi", 1, 3)]
    norms = ordered({n for r in rs for n in r.norms})
    rows = []
    for name, get, col, scale, digits in measures:
        for n in norms:
            cells = []
            for r in rs:
                d = get(r)
                d = d[d["condition"] == n] if len(d) else d
                cells.append(fmt_pm(d[col].mean() * scale, d[col].std() * scale, digits) if len(d) else "-")
            rows.append([name, SHORT[n]] + cells)
    return ["measure", axis_word(norms)] + [f"{r.experiment.name} ({experiment_label(r.experiment)})" for r in rs], rows


def _per_model(df: pd.DataFrame, col: str) -> pd.DataFrame:
    return df.groupby(["condition", "model_id"], as_index=False)[col].mean() if len(df) else df


def _last_layer(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["layer_index"] == df["layer_index"].max()] if len(df) else df

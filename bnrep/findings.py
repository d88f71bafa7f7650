"""Findings: the paper's section 6 claims judged on your results, and the statistics behind them.

Every claim is judged for each normalisation against `none` (the paper: BatchNorm
against no BatchNorm), from the tables described in `bnrep.store`. Means and
standard deviations are over seeds (pandas' sample std, ddof=1); NaN values (a
DBI of a dead layer) are left out of means and counted in the evidence. The
optimal k is read from the kmeans table's `optimal` column (chosen once, by the
analysis stage), never recomputed here.

No plotting and no file access here: pandas, numpy and scipy only.

    >>> fs = findings(results)   # results: bnrep.report.Results
    >>> [f.verdict for f in fs]
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from bnrep.experiments import Experiment
from bnrep.store import with_norm

N_CLASSES = 10  # every dataset here has 10 classes

# ==== the normalisation axis: one colour, label and tag per norm, everywhere ====

NORMS = ("batch", "group", "layer", "none")  # display order; `none` is the reference
REF = "none"
COLORS = {"batch": "tab:blue", "none": "tab:orange", "group": "tab:green", "layer": "tab:purple"}  # paper: blue/orange
SHORT = {"batch": "BN", "group": "GN", "layer": "LN", "none": "NBN"}
_LABELS = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "none": "no norm"}


def is_paper_pair(norms) -> bool:
    """Only BatchNorm and no normalisation: the paper's study, worded as the paper words it."""
    return set(norms) <= {"batch", "none"}


def norm_labels(norms) -> dict[str, str]:
    """Legend labels; 'no BatchNorm' while the study is the paper's pair."""
    return {**_LABELS, "none": "no BatchNorm" if is_paper_pair(norms) else "no norm"}


def ordered(norms) -> list[str]:
    return sorted(set(norms), key=lambda n: NORMS.index(n) if n in NORMS else len(NORMS))


def present_norms(*dfs: pd.DataFrame) -> list[str]:
    return ordered({n for df in dfs if "norm" in df for n in df["norm"].dropna().unique()})


def pair_names(norm: str, norms) -> tuple[str, str]:
    """How the evidence names the two sides: ('BN', 'no BN') or ('GN', 'no norm')."""
    return SHORT[norm], "no BN" if is_paper_pair(norms) else "no norm"


# ==== one experiment's tables ====

@dataclass(eq=False)
class Results:
    """One experiment's tables (empty DataFrame where a table is missing) and its config.json record."""
    experiment: Experiment
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    n_classes: int = N_CLASSES
    config: dict = field(default_factory=dict)  # config.json: train_hash, analysis_hash, ...

    def __post_init__(self) -> None:
        self.tables = {k: with_norm(v.copy()) for k, v in self.tables.items() if v is not None}

    def table(self, name: str) -> pd.DataFrame:
        df = self.tables.get(name)
        return df if df is not None else pd.DataFrame()

    @property
    def norms(self) -> list[str]:
        """Normalisations with results, else those the experiment lists."""
        have = present_norms(*self.tables.values())
        return have or ordered(getattr(self.experiment, "norms", ("batch", "none")))

    @property
    def label(self) -> str:
        return experiment_label(self.experiment)


def model_label(arch: str, dataset: str) -> str:
    """As in the paper's Table 1: 'CNN MNIST', 'VGG-16 CIFAR10'."""
    arch = {"cnn": "CNN", "vgg16": "VGG-16", "resnet18": "ResNet-18"}.get(arch, arch)
    data = {"digits": "Digits", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
            "cifar10": "CIFAR10", "synthetic": "Synthetic"}.get(dataset, dataset)
    return f"{arch} {data}"


def experiment_label(e: Experiment) -> str:
    return model_label(e.arch, e.dataset)


# ==== aggregation ====

def seed_stats(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """mean, std (ddof=1), n (non-NaN) and n_nan of `value` per `keys`, over seeds."""
    g = df.groupby(keys, sort=True)[value]
    s = g.agg(mean="mean", std="std", n="count", size="size").reset_index()
    s["n_nan"] = s.pop("size") - s["n"]
    return s


def n_seeds(df: pd.DataFrame) -> dict[str, int]:
    return {n: int(k) for n, k in df.groupby("norm")["seed"].nunique().items()} if len(df) else {}


def seeds_text(df: pd.DataFrame) -> str:
    n = n_seeds(df)
    if len(set(n.values())) == 1:
        k = next(iter(n.values()))
        return f"{k} seed" + ("s" if k != 1 else "")
    return " / ".join(f"{n[m]} ({SHORT.get(m, m)})" for m in ordered(n)) + " seeds"


def shown(df: pd.DataFrame, first_layer: int) -> pd.DataFrame:
    return df[df["layer_index"] >= first_layer] if len(df) else df


def at_eps(df: pd.DataFrame) -> pd.DataFrame:
    """Sparsity rows at the smallest threshold (the paper's exact zero when eps = 0 was asked)."""
    return df[df["eps"] == df["eps"].min()] if len(df) and "eps" in df else df


def optimal_k(kmeans: pd.DataFrame) -> pd.DataFrame:
    """Per model and layer, the optimal k (the analysis stage's `optimal` row) and its DBI.

    The analysis stage marks at most one row per (model, layer) and none for a
    dead layer (every DBI NaN), so such a layer has no row here.
    """
    cols = ["model_id", "bn", "norm", "seed", "layer", "layer_index", "k_opt", "dbi"]
    if kmeans.empty or "optimal" not in kmeans:
        return pd.DataFrame(columns=cols)
    best = kmeans[kmeans["optimal"].astype(bool)].sort_values(["model_id", "layer_index"])
    return best.rename(columns={"k": "k_opt"})[cols].reset_index(drop=True)


def compare_layers(df: pd.DataFrame, value: str, norm: str = "batch") -> pd.DataFrame:
    """Per layer, seed-mean of `value` for `norm` (`a`) and for `none` (`ref`); layers with both only."""
    if df.empty:
        return pd.DataFrame(columns=["layer_index", "layer", "a", "ref"])
    m = df[df["norm"].isin([norm, REF])].groupby(["layer_index", "layer", "norm"])[value].mean().unstack("norm")
    m = m.rename(columns={norm: "a", REF: "ref"}).reindex(columns=["a", "ref"])
    return m.dropna().reset_index().sort_values("layer_index", ignore_index=True)


def _pair(df: pd.DataFrame, norm: str) -> pd.DataFrame:
    return df[df["norm"].isin([norm, REF])] if len(df) else df


# ==== verdict rules (documented in the report, RULES below) ====

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
    f"4 (early clusters): the optimal k is the k with the lowest k-means DBI per model and layer, "
    f"chosen by the analysis stage. (a) earlier: the first shown layer whose seed-mean optimal k is "
    f"within +-{K_TOL} of the number of classes comes strictly earlier with BN (or only BN reaches it); "
    f"(b) closer: over the first half of the shown layers, the mean |optimal k - classes| is smaller "
    f"with BN. Both: supported; one: mixed; neither: not supported.",
]
OTHER_NORMS_RULE = ("Other normalisations (GroupNorm GN, LayerNorm LN) are judged against no normalisation "
                    "by the same rules, with 'BN' standing for the normalisation judged and the claim's "
                    "'BatchNorm' read as that normalisation; models of other normalisations are left out.")


def rules(norms) -> list[str]:
    return RULES if is_paper_pair(norms) else RULES + [OTHER_NORMS_RULE]


# ==== findings (paper section 6) ====

@dataclass
class Finding:
    number: int
    claim: str
    verdict: str  # supported | not supported | mixed | not evaluated
    detail: str
    numbers: dict = field(default_factory=dict)
    norm: str = "batch"  # the normalisation judged against none

    def line(self) -> str:
        return f"[{self.verdict}] {self.number}. {self.claim}\n    {self.detail}"


def claim(number: int, norm: str = "batch") -> str:
    return CLAIMS[number].replace("BatchNorm", _LABELS[norm]) if norm in _LABELS else CLAIMS[number]


def _not_evaluated(number: int, tables: list[str], norm: str = "batch") -> Finding:
    return Finding(number, claim(number, norm), "not evaluated",
                   f"needs results/{' and results/'.join(tables)}, which are missing.", norm=norm)


def _names(layers) -> str:
    return ", ".join(map(str, layers)) or "none"


def finding_sparsity(layer_sparsity: pd.DataFrame, norm: str = "batch") -> Finding:
    """Claim 1: `norm` neither consistently increases nor decreases layer sparsity."""
    c = compare_layers(layer_sparsity, "sparsity", norm)
    if c.empty:
        return _not_evaluated(1, ["layer_sparsity"], norm)
    a, ref = pair_names(norm, present_norms(layer_sparsity))
    d = c["a"] - c["ref"]
    more, less, n = c["layer"][d > SPARSITY_TOL], c["layer"][d < -SPARSITY_TOL], len(c)
    if len(more) == n or len(less) == n:
        verdict = "not supported"
    elif (len(more) == 0) != (len(less) == 0) or max(len(more), len(less)) >= MOSTLY * n:
        verdict = "mixed"
    else:
        verdict = "supported"
    detail = (f"{a} sparser in {len(more)} of {n} layers ({_names(more)}), less sparse in {len(less)} "
              f"({_names(less)}), within {SPARSITY_TOL * 100:g} pp in {n - len(more) - len(less)}; "
              f"mean difference {a} - {ref} {d.mean() * 100:+.1f} pp.")
    numbers = {"layers": n, "sparser": list(more), "less_sparse": list(less),
               "diff_pp": {l: round(v * 100, 3) for l, v in zip(c["layer"], d)}}
    return Finding(1, claim(1, norm), verdict, detail, numbers, norm)


def model_sparsity(training: pd.DataFrame, layer_sparsity: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean layer sparsity over all layers, test accuracy, gap (train - test)."""
    s = layer_sparsity.groupby("model_id")["sparsity"].mean().rename("sparsity")
    t = training.set_index("model_id")[["norm", "train_acc", "test_acc"]]
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


def finding_generalisation(training: pd.DataFrame, layer_sparsity: pd.DataFrame, norm: str = "batch") -> Finding:
    """Claim 2: sparsity does not correlate with better generalisation (models of `norm` and none)."""
    if training.empty or layer_sparsity.empty:
        return _not_evaluated(2, [t for t, d in [("training", training), ("layer_sparsity", layer_sparsity)]
                                  if d.empty], norm)
    norms = present_norms(training, layer_sparsity)
    m = model_sparsity(_pair(training, norm), _pair(layer_sparsity, norm))
    if len(m) < MIN_MODELS:
        return Finding(2, claim(2, norm), "not evaluated",
                       f"only {len(m)} models with both tables; need {MIN_MODELS}.", norm=norm)
    test, gap = _corr(m["sparsity"], m["test_acc"]), _corr(m["sparsity"], m["gap"])
    st, sg = _significant_signs(test), _significant_signs(gap)
    better, worse = (1 in st or -1 in sg), (-1 in st or 1 in sg)
    verdict = "not supported" if better else "mixed" if worse else "supported"
    labels = norm_labels(norms)
    within = {labels[n]: _corr(g["sparsity"], g["test_acc"])["spearman_r"]
              for n in (norm, REF) for g in [m[m["norm"] == n]] if len(g) >= 3}
    setting = "BN setting" if is_paper_pair(norms) else "normalisation"
    detail = (f"across {len(m)} models, mean layer sparsity vs test accuracy: Pearson r = {test['pearson_r']:.2f} "
              f"(p = {test['pearson_p']:.3g}), Spearman {test['spearman_r']:.2f} (p = {test['spearman_p']:.3g}); "
              f"vs generalisation gap: Pearson r = {gap['pearson_r']:.2f} (p = {gap['pearson_p']:.3g}), "
              f"Spearman {gap['spearman_r']:.2f} (p = {gap['spearman_p']:.3g}). Within one {setting}, "
              f"Spearman vs test accuracy: " + (", ".join(f"{k} {_num(v)}" for k, v in within.items()) or "n/a") + ".")
    return Finding(2, claim(2, norm), verdict, detail,
                   {"models": len(m), "test_acc": test, "gap": gap, "within_spearman_test_acc": within}, norm)


def _num(v: float) -> str:
    return "n/a (constant)" if pd.isna(v) else f"{v:.2f}"


def _nan_note(df: pd.DataFrame) -> str:
    n = int(df["dbi"].isna().sum()) if len(df) else 0
    return f" {n} of {len(df)} DBI values NaN (dead layers), left out." if n else ""


def finding_purity(class_dbi: pd.DataFrame, kmeans: pd.DataFrame, first_layer: int, norm: str = "batch") -> Finding:
    """Claim 3: class DBI lower with `norm` in most shown layers; k-means DBI lower at the final layer."""
    parts, notes, numbers = [], [], {}
    a, ref = pair_names(norm, present_norms(class_dbi, kmeans))
    cd = shown(_pair(class_dbi, norm), first_layer)
    c = compare_layers(cd, "dbi", norm)
    if len(c):
        lower, gap = c["layer"][c["a"] < c["ref"]], float((c["ref"] - c["a"]).mean())
        parts.append(len(lower) > len(c) / 2 and gap > 0)
        notes.append(f"class DBI lower with {a} in {len(lower)} of {len(c)} shown layers "
                     f"(mean gap {ref} - {a} {gap:+.2f}).{_nan_note(cd)}")
        numbers["class_dbi"] = {"layers": len(c), "lower": list(lower), "mean_gap": gap}
    k = compare_layers(shown(optimal_k(kmeans), first_layer), "dbi", norm)
    if len(k):
        lower, last = k["layer"][k["a"] < k["ref"]], k.iloc[-1]
        parts.append(bool(last["a"] < last["ref"]))
        notes.append(f"k-means DBI at optimal k lower with {a} in {len(lower)} of {len(k)} layers; final "
                     f"shown layer {last['layer']}: {a} {last['a']:.2f} vs {ref} {last['ref']:.2f}.")
        numbers["kmeans_dbi"] = {"layers": len(k), "lower": list(lower), "final_layer": last["layer"],
                                 "final": float(last["a"]), "final_ref": float(last["ref"])}
    if not parts:
        return _not_evaluated(3, ["class_dbi", "kmeans"], norm)
    verdict = "supported" if all(parts) else "not supported" if not any(parts) else "mixed"
    if len(parts) == 1:
        notes.append("(only one of the two parts could be evaluated.)")
    return Finding(3, claim(3, norm), verdict, " ".join(notes), numbers, norm)


def _first_reach(curve: pd.Series, n_classes: int):
    hit = curve[(curve - n_classes).abs() <= K_TOL]
    return int(hit.index.min()) if len(hit) else None


def finding_early_clusters(kmeans: pd.DataFrame, first_layer: int, n_classes: int = N_CLASSES,
                           norm: str = "batch") -> Finding:
    """Claim 4: `norm` reaches ~n_classes clusters earlier; early optimal k closer to n_classes."""
    best = shown(_pair(optimal_k(kmeans), norm), first_layer)
    if best.empty or best["norm"].nunique() < 2:
        return _not_evaluated(4, ["kmeans"], norm)
    a, ref = pair_names(norm, present_norms(kmeans))
    layers = sorted(best["layer_index"].unique())
    early = layers[: math.ceil(len(layers) / 2)]
    e = best[best["layer_index"].isin(early)]
    dist = (e["k_opt"] - n_classes).abs().groupby(e["norm"]).mean()
    curve = best.groupby(["norm", "layer_index"])["k_opt"].mean()
    reach = {n: _first_reach(curve.loc[n], n_classes) if n in curve.index.get_level_values(0) else None
             for n in (norm, REF)}
    earlier = reach[norm] is not None and (reach[REF] is None or reach[norm] < reach[REF])
    closer = bool(dist.get(norm, math.inf) < dist.get(REF, math.inf))
    verdict = "supported" if earlier and closer else "mixed" if earlier or closer else "not supported"
    kmax = int(kmeans["k"].max())
    at = {n: "never" if v is None else f"at layer {v}" for n, v in reach.items()}
    detail = (f"seed-mean optimal k first within +-{K_TOL} of {n_classes} classes {at[norm]} with {a}, "
              f"{at[REF]} without; mean |optimal k - {n_classes}| "
              f"over early layers {_names(early)}: {a} {dist.get(norm, math.nan):.2f}, "
              f"{ref} {dist.get(REF, math.nan):.2f}.")
    if kmax < n_classes - K_TOL:
        detail += f" Note: k only goes up to {kmax}, so {n_classes} clusters cannot be found."
    return Finding(4, claim(4, norm), verdict, detail,
                   {"first_layer_reaching": {SHORT[n]: v for n, v in reach.items()}, "early_layers": early,
                    "early_distance": {SHORT[n]: float(v) for n, v in dist.items()}}, norm)


def judged_norms(r: Results) -> list[str]:
    """The normalisations judged against none (the paper: batch)."""
    return [n for n in r.norms if n != REF] or ["batch"]


def findings(r: Results) -> list[Finding]:
    """The four claims for each normalisation against none, claims in order within each norm."""
    first, out = r.experiment.first_shown_layer, []
    ls = at_eps(r.table("layer_sparsity"))
    for n in judged_norms(r):
        out += [finding_sparsity(ls, n), finding_generalisation(r.table("training"), ls, n),
                finding_purity(r.table("class_dbi"), r.table("kmeans"), first, n),
                finding_early_clusters(r.table("kmeans"), first, r.n_classes, n)]
    return out


def finding_sparsity_across(per_exp: dict[str, Finding]) -> Finding:
    """Claim 1 across experiments: does a norm's dominant direction differ between experiments?"""
    dirs, norm = {}, next(iter(per_exp.values())).norm if per_exp else "batch"
    a = SHORT.get(norm, norm)
    for name, f in per_exp.items():
        if f.verdict != "not evaluated":
            more, less = len(f.numbers["sparser"]), len(f.numbers["less_sparse"])
            dirs[name] = "sparser" if more > less else "less sparse" if less > more else "neither"
    if not dirs:
        return _not_evaluated(1, ["layer_sparsity"], norm)
    same = len(set(dirs.values())) == 1 and "neither" not in dirs.values()
    all_consistent = all(per_exp[n].verdict == "not supported" for n in dirs)
    verdict = "supported" if not same else "not supported" if all_consistent else "mixed"
    detail = "direction in most layers: " + "; ".join(f"{n}: {a} {d}" for n, d in dirs.items()) + "."
    return Finding(1, claim(1, norm) + " (across experiments)", verdict, detail, {"direction": dirs}, norm)


# ==== rankings: several normalisations side by side ====

def _ranked(s: pd.DataFrame, lowest_first: bool, fmt: str) -> str:
    """'1. GN 0.80 ± 0.01; 2. BN 0.85 ± 0.02' from seed_stats rows keyed by norm."""
    s = s.dropna(subset=["mean"]).sort_values("mean", ascending=lowest_first)
    sd = lambda v: "n/a" if pd.isna(v) else format(v, fmt)  # noqa: E731  one seed: no std
    return "; ".join(f"{i}. {SHORT.get(r.norm, r.norm)} {r.mean:{fmt}} ± {sd(r.std)}"
                     for i, r in enumerate(s.itertuples(), start=1))


def rankings(r: Results) -> list[list[str]]:
    """[measure, ranking best first with mean ± std over seeds]; empty with two normalisations or fewer."""
    if len(r.norms) <= 2:
        return []
    rows = []
    t = r.table("training")
    if len(t):
        rows.append(["best test accuracy (%, per model)",
                     _ranked(seed_stats(t.assign(pct=t["test_acc"] * 100), ["norm"], "pct"), False, ".2f")])
    ls = at_eps(r.table("layer_sparsity"))
    if len(ls):
        per_model = ls.groupby(["norm", "model_id"], as_index=False)["sparsity"].mean()
        rows.append(["sparsest layers (mean layer sparsity over layers, %)",
                     _ranked(seed_stats(per_model.assign(pct=per_model["sparsity"] * 100), ["norm"], "pct"),
                             False, ".1f")])
    cd = shown(r.table("class_dbi"), r.experiment.first_shown_layer)
    for (li, name), g in cd.groupby(["layer_index", "layer"]) if len(cd) else []:
        rows.append([f"purest class clusters, {name} (class DBI, lower first)",
                     _ranked(seed_stats(g, ["norm"], "dbi"), True, ".3f")])
    return rows

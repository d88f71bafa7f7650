"""Findings: the paper's section 6 claims judged on your results, and the statistics behind them.

Every claim is judged for each condition against the study's reference (`none`
unless set; the paper: BatchNorm against no BatchNorm, worded so), from the tables described in `bnrep.store`, by the rules
in bnrep.rules (shown in every report): per-layer differences count only beyond seed
noise (Welch's t-test), and a verdict built on data that cannot carry it
(missed stopping rules, too few seeds, a learning rate at the edge of its
sweep, mostly-zero layers, a correlation that is only the difference between
normalisation groups) says "inconclusive" and names the reason. The optimal k
is read from the kmeans table's `optimal` column (chosen once, by the analysis
stage), never recomputed here.

No plotting and no file access here: pandas, numpy and scipy only.

    >>> fs = findings(results)   # results: bnrep.results.Results
    >>> [f.verdict_text for f in fs]
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from bnrep.correlations import (MIN_MODELS, MIN_WITHIN, P_MAX, between_groups_reason, correlate, group_word,
                                only_between_groups, p_text as _p, partial_corr, significant_signs)
from bnrep.axis import overrides_of
from bnrep.conditions import CLAIM_TABLES, Condition, conditions
from bnrep.measures import MEASURES
from bnrep.results import (NORM_NAMES, REF, SHORT, Results, at_eps, early_layers, eps_values, is_paper_pair,
                           norm_labels, optimal_k, pair, pair_names, present_norms, rectified, shown)
from bnrep.rules import CLAIMS, JUDGED, K_TOL, MOSTLY, SPARSITY_TOL

def welch_p(a, b) -> float:
    """Two-sided p of Welch's t-test over seeds (scipy, equal_var=False); NaN when a side has < 2 values.

    Two groups without spread and different means give p = 0 (scipy's t = inf).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant groups: scipy warns, then returns inf / NaN as wanted
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare_layers(df: pd.DataFrame, value: str, norm: str = "batch", ref: str = REF) -> pd.DataFrame:
    """Per layer, seed-mean of `value` for `norm` (`a`) and for the reference (`ref`, default none) and Welch's p over seeds;
    layers with values on both sides only."""
    cols = ["layer_index", "layer", "a", "ref", "p"]
    rows = []
    for (li, name), g in df.groupby(["layer_index", "layer"], sort=True) if len(df) else []:
        a, b = g.loc[g["condition"] == norm, value], g.loc[g["condition"] == ref, value]
        if a.notna().any() and b.notna().any():
            rows.append([li, name, a.mean(), b.mean(), welch_p(a, b)])
    return pd.DataFrame(rows, columns=cols)


def _lower_higher(c: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The layers where `a` is detectably (Welch p < P_MAX) below, and above, `ref` (compare_layers' rows)."""
    return c["layer"][(c["a"] < c["ref"]) & (c["p"] < P_MAX)], c["layer"][(c["a"] > c["ref"]) & (c["p"] < P_MAX)]


# ==== findings (paper section 6) ====

@dataclass
class Finding:
    number: int
    claim: str
    verdict: str  # supported | not supported | mixed | inconclusive | not evaluated
    detail: str
    numbers: dict = field(default_factory=dict)
    norm: str = "batch"  # the condition judged against the reference
    caveats: list[str] = field(default_factory=list)  # conditions that undermine the verdict, named
    ref: str = REF  # the reference condition (Experiment.reference)

    def record(self) -> dict:
        """As findings.json holds it: its `norm` named `condition` (the condition judged, as the tables and the
        finding's numbers name it)."""
        return {("condition" if k == "norm" else k): v for k, v in dataclasses.asdict(self).items()}

    @property
    def verdict_text(self) -> str:
        """The verdict with the conditions that undermine it, side by side."""
        return self.verdict_said()

    def verdict_said(self, said: tuple[str, ...] = ()) -> str:
        """verdict_text without the caveats in `said` (named once above a table of findings)."""
        caveats = [c for c in self.caveats if c not in said]
        return self.verdict + (f" ({'; '.join(caveats)})" if caveats else "")

    def line(self, said: tuple[str, ...] = ()) -> str:
        """The finding as text; caveats in `said` (named once above it) are left out."""
        caveats = "".join(f"\n    - {c}" for c in self.caveats if c not in said)
        return f"[{self.verdict}] {self.number}. {self.claim}{caveats}\n    {self.detail}"


def claim(number: int, norm: str = "batch", ref: str = REF) -> str:
    """The paper's claim about `norm`, judged against `ref`: the reference is named in it unless the paper's
    'without' says it all (`ref` none, `norm` differing from it in the normalisation alone)."""
    return worded(number, reference_name(ref, norm), reference_name(norm, ref) if names_reference(norm, ref) else None)


def worded(number: int, named: str, other: str | None = None) -> str:
    """Claim `number` about `named` (the paper: BatchNorm) against `other` (None: the paper's 'trained without')."""
    text = CLAIMS[number] if named == "BatchNorm" else (
        CLAIMS[number].replace("where BatchNorm clusters", "where its clusters").replace("BatchNorm", named))
    if other is not None:
        old, new = {1: ("tions.", f"tions, compared with {other}."), 2: ("ion.", f"ion (models with {named} and with "
                    f"{other})."), 3: ("trained without", f"with {other}"), 4: ("network", f"network than {other}")}[number]
        text = text.replace(old, new)
    return text[:1].upper() + text[1:]


def names_reference(norm: str, ref: str = REF) -> bool:
    """Whether a claim names its reference: one other than none, or none where `norm` changes the recipe too
    (without what: the normalisation, or the batch size?)."""
    return ref != REF or bool(overrides_of(norm))


def reference_name(norm: str, ref: str = REF) -> str:
    """`ref` as a claim comparing it with `norm` names it, with the study's recipe where `norm` changes it and
    `ref` does not ('no norm at the study's batch size'; the judged side too: 'BatchNorm at the study's batch
    size' against BatchNorm at batch size 4)."""
    own = [k.replace("_", " ") for k in overrides_of(norm) if k not in overrides_of(ref)]
    return NORM_NAMES.get(ref, ref) + (f" at the study's {' and '.join(own)}" if own else "")


def _not_evaluated(number: int, tables: dict[str, pd.DataFrame], norm: str = "batch", ref: str = REF) -> Finding:
    """Why a claim could not be judged: its tables are missing, or hold no finite value on both sides."""
    missing = [t for t, d in tables.items() if d.empty]
    if missing:
        why = f"needs results/{' and results/'.join(missing)}, which are missing."
    else:
        a, b = pair_names(norm, present_norms(*tables.values()), ref)
        has = lambda c: any("condition" in d and (d["condition"] == c).any() for d in tables.values())  # noqa: E731
        value = CLAIM_TABLES[number]  # (table -> the value a model must have there)
        empty = [name for c, name in ((norm, a), (ref, b))
                 if not any(np.isfinite(d.loc[d["condition"] == c, value[t]].to_numpy(float)).any()
                            for t, d in tables.items() if "condition" in d and value.get(t) in d)]
        why = (f"this study has no models of its reference condition ({b}, `{ref}`): every claim compares {a} with "
               f"that condition (add it to the conditions, or name another of them with --reference)." if not has(ref) else
               f"results/{' and results/'.join(tables)} hold no {a} models." if not has(norm) else
               f"results/{' and results/'.join(tables)} hold no finite value of {' or '.join(empty)} models "
               f"(models that diverged are not analysed)." if empty else
               f"results/{' and results/'.join(tables)} hold no layer with a finite value of both {a} and {b} "
               f"models.")
    return Finding(number, claim(number, norm, ref), "not evaluated", why, norm=norm, ref=ref)


def _names(layers) -> str:
    return ", ".join(map(str, layers)) or "none"


def finding_sparsity(layer_sparsity: pd.DataFrame, norm: str = "batch", ref: str = REF) -> Finding:
    """Claim 1: `norm` neither consistently increases nor decreases layer sparsity."""
    c = compare_layers(layer_sparsity, "sparsity", norm, ref)
    if c.empty:
        return _not_evaluated(1, {"layer_sparsity": layer_sparsity}, norm, ref)
    a, b = pair_names(norm, present_norms(layer_sparsity), ref)
    d, seen = c["a"] - c["ref"], c["p"] < P_MAX
    more, less, n = c["layer"][(d > SPARSITY_TOL) & seen], c["layer"][(d < -SPARSITY_TOL) & seen], len(c)
    if len(more) == n or len(less) == n:
        verdict = "not supported"
    elif (len(more) == 0) != (len(less) == 0) or max(len(more), len(less)) >= MOSTLY * n:
        verdict = "mixed"
    else:
        verdict = "supported"
    per_layer = ", ".join(f"{l} {v * 100:+.1f} pp (p {_p(p)})" for l, v, p in zip(c["layer"], d, c["p"]))
    detail = (f"{a} sparser in {len(more)} of {n} layers ({_names(more)}), less sparse in {len(less)} "
              f"({_names(less)}), no detectable difference (within {SPARSITY_TOL * 100:g} pp or Welch p >= "
              f"{P_MAX}{', or untestable: under 2 seeds a side' if c['p'].isna().any() else ''}) in "
              f"{n - len(more) - len(less)}; mean difference {a} - {b} {d.mean() * 100:+.1f} pp; "
              f"per layer: {per_layer}.")
    numbers = {"layers": n, "sparser": list(more), "less_sparse": list(less),
               "diff_pp": {l: round(v * 100, 3) for l, v in zip(c["layer"], d)},
               "welch_p": dict(zip(c["layer"], c["p"]))}
    return Finding(1, claim(1, norm, ref), verdict, detail, numbers, norm, ref=ref)


def sparsity_by_eps(layer_sparsity: pd.DataFrame, norm: str = "batch", ref: str = REF) -> dict[float, Finding]:
    """Claim 1 judged at each threshold eps in the table, by the same rule."""
    return {e: finding_sparsity(at_eps(layer_sparsity, e), norm, ref) for e in eps_values(layer_sparsity)}


def eps_robustness(f: Finding, by_eps: dict[float, Finding], undermined: bool = False) -> Finding:
    """Claim 1 (at the smallest eps) with its verdict at every eps and whether the threshold changes it;
    `undermined`: a condition makes the verdict inconclusive (bnrep.conditions), which the per-eps verdicts of
    the rule alone would otherwise seem to contradict."""
    if len(by_eps) < 2 or f.verdict == "not evaluated":
        return f
    a = pair_names(f.norm, [f.norm, f.ref], f.ref)[0]
    missing = [e for e, g in by_eps.items() if g.verdict == "not evaluated"]  # (no results there: no change)
    changed = [e for e, g in by_eps.items() if g.verdict != f.verdict and e not in missing]
    base = _direction(f)  # the same verdict with the direction reversed is no robust finding either
    reversed_at = [e for e, g in by_eps.items() if e not in missing + changed and "neither" != _direction(g) != base
                   and base != "neither"]
    per = "; ".join(f"eps {e:g}: {g.verdict}" + ("" if g.verdict == "not evaluated" else
                    f" ({a} sparser in {len(g.numbers['sparser'])}, less sparse in "
                    f"{len(g.numbers['less_sparse'])} of {g.numbers['layers']} layers)") for e, g in by_eps.items())
    said = ("robust to the threshold: the same verdict at every eps" if not changed else
            f"not robust to the threshold: the verdict changes at eps {_names(f'{e:g}' for e in changed)}")
    if missing and not changed:
        said = (f"robust to the threshold where it could be judged (not at eps {_names(f'{e:g}' for e in missing)}: "
                f"no results on both sides there)")
    if reversed_at:
        said = (f"not robust to the threshold: {a} is {base} in more layers than the other way round at the smallest "
                f"eps, and more layers go the other way at eps "
                f"{_names(f'{e:g}' for e in reversed_at)}" + (f"; the verdict changes at eps "
                                                              f"{_names(f'{e:g}' for e in changed)}" if changed else ""))
    numbers = {**f.numbers, "robust_to_eps": not changed and not reversed_at, "changed_at": [f"{e:g}" for e in changed],
               "direction_reversed_at": [f"{e:g}" for e in reversed_at],
               "not_evaluated_at": [f"{e:g}" for e in missing], "by_eps": {
        f"{e:g}": {"verdict": g.verdict, "sparser": g.numbers.get("sparser", []),
                   "less_sparse": g.numbers.get("less_sparse", []), "diff_pp": g.numbers.get("diff_pp", {})}
        for e, g in by_eps.items()}}
    alone = " (the rule alone: the conditions named make the verdict itself inconclusive)" if undermined else ""
    return dataclasses.replace(f, detail=f"{f.detail} By threshold{alone}: {per}; {said}.", numbers=numbers)


def model_sparsity(training: pd.DataFrame, layer_sparsity: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean layer sparsity over all layers, test accuracy, gap (train - test)."""
    s = layer_sparsity.groupby("model_id")["sparsity"].mean().rename("sparsity")
    t = training.set_index("model_id")[["condition", "train_acc", "test_acc"]]
    m = t.join(s, how="inner").dropna(subset=["sparsity", "test_acc", "train_acc"])
    return m.assign(gap=m["train_acc"] - m["test_acc"]).reset_index()


def _between_groups_only(m: pd.DataFrame, across: dict[str, dict], partial: dict[str, dict]) -> list[str]:
    """Targets whose counted correlation does not survive controlling for the normalisation."""
    return [y for y in across if m["condition"].nunique() > 1 and only_between_groups(across[y], partial[y])]


def finding_generalisation(training: pd.DataFrame, layer_sparsity: pd.DataFrame, norm: str = "batch", ref: str = REF) -> Finding:
    """Claim 2: sparsity does not correlate with better generalisation (models of `norm` and none)."""
    if training.empty or layer_sparsity.empty:
        return _not_evaluated(2, {"training": training, "layer_sparsity": layer_sparsity}, norm, ref)
    norms = present_norms(training, layer_sparsity)
    m = model_sparsity(pair(training, norm, ref), pair(layer_sparsity, norm, ref))
    if not {norm, ref} <= set(m["condition"]):  # (a correlation over one side alone says nothing of the claim)
        return _not_evaluated(2, {"training": training, "layer_sparsity": layer_sparsity}, norm, ref)
    if len(m) < MIN_MODELS:
        return Finding(2, claim(2, norm, ref), "not evaluated",
                       f"only {len(m)} models with both tables; need {MIN_MODELS}.", norm=norm, ref=ref)
    test, gap = correlate(m["sparsity"], m["test_acc"]), correlate(m["sparsity"], m["gap"])
    st, sg = significant_signs(test), significant_signs(gap)
    better, worse = (1 in st or -1 in sg), (-1 in st or 1 in sg)
    verdict = "not supported" if better else "mixed" if worse else "supported"
    same = [name for col, name in (("sparsity", "mean layer sparsity"), ("test_acc", "test accuracy"),
                                   ("gap", "the generalisation gap")) if m[col].nunique() == 1]
    if all(pd.isna(c[f"{k}_r"]) for c in (test, gap) for k in ("pearson", "spearman")):  # nothing to correlate
        verdict = "inconclusive"  # (no correlation computed is not "no correlation")
    labels, word = norm_labels(norms), group_word((norm, ref))  # normalisation, or condition: what differs
    within = {n: correlate(g["sparsity"], g["test_acc"])["spearman_r"]  # by condition, as every table names it
              for n in (norm, ref) for g in [m[m["condition"] == n]] if len(g) >= MIN_WITHIN}
    partial = {"test_acc": partial_corr(m, "sparsity", "test_acc"), "gap": partial_corr(m, "sparsity", "gap")}
    setting = "BN setting" if is_paper_pair(norms) else word
    detail = (f"across {len(m)} models, mean layer sparsity vs test accuracy: Pearson r = {_num(test['pearson_r'])} "
              f"(p = {_p(test['pearson_p'])}), Spearman {_num(test['spearman_r'])} (p = {_p(test['spearman_p'])}); "
              f"vs generalisation gap: Pearson r = {_num(gap['pearson_r'])} (p = {_p(gap['pearson_p'])}), "
              f"Spearman {_num(gap['spearman_r'])} (p = {_p(gap['spearman_p'])}). Within one {setting}, "
              f"Spearman vs test accuracy: {_within_text({labels[n]: v for n, v in within.items()}, [labels[norm], labels[ref]])}. Controlling for the {word} (partial Pearson): vs test accuracy "
              f"r = {_num(partial['test_acc']['pearson_r'])} (p = {_p(partial['test_acc']['pearson_p'])}), "
              f"vs gap r = {_num(partial['gap']['pearson_r'])} (p = {_p(partial['gap']['pearson_p'])}).")
    f = Finding(2, claim(2, norm, ref), verdict, detail, {"models": len(m), "test_acc": test, "gap": gap,
                                                     "within_spearman_test_acc": within, "partial": partial}, norm,
                ref=ref)
    if verdict == "inconclusive":
        f.caveats.append(f"no correlation can be computed: {' and '.join(same) or 'no measure'} "
                         f"{'is' if len(same) == 1 else 'are'} the same for every model")
    lost = _between_groups_only(m, {"test_acc": test, "gap": gap}, partial)
    if lost and verdict in JUDGED:
        f.verdict = "inconclusive"
        f.caveats += [f"the correlation with {'test accuracy' if y == 'test_acc' else 'the gap'} "
                      f"{between_groups_reason({'test_acc': test, 'gap': gap}[y], partial[y], word)}" for y in lost]
    return f


def _within_text(within: dict[str, float], groups: list[str]) -> str:
    """Spearman r within each group, or n/a and why (fewer than MIN_WITHIN models)."""
    if not within:
        return f"n/a (fewer than {MIN_WITHIN} models of each)"
    return ", ".join(f"{g} {_num(within[g])}" if g in within else f"{g} n/a (fewer than {MIN_WITHIN} models)"
                     for g in groups)


def _num(v: float) -> str:
    return "n/a (constant)" if pd.isna(v) else f"{v:.2f}"


def _value(x: float, sign: str = "") -> str:
    """Two decimals, or two significant digits below 0.1 (DBI 0.009 against 0.004 read "0.01 vs 0.00")."""
    return f"{x:{sign}.2f}" if abs(x) >= 0.1 or x == 0 or pd.isna(x) else f"{x:{sign}.2g}"


def _nan_note(df: pd.DataFrame) -> str:
    n = int(df["dbi"].isna().sum()) if len(df) else 0
    return f" {n} of {len(df)} DBI values NaN (dead layers), left out." if n else ""


def finding_purity(class_dbi: pd.DataFrame, kmeans: pd.DataFrame, first_layer: int, norm: str = "batch", ref: str = REF) -> Finding:
    """Claim 3: class DBI lower with `norm` in most shown layers; k-means DBI lower at the final layer."""
    parts, notes, numbers = [], [], {}
    a, b = pair_names(norm, present_norms(class_dbi, kmeans), ref)
    cd = shown(pair(class_dbi, norm, ref), first_layer)
    c = compare_layers(cd, "dbi", norm, ref)
    if len(c):
        (lower, higher), gap = _lower_higher(c), float((c["ref"] - c["a"]).mean())
        parts.append(len(lower) > len(c) / 2 and gap > 0)
        notes.append(f"class DBI lower with {a} in {len(lower)} of {len(c)} shown layers ({_names(lower)}), higher in "
                     f"{len(higher)} ({_names(higher)}), "
                     f"no detectable difference in {len(c) - len(lower) - len(higher)} "
                     f"(mean gap {b} - {a} {_value(gap, '+')}).{_nan_note(cd)}")
        numbers["class_dbi"] = {"layers": len(c), "lower": list(lower), "higher": list(higher), "mean_gap": gap,
                                "welch_p": dict(zip(c["layer"], c["p"]))}
    best = shown(pair(optimal_k(kmeans), norm, ref), first_layer)
    k = compare_layers(best, "dbi", norm, ref)
    if len(k):
        (lower, higher), last = _lower_higher(k), k.iloc[-1]
        notes.append(f"k-means DBI at optimal k detectably lower with {a} in {len(lower)} of {len(k)} layers "
                     f"({_names(lower)}), higher in {len(higher)} ({_names(higher)}); ")
        numbers["kmeans_dbi"] = {"layers": len(k), "lower": list(lower), "higher": list(higher)}
        end = shown(pair(kmeans, norm, ref), first_layer).sort_values("layer_index").iloc[-1]  # dead or not
        if last["layer_index"] == end["layer_index"]:
            parts.append(bool(last["a"] < last["ref"] and last["p"] < P_MAX))
            notes[-1] += (f"final shown layer {last['layer']}: {a} {_value(last['a'])} vs {b} {_value(last['ref'])} "
                          f"(Welch p {_p(last['p'])}).")
            numbers["kmeans_dbi"].update(final_layer=last["layer"], final=float(last["a"]),
                                         final_ref=float(last["ref"]), final_p=last["p"])
        else:  # the claim is about the final layer: an earlier one does not stand in for it
            at_end = kmeans[kmeans["layer_index"].eq(end["layer_index"])]
            none = [(n, "no finite DBI in any seed: a dead layer" if at_end["condition"].eq(c).any()
                     else "not measured yet: the analysis is not finished")
                    for n, c in ((a, norm), (b, ref))
                    if not (best["layer_index"].eq(end["layer_index"]) & best["condition"].eq(c)).any()]
            notes[-1] += (f"the final shown layer {end['layer']} has no optimal k with "
                          f"{' or '.join(f'{n} ({why})' for n, why in none)}, so the final-layer part is not "
                          f"evaluated.")
    if not parts:
        f = _not_evaluated(3, {"class_dbi": class_dbi, "kmeans": kmeans}, norm, ref)
        return dataclasses.replace(f, detail=" ".join([f.detail, *notes]))
    verdict = "supported" if all(parts) else "not supported" if not any(parts) else "mixed"
    if len(parts) == 1:
        notes.append("(only one of the two parts could be evaluated.)")
    return Finding(3, claim(3, norm, ref), verdict, " ".join(notes), numbers, norm, ref=ref)


def _first_reach(curve: pd.Series, n_classes: int):
    hit = curve[(curve - n_classes).abs() <= K_TOL]
    return int(hit.index.min()) if len(hit) else None


def finding_early_clusters(kmeans: pd.DataFrame, first_layer: int, n_classes: int = 10,
                           norm: str = "batch", ref: str = REF) -> Finding:
    """Claim 4: `norm` reaches ~n_classes clusters earlier; early optimal k closer to n_classes
    (Results.n_classes: the data's; 0 when it is not known)."""
    if not n_classes:
        return Finding(4, claim(4, norm, ref), "not evaluated", "the data's class count is not known (config.json "
                       "records no classes and the image folder is not here).", norm=norm, ref=ref)
    best = shown(pair(optimal_k(kmeans), norm, ref), first_layer)
    if best.empty or best["condition"].nunique() < 2:
        return _not_evaluated(4, {"kmeans": kmeans}, norm, ref)
    a, ref_name = pair_names(norm, present_norms(kmeans), ref)
    early = early_layers(best)
    e = best[best["layer_index"].isin(early)]
    per_model = (e["k_opt"] - n_classes).abs().groupby([e["condition"], e["model_id"]]).mean()  # over early layers
    dist = per_model.groupby(level="condition").mean()
    p = welch_p(per_model.get(norm, []), per_model.get(ref, []))
    curve = best.groupby(["condition", "layer_index"])["k_opt"].mean()
    reach = {n: _first_reach(curve.loc[n], n_classes) if n in curve.index.get_level_values(0) else None
             for n in (norm, ref)}
    earlier = reach[norm] is not None and (reach[ref] is None or reach[norm] < reach[ref])
    closer = bool(dist.get(norm, math.inf) < dist.get(ref, math.inf) and p < P_MAX)
    verdict = "supported" if earlier and closer else "mixed" if earlier or closer else "not supported"
    kmax = int(kmeans["k"].max())
    name = best.drop_duplicates("layer_index").set_index("layer_index")["layer"]  # as the other claims say them
    at = {n: "never" if v is None else f"at {name[v]}" for n, v in reach.items()}
    detail = (f"seed-mean optimal k first within +-{K_TOL} of {n_classes} classes {at[norm]} with {a}, "
              f"{at[ref]} {f'with {ref_name}' if names_reference(norm, ref) else 'without'}; mean |optimal k - {n_classes}| "
              f"over the early layers {_names(name[early])}: {a} {dist.get(norm, math.nan):.2f}, "
              f"{ref_name} {dist.get(ref, math.nan):.2f} (Welch p {_p(p)}).")
    if kmax < n_classes - K_TOL:
        detail += f" Note: k only goes up to {kmax}, so {n_classes} clusters cannot be found."
    return Finding(4, claim(4, norm, ref), verdict, detail,
                   {"first_layer_reaching": reach, "early_layers": early,  # by condition, as every table names it
                    "early_distance": {n: float(v) for n, v in dist.items()}, "welch_p": p}, norm, ref=ref)


# ==== conditions that undermine verdicts (design.md: scientific output states its own limits) ====

def _no_rectifier(number: int, kinds, norm: str, ref: str = REF) -> Finding:
    return Finding(number, claim(number, norm, ref), "not evaluated",
                   f"no probe is a rectifier (activations: {', '.join(sorted(kinds))}): exact-zero sparsity says "
                   f"little there; see the sparsity-threshold figure (analysis with --eps 0,0.01,0.1).", norm=norm,
                   ref=ref)


def with_conditions(f: Finding, conds: list[Condition]) -> Finding:
    """`f` with the conditions on its claim named; an undermined verdict becomes inconclusive."""
    mine = [c for c in conds if f.number in c.claims]
    if not mine or f.verdict == "not evaluated":
        return f
    verdict = "inconclusive" if f.verdict in JUDGED and any(c.undermines for c in mine) else f.verdict
    return dataclasses.replace(f, verdict=verdict, caveats=f.caveats + [c.text for c in mine])


def judged_norms(r: Results) -> list[str]:
    """The conditions judged against the reference (the paper: batch against none); with the reference alone,
    the paper's other side of the comparison (batch, or none where batch is the reference), judged 'not
    evaluated' for want of its models, never the reference against itself."""
    return [n for n in r.norms if n != r.ref] or ["batch" if r.ref != "batch" else REF]


def findings(r: Results) -> list[Finding]:
    """The four claims for each condition against the reference (none unless the experiment names
    another), with the conditions that undermine them."""
    first, out, ref = r.experiment.first_shown_layer, [], r.ref
    ls_all = rectified(r.table("layer_sparsity"))  # claims 1-2: exact zeros after rectifiers
    ls = at_eps(ls_all)
    kinds = set(r.table("layer_sparsity").get("activation", pd.Series(dtype=str)).dropna())
    for n in judged_norms(r):
        conds = conditions(r, n)
        undermined = any(c.undermines and 1 in c.claims for c in conds)
        fs = [eps_robustness(finding_sparsity(ls, n, ref), sparsity_by_eps(ls_all, n, ref), undermined),
              finding_generalisation(r.table("training"), ls, n, ref)]
        if kinds and not len(ls_all):
            fs = [_no_rectifier(1, kinds, n, ref), _no_rectifier(2, kinds, n, ref)]
        fs += [finding_purity(r.table("class_dbi"), r.table("kmeans"), first, n, ref),
               finding_early_clusters(r.table("kmeans"), first, r.n_classes, n, ref)]
        out += [with_conditions(f, conds) for f in fs]
    return out


def _direction(f: Finding) -> str:
    """Claim 1's direction in more layers than the other way round (the layers that differ, not all of them):
    'sparser', 'less sparse' or 'neither'."""
    more, less = len(f.numbers.get("sparser", [])), len(f.numbers.get("less_sparse", []))
    return "sparser" if more > less else "less sparse" if less > more else "neither"


def finding_sparsity_across(per_exp: dict[str, Finding]) -> Finding:
    """Claim 1 across experiments: does a norm's dominant direction differ between experiments?"""
    first = next(iter(per_exp.values()), Finding(1, "", "", ""))
    dirs, norm, ref = {}, first.norm, first.ref
    a = SHORT.get(norm, norm)
    for name, f in per_exp.items():
        if f.verdict != "not evaluated":
            dirs[name] = _direction(f)
    if not dirs:
        return Finding(1, claim(1, norm, ref), "not evaluated", "no experiment's claim 1 could be evaluated.", norm=norm, ref=ref)
    same = len(set(dirs.values())) == 1 and "neither" not in dirs.values()
    all_consistent = all(per_exp[n].verdict == "not supported" for n in dirs)
    verdict = "supported" if not same else "not supported" if all_consistent else "mixed"
    detail = ("direction (in more layers than the other way round): "
              + "; ".join(f"{n}: {a} {d}" for n, d in dirs.items()) + ".")
    caveats = [f"{n}: {f.verdict_text}" for n, f in per_exp.items() if f.verdict == "inconclusive"]
    if caveats and verdict in JUDGED:
        verdict = "inconclusive"
    return Finding(1, claim(1, norm, ref) + " (across experiments)", verdict, detail, {"direction": dirs}, norm, caveats, ref)


# ==== at initialisation: were the final differences there before training? ====

def snapshot_measures():
    """The per-layer measures a snapshot has (bnrep.measures), each by its headline value."""
    return [m for m in MEASURES.values() if m.kind != "pair" and "channel" not in m.keys]


def headline_rows(m, df: pd.DataFrame) -> pd.DataFrame:
    """One row per model and layer of a measure's table: its own selection (the optimal k), sparsity at the
    smallest eps (the paper's 0)."""
    return at_eps((m.select or (lambda d: d))(df)) if len(df) else df

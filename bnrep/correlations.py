"""Which measure predicts generalisation: correlations over the models of one experiment.

Per model, each measure with a `predictor` name in bnrep.measures is averaged over
the layers that have a value (layer sparsity at the smallest eps, class DBI, NC1,
effective rank, linear probe accuracy, k-means DBI at the optimal k) and correlated with test accuracy and with the generalisation gap
(train - test accuracy): Pearson and Spearman across all models (scipy.stats,
two-sided p), Spearman within each normalisation, and the partial Pearson
correlation controlling for the normalisation. Also the home of the two
correlation helpers claim 2 uses (`correlate`, `partial_corr`): one
implementation for both.

No plotting and no file access: pandas, numpy and scipy only.

    >>> rows = predictors(results)   # one dict per (measure, target), strongest first
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from bnrep.axis import axis_word
from bnrep.measures import MEASURES as MEASURE_TABLE
from bnrep.results import SHORT, Results, and_list, ordered

R_MIN = 0.5  # a correlation counts when |r| >= 0.5 ...
P_MAX = 0.05  # ... and p < 0.05; also the level of Welch's t-test over seeds (bnrep.findings)
MIN_MODELS = 4  # fewer models than this: no correlation is computed
MIN_WITHIN = 3  # models of one normalisation needed for a within-group Spearman r

NAN_CORR = {"pearson_r": math.nan, "pearson_p": math.nan, "spearman_r": math.nan, "spearman_p": math.nan}


EXACT_N = 8  # up to this many models, Spearman's p is exact (every ordering): its t approximation says p = 0
# for a perfect rank order of 4 models, where 2 of the 24 orderings are as extreme (p = 1/12)


def correlate(x: pd.Series, y: pd.Series) -> dict:
    """Pearson and Spearman r with two-sided p (scipy; Spearman's p exact up to EXACT_N models, as
    scipy.stats.permutation_test gives it); NaN when either side is constant."""
    if x.nunique() < 2 or y.nunique() < 2:
        return dict(NAN_CORR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on tiny samples; the p-values are still its own
        p, s = stats.pearsonr(x, y), stats.spearmanr(x, y)
    sp = _spearman_exact_p(np.asarray(x, float), np.asarray(y, float)) if len(x) <= EXACT_N else float(s[1])
    return {"pearson_r": float(p[0]), "pearson_p": float(p[1]), "spearman_r": float(s[0]), "spearman_p": sp}


def _spearman_exact_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p of Spearman's rho over every pairing of y with x (twice the smaller tail, at most 1)."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    perms = _orderings(len(x))  # the first: the observed pairing
    rho = (ry[perms] @ rx) / (np.linalg.norm(rx) * np.linalg.norm(ry))
    tol = 1e-12 * max(1.0, abs(rho[0]))
    return float(min(1.0, 2 * min(np.mean(rho >= rho[0] - tol), np.mean(rho <= rho[0] + tol))))


@functools.lru_cache(maxsize=None)
def _orderings(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))))


def partial_corr(m: pd.DataFrame, x: str, y: str, group: str = "condition") -> dict:
    """Pearson r of x and y controlling for `group` (both minus their group means), with its p-value.

    Degrees of freedom: the sum of (models - 1) over the groups in which both x and y vary, minus 1 (with every
    group varying, n - 2 - (groups - 1): each group mean removed costs one). A group in which x or y is the same
    for every model (test accuracy 1.0 for every seed) says nothing within itself; counted, it would make a link
    seen in one group of two models, whose residuals correlate at +-1 by construction, look significant. r is
    still taken over every group (a constant side's residuals only lower |r|), so the p-value is conservative.
    """
    rx = m[x] - m.groupby(group)[x].transform("mean")
    ry = m[y] - m.groupby(group)[y].transform("mean")
    varying = m.groupby(group).filter(lambda g: g[x].nunique() > 1 and g[y].nunique() > 1)
    dof = len(varying) - varying[group].nunique() - 1
    if dof < 1 or rx.std() == 0 or ry.std() == 0:
        return {"pearson_r": math.nan, "pearson_p": math.nan}
    r = float(np.clip(np.corrcoef(rx, ry)[0, 1], -1, 1))
    t = r * math.sqrt(dof / max(1 - r * r, 1e-300))
    return {"pearson_r": r, "pearson_p": float(2 * stats.t.sf(abs(t), dof))}


def significant_signs(c: dict, methods=("pearson", "spearman")) -> set[int]:
    """Signs (+1/-1) of the correlations in `c` that count (|r| >= R_MIN, p < P_MAX)."""
    return {int(np.sign(c[f"{m}_r"])) for m in methods if abs(c[f"{m}_r"]) >= R_MIN and c[f"{m}_p"] < P_MAX}


def group_word(names) -> str:
    """What the groups a correlation is controlled for are called: 'normalisation' while every one of `names` is a
    normalisation, else 'condition' (BatchNorm at batch 16 and at batch 64 are one normalisation)."""
    return "normalisation" if axis_word(names) == "norm" else "condition"


def only_between_groups(across: dict, partial: dict) -> bool:
    """A counted across-model correlation that does not count, with the same sign, once the
    normalisation is controlled for: its sign comes from the difference between the groups."""
    return bool(significant_signs(across) - significant_signs(partial, ("pearson",)))


def only_within_groups(across: dict, partial: dict) -> bool:
    """A correlation that counts (Pearson) once the groups are controlled for, with a sign the across-model
    correlation does not count: the difference between the groups hides it across models."""
    return bool(significant_signs(partial, ("pearson",)) - significant_signs(across))


def between_groups_reason(across: dict, partial: dict, word: str = "normalisation") -> str:
    """How a counted correlation (`only_between_groups`) fares once the `word` (group_word) is controlled for:
    weak or of the other sign within the groups (it comes from their difference), or as strong as across them
    but not significant (too few models within the groups to tell)."""
    r, p = partial["pearson_r"], partial["pearson_p"]
    said = f"partial r = {'n/a' if pd.isna(r) else f'{r:.2f}'}, p = {p_text(p)}"
    if too_few_within(across, partial):
        return (f"is not significant once the {word} is controlled for ({said}): too few models within "
                f"the groups to tell it from the difference between them")
    return f"comes only from the difference between the {word} groups ({said})"


def too_few_within(across: dict, partial: dict) -> bool:
    """The partial correlation is as strong (|r| >= R_MIN, the same sign) as a counted one across models, but
    not significant: too few models within the groups, rather than a link that comes from the groups."""
    r = partial["pearson_r"]
    return not pd.isna(r) and abs(r) >= R_MIN and int(np.sign(r)) in significant_signs(across)


# ==== the measures, one value per model ====

def _per_model(df: pd.DataFrame, col: str) -> pd.Series:
    """Mean of `col` over the layers of each model that have a value (NaN layers left out)."""
    return df.groupby("model_id")[col].mean() if len(df) and col in df else pd.Series(dtype=float)


def _measure(m):
    return lambda r: _per_model(m.select(r.table(m.table)) if m.select else r.table(m.table), m.values[0])


MEASURES = {m.predictor: _measure(m)  # name in the report -> per-model values from one experiment's tables
            for m in MEASURE_TABLE.values() if m.predictor}
TARGETS = {"test_acc": "test accuracy", "gap": "generalisation gap (train - test)"}


def model_measures(r: Results) -> pd.DataFrame:
    """One row per trained model: norm, test_acc, gap and each layer-averaged measure (NaN where missing)."""
    t = r.table("training")
    if t.empty:
        return pd.DataFrame()
    m = t.set_index("model_id")[["condition", "train_acc", "test_acc"]].dropna()
    m = m.assign(gap=m["train_acc"] - m["test_acc"])
    for name, get in MEASURES.items():
        m[name] = get(r).reindex(m.index)
    return m.reset_index()


def _row(m: pd.DataFrame, measure: str, target: str) -> dict | None:
    d = m.dropna(subset=[measure, target])
    if len(d) < MIN_MODELS:
        return None
    across, partial = correlate(d[measure], d[target]), partial_corr(d, measure, target)
    within = {n: correlate(g[measure], g[target])["spearman_r"] for n, g in d.groupby("condition")
              if len(g) >= MIN_WITHIN}
    groups = d["condition"].nunique() > 1
    lost = groups and only_between_groups(across, partial)  # counted across models, not once controlled
    few = lost and too_few_within(across, partial)
    hidden = groups and only_within_groups(across, partial)  # (with `lost`: the sign reverses within the groups)
    return {"measure": measure, "target": target, "models": len(d), **across,
            "within_spearman": {n: within[n] for n in ordered(within)},
            "partial_pearson_r": partial["pearson_r"] if groups else math.nan,
            "partial_pearson_p": partial["pearson_p"] if groups else math.nan,
            "between_groups_only": lost and not few,  # its sign comes from the groups' difference
            "too_few_within": few,  # as strong within the groups, too few models there to be significant
            "within_groups_only": hidden and not lost,  # counts once the groups are controlled for, not across them
            "reverses_within": hidden and lost}  # counts both ways, of the other sign within the groups


def strength(row: dict) -> float:
    """|r|, the larger of Pearson and Spearman across all models; NaN counts as 0 (sorted last)."""
    return max(np.nan_to_num(abs(row["pearson_r"])), np.nan_to_num(abs(row["spearman_r"])))


def predictors(r: Results) -> list[dict]:
    """Each (measure, target) with enough models, strongest correlation across all models first."""
    m = model_measures(r)
    if m.empty:
        return []
    rows = [row for name in MEASURES if m[name].notna().any() for y in TARGETS
            for row in [_row(m, name, y)] if row]
    return sorted(rows, key=lambda x: -round(strength(x), 9))  # ties (e.g. test accuracy and gap): table order


# ==== as a table for the report ====

def p_text(p: float) -> str:
    """A p-value for the report: two significant digits, more where two would hide which side of P_MAX it lies
    on (0.0496 and 0.0502 both read "0.05", one counted and one not); below 1e-16 (0 when it underflows) as such."""
    if pd.isna(p):
        return "n/a"
    if p < 1e-16:
        return "< 1e-16"
    for digits in range(2, 7):
        said = f"{p:.{digits}g}"
        if float(said) != P_MAX and (float(said) < P_MAX) == (p < P_MAX):
            return said
    return f"< {P_MAX:g}" if p < P_MAX else f"{p:.2g}"  # within 1e-7 of P_MAX: its side; P_MAX itself: "0.05"


def _rp(r: float, p: float) -> str:
    return "n/a" if pd.isna(r) else f"{r:+.2f} (p {p_text(p)})"


def predictor_rows(rows: list[dict], norms) -> tuple[list[str], list[list[str]]]:
    """The predictor table, its words from the study's conditions `norms` (the within-group values of a
    condition with fewer than MIN_WITHIN models are absent)."""
    word = axis_word(norms)  # norm, or condition
    header = ["measure (mean over layers)", "vs", "models", "Pearson r (p)", "Spearman r (p)",
              f"Spearman within each {word}", f"partial Pearson r (p), {word} controlled", "note"]
    out = []
    for x in rows:
        within = ", ".join(f"{SHORT.get(n, n)} {'n/a' if pd.isna(v) else f'{v:+.2f}'}"
                           for n, v in x["within_spearman"].items()) or "n/a"
        note = _note(x, group_word(norms))
        out.append([x["measure"], TARGETS[x["target"]], str(x["models"]), _rp(x["pearson_r"], x["pearson_p"]),
                    _rp(x["spearman_r"], x["spearman_p"]), within,
                    _rp(x["partial_pearson_r"], x["partial_pearson_p"]), note])
    return header, out


def _note(x: dict, group: str) -> str:
    """A predictor row's note: how its correlation fares once the `group`s are controlled for."""
    if x["too_few_within"]:
        return "as strong within the groups, too few models to be significant"
    if x.get("reverses_within"):
        return f"reverses within the {group} groups (across models, the sign is their difference)"
    if x["between_groups_only"]:
        return f"sign only from the difference between the {group} groups"
    if x.get("within_groups_only"):
        return f"counts only within the {group} groups (their difference hides it across models)"
    return ""


def r_critical(n: int, alpha: float = P_MAX) -> float:
    """The smallest |Pearson r| with two-sided p < alpha over n models (t with n - 2 dof)."""
    t = stats.t.ppf(1 - alpha / 2, n - 2)
    return float(t / math.sqrt(n - 2 + t * t))


def limits_sentence(r: Results, rows: list[dict]) -> str:
    """What a correlation over these N models can and cannot show, with the real counts."""
    m = model_measures(r)
    n = int(m.dropna(subset=["test_acc"]).shape[0])
    counts = m["condition"].value_counts().reindex(ordered(m["condition"]))
    per = ", ".join(f"{k} {SHORT.get(g, g)}" for g, k in counts.items())
    word, group = axis_word(r.norms), group_word(r.norms)
    few = [SHORT.get(g, g) for g, k in counts.items() if k < MIN_WITHIN]
    return (f"These are correlations over {n} models ({per}). They show whether a measure and generalisation "
            f"moved together across these models, not that one causes the other, nor that it holds for other "
            f"models or data. With {n} models only strong correlations are distinguishable from chance: "
            f"|Pearson r| >= {r_critical(n):.2f} for p < {P_MAX}, and the p-values are not corrected for the "
            f"{len(rows)} correlations in the table. Across {group}s, a correlation can be the difference "
            f"between the {group} groups alone (both the measure and the accuracy differ by {word}): the "
            f"within-{word} and partial columns show what is left inside the groups."
            + (f" A Spearman r within a {word} needs at least {MIN_WITHIN} models of it: "
               f"{'every ' + word if len(few) == len(counts) else and_list(few)} has fewer, hence n/a." if few else ""))



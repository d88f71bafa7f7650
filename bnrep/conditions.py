"""What undermines a verdict: the conditions named next to the findings (bnrep.findings).

Each check takes one experiment's results and the normalisation judged against
none, and returns `Condition`s: a sentence, the claims it concerns, and whether
it makes their verdicts inconclusive (models that missed their stopping rule or
diverged, too few seeds, a best learning rate at the edge of its range, layers
that are mostly zeros, an optimal k at the top of the k range) or is only named beside them (dead channels, probes that
are not rectifiers, running statistics that lag the weights). The rules printed in every report say the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bnrep.config import DEFAULT_OUT, command
from bnrep.experiments import lr_edge
from bnrep.norms import AS_BUILT, get_norm
from bnrep.results import (LABELS, Results, at_eps, early_layers, imported_mask, not_rectified, optimal_k, pair,
                           pair_names, shown)

MIN_SEEDS = 3  # fewer seeds per normalisation: every verdict is inconclusive
MOSTLY_ZERO = 0.9  # a layer above 90% zeros (seed mean) undermines the sparsity verdicts


@dataclass(frozen=True)
class Condition:
    text: str  # named next to the verdicts of `claims`
    claims: tuple[int, ...]
    undermines: bool = True  # False: named only, the verdict stands


ALL = (1, 2, 3, 4)


def _tags(r: Results, norm: str) -> dict[str, str]:
    a, ref = pair_names(norm, r.norms, r.ref)
    return {norm: a, r.ref: ref}


def not_known_imported(r: Results, norm: str) -> list[Condition]:
    """Imported models: whether they met a stopping rule, and the sweep, are not known; named, not judged."""
    t = pair(r.table("training"), norm, r.ref)
    n = int(imported_mask(t).sum())
    return [Condition(f"stopping rule and learning-rate sweep not known for imported models ({n} of {len(t)} "
                      f"imported)", ALL, undermines=False)] if n else []


def missed_stopping_rule(r: Results, norm: str) -> list[Condition]:
    """Models that did not stop by their condition's rule: not interpolated, or (early stopping) trained to
    the condition's cap."""
    t = pair(r.table("training"), norm, r.ref)
    t = t[~imported_mask(t)] if len(t) else t  # imported: not known (not_known_imported)
    if t.empty or not {"interpolated", "epochs"} <= set(t):
        return []
    out = []
    for n, tag in _tags(r, norm).items():
        rows, e = t[t["condition"] == n], r.experiment.for_condition(n)  # a condition may set its own stop, cap
        interpolate = e.stop == "interpolate"
        missed = ~rows["interpolated"].astype(bool) if interpolate else rows["epochs"] >= e.max_epochs
        why = "not interpolated" if interpolate else f"trained to the {e.max_epochs}-epoch cap without early stopping"
        if missed.any():
            out.append(Condition(f"{int(missed.sum())} of {len(rows)} {tag} models missed their stopping rule ({why})",
                                 ALL))
    return out


def unfinished_ramp(r: Results, norm: str) -> list[Condition]:
    """Models of a norm with a warm-up (Batch Renorm's W batches) whose kept weights come from before its end:
    the comparison is with a norm not yet wholly itself (named, not judged). Results without `steps`: nothing."""
    t = pair(r.table("training"), norm, r.ref)
    if t.empty or "steps" not in t:
        return []
    out = []
    for n, tag in _tags(r, norm).items():
        ramp = get_norm(n).ramp if n in LABELS else 0
        short = t[(t["condition"] == n) & (t["steps"] < ramp)]
        if ramp and len(short):
            lo, hi = int(short["steps"].min()), int(short["steps"].max())
            steps = f"{lo}" if lo == hi else f"{lo}-{hi}"
            out.append(Condition(f"{len(short)} of {int((t['condition'] == n).sum())} {tag} models kept weights from "
                                 f"before the end of their {ramp}-batch warm-up (after {steps} steps): the norm was "
                                 f"not yet wholly itself", ALL, undermines=False))
    return out


def diverged_models(r: Results, norm: str) -> list[Condition]:
    """Models whose training loss became NaN or inf: their measures are NaN, so a verdict rests on the rest."""
    t = pair(r.table("training"), norm, r.ref)
    if t.empty or "diverged" not in t:
        return []
    d = t["diverged"].fillna(False).astype(bool)
    return [Condition(f"{int(d[t['condition'] == n].sum())} of {int((t['condition'] == n).sum())} {tag} models diverged "
                      f"(training loss NaN or inf; not analysed, their measures are NaN and left out)", ALL)
            for n, tag in _tags(r, norm).items() if d[t["condition"] == n].any()]


EVAL_GAP = 0.10  # eval-mode training accuracy this far below the train-mode accuracy of the epoch kept: named


def running_statistics_lag(r: Results, norm: str) -> list[Condition]:
    """Models of a norm with running statistics (BatchNorm and its kin; a model's own norms) whose training
    accuracy in eval mode (Table 1's train acc, as every measure is taken) lies more than EVAL_GAP below
    their accuracy in train mode over the epoch whose weights were kept (training_history's running accuracy):
    the running statistics lag the weights (too few steps, a high momentum), so the measured network is not
    the one that trained. Named, not judged. Results without the running accuracy: nothing."""
    t, h = pair(r.table("training"), norm, r.ref), r.table("training_history")
    if t.empty or h.empty or "train_acc_running" not in h or "best_epoch" not in t:
        return []
    t = t[~imported_mask(t) & ~t.get("diverged", pd.Series(False, index=t.index)).fillna(False).astype(bool)]
    kept = t.merge(h[["model_id", "epoch", "train_acc_running"]], left_on=["model_id", "best_epoch"],
                   right_on=["model_id", "epoch"])
    out = []
    for n, tag in _tags(r, norm).items():
        if n in LABELS and get_norm(n).norm != AS_BUILT and not get_norm(n).batch_statistics:
            continue  # no running statistics: eval mode is train mode (a model's own norms: not known)
        rows = kept[kept["condition"] == n]
        lag = rows[rows["train_acc_running"] - rows["train_acc"] > EVAL_GAP]
        if len(lag):
            out.append(Condition(
                f"{len(lag)} of {int((t['condition'] == n).sum())} {tag} models classify their training data worse "
                f"in eval mode, as every measure is taken ({lag['train_acc'].mean():.0%} on average), than in "
                f"train mode over the epoch kept ({lag['train_acc_running'].mean():.0%}): their running statistics "
                f"lag the weights (too few training steps?), so the network measured is not quite the one "
                f"trained", ALL, undermines=False))
    return out


# the tables each claim reads, and the value a seed must have there to count
CLAIM_TABLES = {1: {"layer_sparsity": "sparsity"}, 2: {"training": "test_acc", "layer_sparsity": "sparsity"},
                3: {"class_dbi": "dbi", "kmeans": "dbi"}, 4: {"kmeans": "dbi"}}


def too_few_seeds(r: Results, norm: str) -> list[Condition]:
    """Per claim and condition, the seeds its verdict rests on: those with a finite value in the tables
    it reads (the fewest over them). A partial analysis, or models not analysed, leave fewer than
    were trained."""
    short: dict[tuple[str, int], list[int]] = {}  # (condition, seeds) -> claims
    for number, reads in CLAIM_TABLES.items():
        for n in (norm, r.ref):
            counts = [k for t, col in reads.items() for k in [_seeds(r.table(t), n, col)] if k]
            if counts and min(counts) < MIN_SEEDS:
                short.setdefault((n, min(counts)), []).append(number)
    tags = _tags(r, norm)
    return [Condition(f"only {k} seed{'s' * (k != 1)} of {tags[n]} (need {MIN_SEEDS})", tuple(claims))
            for (n, k), claims in short.items()]


def _seeds(df: pd.DataFrame, condition: str, value: str) -> int:
    if not {"condition", "seed", value} <= set(df):
        return 0
    return int(df.loc[(df["condition"] == condition) & np.isfinite(df[value].astype(float)), "seed"].nunique())


def lr_at_edge(r: Results, norm: str) -> list[Condition]:
    """The sweep's best learning rate within LR_EDGE (log scale) of an end of lr_range, when the models used it."""
    trials, t = r.table("hparam_trials"), r.table("training")
    if trials.empty or not {"lr", "objective", "condition"} <= set(trials):
        return []
    out = []
    for n, tag in _tags(r, norm).items():
        lo, hi = r.experiment.for_condition(n).lr_range  # one value (a condition's own lr): never at an edge
        g = trials[trials["condition"] == n].dropna(subset=["objective", "lr"])
        if g.empty:
            continue
        best = g.loc[g["objective"] == g["objective"].max(), "lr"]  # the sweep's best; of equals, the one used
        trained = None if t.empty or "lr" not in t else t.loc[t["condition"] == n, "lr"]
        used = [float(x) for x in best if trained is None or np.isclose(trained, x, rtol=1e-6).any()]
        edge = lr_edge(used[0], (lo, hi)) if used else None
        if edge:
            out.append(Condition(f"the sweep's best learning rate for {tag}, {used[0]:.3g}, lies at the "
                                 f"{edge} edge of its search range {lo:g}..{hi:g} (widen lr_range)", ALL))
    return out


def dead_channel_counts(r: Results, norm: str) -> pd.DataFrame:
    """Per (norm, layer): dead channels summed over models at the smallest eps (n), the models that have one
    (models) and all the models (of).

    From layer_sparsity's `dead_channels`; tables written before that column count
    channel_sparsity == 1 instead (the same definition: zero for every value of every sample).
    """
    ls = at_eps(pair(r.table("layer_sparsity"), norm, r.ref))
    if "dead_channels" in ls and ls["dead_channels"].notna().all():
        src = ls.assign(n=ls["dead_channels"].astype(int))
    else:
        cs = at_eps(pair(r.table("channel_sparsity"), norm, r.ref))
        src = cs.assign(n=(cs["sparsity"] >= 1.0).astype(int)) if len(cs) else cs
    if src.empty:
        return pd.DataFrame(columns=["condition", "layer_index", "layer", "n", "models", "of"])
    keys = ["condition", "layer_index", "layer"]
    per_model = src.groupby([*keys, "model_id"])["n"].sum().reset_index()  # (channel_sparsity: a row per channel)
    g = per_model.assign(dead=per_model["n"] > 0).groupby(keys).agg(
        n=("n", "sum"), models=("dead", "sum"), of=("model_id", "nunique"))  # models with one, of all
    return g[g["n"] > 0].reset_index()


def mostly_zero_layers(r: Results, norm: str) -> list[Condition]:
    """Layers above MOSTLY_ZERO zeros (seed mean; named, not judged, where one model is and the mean is not),
    and dead channels, both at the smallest eps."""
    out, tags = [], _tags(r, norm)
    ls = at_eps(pair(r.table("layer_sparsity"), norm, r.ref))
    if len(ls):
        mean = ls.groupby(["condition", "layer_index", "layer"])["sparsity"].mean().rename("mean").reset_index()
        m = mean[mean["mean"] > MOSTLY_ZERO]
        if len(m):
            out.append(Condition(f"layers above {MOSTLY_ZERO:.0%} zeros: " + ", ".join(
                f"{tags[x.condition]} {x.layer} {x.mean:.0%}" for x in m.itertuples()), (1, 2)))
        one = ls[ls["sparsity"] > MOSTLY_ZERO].merge(mean[mean["mean"] <= MOSTLY_ZERO])
        if len(one):  # a near-dead layer in one model, which its seed mean hides
            said = ", ".join(f"{tags[x.condition]} {x.layer} {x.sparsity:.0%} at seed {x.seed} (mean {x.mean:.0%})"
                             for x in one.sort_values(["condition", "layer_index", "seed"]).itertuples())
            out.append(Condition(f"a layer above {MOSTLY_ZERO:.0%} zeros in one model, not in the seed mean: {said}",
                                 ALL, undermines=False))
    dead = dead_channel_counts(r, norm)
    for n in dict.fromkeys(dead["condition"]):  # one line per condition: the reference's is said once above all
        out.append(Condition("dead channels (zero on every sparsity sample), summed over models: " + ", ".join(
            f"{tags[x.condition]} {x.layer}: {x.n} in {x.models} of {x.of} models"
            for x in dead[dead["condition"] == n].itertuples()), ALL, undermines=False))
    return out


def optimal_k_at_top(r: Results, norm: str) -> list[Condition]:
    """Models whose optimal k in claim 4's early layers is the largest k searched: their optimum may lie above it,
    so the distance to the class count there is censored (as a learning rate at the edge of its range)."""
    best = shown(pair(optimal_k(r.table("kmeans")), norm, r.ref), r.experiment.first_shown_layer)
    if best.empty:
        return []
    top = int(r.table("kmeans")["k"].max())
    if top == int(r.table("kmeans")["k"].min()):  # one k searched: no optimum to choose, nothing censored by it
        return []
    e = best[best["layer_index"].isin(early_layers(best))]
    at = e[e["k_opt"] == top].groupby("condition")["model_id"].nunique()
    if not len(at):
        return []
    of = e.groupby("condition")["model_id"].nunique()
    tags = _tags(r, norm)
    said = " and ".join(f"{at[n]} of {of[n]} {tags[n]} models" for n in tags if n in at.index)
    name = r.experiment.name  # (the study's folder by a placeholder: a report stays true wherever it is moved)
    place = "" if os.path.normpath(r.out) == os.path.normpath(DEFAULT_OUT) else " --out OUT"
    further = (f"`{command('analysis', name, r.out, show_out=False)}{place} --fresh --k-max {2 * top}` searches "
               f"further, the training kept, then `{command('report', name, r.out, show_out=False)}{place}`"
               + (f" (OUT: the folder that holds {name})" if place else ""))
    return [Condition(f"optimal k at the largest k searched ({top}) in the early layers of {said}: the optimum may "
                      f"lie above it ({further})", (4,))]


def non_rectifier_layers(r: Results, norm: str) -> list[Condition]:
    """Claims 1-2 count exact zeros, which mean something after a rectifier only: other probes are left out."""
    nr = not_rectified(at_eps(pair(r.table("layer_sparsity"), norm, r.ref)))
    if not len(nr):
        return []
    layers = list(dict.fromkeys(nr.sort_values("layer_index")["layer"]))
    return [Condition(f"sparsity judged on the rectifier layers only: {len(layers)} layer(s) after "
                      f"{', '.join(sorted(set(nr['activation'])))} ({', '.join(layers[:6])}"
                      f"{', ...' if len(layers) > 6 else ''}) left out, where exact zeros say little",
                      (1, 2), undermines=False)]


def conditions(r: Results, norm: str) -> list[Condition]:
    """Everything in `r` that undermines the verdicts on `norm` against none, or is named beside them."""
    checks = (missed_stopping_rule, not_known_imported, diverged_models, unfinished_ramp, running_statistics_lag,
              too_few_seeds, lr_at_edge, mostly_zero_layers, optimal_k_at_top, non_rectifier_layers)
    return [c for check in checks for c in check(r, norm)]

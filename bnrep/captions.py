"""A figure's caption, filled per report: how many seeds, which layers are shown, the values left out
and why, the conditions' colours, the kernels two conditions start from alike (bnrep.initial) and the
gradient norms' batches. The captions' texts are bnrep.figures' and bnrep.measures' table entries."""

from __future__ import annotations

import re

import pandas as pd

from bnrep.epoch_figures import measured_text
from bnrep.initial import shared_start_text
from bnrep.measures import MEASURES, OLD_REASONS, gradient_batches_text
from bnrep.norms import AS_BUILT, get_norm
from bnrep.results import COLORS, Results, and_list, first_shown_text, label_and_tag, norm_labels, ordered, seeds_text


def colours_text(norms) -> str:
    """'BatchNorm (blue) and no-BatchNorm (orange)' style legend for captions."""
    labels = norm_labels(norms)
    parts = [label_and_tag(labels[n], COLORS[n].removeprefix('tab:')) for n in ordered(norms)]
    return and_list(parts)


def _models(df: pd.DataFrame) -> pd.DataFrame:
    """(norm, seed) rows of a table; a pair table (cka) names both of its models."""
    if "condition_a" in df and "condition" not in df:
        return pd.concat([df[[f"condition_{s}", f"seed_{s}"]].set_axis(["condition", "seed"], axis=1) for s in "ab"])
    return df


FAMILY_ONLY = re.compile(r"<<([\w+-]+): (.*?)>>", re.S)  # <<renorm: a sentence only where Batch Renorm is drawn>>


def for_families(text: str, norms) -> str:
    """`text` with each <<family: words>> kept as its words where a condition of that family (renorm, ghost) is
    among `norms`, else left out."""
    families = {get_norm(n).norm.partition(":")[0] for n in norms}
    return FAMILY_ONLY.sub(lambda m: m.group(2) if m.group(1) in families else "", text)


def caption(spec, rs: list[Results]) -> str:
    """`spec`'s (a bnrep.figures.FigureSpec) caption with its placeholders filled for the results `rs`:
    {seeds}, {layers}, {nan} (the values left out, and why), {colours}, {shared} (bnrep.initial),
    {k_searched}, {gradient_batches}, {measured} (how the snapshots of the conditions drawn ran:
    bnrep.epoch_figures.measured_text) and {running} (running_text); a <<family: sentence>> only where a condition of that family is drawn (for_families)."""
    df = pd.concat([r.at_epochs(spec.tables[0]) if spec.epochs else r.table(spec.tables[0]) for r in rs],
                   ignore_index=True)
    layers = "; ".join(f"{r.label}: from {first_shown_text(r)}" for r in rs)
    m, nan = MEASURES.get(spec.tables[0]), ""
    col = m.values[0] if m else ""
    if col in df and df[col].isna().any():
        nan = f" {int(df[col].isna().sum())} of {len(df)} {why_nan(df, col, m)} and left out of the means."
    norms = {n for r in rs for n in r.norms}
    if col in df and "condition" in df and df[col].notna().any():  # the conditions drawn (condition_lines)
        norms &= set(df.loc[df[col].notna(), "condition"])
    shared = shared_start_text(rs) if "{shared}" in spec.caption else ""  # (models built: only where it is said)
    shared = f" {shared}" if shared else ""
    return for_families(spec.caption, norms).format(
                               seeds=seeds_text(_models(df)), layers=layers, nan=nan, colours=colours_text(norms),
                               shared=shared, k_searched=_k_searched(rs) if "{k_searched}" in spec.caption else "",
                               gradient_batches=_gradient_batches(rs) if "{gradient_batches}" in spec.caption else "",
                               measured=measured_text(norms) if "{measured}" in spec.caption else "",
                               running=running_text(norms) if "{running}" in spec.caption else "")


def running_text(norms) -> str:
    """' (here BatchNorm and ghost BatchNorm ...)': the conditions among `norms` that keep running statistics;
    ' (none here)' where none does."""
    own = {n for n in norms if get_norm(n).norm == AS_BUILT}  # a model's own norms: BatchNorm, perhaps
    kept = [n for n in ordered(norms) if get_norm(n).batch_statistics or n in own]
    labels = norm_labels(kept)
    said = [labels[n] + (" models, where their own norms keep them" if n in own else "") for n in kept]
    return f" (here {and_list(said)})" if kept else " (none here)"


def _k_searched(rs: list[Results]) -> str:
    """'2..15; dashed line: the 10 classes' per experiment where they differ; the classes said to lie past
    the k searched where they do (no line is drawn: a k-means sweep to 6 cannot find 10 clusters)."""
    from bnrep.figures import k_searched

    def text(r):
        lo, hi = k_searched(r)
        where = ("dashed line: the" if lo <= r.n_classes <= hi else
                 "beyond it (no line drawn) lie the" if r.n_classes > hi else "below it (no line drawn) lie the")
        return f"{lo}..{hi}; {where} {r.n_classes} classes"

    said = {r.label: text(r) for r in rs}
    return next(iter(said.values())) if len(set(said.values())) == 1 else "; ".join(
        f"{label}: {t}" for label, t in said.items())


def _gradient_batches(rs: list[Results]) -> str:
    """The gradient norms' batches in words, per experiment where they differ: from the samples its analysis
    drew (results/samples; else the experiment's sample counts, as asked)."""
    def n(r):
        s = r.table("samples")
        e = r.experiment
        return int(s.groupby("purpose").size().max()) if len(s) else max(e.samples_sparsity, e.samples_cluster)

    said = {r.label: gradient_batches_text(n(r)) for r in rs}
    return next(iter(said.values())) if len(set(said.values())) == 1 else "; ".join(
        f"{label}: {text}" for label, text in said.items()) + ","


def why_nan(df: pd.DataFrame, col: str, m) -> str:
    """'values are NaN (count, conditions: reason; ...)' from the table's own reasons, most frequent first;
    the measure's general note where some NaN row has no reason (parts written before reasons were kept)."""
    nan = df[df[col].isna()]
    why = nan[m.reasons[0]].replace(OLD_REASONS) if m.reasons[0] in nan else pd.Series(dtype=object)
    if why.empty or not (why.fillna("") != "").all():
        return m.nan_note
    counts = sorted(why.value_counts().items(), key=lambda x: (-x[1], x[0]))  # ties: alphabetical
    labels = norm_labels(set(df["condition"])) if "condition" in nan else {}  # the study's ('no BatchNorm': BN's pair)

    def whose(reason) -> str:  # the conditions of the rows with that reason
        return and_list(labels[c] for c in ordered(set(nan.loc[why == reason, "condition"])))

    listed = "; ".join(f"{n}{f' of {whose(reason)}' if labels else ''}: {reason}" for reason, n in counts[:3])
    return f"values are NaN ({listed}{'; ...' if len(counts) > 3 else ''})"

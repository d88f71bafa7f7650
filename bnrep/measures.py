"""The measures: one table (`MEASURES`), the one home of what each analysis table holds.

A measure is an entry and a function. From the entry come: its table in the results schema
(bnrep.store.TABLES: stage, part, key columns), the hash its parts carry (bnrep.config.table_hashes:
the experiment fields it depends on and its version), the analysis stage's work (which tables a
model, a layer or a pair of models still lacks, and the rows of a model that is not analysed), its
per-layer figure and that figure's NaN note (bnrep.figures), its numbers in findings.json, and
whether it enters "which measure predicts generalisation" (bnrep.correlations).

Kinds, by what the function is given:

    model   one model (`ModelRun`): its extraction pass (bnrep.represent: every probe's zero counts,
            moments and reduced representations), the model itself and the analysis samples
            -> rows, each with its layer_index; part = <model_id>
    layer   one layer of one model: the reduced representations of the clustering samples (N, C)
            and their labels -> rows; part = <model_id>-<layer>
    pair    one layer of two models: both reduced representations -> rows; part = <layer>-<a>-<b>

Adding a measure is one entry here, its function (a formula goes to bnrep.metrics) and its tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch
# The functions import what they run (torch included) when they run: the store derives its schema from
# this table without loading torch (a process that imports the store first keeps torch's thread setup).

FINAL = -1  # the `epoch` of the rows of a model's final weights (snapshots: 0 = its initialisation)
NONFINITE = "the representations contain NaN or inf (a diverged model?)"
UNDEFINED = "values are NaN (undefined: dead layer, one class)"  # a figure caption's note, by default
PROBE_FOLDS = 5  # the linear probe's cross-validation folds (fewer where the largest class has fewer samples)
GRADIENT_BATCHES, GRADIENT_BATCH = 4, 64  # gradient norms: the first 4 x 64 analysis samples, every model
NO_BATCH_STATISTICS = "without running statistics, train and eval mode normalise alike"  # (after the conditions named)
# reasons as earlier analyses wrote them into the tables -> as said now (the old words read as the condition 'no norm')
OLD_REASONS = {"no norm with running statistics: train and eval mode normalise alike": NO_BATCH_STATISTICS}


@dataclass
class ModelRun:
    """What a model measure is given: one model and its extraction pass."""
    exp: object  # bnrep.experiments.Experiment, as the model's condition trained (its batch size)
    row: dict  # the model's training row (model_id, condition, seed, ...)
    model: torch.nn.Module  # trained, eval mode, on `device`
    reps: list  # bnrep.represent.LayerReps, one per probe, in probe order
    probes: list  # bnrep.probes.Probe
    images: torch.Tensor  # the analysis samples, in order (N, C, H, W), on the CPU
    labels: torch.Tensor  # their labels (N,)
    n_cluster: int  # the first n_cluster images are the clustering samples
    device: torch.device


@dataclass(frozen=True)
class Measure:
    table: str  # its results table
    kind: str  # model | layer | pair (module docstring)
    compute: Callable  # model: (ModelRun); layer: (X, y, exp, seed, backend); pair: (A, B, model names) -> rows
    values: tuple[str, ...]  # float columns, NaN where undefined; the first is the headline value
    reasons: tuple[str, ...] = ("reason",)  # why a value is NaN; "" where it is not
    fields: tuple[str, ...] = ()  # experiment fields its parts depend on besides the models (train hash)
    version: int = 1  # raised when its columns change: parts of an older version are recomputed once
    keys: tuple[str, ...] = ()  # key columns of a row beyond its model (pair) and layer
    grid: Callable = lambda exp, probe: [{}]  # (exp, probe) -> the `keys` values of one layer's rows
    fill: dict = field(default_factory=dict)  # the non-float columns of a row not analysed
    caption: str = ""  # caption of its per-layer figure ({colours}, {seeds}, {nan}); "": none of its own
    title: str = ""  # that figure's title
    name: str = ""  # how a note names it ("NC1": "NC1 per layer not drawn: ...")
    ylabel: str = ""
    log: bool = False  # log y axis when every value is positive
    bounds: tuple[float, float] | None = None  # the values it can take (an accuracy: 0 and 1): error bars stop there
    nan_note: str = UNDEFINED
    predictor: str = ""  # its name in "which measure predicts generalisation" ("": it does not enter)
    select: Callable | None = None  # the rows that enter it (default: all), averaged over layers per model
    snapshots: str = "all"  # at which snapshot epochs too: all | trained (after 0) | asked (--snapshot-kmeans)

    def measured_at(self, epoch: int, exp) -> bool:
        """Whether the model at `epoch` (FINAL: its final weights) has this measure's rows."""
        return (epoch == FINAL or self.snapshots == "all" or (self.snapshots == "trained" and epoch > 0)
                or (self.snapshots == "asked" and exp.snapshot_kmeans))

    @property
    def part(self) -> str:
        """How bnrep.store splits its table: one part per model, per (model, layer), per (layer, pair)."""
        return self.kind

    @property
    def key_columns(self) -> tuple[str, ...]:
        lead = ("layer_index", "model_a", "model_b", "epoch") if self.kind == "pair" else ("model_id", "epoch", "layer_index")
        return lead + self.keys

    def not_analysed(self, exp, probe, why: str) -> list[dict]:
        """The rows of one layer of a model that is not analysed: every value NaN with `why`."""
        return [{**g, **dict.fromkeys(self.values, math.nan), **dict.fromkeys(self.reasons, why), **self.fill}
                for g in self.grid(exp, probe)]


# ==== model measures: from the extraction pass ====

def _channel_sparsity(run: ModelRun) -> pd.DataFrame:
    """Eq. 3 at every eps. A channel with a NaN or inf value has no sparsity: NaN is neither zero nor not."""
    from bnrep import metrics
    parts = []
    for r in run.reps:
        bad = r.nonfinite > 0
        for i, eps in enumerate(run.exp.eps):
            s = np.where(bad, np.nan, metrics.channel_sparsity(r.zero_counts[i], r.values_per_channel))
            parts.append(pd.DataFrame({"layer_index": r.index, "eps": eps, "channel": np.arange(len(s)),
                                       "sparsity": s, "reason": np.where(bad, NONFINITE, "")}))
    return pd.concat(parts, ignore_index=True)


def _layer_sparsity(run: ModelRun) -> list[dict]:
    """Eq. 4 at every eps, and the channels that are zero for every sparsity sample."""
    from bnrep import metrics
    rows = []
    for r in run.reps:
        reason = NONFINITE if (r.nonfinite > 0).any() else ""
        for i, eps in enumerate(run.exp.eps):
            s = metrics.channel_sparsity(r.zero_counts[i], r.values_per_channel)
            s = np.where(r.nonfinite > 0, np.nan, s)
            rows.append({"layer_index": r.index, "eps": eps, "reason": reason,
                         "sparsity": math.nan if reason else metrics.layer_sparsity(r.zero_counts[i], r.values_per_channel),
                         "dead_channels": int((s == 1.0).sum())})  # zero for every sparsity sample
    return rows


def _signal_propagation(run: ModelRun) -> list[dict]:
    """Brock, De & Smith 2021: the average squared channel mean and the average channel variance of each
    activation's input and output over every sample and position (float64 sums of the one pass)."""
    rows = []
    for r in run.reps:
        values = {}
        for side, at in (("input", 0), ("output", 2)):
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, reported below
                mean = r.moments[at] / r.moment_count
                var = np.maximum(r.moments[at + 1] / r.moment_count - mean ** 2, 0.0)
            values |= {f"{side}_mean_sq": float(np.mean(mean ** 2)), f"{side}_var": float(np.mean(var))}
        bad = not all(map(math.isfinite, values.values()))
        rows.append({"layer_index": r.index, **({k: math.nan for k in values} if bad else values),
                     "reason": NONFINITE if bad else ""})
    return rows


def gradient_batches(n: int) -> list[int]:
    """The sizes of the batches the gradient norms average over, of `n` analysis samples: the first
    GRADIENT_BATCHES batches of GRADIENT_BATCH, the last one shorter where the samples run out, none of
    one image (no batch statistics)."""
    return [b for b in (min(GRADIENT_BATCH, n - s) for s in range(0, min(n, GRADIENT_BATCHES * GRADIENT_BATCH),
                                                                     GRADIENT_BATCH)) if b >= 2]


def gradient_batches_text(n: int) -> str:
    """'4 batches of 64 analysis samples', '3 batches of analysis samples (64, 64 and 32)': the caption's
    words for gradient_batches(n)."""
    sizes = gradient_batches(n)
    if not sizes:
        return "no batch (fewer than 2 analysis samples)"
    return (f"{len(sizes)} batch{'es' * (len(sizes) != 1)} of {sizes[0]} analysis samples" if len(set(sizes)) == 1
            else f"{len(sizes)} batches of analysis samples ({', '.join(map(str, sizes[:-1]))} and {sizes[-1]})")


def _gradient_norms(run: ModelRun) -> list[dict]:
    """Yang et al. 2019: per probe, the norm of the gradient of the batch's mean cross-entropy with
    respect to the activation's output, averaged over the first GRADIENT_BATCHES batches of
    GRADIENT_BATCH analysis samples (the same images for every model). Norms with running statistics
    use each batch's statistics, as in training; dropout stays off; no parameter changes."""
    import torch
    import torch.nn.functional as F

    from bnrep.probes import tap
    from bnrep.represent import with_batch_statistics
    model = with_batch_statistics(run.model)
    wanted = {r.index for r in run.reps}
    sums, missed, batches = dict.fromkeys(wanted, 0.0), set(), 0
    for size in gradient_batches(len(run.images)):
        xb = run.images[batches * GRADIENT_BATCH:batches * GRADIENT_BATCH + size].to(run.device)
        yb = run.labels[batches * GRADIENT_BATCH:batches * GRADIENT_BATCH + size].to(run.device)
        norms = {}

        def keep(index, path, activation, out):
            if index in wanted and out.requires_grad:
                out.register_hook(lambda g, i=index: norms.__setitem__(i, float(g.double().norm())))

        with torch.enable_grad(), tap(model, keep):
            F.cross_entropy(model(xb), yb).backward()
        missed |= wanted - set(norms)
        for i, v in norms.items():
            sums[i] += v
        batches += 1
    rows = []
    for r in run.reps:
        value = sums[r.index] / batches if batches else math.nan
        reason = ("fewer than 2 analysis samples" if not batches else
                  "the loss does not depend on it (no gradient reached it)" if r.index in missed else
                  "" if math.isfinite(value) else "the gradient contains NaN or inf (a diverged model?)")
        rows.append({"layer_index": r.index, "gradient_norm": math.nan if reason else value, "reason": reason})
    return rows


def _train_eval(run: ModelRun) -> list[dict]:
    """Wu & Johnson 2021: the clustering samples' reduced representations with batch statistics (the
    condition's batch size; no parameter update) against those with running statistics (eval mode):
    linear CKA between the two and ||R_batch - R_eval||_F / ||R_eval||_F, per layer."""
    from bnrep import metrics
    from bnrep.represent import extract_representations, has_running_statistics
    if not has_running_statistics(run.model):
        return [{"layer_index": r.index, "cka": math.nan, "rel_diff": math.nan, "reason": NO_BATCH_STATISTICS}
                for r in run.reps]
    b = run.exp.batch_size
    n = run.n_cluster // b * b  # whole batches only: a short last one has other statistics
    if n < 2:
        return [{"layer_index": r.index, "cka": math.nan, "rel_diff": math.nan,
                 "reason": f"fewer clustering samples ({run.n_cluster}) than one batch of {b}"} for r in run.reps]
    train = extract_representations(run.model, run.images[:n], 0, batch_size=b, device=run.device,
                                    probes=run.probes, batch_stats=True)
    rows = []
    for r, t in zip(run.reps, train):
        A, B = r.reduced[:n].double(), t.reduced.double()
        reason = next((f"{mode}: {why}" for mode, X in (("eval", A), ("batch", B)) for why in [metrics.unusable(X)]
                       if why), "")
        rows.append({"layer_index": r.index, "cka": math.nan if reason else metrics.linear_cka(A, B),
                     "rel_diff": math.nan if reason else float((B - A).norm() / A.norm()), "reason": reason})
    return rows


# ==== layer measures: one layer's reduced representations of the clustering samples ====

def _class_dbi(X: torch.Tensor, y: torch.Tensor, exp, seed: int, backend: str) -> list[dict]:
    from bnrep import metrics
    dbi, reason = metrics.davies_bouldin(X, y)  # NaN with its reason for non-finite values
    return [{"dbi": dbi, "dbi_reason": reason or ""}]


def _kmeans(X: torch.Tensor, y: torch.Tensor, exp, seed: int, backend: str) -> list[dict]:
    """The k-means sweep k = k_min..k_max, the DBI of each k and the optimal k (paper 3.3)."""
    import torch

    from bnrep.kmeans import KMeansResult, optimal_k, sweep_kmeans
    if bool(torch.isfinite(X).all()):
        results = sweep_kmeans(X, exp.k_min, exp.k_max, n_init=exp.n_init, seed=seed, backend=backend)
    else:  # a diverged model (or an overflow): a result with a reason, never an exception
        results = [KMeansResult(k, np.zeros(0, np.int64), math.nan, math.nan, NONFINITE)
                   for k in range(exp.k_min, exp.k_max + 1)]
    best = optimal_k(results)  # the one place the optimal k is chosen (None: every DBI NaN)
    return [{"k": r.k, "dbi": r.dbi, "inertia": r.inertia, "optimal": r is best, "dbi_reason": r.dbi_reason or ""}
            for r in results]


def _value(name: str) -> Callable:
    def compute(X, y, exp, seed, backend):
        from bnrep import metrics
        value, reason = metrics.nc1(X, y) if name == "nc1" else getattr(metrics, name)(X)
        return [{"value": value, "reason": reason or ""}]
    return compute


def _linear_probe(X: torch.Tensor, y: torch.Tensor, exp, seed: int, backend: str) -> list[dict]:
    from bnrep import metrics
    accuracy, reason = metrics.linear_probe(X, y, PROBE_FOLDS, seed=seed)  # folds shuffled with the model's seed
    return [{"accuracy": accuracy, "reason": reason or ""}]


# ==== pair measures: one layer of two models ====

def _cka(A: torch.Tensor, B: torch.Tensor, names: tuple[str, str] = ("a", "b")) -> list[dict]:
    """Linear CKA (Kornblith et al. 2019) and debiased linear CKA (Nguyen, Raghu & Kornblith 2021)."""
    from bnrep import metrics
    reason = next((f"{name}: {why}" for name, X in zip(names, (A, B)) for why in [metrics.unusable(X)] if why), "")
    debiased, why = metrics.debiased_cka(A, B)
    return [{"cka": metrics.linear_cka(A, B), "reason": reason, "cka_debiased": debiased,
             "debiased_reason": reason or why or ""}]


def _rectified_smallest_eps(df: pd.DataFrame) -> pd.DataFrame:
    """What claims 1-2 read: exact zeros after rectifiers, at the smallest eps."""
    from bnrep.results import at_eps, rectified
    return rectified(at_eps(df))


def _optimal_rows(df: pd.DataFrame) -> pd.DataFrame:
    from bnrep.results import optimal_k as optimal_rows
    return optimal_rows(df)


DBI_NAN = "DBI values are NaN (dead layers)"
SAMPLES = ("samples_sparsity", "samples_cluster")  # the extraction pass sees every analysis sample

MEASURES: dict[str, Measure] = {m.table: m for m in [
    Measure("channel_sparsity", "model", _channel_sparsity, ("sparsity",), fields=("samples_sparsity", "eps"),
            keys=("eps", "channel"), grid=lambda exp, q: [{"eps": e, "channel": c} for e in exp.eps
                                                          for c in range(q.channels)]),
    Measure("layer_sparsity", "model", _layer_sparsity, ("sparsity",), fields=("samples_sparsity", "eps"),
            keys=("eps",), grid=lambda exp, q: [{"eps": e} for e in exp.eps], fill={"dead_channels": 0},
            predictor="layer sparsity (rectifiers, smallest eps)",
            select=_rectified_smallest_eps, name="Layer sparsity", ylabel="layer sparsity"),
    Measure("class_dbi", "layer", _class_dbi, ("dbi",), ("dbi_reason",), fields=("samples_cluster",),
            nan_note=DBI_NAN, predictor="class DBI", name="Class DBI", ylabel="class DBI"),
    Measure("nc1", "layer", _value("nc1"), ("value",), fields=("samples_cluster",), log=True,
            caption="Beyond the paper: within-class variability collapse NC1 = Tr(Σ_W Σ_B⁺)/C (Papyan, Han & "
                    "Donoho 2020) of the reduced representations of the clustering samples per layer, for "
                    "{colours} models; lower means the classes are more collapsed around their means. Error "
                    "bars: standard deviation across {seeds}.{nan}",
            title="Within-class variability collapse (NC1) per layer", name="NC1", ylabel="NC1 (lower = more collapsed)",
            predictor="NC1"),
    Measure("effective_rank", "layer", _value("effective_rank"), ("value",), fields=("samples_cluster",),
            caption="Beyond the paper: effective rank (Roy & Vetterli 2007: exp of the entropy of the normalised "
                    "singular values of the centred reduced representations) per layer, for {colours} models. "
                    "Error bars: standard deviation across {seeds}.{nan}",
            title="Effective rank of the reduced representations per layer", name="Effective rank", ylabel="effective rank",
            predictor="effective rank"),
    Measure("linear_probe", "layer", _linear_probe, ("accuracy",), fields=("samples_cluster",), bounds=(0.0, 1.0),
            caption="Beyond the paper: linear probe accuracy (Alain & Bengio 2017) per layer: a multinomial "
                    "logistic regression on the standardised reduced representations of the clustering samples "
                    "(training images), fitted and scored "
                    f"by {PROBE_FOLDS}-fold stratified cross-validation, for {{colours}} models; higher means the "
                    "classes are more linearly separable in the layer. Error bars: standard deviation across "
                    "{seeds}, cut at 0 and 1.{nan}",
            title="Linear probe accuracy per layer", name="Linear probe accuracy",
            ylabel="linear probe accuracy (cross-validated)", predictor="linear probe accuracy"),
    Measure("kmeans", "layer", _kmeans, ("dbi", "inertia"), ("dbi_reason",),
            fields=("samples_cluster", "k_min", "k_max", "n_init"), keys=("k",),
            grid=lambda exp, q: [{"k": k} for k in range(exp.k_min, exp.k_max + 1)], fill={"optimal": False},
            nan_note=DBI_NAN, predictor="k-means DBI at optimal k", select=_optimal_rows,
            name="k-means DBI at the optimal k", ylabel="k-means DBI (optimal k)",
            snapshots="asked"),  # the expensive one: at the snapshots with --snapshot-kmeans only
    Measure("cka", "pair", _cka, ("cka", "cka_debiased"), ("reason", "debiased_reason"), fields=("samples_cluster",),
            version=2),  # 2: debiased linear CKA next to linear CKA
    Measure("signal_propagation", "model", _signal_propagation,
            ("input_var", "input_mean_sq", "output_var", "output_mean_sq"), fields=SAMPLES, name="Pre-activation variance",
            ylabel="pre-activation variance", log=True),
    Measure("gradient_norms", "model", _gradient_norms, ("gradient_norm",), fields=SAMPLES, log=True,
            caption="Beyond the paper: the norm of the loss gradient with respect to each activation's output "
                    "(Yang et al. 2019), averaged over the same {gradient_batches} for every model "
                    "(whatever batch size it trained with), norms with running statistics in training mode as in a "
                    "training step (BatchNorm: the batch's statistics<<ghost: ; ghost BatchNorm: each virtual "
                    "batch's, so its statistics are of fewer samples than BatchNorm's here>>; nothing updated), for "
                    "{colours} models. Error bars: standard deviation across {seeds}.{nan}",
            title="Gradient norm per layer", name="Gradient norm", ylabel="‖∂loss/∂activation‖"),
    Measure("train_eval", "model", _train_eval, ("cka", "rel_diff"), fields=("samples_cluster",), bounds=(0.0, 1.0),
            caption="Beyond the paper (Wu & Johnson 2021): linear CKA between the clustering samples' reduced "
                    "representations in train mode (batch statistics, at the condition's batch size, no update) "
                    "and with running statistics (eval mode), per layer, for {colours} models with BatchNorm-like "
                    "norms; 1 means the two modes represent the samples alike. <<renorm: Batch Renorm's train mode is "
                    "corrected toward its running statistics, so it reaches 1 wherever its r and d are not clipped. "
                    ">>Error bars: standard deviation across {seeds}, cut at 0 and 1.{nan}",
            title="Batch against running statistics: CKA per layer", name="Train-mode against eval-mode CKA",
            ylabel="CKA (train mode, eval mode)", nan_note="values are NaN (no running statistics, or a dead layer)",
            snapshots="trained"),  # at initialisation the running statistics are still 0 and 1: nothing to compare
]}


def all_nan(m: Measure, rs) -> bool:
    """Whether measure `m` has rows in `rs` (bnrep.results.Results) and every headline value of them is NaN
    (each row's `reason` says why): a figure of it would be empty axes."""
    tables = [r.table(m.table) for r in rs]
    return any(len(t) for t in tables) and all(t[m.values[0]].isna().all() for t in tables if len(t))


def of_kind(kind: str) -> tuple[Measure, ...]:
    return tuple(m for m in MEASURES.values() if m.kind == kind)

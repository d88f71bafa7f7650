"""Stage 3: measure every trained model's representations with Ray tasks.

One task per model extracts the post-activation representations (every
probe of bnrep.probes, or those --probes chooses) of the analysis samples (GPU when the cluster has one) and writes sparsity at every eps
threshold (paper eq. 3-4, one pass); its outputs are the per-layer N x C
reduced representations (eq. 5), one object per layer, never written to
disk. One task per (model, layer) then computes the class-based DBI, the
k-means sweep k = 2..15 with the DBI of each k and the optimal k (paper 3.3),
NC1 and the effective rank; one task per (layer, pair of models) the linear
CKA. The sampled images travel to the tasks once, through the object store.

Each analysis table's parts carry that table's hash (bnrep.config.TABLE_FIELDS),
so a rerun with more eps thresholds, or with measures added since, computes
only what is missing: no retraining, no second k-means sweep.

Writes, under <out>/<experiment>/results/ (one Parquet part per task; schema
in bnrep.store): samples, channel_sparsity, layer_sparsity, class_dbi, kmeans,
nc1, effective_rank, cka.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from bnrep.checkpoints import ModelFileError, load_model
from bnrep.config import (RunOptions, UsageError, header, open_store, prepare, stage_hashes, start_fresh,
                          table_hashes, with_trained_config, write_config)
from bnrep.data import check_data, load_data
from bnrep.experiments import Experiment
from bnrep.kmeans import KMeansResult, optimal_k, sweep_kmeans
from bnrep.lock import writer_lock
from bnrep.metrics import (channel_sparsity, davies_bouldin, debiased_cka, effective_rank, layer_sparsity, linear_cka, nc1,
                           unusable)
from bnrep.norms import sort_key
from bnrep.probes import Probe
from bnrep.progress import wait_tasks
from bnrep.raysession import check_nodes, default_gpus, placement, quiet_when_stopped, ray_session
from bnrep.represent import AnalysisSamples, extract_representations, model_probes
from bnrep.store import Store, tables
from bnrep.train import best_device


# ==== the work of one task ====
NONFINITE = "the representations contain NaN or inf (a diverged model?)"
NOT_TRAINED = "diverged at epoch {epoch}: its weights are not a trained model (not analysed)"


def not_trained(row: dict) -> str:
    """Why a diverged model's rows are NaN."""
    return NOT_TRAINED.format(epoch=int(row["diverged_epoch"]))
LAYER_WORK = {"clustering": ("class_dbi", "kmeans"), "measures": ("nc1", "effective_rank")}  # task part -> tables


def model_keys(row: dict) -> dict:
    """The columns that name a model in every analysis table."""
    return {"model_id": row["model_id"], "bn": row["norm"] == "batch", "norm": row["norm"],
            "condition": row["condition"], "seed": row["seed"]}


def extract(out: str, exp: Experiment, row: dict, images: torch.Tensor, n_sparsity: int, probes: list[Probe],
            hashes: dict[str, str] | None) -> list[np.ndarray]:
    """Extract one model's representations of `images` (the analysis samples,
    in order); write its sparsity parts (unless `hashes` is None: only the
    arrays are wanted); return one (N, C) float32 array per probe."""
    quiet_when_stopped()
    store, device = Store(out, exp.name), best_device()
    model = load_model(store, row["model_id"], exp, device)
    reps = extract_representations(model, images, n_sparsity, exp.eps, device=device,
                                   probes=probes)  # every eps, one pass
    if hashes is not None:
        write_sparsity(store, exp, row, reps, hashes)
    return [r.reduced.numpy() for r in reps]


def write_sparsity(store: Store, exp: Experiment, row: dict, reps, hashes: dict[str, str]) -> None:
    """Eq. 3-4 at every eps. A channel with a NaN or inf value has no sparsity (NaN), nor has its
    layer: NaN is neither zero nor non-zero; `reason` says why."""
    keys, chan, lay = model_keys(row), [], []
    for r in reps:
        bad = r.nonfinite > 0  # (C,)
        reason = NONFINITE if bad.any() else ""
        for i, eps in enumerate(exp.eps):
            s = np.where(bad, np.nan, channel_sparsity(r.zero_counts[i], r.values_per_channel))
            at = {**keys, "layer": r.name, "layer_index": r.index, "activation": r.activation}
            chan.append(pd.DataFrame({**at, "channel": np.arange(len(s)), "sparsity": s, "eps": eps,
                                      "reason": np.where(bad, NONFINITE, "")}))
            lay.append({**at, "eps": eps, "reason": reason,
                        "sparsity": math.nan if reason else layer_sparsity(r.zero_counts[i], r.values_per_channel),
                        "dead_channels": int((s == 1.0).sum())})  # zero for every sample
    where = placement()  # provenance: which machine measured it, with what
    store.write_part("channel_sparsity", row["model_id"], pd.concat(chan, ignore_index=True),
                     hashes["channel_sparsity"], **where)
    store.write_part("layer_sparsity", row["model_id"], pd.DataFrame(lay), hashes["layer_sparsity"], **where)


def layer_task(out: str, exp: Experiment, row: dict, probe: Probe, X: np.ndarray, y: np.ndarray,
               work: tuple[str, ...], backend: str, hashes: dict[str, str]) -> None:
    """One (model, layer) on the clustering samples: 'clustering' = class-based DBI,
    the k-means sweep and the optimal k; 'measures' = NC1 and effective rank."""
    quiet_when_stopped()
    store = Store(out, exp.name)
    Xt = torch.tensor(X[: len(y)], device=best_device())  # the clustering samples lead the extracted rows
    yt = torch.tensor(y, device=Xt.device)
    keys = {**model_keys(row), "layer": probe.name, "layer_index": probe.index, "activation": probe.activation}
    part, where = f"{row['model_id']}-{probe.name}", placement()
    if "clustering" in work:
        dbi, reason = davies_bouldin(Xt, yt)  # NaN with its reason for non-finite values
        if bool(torch.isfinite(Xt).all()):
            results = sweep_kmeans(Xt, exp.k_min, exp.k_max, n_init=exp.n_init, seed=row["seed"], backend=backend)
        else:  # a diverged model (or an overflow): a result with a reason, never an exception
            results = [KMeansResult(k, np.zeros(0, np.int64), math.nan, math.nan, NONFINITE)
                       for k in range(exp.k_min, exp.k_max + 1)]
        best = optimal_k(results)  # the one place the optimal k is chosen (None: every DBI NaN)
        km = pd.DataFrame([{**keys, "k": r.k, "dbi": r.dbi, "inertia": r.inertia, "optimal": r is best,
                            "dbi_reason": r.dbi_reason or ""} for r in results])
        store.write_part("kmeans", part, km, hashes["kmeans"], **where)
        store.write_part("class_dbi", part, pd.DataFrame([{**keys, "dbi": dbi, "dbi_reason": reason or ""}]),
                         hashes["class_dbi"], **where)
    if "measures" in work:
        for table, (value, reason) in (("nc1", nc1(Xt, yt)), ("effective_rank", effective_rank(Xt))):
            store.write_part(table, part, pd.DataFrame([{**keys, "value": value, "reason": reason or ""}]),
                             hashes[table], **where)


def cka_task(out: str, exp: Experiment, a: dict, b: dict, layer: str, index: int, Xa: np.ndarray,
             Xb: np.ndarray, n: int, cka_hash: str) -> None:
    """Linear CKA between two models' reduced representations of one layer (the n clustering samples)."""
    quiet_when_stopped()
    store, dev = Store(out, exp.name), best_device()
    A, B = torch.tensor(Xa[:n], device=dev), torch.tensor(Xb[:n], device=dev)
    reason = next((f"{m['model_id']}: {why}" for m, X in ((a, A), (b, B)) for why in [unusable(X)] if why), "")
    write_cka(store, a, b, layer, index, linear_cka(A, B), reason, cka_hash, debiased_cka(A, B))


def write_cka(store: Store, a: dict, b: dict, layer: str, index: int, value: float, reason: str,
              cka_hash: str, debiased: tuple[float, str | None] = (math.nan, None)) -> None:
    row = {"model_a": a["model_id"], "model_b": b["model_id"], "norm_a": a["norm"], "norm_b": b["norm"],
           "condition_a": a["condition"], "condition_b": b["condition"], "seed_a": a["seed"], "seed_b": b["seed"],
           "layer": layer, "layer_index": index, "cka": value, "reason": reason,
           "cka_debiased": debiased[0], "debiased_reason": reason or debiased[1] or ""}
    store.write_part("cka", cka_part(layer, a, b), pd.DataFrame([row]), cka_hash, **placement())


def write_not_analysed(store: Store, exp: Experiment, row: dict, probes: list[Probe], todo: "Plan",
                       hashes: dict[str, str]) -> None:
    """A diverged model's missing parts, on the driver: every measure NaN with the reason, no forward
    pass (the grid keeps its row as evidence; its weights are not a trained model's)."""
    why, keys, where = not_trained(row), model_keys(row), placement()
    at = [{**keys, "layer": q.name, "layer_index": q.index, "activation": q.activation} for q in probes]
    mid = row["model_id"]
    if mid in todo.sparsity:
        chan = [pd.DataFrame({**k, "channel": np.arange(q.channels), "sparsity": math.nan, "eps": e, "reason": why})
                for q, k in zip(probes, at) for e in exp.eps]
        store.write_part("channel_sparsity", mid, pd.concat(chan, ignore_index=True), hashes["channel_sparsity"],
                         **where)
        store.write_part("layer_sparsity", mid, pd.DataFrame([{**k, "eps": e, "reason": why, "sparsity": math.nan,
                                                               "dead_channels": 0} for k in at for e in exp.eps]),
                         hashes["layer_sparsity"], **where)
    for q, work in todo.layers.get(mid, []):
        k = next(k for k in at if k["layer_index"] == q.index)
        rows = {"class_dbi": [{**k, "dbi": math.nan, "dbi_reason": why}],
                "kmeans": [{**k, "k": j, "dbi": math.nan, "inertia": math.nan, "optimal": False, "dbi_reason": why}
                           for j in range(exp.k_min, exp.k_max + 1)],
                "nc1": [{**k, "value": math.nan, "reason": why}],
                "effective_rank": [{**k, "value": math.nan, "reason": why}]}
        for table in (t for w in work for t in LAYER_WORK[w]):
            store.write_part(table, f"{mid}-{q.name}", pd.DataFrame(rows[table]), hashes[table], **where)


def cka_part(layer: str, a: dict, b: dict) -> str:
    return f"{layer}-{a['model_id']}-{b['model_id']}"


def cka_pairs(models: pd.DataFrame) -> list[tuple[dict, dict]]:
    """Every pair of conditions at one seed, and every pair of seeds within one condition (the baseline)."""
    rows = sorted(models.to_dict("records"), key=lambda r: (sort_key(r["condition"]), r["seed"]))
    return [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]
            if (a["seed"] == b["seed"]) != (a["condition"] == b["condition"])]


# ==== the plan ====
def diverged_mask(models: pd.DataFrame) -> pd.Series:
    """Models whose training diverged (results before 0.3 have no column: none)."""
    return models["diverged"].fillna(False).astype(bool) if "diverged" in models else pd.Series(False, models.index)


def trained_models(store: Store, exp: Experiment) -> pd.DataFrame:
    """The experiment's trained models, each verified (UsageError names the file)."""
    df = store.read_table("training")
    if df.empty:
        raise UsageError(f"no trained models in {store.out}/{exp.name}: run sweeps/final.py "
                         f"--experiment {exp.name} first")
    for mid in df["model_id"]:
        try:
            load_model(store, mid, exp)
        except ModelFileError as e:
            raise UsageError(f"checkpoint {e}; rerun sweeps/final.py to retrain it") from None
    return df.sort_values("model_id").reset_index(drop=True)


def check_k_max(exp: Experiment, n_cluster: int) -> None:
    # k_min >= 2, k_max >= k_min and eps >= 0 are checked by the experiment itself.
    if exp.k_max >= n_cluster:
        raise UsageError(f"--k-max {exp.k_max} must be below the number of clustering samples ({n_cluster})")


@dataclass
class Plan:
    """What is left to compute; everything else has a current part."""
    sparsity: set[str] = field(default_factory=set)  # models whose sparsity parts are missing
    layers: dict[str, list] = field(default_factory=dict)  # model id -> [(probe, work)]
    cka: list = field(default_factory=list)  # (row a, row b, layer, index)

    def extract(self) -> set[str]:
        """Models that need a forward pass."""
        return (self.sparsity | set(self.layers) | {r["model_id"] for a, b, *_ in self.cka for r in (a, b)})

    def n_tasks(self) -> int:
        return len(self.extract()) + sum(map(len, self.layers.values())) + len(self.cka)


def plan(store: Store, exp: Experiment, models: pd.DataFrame, probes: list[Probe]) -> Plan:
    """Compare the store with what the experiment needs. A part is current when it
    carries its table's hash, or the whole analysis hash (parts written before
    tables had their own hashes)."""
    th, ah = table_hashes(exp), stage_hashes(exp)["analysis_hash"]
    have = lambda t, part: store.has_part(t, part, (th[t], ah))  # noqa: E731
    p = Plan()
    for row in models.to_dict("records"):
        mid = row["model_id"]
        if not (have("channel_sparsity", mid) and have("layer_sparsity", mid)):
            p.sparsity.add(mid)
        for q in probes:
            work = tuple(w for w, tables in LAYER_WORK.items() if not all(have(t, f"{mid}-{q.name}") for t in tables))
            if work:
                p.layers.setdefault(mid, []).append((q, work))
    p.cka = [(a, b, q.name, q.index) for a, b in cka_pairs(models) for q in probes
             if not have("cka", cka_part(q.name, a, b))]
    return p


# ==== the stage ====
def resolve(exp: Experiment, opts: RunOptions) -> tuple[Experiment, Store]:
    """The experiment as trained (config.json) with this run's analysis fields; checks that need no data."""
    store = open_store(opts.out, exp)
    trained = with_trained_config(store, exp)  # training flags are final.py's, not ours
    if trained.model != exp.model:
        raise UsageError(f"{store.out}/{exp.name} trained {trained.model}; --model {exp.model} is another model "
                         f"(analyse it in another --out, or train it with --fresh)")
    exp = trained
    check_k_max(exp, exp.samples_cluster)
    return exp, store


def run(exp: Experiment, opts: RunOptions) -> int:
    # ==== every check before Ray starts ====
    exp, store = resolve(exp, opts)
    check_data(exp, opts.data_root)
    probes = model_probes(exp)  # the model checked at the data's shape; its activations, as --probes chooses
    record = prepare(store, exp, "analysis", opts.fresh)
    data = load_data(exp, opts.data_root, device="cpu")
    models = trained_models(store, exp)
    samples = AnalysisSamples.draw(len(data.train), exp.samples_sparsity, exp.samples_cluster, exp.split_seed)
    check_k_max(exp, samples.n_cluster)  # capped at what the training split holds
    print(header("analysis", exp, store), flush=True)
    for note in samples.notes:
        print(f"note: {note}", flush=True)

    # ==== skip complete work; one writer from here on ====
    with contextlib.ExitStack() as held:
        if opts.fresh:  # the lock, then the deletion
            held.enter_context(writer_lock(store, "analysis"))
            start_fresh(store, "analysis")
        todo = plan(store, exp, models, probes)
        print(f"[analysis] {len(models)} models x {len(probes)} layers; {len(models) - len(todo.extract())} "
              f"models complete, {todo.n_tasks()} tasks to run", flush=True)
        if not todo.n_tasks():
            return 0
        held.enter_context(writer_lock(store, "analysis"))  # LockError: one line
        write_config(store, record)
        hashes = table_hashes(exp)
        if not store.has_part("samples", "indices", (hashes["samples"], stage_hashes(exp)["analysis_hash"])):
            store.write_part("samples", "indices", samples.table(), hashes["samples"])
        launch(exp, opts, store, data, models, samples, probes, todo, hashes)
    print(f"[analysis] wrote {store.out}/{exp.name}/results/{{{','.join(tables('analysis'))}}}")
    return 0


def launch(exp: Experiment, opts: RunOptions, store: Store, data, models: pd.DataFrame, samples: AnalysisSamples,
           probes: list[Probe], todo: Plan, hashes: dict[str, str]) -> None:
    """Ray tasks: extract per model; one per (model, layer); CKA per (layer, pair). A diverged model
    gets no task: its rows (NaN, the epoch it diverged) are written here."""
    diverged = set(models.loc[diverged_mask(models), "model_id"])
    with ray_session(opts.address, exp.model) as ray:
        check_nodes(ray, store, exp.dataset)
        gpus = default_gpus(ray, opts.gpus_per_task)
        task = {"num_cpus": opts.cpus_per_task, "num_gpus": gpus, "max_retries": 3}
        remote = {f.__name__: ray.remote(f).options(**task) for f in (layer_task, cka_task)}
        remote["extract"] = ray.remote(extract).options(num_returns=len(probes), **task)
        images = ray.put(data.train.X[torch.as_tensor(samples.order)])  # shipped once, to every task
        labels = ray.put(data.train.y[torch.as_tensor(samples.indices("cluster"))].numpy())
        rows = {r["model_id"]: r for r in models.to_dict("records")}
        at = {p.index: i for i, p in enumerate(probes)}  # layer index -> position of its array
        arrays, pending = {}, []
        for mid in sorted(todo.extract()):
            if mid in diverged:  # its rows say so; no task
                write_not_analysed(store, exp, rows[mid], probes, todo, hashes)
                continue
            refs = remote["extract"].remote(store.out, exp, rows[mid], images, samples.n_sparsity, probes,
                                            hashes if mid in todo.sparsity else None)
            arrays[mid] = refs if isinstance(refs, list) else [refs]
            pending.append(arrays[mid][-1])  # completes with the extraction (and its sparsity parts)
            pending += [remote["layer_task"].remote(store.out, exp, rows[mid], q, arrays[mid][at[q.index]],
                                                    labels, work, opts.kmeans_backend, hashes)
                        for q, work in todo.layers.get(mid, [])]
        for a, b, name, index in todo.cka:
            if diverged & {a["model_id"], b["model_id"]}:
                why = next(not_trained(m) for m in (a, b) if m["model_id"] in diverged)
                write_cka(store, a, b, name, index, math.nan, why, hashes["cka"])
            else:
                pending.append(remote["cka_task"].remote(store.out, exp, a, b, name, index,
                                                         arrays[a["model_id"]][at[index]], arrays[b["model_id"]][at[index]],
                                                         samples.n_cluster, hashes["cka"]))
        wait_tasks(ray, pending, "analysis")

"""Stage 3: measure every trained model's representations with Ray tasks.

One task per model extracts the post-ReLU representations of the analysis
samples (GPU when the cluster has one) and writes sparsity (paper eq. 3-4);
its outputs are the per-layer N x C reduced representations (eq. 5), one
object per layer. One task per (model, layer) then computes the class-based
DBI and the k-means sweep k = 2..15 with the DBI of each k and the optimal k
(paper 3.3). The sampled images travel to the tasks once, through the object
store; no task reloads the dataset.

Writes, under <out>/<experiment>/results/ (one Parquet part per task; schema
in bnrep.store): samples/, channel_sparsity/, layer_sparsity/, class_dbi/, kmeans/.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from bnrep.checkpoints import ModelFileError, load_model
from bnrep.config import (RunOptions, UsageError, header, open_store, prepare, stage_hashes,
                          with_trained_config, write_config)
from bnrep.data import check_data, load_data
from bnrep.experiments import Experiment
from bnrep.kmeans import optimal_k, sweep_kmeans
from bnrep.metrics import channel_sparsity, davies_bouldin, layer_sparsity
from bnrep.models import build_model
from bnrep.progress import wait_tasks
from bnrep.raysession import check_shared_out, default_gpus, node_id, ray_session
from bnrep.represent import AnalysisSamples, extract_representations
from bnrep.store import Store
from bnrep.train import best_device


# ==== the work of one task ====
def model_keys(row: dict) -> dict:
    """The columns that name a model in every analysis table."""
    return {"model_id": row["model_id"], "bn": row["norm"] == "batch", "norm": row["norm"], "seed": row["seed"]}


def extract(out: str, exp: Experiment, row: dict, images: torch.Tensor, n_sparsity: int,
            analysis_hash: str) -> list[np.ndarray]:
    """Extract one model's representations of `images` (the analysis samples,
    in order); write its sparsity parts; return one (N, C) float32 array per probe layer."""
    store, device = Store(out, exp.name), best_device()
    model = load_model(store, row["model_id"], exp, images.shape[1], device)
    reps = extract_representations(model, images, n_sparsity, exp.eps, device=device)  # every eps, one pass
    keys = model_keys(row)
    chan, lay = [], []
    for r in reps:
        for i, eps in enumerate(exp.eps):
            s = channel_sparsity(r.zero_counts[i], r.values_per_channel)
            chan.append(pd.DataFrame({**keys, "layer": r.name, "layer_index": r.index,
                                      "channel": np.arange(len(s)), "sparsity": s, "eps": eps}))
            lay.append({**keys, "layer": r.name, "layer_index": r.index, "eps": eps,
                        "sparsity": layer_sparsity(r.zero_counts[i], r.values_per_channel),
                        "dead_channels": int((s == 1.0).sum())})  # zero for every sample
    node = node_id()  # provenance: which machine measured it
    store.write_part("channel_sparsity", row["model_id"], pd.concat(chan, ignore_index=True), analysis_hash,
                     node_id=node)
    store.write_part("layer_sparsity", row["model_id"], pd.DataFrame(lay), analysis_hash, node_id=node)
    return [r.reduced.numpy() for r in reps]


def cluster(out: str, exp: Experiment, row: dict, layer: str, index: int, X: np.ndarray,
            y: np.ndarray, backend: str, analysis_hash: str) -> None:
    """Class-based DBI, the k-means sweep and the optimal k for one (model, layer)."""
    store = Store(out, exp.name)
    Xt = torch.tensor(X[: len(y)], device=best_device())  # the clustering samples lead the extracted rows
    keys = {**model_keys(row), "layer": layer, "layer_index": index}
    dbi, reason = davies_bouldin(Xt, torch.tensor(y, device=Xt.device))
    results = sweep_kmeans(Xt, exp.k_min, exp.k_max, n_init=exp.n_init, seed=row["seed"], backend=backend)
    best = optimal_k(results)  # the one place the optimal k is chosen
    km = pd.DataFrame([{**keys, "k": r.k, "dbi": r.dbi, "inertia": r.inertia, "optimal": r is best,
                        "dbi_reason": r.dbi_reason or ""} for r in results])
    part = f"{row['model_id']}-{layer}"
    store.write_part("kmeans", part, km, analysis_hash, node_id=node_id())
    store.write_part("class_dbi", part, pd.DataFrame([{**keys, "dbi": dbi, "dbi_reason": reason or ""}]),
                     analysis_hash, node_id=node_id())


# ==== the plan ====
def trained_models(store: Store, exp: Experiment, channels: int) -> pd.DataFrame:
    """The experiment's trained models, each verified (UsageError names the file)."""
    df = store.read_table("training")
    if df.empty:
        raise UsageError(f"no trained models in {store.out}/{exp.name}: run sweeps/final.py "
                         f"--experiment {exp.name} first")
    for mid in df["model_id"]:
        try:
            load_model(store, mid, exp, channels)
        except ModelFileError as e:
            raise UsageError(f"checkpoint {e}; rerun sweeps/final.py to retrain it") from None
    return df.sort_values("model_id").reset_index(drop=True)


def check_k_max(exp: Experiment, n_cluster: int) -> None:
    # k_min >= 2, k_max >= k_min and eps >= 0 are checked by the experiment itself.
    if exp.k_max >= n_cluster:
        raise UsageError(f"--k-max {exp.k_max} must be below the number of clustering samples ({n_cluster})")


def unfinished(store: Store, models: pd.DataFrame, probes: list[tuple[str, int]], h: str) -> list:
    """(row, probes whose clustering parts are missing) of every model with work left."""
    todo = []
    for row in models.to_dict("records"):
        mid = row["model_id"]
        missing = [p for p in probes if not (store.has_part("kmeans", f"{mid}-{p[0]}", h)
                                             and store.has_part("class_dbi", f"{mid}-{p[0]}", h))]
        sparse_done = store.has_part("channel_sparsity", mid, h) and store.has_part("layer_sparsity", mid, h)
        if missing or not sparse_done:
            todo.append((row, missing))
    return todo


# ==== the stage ====
def resolve(exp: Experiment, opts: RunOptions) -> tuple[Experiment, Store]:
    """The experiment as trained (config.json) with this run's analysis fields; checks that need no data."""
    store = open_store(opts.out, exp)
    exp = with_trained_config(store, exp)  # training flags are final.py's, not ours
    check_k_max(exp, exp.samples_cluster)
    return exp, store


def run(exp: Experiment, opts: RunOptions) -> int:
    # ==== every check before Ray starts ====
    exp, store = resolve(exp, opts)
    check_data(exp, opts.data_root)
    record = prepare(store, exp, "analysis", opts.fresh)
    data = load_data(exp, opts.data_root, device="cpu")
    models = trained_models(store, exp, data.channels)
    samples = AnalysisSamples.draw(len(data.train), exp.samples_sparsity, exp.samples_cluster, exp.split_seed)
    check_k_max(exp, samples.n_cluster)  # capped at what the training split holds
    print(header("analysis", exp, store), flush=True)
    for note in samples.notes:
        print(f"note: {note}", flush=True)

    # ==== skip complete work ====
    probes = [(p.name, p.index) for p in build_model(exp.arch, "none", data.channels).probes()]
    h = stage_hashes(exp)["analysis_hash"]
    todo = unfinished(store, models, probes, h)
    n_tasks = sum(1 + len(m) for _, m in todo)
    print(f"[analysis] {len(models)} models x {len(probes)} layers; {len(models) - len(todo)} models complete, "
          f"{n_tasks} tasks to run", flush=True)
    if not todo:
        return 0
    write_config(store, record)
    if not store.has_part("samples", "indices", h):
        store.write_part("samples", "indices", samples.table(), h)

    # ==== Ray tasks: extract per model, cluster per (model, layer) ====
    with ray_session(opts.address) as ray:
        check_shared_out(ray, store)
        gpus = default_gpus(ray, opts.gpus_per_task)
        task = {"num_cpus": opts.cpus_per_task, "num_gpus": gpus, "max_retries": 3}
        extract_task = ray.remote(extract).options(num_returns=len(probes), **task)
        cluster_task = ray.remote(cluster).options(**task)
        images = ray.put(data.train.X[torch.as_tensor(samples.order)])  # shipped once, to every task
        labels = ray.put(data.train.y[torch.as_tensor(samples.indices("cluster"))].numpy())
        pending = []
        for row, missing in todo:
            arrays = extract_task.remote(store.out, exp, row, images, samples.n_sparsity, h)
            arrays = arrays if isinstance(arrays, list) else [arrays]
            pending.append(arrays[-1])  # completes with the extraction (and its sparsity parts)
            pending += [cluster_task.remote(store.out, exp, row, name, index, arrays[index - 1], labels,
                                            opts.kmeans_backend, h) for name, index in missing]
        wait_tasks(ray, pending, "analysis")
    print(f"[analysis] wrote {store.out}/{exp.name}/results/"
          "{samples,channel_sparsity,layer_sparsity,class_dbi,kmeans}")
    return 0

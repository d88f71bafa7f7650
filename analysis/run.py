"""Stage 3: measure every trained model's representations with Ray tasks.

    python analysis/run.py                                    # digits-cnn, private local Ray
    python analysis/run.py --experiment cifar10-vgg16 --gpus-per-task 0.5
    ray submit cluster.yaml analysis/run.py -- --experiment cifar10-vgg16 --out s3://bucket/bnrep

One task per model extracts the post-ReLU representations of a seeded sample
of training images (GPU when the cluster has one) and writes sparsity (paper
eq. 3-4); its outputs are the per-layer N x C reduced representations (eq. 5).
One task per (model, layer) then computes the class-based DBI and the k-means
sweep k = 2..15 with the DBI of each k (paper 3.3).

Writes, under <out>/<experiment>/results/ (one Parquet part per task):
    samples/            purpose, position, index of the training images used
    channel_sparsity/   model x layer x channel
    layer_sparsity/     model x layer
    class_dbi/          model x layer
    kmeans/             model x layer x k

digits-cnn (8 models) on 2 CPU cores: about a minute. A rerun skips parts
that are complete and valid.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bnrep import driver  # noqa: E402
from bnrep.data import check_data, load_data  # noqa: E402
from bnrep.experiments import Experiment  # noqa: E402
from bnrep.kmeans import optimal_k, sweep_kmeans  # noqa: E402
from bnrep.metrics import channel_sparsity, davies_bouldin, layer_sparsity  # noqa: E402
from bnrep.models import build_model  # noqa: E402
from bnrep.represent import extract_representations, sample_indices  # noqa: E402
from bnrep.store import Store  # noqa: E402
from bnrep.train import best_device  # noqa: E402


# ==== the work of one task ====
def load_model(store: Store, row: dict, exp: Experiment, channels: int, device="cpu") -> torch.nn.Module:
    blob = torch.load(io.BytesIO(store.read_bytes(f"train/models/{row['model_id']}/model.pt")),
                      map_location=device, weights_only=True)
    model = build_model(exp.arch, bool(row["bn"]), channels)
    model.load_state_dict(blob["state_dict"])
    return model.to(device)


def extract(out: str, exp: Experiment, data_root: str | None, row: dict, idx: np.ndarray,
            n_sparsity: int, analysis_hash: str) -> list[np.ndarray]:
    """Extract one model's representations; write its sparsity parts; return
    one (N, C) float32 array per probe layer."""
    store, device = Store(out, exp.name), best_device()
    data = load_data(exp, data_root, device="cpu")
    model = load_model(store, row, exp, data.channels, device)
    reps = extract_representations(model, data.train.X[torch.tensor(idx)], n_sparsity, (exp.eps,),
                                   device=device)
    keys = {"model_id": row["model_id"], "bn": row["bn"], "seed": row["seed"]}
    chan, lay = [], []
    for r in reps:
        s = channel_sparsity(r.zero_counts[0], r.values_per_channel)
        chan.append(pd.DataFrame({**keys, "layer": r.name, "layer_index": r.index,
                                  "channel": np.arange(len(s)), "sparsity": s, "eps": exp.eps}))
        lay.append({**keys, "layer": r.name, "layer_index": r.index, "eps": exp.eps,
                    "sparsity": layer_sparsity(r.zero_counts[0], r.values_per_channel)})
    node = driver.node_id()  # provenance: which machine measured it
    store.write_part("channel_sparsity", row["model_id"], pd.concat(chan, ignore_index=True), analysis_hash,
                     node_id=node)
    store.write_part("layer_sparsity", row["model_id"], pd.DataFrame(lay), analysis_hash, node_id=node)
    return [r.reduced.numpy() for r in reps]


def cluster(out: str, exp: Experiment, row: dict, layer: str, index: int, X: np.ndarray,
            y: np.ndarray, backend: str, analysis_hash: str) -> int:
    """Class-based DBI and the k-means sweep for one (model, layer)."""
    store = Store(out, exp.name)
    Xt = torch.tensor(X[: len(y)], device=best_device())  # clustering samples: a prefix of the extracted rows
    keys = {"model_id": row["model_id"], "bn": row["bn"], "seed": row["seed"], "layer": layer, "layer_index": index}
    dbi, reason = davies_bouldin(Xt, torch.tensor(y, device=Xt.device))
    results = sweep_kmeans(Xt, exp.k_min, exp.k_max, n_init=exp.n_init, seed=row["seed"], backend=backend)
    best = optimal_k(results)
    km = pd.DataFrame([{**keys, "k": r.k, "dbi": r.dbi, "inertia": r.inertia, "optimal": r.k == best.k,
                        "dbi_reason": r.dbi_reason or ""} for r in results])
    part = f"{row['model_id']}-{layer}"
    store.write_part("kmeans", part, km, analysis_hash, node_id=driver.node_id())
    store.write_part("class_dbi", part, pd.DataFrame([{**keys, "dbi": dbi, "dbi_reason": reason or ""}]),
                     analysis_hash, node_id=driver.node_id())
    return best.k


# ==== the driver ====
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    driver.add_experiment_args(p)
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="where torchvision datasets live (default: $BNREP_DATA or ~/.cache/bnrep/data)")
    driver.add_analysis_args(p)
    return p


def trained_models(store: Store, exp: Experiment, channels: int) -> pd.DataFrame:
    """The experiment's trained models, each checked loadable (UsageError names the file)."""
    df = store.read_table("training")
    if df.empty:
        raise driver.UsageError(f"no trained models in {store.out}/{exp.name}: run sweeps/final.py "
                                f"--experiment {exp.name} first")
    for row in df.to_dict("records"):
        try:
            load_model(store, row, exp, channels)
        except Exception as e:  # noqa: BLE001 - any failure to load is the same user problem
            path = f"{store.out}/{exp.name}/train/models/{row['model_id']}/model.pt"
            raise driver.UsageError(f"checkpoint {path} does not load ({type(e).__name__}); "
                                    f"rerun sweeps/final.py to retrain it") from None
    return df.sort_values("model_id").reset_index(drop=True)


def validate(args, exp: Experiment) -> None:
    driver.check_positive(args, "samples_sparsity", "samples_cluster", "n_init", "cpus_per_task")
    # k_min >= 2, k_max >= k_min and eps >= 0 are checked by the experiment itself.
    check_k_max(exp, exp.samples_cluster)


def check_k_max(exp: Experiment, n_cluster: int) -> None:
    if exp.k_max >= n_cluster:
        raise driver.UsageError(f"--k-max {exp.k_max} must be below the number of clustering samples ({n_cluster})")


def main(argv: list[str] | None = None) -> int:
    # ==== validate everything before Ray starts ====
    args = build_parser().parse_args(argv)
    exp = driver.resolve_experiment(args)
    store = driver.open_store(args, exp)
    exp = driver.with_trained_config(store, exp)  # training flags are final.py's, not ours
    validate(args, exp)
    check_data(exp, args.data_root)
    record = driver.prepare(store, exp, "analysis", args.fresh)
    data = load_data(exp, args.data_root, device="cpu")
    models = trained_models(store, exp, data.channels)
    driver.print_header("analysis", exp, store)

    # ==== samples: the same training images for every model ====
    idx = sample_indices(len(data.train), exp.samples_sparsity, exp.samples_cluster, exp.split_seed)
    check_k_max(exp, len(idx["cluster"]))  # capped at what the training split holds
    order = idx["cluster"] if len(idx["cluster"]) >= len(idx["sparsity"]) else idx["sparsity"]
    labels = data.train.y[torch.as_tensor(idx["cluster"])].numpy()
    probes = [(p.name, p.index) for p in build_model(exp.arch, True, data.channels).probes()]
    n_layers = len(probes)

    # ==== skip complete work ====
    h = driver.stage_hashes(exp)["analysis_hash"]
    todo = []
    for row in models.to_dict("records"):
        mid = row["model_id"]
        missing = [p for p in probes if not (store.has_part("kmeans", f"{mid}-{p[0]}", h)
                                             and store.has_part("class_dbi", f"{mid}-{p[0]}", h))]
        sparse_done = store.has_part("channel_sparsity", mid, h) and store.has_part("layer_sparsity", mid, h)
        if missing or not sparse_done:
            todo.append((row, missing))
    n_tasks = sum(1 + len(m) for _, m in todo)
    print(f"[analysis] {len(models)} models x {n_layers} layers; {len(models) - len(todo)} models complete, "
          f"{n_tasks} tasks to run", flush=True)
    if not todo:
        return 0
    driver.write_config(store, record)
    if not store.has_part("samples", "indices", h):
        samples = pd.concat([pd.DataFrame({"purpose": k, "position": np.arange(len(v)), "index": v})
                             for k, v in idx.items()], ignore_index=True)
        store.write_part("samples", "indices", samples, h)

    # ==== Ray tasks: extract per model, cluster per (model, layer) ====
    with driver.ray_session(args.address) as ray:
        driver.check_shared_out(ray, store)
        gpus = driver.default_gpus(ray, args.gpus_per_task)
        opts = {"num_cpus": args.cpus_per_task, "num_gpus": gpus, "max_retries": 3}
        extract_task = ray.remote(extract).options(num_returns=n_layers, **opts)
        cluster_task = ray.remote(cluster).options(**opts)
        idx_ref, labels_ref = ray.put(order), ray.put(labels)
        pending = []
        for row, missing in todo:
            arrays = extract_task.remote(store.out, exp, args.data_root, row, idx_ref,
                                         len(idx["sparsity"]), h)
            arrays = arrays if isinstance(arrays, list) else [arrays]
            pending.append(arrays[-1])  # completes with the extraction (and its sparsity parts)
            for name, index in missing:
                X = arrays[index - 1]
                pending.append(cluster_task.remote(store.out, exp, row, name, index, X, labels_ref,
                                                   args.kmeans_backend, h))
        wait_all(ray, pending)
    print(f"[analysis] wrote {store.out}/{exp.name}/results/"
          "{samples,channel_sparsity,layer_sparsity,class_dbi,kmeans}")
    return 0


def wait_all(ray, pending: list) -> None:
    """Block until every task is done, printing progress; raise the first error."""
    total, done, t0 = len(pending), 0, time.time()
    tty = sys.stdout.isatty()  # a live counter on a terminal, a line per tenth in a log
    step = max(1, total // 10)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=None)
        ray.get(ready)
        done += len(ready)
        line = f"[analysis] {done}/{total} tasks done ({time.time() - t0:.0f} s)"
        if tty:
            print("\r" + line, end="\n" if done == total else "", flush=True)
        elif done % step == 0 or done == total:
            print(line, flush=True)


if __name__ == "__main__":
    sys.exit(driver.main_guard(main))

"""Benchmark: bnrep's batched k-means sweep against a loop of scikit-learn KMeans.

    python benchmarks/kmeans_sweep.py                 # N=15000, d=64 and 512, k=2..15
    python benchmarks/kmeans_sweep.py --seeds 1 --repeats 1 --dims 64   # quick look

Data: rows like reduced representations (paper eq. 5): |gaussian blobs| (10
centres, std --std), each row L2-normalised, float32. Both sides get the same
array, n_init=1, tol=1e-4, max_iter=300, the same seeds and the same number of
threads (torch.set_num_threads and threadpoolctl for scikit-learn's OpenMP/BLAS).
Each seed runs --repeats times, interleaved; the fastest repeat counts, since
other processes on a shared machine only ever add time.

Prints JSON lines: one "env" line, one "seed" line per (d, seed), one
"summary" line per d with
  kmeans_speedup   sklearn loop time / bnrep k-means time (k-means only, the target: >= 5)
  kmeans_speedup_cpu  the same in process CPU seconds (steadier on a shared machine)
  sweep_speedup    the same with the Davies-Bouldin index of every k on both sides
                   (bnrep.metrics.davies_bouldin vs sklearn's davies_bouldin_score)
  inertia_ratio    mean inertia over k (and seeds), bnrep / sklearn (target: <= 1.01)
  worst_k_ratio    the largest per-k inertia ratio seen

Run it on an otherwise idle machine: with other processes on the same cores,
multi-threaded timings (OpenMP barriers) of both sides mean little; --threads 1
is the steady alternative.

Measured (about a minute): 2-core AMD EPYC VM (Zen 5; torch's MKL and scipy's
OpenBLAS both run AVX2 kernels, ~100 GFLOP/s sgemm per core), idle, torch 2.14.1,
scikit-learn 1.9.1, defaults (3 seeds, fastest of 3 repeats, sums over seeds):

    d    threads  sklearn   bnrep    kmeans_speedup  sweep_speedup  inertia_ratio  worst_k_ratio
    64   2        0.93 s    0.39 s   2.39            2.38           0.9994         1.008
    512  2        5.72 s    0.86 s   6.68            5.35           1.0024         1.023
    64   1        1.23 s    0.48 s   2.55            2.55           0.9994         1.008
    512  1        5.21 s    1.25 s   4.15            3.48           1.0024         1.023

At d=64 the matrix products are cheap and the per-iteration elementwise work
(about 100 small tensor ops for assignment, bounds and sums) sets bnrep's time.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import sklearn
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import davies_bouldin_score
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bnrep.kmeans import _sweep_torch, sweep_kmeans  # noqa: E402  (_sweep_torch: k-means only, no DBI)

KS = list(range(2, 16))


def rows(n: int, d: int, std: float, seed: int = 0) -> np.ndarray:
    X, _ = make_blobs(n, d, centers=10, cluster_std=std, random_state=seed)
    X = np.abs(X)  # non-negative, like post-ReLU channel means
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def sklearn_loop(X, seed: int, dbi: bool):
    inertia = []
    for k in KS:
        km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(X)
        inertia.append(km.inertia_)
        if dbi:
            davies_bouldin_score(X, km.labels_)
    return inertia


def bnrep_kmeans(X, seed: int, dbi: bool):
    if dbi:
        return [r.inertia for r in sweep_kmeans(X, KS[0], KS[-1], n_init=1, seed=seed)]
    labels, inertia = _sweep_torch(X, KS, 1, 300, 1e-4, seed)
    return inertia


def timed(fn, *args):
    """(wall seconds, process CPU seconds, result)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - t, time.process_time() - c, out


def run_seed(X, Xt, seed: int, repeats: int) -> dict:
    best = {}
    for _ in range(repeats):  # interleaved; the fastest repeat counts
        for key, fn, data, dbi in (("sk", sklearn_loop, X, False), ("bn", bnrep_kmeans, Xt, False),
                                   ("sk_dbi", sklearn_loop, X, True), ("bn_dbi", bnrep_kmeans, Xt, True)):
            wall, cpu, inertia = timed(fn, data, seed, dbi)
            if wall < best.get(key, (np.inf,))[0]:
                best[key] = (wall, cpu)
            best[key + "_inertia"] = inertia
    return best


def bench_dim(d: int, args) -> None:
    """Time both sides on one row dimension; print a line per seed and a summary."""
    X = rows(args.n, d, args.std)
    Xt = torch.from_numpy(X)
    bnrep_kmeans(Xt, 0, False)  # warm-up: thread pools, allocator (first big tensors page-fault)
    KMeans(n_clusters=2, n_init=1).fit(X)
    tot = {key: np.zeros(2) for key in ("sk", "bn", "sk_dbi", "bn_dbi")}  # wall, cpu seconds
    ratios, inertia_bn, inertia_sk = [], [], []
    for seed in range(args.seeds):
        r = run_seed(X, Xt, seed, args.repeats)
        for key in tot:
            tot[key] += r[key]
        inertia_bn += r["bn_inertia"]
        inertia_sk += r["sk_inertia"]
        ratios += list(np.array(r["bn_inertia"]) / np.array(r["sk_inertia"]))
        emit(kind="seed", d=d, seed=seed, sklearn_s=r["sk"][0], bnrep_s=r["bn"][0],
             speedup=r["sk"][0] / r["bn"][0], inertia_ratio=np.mean(r["bn_inertia"]) / np.mean(r["sk_inertia"]))
    emit(kind="summary", d=d, n=args.n, seeds=args.seeds, threads=args.threads,
         sklearn_kmeans_s=tot["sk"][0], bnrep_kmeans_s=tot["bn"][0],
         kmeans_speedup=tot["sk"][0] / tot["bn"][0], kmeans_speedup_cpu=tot["sk"][1] / tot["bn"][1],
         sklearn_sweep_s=tot["sk_dbi"][0], bnrep_sweep_s=tot["bn_dbi"][0],
         sweep_speedup=tot["sk_dbi"][0] / tot["bn_dbi"][0],
         inertia_ratio=np.mean(inertia_bn) / np.mean(inertia_sk), worst_k_ratio=np.max(ratios))


def emit(**fields) -> None:
    rounded = {k: round(float(v), 4) if isinstance(v, (float, np.floating)) else v for k, v in fields.items()}
    print(json.dumps(rounded), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=15000, help="rows (samples)")
    p.add_argument("--dims", type=int, nargs="+", default=[64, 512], help="row dimensions d (channels)")
    p.add_argument("--std", type=float, default=5.0,
                   help="blob std before abs/normalise (centres uniform in [-10, 10])")
    p.add_argument("--seeds", type=int, default=3, help="k-means seeds per d (iteration counts vary by seed)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per seed; the fastest counts")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for both sides")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    emit(kind="env", python=platform.python_version(), torch=torch.__version__,
         sklearn=sklearn.__version__, threads=args.threads, cpus=os.cpu_count(),
         cpu=platform.processor() or platform.machine(), n=args.n, ks=[KS[0], KS[-1]], std=args.std)
    with threadpool_limits(args.threads):  # scikit-learn's OpenMP and BLAS get the same threads
        for d in args.dims:
            bench_dim(d, args)


if __name__ == "__main__":
    main()

"""Benchmark: bnrep's batched k-means sweep against scikit-learn's KMeans and FAISS.

    python benchmarks/kmeans_sweep.py                          # blobs d=64, 512 + digits layers, ~3 min
    python benchmarks/kmeans_sweep.py --data blobs --dims 64 --seeds 1 --repeats 1    # quick look
    python benchmarks/kmeans_sweep.py --data blobs --dims 64 --profile                # where bnrep's time goes

FAISS is optional: `pip install -e ".[bench]"` (faiss-cpu); without it the
FAISS rows are left out. Every method gets k = 2..15, --n-init restarts per
k (scikit-learn n_init, bnrep n_init, FAISS nredo), the same seed and the
same number of threads (torch.set_num_threads, threadpoolctl for
scikit-learn, faiss.omp_set_num_threads):

    sklearn      sklearn.cluster.KMeans per k (tol 1e-4, max_iter 300)
    bnrep        bnrep.kmeans.fit_kmeans: all k and restarts batched (tol 1e-4, max_iter 300), its default
                 subsample: fitted on 64 x 15 rows (when that is at most half of them), the kept
                 restart per k polished on all rows
    bnrep_full   the same with every row from the start (subsample=None)
    faiss        faiss.Kmeans per k, its defaults: niter 25, trained on a random
                 subsample of at most max_points_per_centroid=256 x k rows
    faiss_all    the same with every row (max_points_per_centroid = N)

Inertia is recomputed for every method the same way: each row's nearest
centre among the method's centres, squared distance in float64 numpy, summed
over ALL rows (FAISS's own objective covers only its subsample).

Data (rows like the paper's reduced representations, eq. 5):
    blobs    |gaussian blobs| (10 centres, --std), rows L2-normalised, float32, --n rows, each of --dims
    digits   a StandardCNN with BatchNorm trained here on scikit-learn's digits (digits-cnn preset, paper
             SGD recipe, --digits-epochs epochs), its training split extracted with
             bnrep.represent.extract_representations: one data set per probe layer (conv1..fc1)

Each (data set, seed) runs --repeats times, methods interleaved; the fastest
repeat counts (other processes only ever add time). Prints JSON lines: "env",
one "seed" line per (data set, seed), one "summary" line per data set with
per method: seconds (sum over seeds), speedup = sklearn seconds / method
seconds, inertia_ratio = mean inertia over k and seeds / sklearn's, and
worst_k_ratio = the largest per-k ratio to sklearn.
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import sklearn
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from threadpoolctl import threadpool_limits

from bnrep.kmeans import fit_kmeans

KS = list(range(2, 16))
try:
    import faiss
except ImportError:  # optional: the bench extra
    faiss = None


# ==== data ====

def blobs(n: int, d: int, std: float, seed: int = 0) -> np.ndarray:
    X, _ = make_blobs(n, d, centers=10, cluster_std=std, random_state=seed)
    X = np.abs(X)  # non-negative, like post-ReLU channel means
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def digits_layers(epochs: int) -> dict[str, np.ndarray]:
    """Reduced representations (N, C) of every probe layer of a digits model trained here."""
    from bnrep.data import load_data
    from bnrep.experiments import get_experiment
    from bnrep.represent import extract_representations
    from bnrep.train import train

    exp = get_experiment("digits-cnn").override(max_epochs=epochs)
    data = load_data(exp)
    r = train(exp, data, "batch", exp.paper_hparams("batch"), seed=0, device="cpu")
    reps = extract_representations(r.model, data.train.X, len(data.train), device="cpu")
    return {f"digits-{rep.name}": rep.reduced.numpy() for rep in reps}


# ==== methods: (centres per k) ====

def run_sklearn(X, seed, n_init):
    return [KMeans(k, n_init=n_init, random_state=seed).fit(X).cluster_centers_ for k in KS]


def run_bnrep(X, seed, n_init, **kw):
    fits = fit_kmeans(torch.from_numpy(X), KS[0], KS[-1], n_init=n_init, seed=seed, **kw)
    return [f.centres.numpy() for f in fits]


def run_faiss(X, seed, n_init, all_rows: bool):
    out = []
    for k in KS:
        extra = {"max_points_per_centroid": len(X)} if all_rows else {}  # default 256: a subsample
        km = faiss.Kmeans(X.shape[1], k, nredo=n_init, seed=1234 + seed, **extra)  # 1234: faiss default
        km.train(X)
        out.append(km.centroids.copy())
    return out


METHODS = {"sklearn": run_sklearn, "bnrep": run_bnrep, "bnrep_full": lambda X, s, n: run_bnrep(X, s, n, subsample=None),
           "faiss": lambda X, s, n: run_faiss(X, s, n, False), "faiss_all": lambda X, s, n: run_faiss(X, s, n, True)}


def inertia_all_rows(X: np.ndarray, C: np.ndarray) -> float:
    """Sum over every row of the squared distance to its nearest centre (float64, exact differences)."""
    X, C = X.astype(np.float64), np.asarray(C, dtype=np.float64)
    total = 0.0
    for xs in np.array_split(X, max(1, len(X) // 4096)):
        d2 = ((xs[:, None, :] - C[None, :, :]) ** 2).sum(2)  # (rows, k)
        total += d2.min(1).sum()
    return total


# ==== timing ====

def run_seed(X, seed: int, args, methods) -> dict:
    best = {}
    for _ in range(args.repeats):  # interleaved; the fastest repeat counts
        for name in methods:
            t = time.perf_counter()
            centres = METHODS[name](X, seed, args.n_init)
            wall = time.perf_counter() - t
            if wall < best.get(name, (np.inf,))[0]:
                best[name] = (wall, [inertia_all_rows(X, C) for C in centres])
    return best


def bench(name: str, X: np.ndarray, args, methods) -> None:
    run_seed(X, 0, argparse.Namespace(**{**vars(args), "repeats": 1}), methods)  # warm-up: pools, allocator
    secs, inertia = {m: 0.0 for m in methods}, {m: [] for m in methods}
    for seed in range(args.seeds):
        r = run_seed(X, seed, args, methods)
        for m in methods:
            secs[m] += r[m][0]
            inertia[m].append(r[m][1])
        emit(kind="seed", data=name, seed=seed, **{f"{m}_s": r[m][0] for m in methods})
    ref = np.array(inertia["sklearn"])  # (seeds, k)
    summary = {}
    for m in methods:
        I = np.array(inertia[m])
        summary[m] = {"s": round(secs[m], 3), "speedup": round(secs["sklearn"] / secs[m], 2),
                      "inertia_ratio": round(I.mean() / ref.mean(), 4), "worst_k_ratio": round((I / ref).max(), 4)}
    emit(kind="summary", data=name, n=len(X), d=X.shape[1], seeds=args.seeds, n_init=args.n_init, **summary)


def profile_bnrep(X: np.ndarray, args) -> None:
    """torch.profiler over one bnrep sweep: the top operators by self CPU time (stderr)."""
    from torch.profiler import ProfilerActivity, profile

    Xt = torch.from_numpy(X)
    fit_kmeans(Xt, KS[0], KS[-1], n_init=args.n_init, seed=0)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fit_kmeans(Xt, KS[0], KS[-1], n_init=args.n_init, seed=0)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    print(table, file=__import__("sys").stderr, flush=True)


def emit(**fields) -> None:
    rounded = {k: round(float(v), 4) if isinstance(v, (float, np.floating)) else v for k, v in fields.items()}
    print(json.dumps(rounded), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=["blobs", "digits"], choices=["blobs", "digits"])
    p.add_argument("--n", type=int, default=15000, help="blob rows (the paper's 15,000 clustering samples)")
    p.add_argument("--dims", type=int, nargs="+", default=[64, 512], help="blob row dimensions d (channels)")
    p.add_argument("--std", type=float, default=5.0, help="blob std before abs/normalise (centres in [-10, 10])")
    p.add_argument("--digits-epochs", type=int, default=15, help="epochs of the digits model (paper SGD recipe)")
    p.add_argument("--n-init", type=int, default=3, help="restarts per k for every method")
    p.add_argument("--seeds", type=int, default=3, help="seeds per data set (iteration counts vary by seed)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per seed; the fastest counts")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for every method")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), help="methods to run (default: all; sklearn always)")
    p.add_argument("--profile", action="store_true", help="profile bnrep on each blob d instead of timing")
    args = p.parse_args()
    if args.n <= KS[-1] or args.n_init < 1 or args.seeds < 1 or args.repeats < 1:
        p.error("need --n > 15 and --n-init, --seeds, --repeats >= 1")

    torch.set_num_threads(args.threads)
    methods = ["sklearn", "bnrep", "bnrep_full"] + (["faiss", "faiss_all"] if faiss is not None else [])
    if args.methods:
        methods = ["sklearn"] + [m for m in methods[1:] if m in args.methods]
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
    emit(kind="env", python=platform.python_version(), torch=torch.__version__, sklearn=sklearn.__version__,
         faiss=getattr(faiss, "__version__", None), threads=args.threads, cpus=os.cpu_count(),
         cpu=platform.processor() or platform.machine(), ks=[KS[0], KS[-1]], n_init=args.n_init,
         load_1m=round(os.getloadavg()[0], 2))
    sets = {f"blobs-d{d}": blobs(args.n, d, args.std) for d in args.dims} if "blobs" in args.data else {}
    with threadpool_limits(args.threads):  # scikit-learn's OpenMP and BLAS get the same threads
        if args.profile:
            for X in sets.values():
                profile_bnrep(X, args)
            return
        if "digits" in args.data:
            sets.update(digits_layers(args.digits_epochs))
        for name, X in sets.items():
            bench(name, X, args, methods)


if __name__ == "__main__":
    main()

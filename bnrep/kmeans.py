"""k-means over a range of k, all k at once (paper section 3.3).

The paper clusters each layer's reduced representations with k-means for
k = 2..15 and keeps the k with the lowest Davies-Bouldin index. Run one k at a
time, most of the time goes to small matrix products and Python overhead, so
the torch backend runs every (k, restart) pair as one batch:

- subsample (N > 2 x 64 k_max rows): the seeding and the Lloyd iterations of
  every (k, restart) run on one seeded subsample of 64 k_max rows; the
  restart with the lowest inertia there is kept per k and polished by Lloyd
  iterations on all rows (below) until scikit-learn's rules hold on all rows.
  Most iterations then see 64 k_max rows instead of N, and the polish starts
  close to a minimum. (FAISS trains on up to 256 rows per centre and stops
  there; with the polish, 64 give an inertia as close to scikit-learn's in
  less time: README, benchmarks/kmeans_sweep.py.) A subsample of more than
  half the rows does not pay, so smaller sets are fitted on all rows;
- seeding: greedy k-means++ (scikit-learn's variant) of k_max centres per
  restart; the first k centres of a k-means++ sequence are themselves a
  k-means++ seeding, so every k reuses a prefix (one seeding per restart;
  its 2 + log k_max candidates per step are what scikit-learn tries for
  k_max centres, a few more than it tries for a small k);
- Lloyd iterations on all runs together: the centres of all runs are stacked
  (S = sum of k rows, no padding) and distances come from one (S, d) x (d, n)
  product, ||x||^2 - 2 x.c + ||c||^2 in float32;
- Hamerly's bounds (an upper bound on the distance to the own centre, a lower
  bound on any other) skip points whose label cannot change: after the first
  few iterations the product only covers points unsure in some run, and the
  centre sums only move the points that changed cluster;
- per-run convergence with scikit-learn's rules (labels unchanged, or total
  squared centre shift <= tol * mean feature variance), then, as scikit-learn,
  a last assignment to the final centres; converged runs leave the batch;
  empty clusters take the points farthest from their centres;
- the restart with the lowest inertia is kept per k; its inertia is
  recomputed from exact differences with a float64 sum over all rows.

    >>> results = sweep_kmeans(X, k_min=2, k_max=15)      # X: (N, d)
    >>> best = optimal_k(results)                        # lowest DBI
    >>> fits = fit_kmeans(X, k_min=2, k_max=15)          # k-means only: centres, labels, inertia
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bnrep.lloyd import Layout, kmeanspp, lloyd
from bnrep.metrics import chunk_rows, davies_bouldin

BACKENDS = ("torch", "sklearn")
SUBSAMPLE = 64  # rows per centre of k_max in the first fit, when that is at most half the rows
_BUFFER_FLOATS = 2**26  # float32 workspace per batch of runs (256 MiB); more runs -> chunks


@dataclass
class KMeansResult:
    k: int
    labels: np.ndarray  # (N,) cluster of each sample, 0..k-1
    inertia: float  # sum of squared distances to the nearest centre (float64)
    dbi: float  # Davies-Bouldin index of this labelling; NaN when undefined
    dbi_reason: str | None  # why dbi is NaN (or a convention value), else None


@dataclass
class KMeansFit:
    k: int
    centres: torch.Tensor  # (k, d) float32, on X's device
    labels: torch.Tensor  # (N,) int64, on X's device
    inertia: float  # as KMeansResult.inertia


# ==== API ====

def sweep_kmeans(X, k_min: int = 2, k_max: int = 15, n_init: int = 3, max_iter: int = 300,
                 tol: float = 1e-4, seed: int = 0, backend: str = "torch",
                 device=None, subsample: int | None = SUBSAMPLE) -> list[KMeansResult]:
    """k-means for every k in k_min..k_max on rows X (N, d); one result per k.

    backend "torch" batches every k and restart (CPU or GPU: `device`, else
    X's device); "sklearn" runs sklearn.cluster.KMeans per k (the reference).
    n_init restarts per k keep the lowest inertia; tol is scikit-learn's
    (relative to the mean feature variance); max_iter caps Lloyd iterations
    (per stage). subsample (torch backend): when subsample * k_max rows are at
    most half of N, every run is first fitted on one seeded subsample of that
    many rows and the restart kept per k is then polished on all rows until
    scikit-learn's rules hold there; None or 0: every row from the start. The same seed
    gives the same result on the same device (on CUDA, atomic float sums may
    break exact near-ties differently between runs). Memory:
    about (k + 10) * N floats per (k, restart), processed in batches of 256 MiB.
    """
    X = _as_rows(X, device)
    _validate(X, k_min, k_max, n_init, max_iter, tol, backend, subsample)
    ks = list(range(k_min, k_max + 1))
    sweep = _sweep_torch if backend == "torch" else _sweep_sklearn
    labels, inertia, _ = sweep(X, ks, n_init, max_iter, tol, seed, subsample)
    results = []
    for k, lab, inr in zip(ks, labels, inertia):
        dbi, reason = davies_bouldin(X, lab)
        results.append(KMeansResult(k, lab.cpu().numpy(), float(inr), dbi, reason))
    return results


def fit_kmeans(X, k_min: int = 2, k_max: int = 15, n_init: int = 3, max_iter: int = 300,
               tol: float = 1e-4, seed: int = 0, device=None,
               subsample: int | None = SUBSAMPLE) -> list[KMeansFit]:
    """The k-means half of sweep_kmeans (torch backend, same arguments and results)
    without the Davies-Bouldin index: one fit per k, with its centres."""
    X = _as_rows(X, device)
    _validate(X, k_min, k_max, n_init, max_iter, tol, "torch", subsample)
    ks = list(range(k_min, k_max + 1))
    labels, inertia, centres = _sweep_torch(X, ks, n_init, max_iter, tol, seed, subsample)
    return [KMeansFit(k, C, lab, float(inr)) for k, lab, inr, C in zip(ks, labels, inertia, centres)]


def optimal_k(results: list[KMeansResult]) -> KMeansResult | None:
    """The result with the lowest DBI (paper 3.3; ties: the smallest k), NaNs
    ignored; None when every DBI is NaN (a dead layer has no optimal k).
    The analysis stage calls this once and stores it as the `optimal` column."""
    if not results:
        raise ValueError("optimal_k needs at least one k-means result")
    scored = [r for r in results if not math.isnan(r.dbi)]
    return min(scored, key=lambda r: (r.dbi, r.k)) if scored else None


def _as_rows(X, device) -> torch.Tensor:
    X = torch.as_tensor(X)
    if device is not None:
        X = X.to(device)
    if not X.is_floating_point():
        X = X.to(torch.float32)
    return X


def _validate(X, k_min, k_max, n_init, max_iter, tol, backend, subsample) -> None:
    if X.dim() != 2:
        raise ValueError(f"k-means needs rows X of shape (N, d), got {tuple(X.shape)}")
    N = X.shape[0]
    if k_min < 2:
        raise ValueError(f"k_min must be >= 2 (got {k_min})")
    if k_max < k_min:
        raise ValueError(f"k_max must be >= k_min (got k_min={k_min}, k_max={k_max})")
    if k_max >= N:
        raise ValueError(f"k_max must be < the number of samples (got k_max={k_max}, N={N})")
    if n_init < 1 or max_iter < 1 or tol < 0:
        raise ValueError(f"need n_init >= 1, max_iter >= 1, tol >= 0 (got {n_init}, {max_iter}, {tol})")
    if subsample is not None and (not isinstance(subsample, (int, np.integer)) or isinstance(subsample, bool)
                                  or subsample < 0):
        raise ValueError(f"subsample must be None or an integer >= 0 (got {subsample!r})")
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if X.numel() and not bool(torch.isfinite(torch.stack(X.aminmax())).all()):  # NaN propagates
        raise ValueError("k-means needs finite values: X contains NaN or inf")


# ==== sklearn backend (reference) ====

def _sweep_sklearn(X, ks, n_init, max_iter, tol, seed, subsample):  # always every row
    from sklearn.cluster import KMeans

    Xn = X.detach().cpu().numpy()
    labels, inertia, centres = [], [], []
    for k in ks:
        km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, tol=tol, random_state=seed).fit(Xn)
        labels.append(torch.from_numpy(km.labels_.astype(np.int64)))
        centres.append(torch.from_numpy(km.cluster_centers_).to(X.device))
        inertia.append(_inertia64(X, centres[-1], labels[-1].to(X.device)))
    return labels, inertia, centres



# ==== torch backend: the sweep ====

def _inertia64(X, C, lab) -> float:
    """Sum of squared distances to assigned centres from exact differences (float64 total)."""
    C = C.to(X.dtype)
    total = torch.zeros((), dtype=torch.float64, device=X.device)
    R = chunk_rows(X.shape[1])  # small chunks, one reused buffer
    buf = torch.empty(R, X.shape[1], dtype=X.dtype, device=X.device)  # reused
    for xs, ls in zip(X.split(R), lab.split(R)):
        diff = torch.index_select(C, 0, ls, out=buf[: len(ls)])
        torch.sub(xs, diff, out=diff)
        total += diff.square_().sum(1).sum(dtype=torch.float64)  # per-row sums in X's dtype
    return float(total)


def _run_chunks(k_run: list[int], N: int) -> list[range]:
    """Consecutive runs per batch so its workspace (about (k + 8) * N floats a run) fits."""
    chunks, a, used = [], 0, 0
    for r, k in enumerate(k_run):
        if r > a and used + (k + 8) * N > _BUFFER_FLOATS:
            chunks.append(range(a, r))
            a, used = r, 0
        used += (k + 8) * N
    return chunks + [range(a, len(k_run))]


def _lloyd_runs(X, xx, k_run: list[int], init, max_iter: int, tol_abs: float):
    """Lloyd on runs of k_run clusters from initial centres init (sum(k_run), d), run after run,
    in batches that fit -> centres (k, d) and labels (n,) per run, inertia estimates (R,)."""
    first = [0]
    for k in k_run[:-1]:
        first.append(first[-1] + k)
    first = torch.tensor(first, device=X.device)  # (R,) row of each run's centre 0 in init
    centres, labels, score = [], [], []
    for rr in _run_chunks(k_run, X.shape[0]):
        L = Layout(k_run[rr.start:rr.stop], X.device)
        L, C, lab, est = lloyd(X, xx, init[first[rr.start + L.row_run] + L.row_j], L.k, max_iter, tol_abs)
        centres += [C[L.run_rows(a)] for a in range(L.A)]
        labels += list(lab)
        score.append(est)
    return centres, labels, torch.cat(score)


def _sweep_torch(X, ks, n_init, max_iter, tol, seed, subsample):
    """Labels (one (N,) tensor per k), float64 inertia and centres (k, d) per k, batched over k and restarts."""
    dev, K, N = X.device, max(ks), X.shape[0]
    X32 = X.to(torch.float32).contiguous()  # (N, d)
    xx = (X32 * X32).sum(1)  # (N,)
    # scikit-learn's tol is relative to the mean feature variance: (E||x||^2 - ||E x||^2) / d
    mean = X32.mean(0).to(torch.float64)  # (d,)
    tol_abs = tol * float((xx.sum(dtype=torch.float64) / N - mean.square().sum()) / X.shape[1])
    gen = torch.Generator(device=dev).manual_seed(seed)
    m = subsample * K if subsample and 2 * subsample * K <= N else N
    if m < N:  # every restart and k is first fitted on the same seeded subsample
        pick = torch.randperm(N, generator=gen, device=dev)[:m].sort().values
        Xs, xxs = X32[pick], xx[pick]
    else:
        Xs, xxs = X32, xx
    seeds = kmeanspp(Xs, xxs, K, n_init, gen)  # (n_init, K) point indices
    k_run = [k for k in ks for _ in range(n_init)]  # runs sorted by k
    init = Xs[torch.cat([seeds[r % n_init, :k] for r, k in enumerate(k_run)])]  # k-means++ prefixes
    centres, labels, score = _lloyd_runs(Xs, xxs, k_run, init, max_iter, tol_abs)
    best = score.view(len(ks), n_init).argmin(1).tolist()  # restart kept per k
    runs = [ki * n_init + b for ki, b in enumerate(best)]
    centres, labels = [centres[r] for r in runs], [labels[r] for r in runs]
    if m < N:  # polish the kept restarts on every row until scikit-learn's rules hold there
        centres, labels, _ = _lloyd_runs(X32, xx, list(ks), torch.cat(centres), max_iter, tol_abs)
    return labels, [_inertia64(X, C, lab) for C, lab in zip(centres, labels)], centres

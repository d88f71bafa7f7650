"""k-means over a range of k, all k at once (paper section 3.3).

The paper clusters each layer's reduced representations with k-means for
k = 2..15 and keeps the k with the lowest Davies-Bouldin index. Run one k at a
time, most of the time goes to small matrix products and Python overhead, so
the torch backend runs every (k, restart) pair as one batch:

- seeding: greedy k-means++ (scikit-learn's variant) of k_max centres per
  restart; the first k centres of a k-means++ sequence are themselves a
  k-means++ seeding, so every k reuses a prefix (one seeding per restart);
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
  recomputed from exact differences with a float64 sum.

    >>> results = sweep_kmeans(X, k_min=2, k_max=15)      # X: (N, d)
    >>> best = optimal_k(results)                        # lowest DBI
    >>> fits = fit_kmeans(X, k_min=2, k_max=15)          # k-means only: centres, labels, inertia
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bnrep.metrics import chunk_rows, davies_bouldin

BACKENDS = ("torch", "sklearn")
_BUFFER_FLOATS = 2**26  # float32 workspace per batch of runs (256 MiB); more runs -> chunks
_FULL = 0.8  # recompute every point when more than this fraction is unsure anywhere
_ROUNDING = 1e-6  # relative error allowed for float32 ||x||^2 - 2 x.c + ||c||^2 (about 16 ulp)


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
                 device=None) -> list[KMeansResult]:
    """k-means for every k in k_min..k_max on rows X (N, d); one result per k.

    backend "torch" batches every k and restart (CPU or GPU: `device`, else
    X's device); "sklearn" runs sklearn.cluster.KMeans per k (the reference).
    n_init restarts per k keep the lowest inertia; tol is scikit-learn's
    (relative to the mean feature variance); max_iter caps Lloyd iterations.
    The same seed gives the same result on the same device (on CUDA, atomic
    float sums may break exact near-ties differently between runs). Memory:
    about (k + 10) * N floats per (k, restart), processed in batches of 256 MiB.
    """
    X = _as_rows(X, device)
    _validate(X, k_min, k_max, n_init, max_iter, tol, backend)
    ks = list(range(k_min, k_max + 1))
    sweep = _sweep_torch if backend == "torch" else _sweep_sklearn
    labels, inertia, _ = sweep(X, ks, n_init, max_iter, tol, seed)
    results = []
    for k, lab, inr in zip(ks, labels, inertia):
        dbi, reason = davies_bouldin(X, lab)
        results.append(KMeansResult(k, lab.cpu().numpy(), float(inr), dbi, reason))
    return results


def fit_kmeans(X, k_min: int = 2, k_max: int = 15, n_init: int = 3, max_iter: int = 300,
               tol: float = 1e-4, seed: int = 0, device=None) -> list[KMeansFit]:
    """The k-means half of sweep_kmeans (torch backend, same arguments and results)
    without the Davies-Bouldin index: one fit per k, with its centres."""
    X = _as_rows(X, device)
    _validate(X, k_min, k_max, n_init, max_iter, tol, "torch")
    ks = list(range(k_min, k_max + 1))
    labels, inertia, centres = _sweep_torch(X, ks, n_init, max_iter, tol, seed)
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


def _validate(X, k_min, k_max, n_init, max_iter, tol, backend) -> None:
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
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if X.numel() and not bool(torch.isfinite(torch.stack(X.aminmax())).all()):  # NaN propagates
        raise ValueError("k-means needs finite values: X contains NaN or inf")


# ==== sklearn backend (reference) ====

def _sweep_sklearn(X, ks, n_init, max_iter, tol, seed):
    from sklearn.cluster import KMeans

    Xn = X.detach().cpu().numpy()
    labels, inertia, centres = [], [], []
    for k in ks:
        km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, tol=tol, random_state=seed).fit(Xn)
        labels.append(torch.from_numpy(km.labels_.astype(np.int64)))
        centres.append(torch.from_numpy(km.cluster_centers_).to(X.device))
        inertia.append(_inertia64(X, centres[-1], labels[-1].to(X.device)))
    return labels, inertia, centres


# ==== torch backend: layout of a batch of runs ====

class _Layout:
    """Where the centres of a batch of runs sit in one stacked (S, d) table.

    Runs are sorted by k. Rows are grouped by centre index ("slot-major"):
    centre 0 of every run, then centre 1 of every run, ... The runs that have
    a centre j (k > j) are a suffix a0..A-1, so centre j is one block of rows
    and centre j of run a sits in row base[j] + a. No padding anywhere.
    """

    def __init__(self, k: list[int], device):
        self.k, self.A = list(k), len(k)
        self.blocks = []  # (first row, first run) of each centre index j
        row = 0
        for j in range(max(k)):
            a0 = sum(1 for kk in k if kk <= j)
            self.blocks.append((row, a0))
            row += self.A - a0
        self.S = row  # == sum(k)
        self.base = torch.tensor([r - a0 for r, a0 in self.blocks], device=device)  # (K,)
        self.row_j = torch.cat([torch.full((self.A - a0,), j, device=device)
                                for j, (_, a0) in enumerate(self.blocks)])  # (S,) centre index
        self.row_run = self.row_j.new_tensor(
            [a for _, a0 in self.blocks for a in range(a0, self.A)])  # (S,) run

    def rows(self, lab: torch.Tensor) -> torch.Tensor:
        """Row of each sample's centre, (A, N) int64, from labels (A, N)."""
        return self.base[lab] + torch.arange(self.A, device=lab.device)[:, None]

    def run_rows(self, a: int) -> torch.Tensor:
        """Rows of run a's centres 0..k-1, in order."""
        return self.base[: self.k[a]] + a

    def subset(self, keep: torch.Tensor) -> tuple[_Layout, torch.Tensor]:
        """Layout of the runs `keep` (sorted) and, per new row, its row in this layout."""
        sub = _Layout([self.k[a] for a in keep.tolist()], keep.device)
        return sub, self.base[sub.row_j] + keep[sub.row_run]


# ==== torch backend: seeding ====

def _sqdist(X, xx, Y) -> torch.Tensor:
    """Squared distances (M, N) from rows Y (M, d) to X (N, d), float32, clamped at 0."""
    yy = (Y * Y).sum(1, keepdim=True)  # (M, 1)
    return torch.addmm(yy + xx[None, :], Y, X.T, alpha=-2).clamp_(min=0)


def _kmeanspp(X, xx, K: int, n_init: int, gen) -> torch.Tensor:
    """Greedy k-means++ (scikit-learn's), n_init restarts at once -> point indices (n_init, K)."""
    N, I = X.shape[0], n_init
    T = 2 + int(math.log(K))  # candidates per step, as scikit-learn
    idx = torch.empty(I, K, dtype=torch.long, device=X.device)
    idx[:, 0] = torch.randint(N, (I,), generator=gen, device=X.device)
    closest = _sqdist(X, xx, X[idx[:, 0]])  # (I, N)
    rows = torch.arange(I, device=X.device)
    for c in range(1, K):
        # all-zero potential (identical points): sample uniformly instead
        w = torch.where(closest.sum(1, keepdim=True) > 0, closest, torch.ones_like(closest))
        cand = torch.multinomial(w, T, replacement=True, generator=gen)  # (I, T)
        d = _sqdist(X, xx, X[cand.reshape(-1)]).view(I, T, N)
        d = torch.minimum(d, closest[:, None, :])  # (I, T, N)
        best = d.sum(2).argmin(1)  # (I,) candidate with the lowest potential
        closest = d[rows, best]
        idx[:, c] = cand[rows, best]
    return idx


# ==== torch backend: assignment (E-step) ====

class _Workspace:
    """Buffers reused every iteration, grown on demand: fresh big tensors page-fault on CPU."""

    def __init__(self, device):
        self.device, self.bufs = device, {}

    def take(self, name: str, rows: int, n: int, dtype=torch.float32) -> torch.Tensor:
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < rows * n:
            buf = self.bufs[name] = torch.empty(rows * n, dtype=dtype, device=self.device)
        return buf[: rows * n].view(rows, n)


def _assign(X, xx, C, L: _Layout, ws: _Workspace):
    """Nearest and second-nearest centre of each run for rows X (n, d).

    Returns labels (A, n) int64 and, for the nearest and the second-nearest
    centre, ||c||^2 - 2 x.c (A, n) float32: the squared distance less ||x||^2.
    """
    A, n = L.A, X.shape[0]
    cc = (C * C).sum(1, keepdim=True)  # (S, 1)
    G = torch.addmm(cc, C, X.T, alpha=-2, out=ws.take("G", L.S, n))  # (S, n): all runs, one matmul
    v1, v2, w = ws.take("v1", A, n), ws.take("v2", A, n), ws.take("w", A, n)
    t = ws.take("t", A, n, torch.int32)
    lab = torch.zeros(A, n, dtype=torch.int32, device=X.device)
    v1.copy_(G[:A])  # centre 0 of every run
    v2.fill_(torch.inf)
    for j, (row, a0) in enumerate(L.blocks[1:], start=1):
        blk = G[row: row + A - a0]  # (A - a0, n): centre j of runs a0..A-1
        torch.maximum(v1[a0:], blk, out=w[a0:])  # the loser of (best so far, centre j) ...
        torch.minimum(v2[a0:], w[a0:], out=v2[a0:])  # ... may be the second best
        torch.lt(blk, v1[a0:], out=t[a0:])  # strict: ties keep the lower index, like argmin
        torch.minimum(v1[a0:], blk, out=v1[a0:])
        # labels so far are < j, so max(lab, j * new_best) is branch-free masked assignment
        torch.maximum(lab[a0:], t[a0:].mul_(j), out=lab[a0:])
    return lab.long(), v1, v2


def _bounds(v1, v2, xx, C):
    """Hamerly bounds (A, n) from _assign's v1, v2, widened by float32 rounding error.

    u >= distance to the own centre; l <= distance to any other centre.
    """
    cmax = torch.linalg.vector_norm(C, dim=1).max()
    err = _ROUNDING * (xx.sqrt() + cmax).square()  # (n,) error of ||x||^2 - 2 x.c + ||c||^2
    u = (v1 + (xx + err)).clamp_(min=0).sqrt_()
    return u, (v2 + (xx - err)).clamp_(min=0).sqrt_()


def _reassign(X, xx, C, L: _Layout, ws: _Workspace, st: dict):
    """Pruned E-step: only points whose bounds overlap in some run are recomputed.

    A point with u <= l in a run keeps its label there (Hamerly 2010); points
    unsure in any run are recomputed for all runs (one matmul). Updates st's
    lab, u, l in place; returns moved points (run, point, old label, new label)
    and, per run, whether any label changed.
    """
    N = X.shape[0]
    cols = (st["u"] > st["l"]).any(0).nonzero().flatten()  # (n,)
    if len(cols) > _FULL * N:  # nearly all unsure: skip the gathers
        old = st["lab"]
        lab, v1, v2 = _assign(X, xx, C, L, ws)
        st["lab"], (st["u"], st["l"]) = lab, _bounds(v1, v2, xx, C)
        changed = lab != old
        a, n = changed.nonzero(as_tuple=True)
        return (a, n, old[a, n], lab[a, n]), changed.any(1)
    if len(cols) == 0:
        none = cols.new_empty(0)
        return (none, none, none, none), torch.zeros(L.A, dtype=torch.bool, device=X.device)
    Xc = torch.index_select(X, 0, cols, out=ws.take("Xc", len(cols), X.shape[1]))  # no fresh pages
    lab, v1, v2 = _assign(Xc, xx[cols], C, L, ws)
    old = st["lab"].index_select(1, cols)  # (A, n)
    changed = lab != old
    a, i = changed.nonzero(as_tuple=True)
    u, l = _bounds(v1, v2, xx[cols], C)
    for key, val in (("lab", lab), ("u", u), ("l", l)):
        st[key].index_copy_(1, cols, val)
    return (a, cols[i], old[a, i], lab[a, i]), changed.any(1)


# ==== torch backend: centres (M-step) ====

def _full_sums(X, lab, L: _Layout, ws: _Workspace):
    """Per-centre sums of points (S, d) and counts (S,) from scratch (one matmul)."""
    H = ws.take("G", L.S, X.shape[0]).zero_()  # the distance rows are dead by now: reuse
    H.scatter_(0, L.rows(lab), 1.0)  # (S, N) one-hot
    return H @ X, H.sum(1)


def _move_points(X, moved, L: _Layout, sums, counts, ws: _Workspace) -> None:
    """Move the points that changed centre from their old to their new centre's sums."""
    a, n, old, new = moved
    new, old = L.base[new] + a, L.base[old] + a  # (M,) rows
    xs = torch.index_select(X, 0, n, out=ws.take("Xc", len(n), X.shape[1]))  # (M, d)
    sums.index_add_(0, new, xs).index_add_(0, old, xs, alpha=-1)
    one = torch.ones_like(n, dtype=counts.dtype)
    counts.index_add_(0, new, one).index_add_(0, old, one, alpha=-1)


def _relocate_empty(X, lab, C, L: _Layout, sums, counts) -> bool:
    """scikit-learn's rule: an empty cluster takes the point farthest from its centre."""
    empty = (counts == 0).nonzero().flatten()
    for a in L.row_run[empty].unique().tolist():
        rows = empty[L.row_run[empty] == a]
        own = L.base[lab[a]] + a  # (N,) row of each point's centre
        dist = (X - C[own]).square().sum(1)  # (N,) rare path: exact distances
        far = torch.topk(dist, len(rows)).indices  # (n_empty,)
        sums.index_add_(0, own[far], X[far], alpha=-1)
        counts.index_add_(0, own[far], torch.ones_like(far, dtype=counts.dtype), alpha=-1)
        sums[rows], counts[rows] = X[far], 1
    return len(empty) > 0


# ==== torch backend: Lloyd iterations ====

def _lloyd(X, xx, C, k: list[int], max_iter: int, tol_abs: float):
    """Lloyd iterations on a batch of runs (initial centres C (S, d) in _Layout(k) order).

    Returns the layout, final centres (S, d), labels (A, N) and an inertia
    estimate per run (A,) (float64, from sums; for picking restarts).
    """
    full = L = _Layout(k, X.device)
    ws = _Workspace(X.device)
    out = dict(C=C.clone(), lab=torch.empty(L.A, X.shape[0], dtype=torch.long, device=X.device),
               sums=torch.empty_like(C), counts=torch.empty(L.S, device=X.device))
    runs, rows = torch.arange(L.A, device=X.device), torch.arange(L.S, device=X.device)  # -> out
    lab, v1, v2 = _assign(X, xx, C, L, ws)
    st = dict(lab=lab, **dict(zip("ul", _bounds(v1, v2, xx, C))))  # per run and point
    strict = torch.zeros(L.A, dtype=torch.bool, device=X.device)
    moved, stale, sums, counts = None, False, None, None
    pending = []  # runs stopped on tol or max_iter: they get a last E-step (as scikit-learn)
    for it in range(max_iter):
        if it > 0:
            moved, changed = _reassign(X, xx, C, L, ws, st)
            strict = ~changed  # scikit-learn's first stopping rule: labels unchanged
        sums, counts = _centre_sums(X, st["lab"], L, ws, sums, counts, moved, stale)
        stale = bool((counts == 0).any()) and _relocate_empty(X, st["lab"], C, L, sums, counts)
        C_new = sums / counts.clamp(min=1)[:, None]  # (S, d)
        out["C"][rows] = C_new
        delta = (C_new - C).square().sum(1)  # (S,) squared centre shift
        loose = torch.zeros(L.A, device=X.device).index_add_(0, L.row_run, delta) <= tol_abs  # rule 2
        _follow_centres(st, delta, L)
        C, done = C_new, strict | loose | (it == max_iter - 1)
        _finish(out, pending, st, runs, rows, L, done, strict, sums, counts)
        if bool(done.all()):
            break
        if bool(done.any()):  # converged runs leave the batch
            keep = (~done).nonzero().flatten()
            L, sub = L.subset(keep)
            runs, rows, C, sums, counts = runs[keep], rows[sub], C[sub], sums[sub], counts[sub]
            st = {key: val[keep] for key, val in st.items()}
    _last_estep(X, xx, full, out, pending, ws)
    return full, out["C"], out["lab"], _inertia_estimate(xx, full, out)


def _centre_sums(X, lab, L: _Layout, ws: _Workspace, sums, counts, moved, stale):
    """Per-centre sums and counts: from scratch (first step, after a relocation, when
    many points moved: one matmul is then cheaper), else by moving the points that changed."""
    if moved is None or stale or 64 * len(moved[0]) > L.S * X.shape[0]:
        return _full_sums(X, lab, L, ws)
    _move_points(X, moved, L, sums, counts, ws)
    return sums, counts


def _follow_centres(st: dict, delta, L: _Layout) -> None:
    """Hamerly's bound update after centres moved by sqrt(delta) (S,)."""
    move = delta.sqrt() * (1 + 1e-6)  # (S,) a hair more: float32 rounding
    per_run = torch.zeros(L.A, len(L.blocks), device=move.device)
    per_run[L.row_run, L.row_j] = move  # (A, K) shift of centre j of run a
    st["u"] += per_run.gather(1, st["lab"])  # own centre moved by its own shift at most
    st["l"] -= per_run.amax(1, keepdim=True)  # any other centre by the run's largest shift


def _finish(out: dict, pending: list, st: dict, runs, rows, L: _Layout, done, strict, sums, counts):
    """Store the runs that stop now; those not stopped by unchanged labels need a last E-step."""
    slots = done[L.row_run]  # (S,)
    out["lab"][runs[done]] = st["lab"][done]
    out["sums"][rows[slots]], out["counts"][rows[slots]] = sums[slots], counts[slots]
    last = done & ~strict
    if bool(last.any()):
        pending.append((runs[last], st["u"][last], st["l"][last]))


def _last_estep(X, xx, full: _Layout, out: dict, pending: list, ws: _Workspace) -> None:
    """Labels of the final centres for runs stopped on tol or max_iter (scikit-learn does the same)."""
    if not pending:
        return
    runs, order = torch.cat([p[0] for p in pending]).sort()  # sorted runs: sorted by k
    L, rows = full.subset(runs)
    st = dict(lab=out["lab"][runs], u=torch.cat([p[1] for p in pending])[order],
              l=torch.cat([p[2] for p in pending])[order])
    moved, _ = _reassign(X, xx, out["C"][rows], L, ws, st)
    sums, counts = out["sums"][rows], out["counts"][rows]
    _move_points(X, moved, L, sums, counts, ws)  # keep sums consistent with the labels
    out["lab"][runs], out["sums"][rows], out["counts"][rows] = st["lab"], sums, counts


def _inertia_estimate(xx, L: _Layout, out: dict) -> torch.Tensor:
    """Inertia per run (A,) from per-centre sums, float64: sum ||x||^2 - sum_j (2 c.s - n ||c||^2)."""
    C, s, n = (out[key].to(torch.float64) for key in ("C", "sums", "counts"))
    per_centre = 2 * (C * s).sum(1) - n * (C * C).sum(1)  # (S,)
    return xx.sum(dtype=torch.float64) - torch.zeros(L.A, dtype=torch.float64, device=C.device).index_add_(
        0, L.row_run, per_centre)


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


def _sweep_torch(X, ks, n_init, max_iter, tol, seed):
    """Labels (one (N,) tensor per k), float64 inertia and centres (k, d) per k, batched over k and restarts."""
    dev, K, N = X.device, max(ks), X.shape[0]
    X32 = X.to(torch.float32).contiguous()  # (N, d)
    xx = (X32 * X32).sum(1)  # (N,)
    gen = torch.Generator(device=dev).manual_seed(seed)
    seeds = _kmeanspp(X32, xx, K, n_init, gen)  # (n_init, K) point indices
    # scikit-learn's tol is relative to the mean feature variance: (E||x||^2 - ||E x||^2) / d
    mean = X32.mean(0).to(torch.float64)  # (d,)
    tol_abs = tol * float((xx.sum(dtype=torch.float64) / N - mean.square().sum()) / X.shape[1])
    k_run = [k for k in ks for _ in range(n_init)]  # runs sorted by k
    init_run = torch.arange(n_init, device=dev).repeat(len(ks))  # (R,) restart of each run

    labels, score, centres = [], [], []
    for rr in _run_chunks(k_run, N):
        L = _Layout(k_run[rr.start:rr.stop], dev)
        C0 = X32[seeds[init_run[rr.start:rr.stop][L.row_run], L.row_j]]  # (S, d) k-means++ prefixes
        L, C, lab, est = _lloyd(X32, xx, C0, L.k, max_iter, tol_abs)
        centres += [C[L.run_rows(a)] for a in range(L.A)]
        labels.append(lab)
        score.append(est)
    labels, score = torch.cat(labels), torch.cat(score).view(len(ks), n_init)
    best = score.argmin(1).tolist()  # restart kept per k
    runs = [ki * n_init + b for ki, b in enumerate(best)]
    return ([labels[r] for r in runs], [_inertia64(X, centres[r], labels[r]) for r in runs],
            [centres[r] for r in runs])

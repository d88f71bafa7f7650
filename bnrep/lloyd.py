"""Batched Lloyd iterations for bnrep.kmeans: many k-means runs (any k) at once.

The centres of every run sit in one stacked (S, d) table (Layout), so one
matmul gives all distances; kmeanspp seeds n_init restarts at once; lloyd
iterates a batch of runs to scikit-learn's convergence with Hamerly's bounds.
bnrep.kmeans describes the algorithm and is the API.
"""

from __future__ import annotations

import math

import torch

_FULL = 0.8  # recompute every point when more than this fraction is unsure anywhere
_SMALL = 2**16  # (K, A, n) entries up to which _assign reduces a padded table, not centre by centre
_ROUNDING = 1e-6  # relative error allowed for float32 ||x||^2 - 2 x.c + ||c||^2 (about 16 ulp)


# ==== layout of a batch of runs ====

class Layout:
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
        self.padded = self.row_j * self.A + self.row_run  # (S,) row in a table of K slots per run
        self.gaps = torch.tensor([j * self.A + a for j, (_, a0) in enumerate(self.blocks) for a in range(a0)],
                                 dtype=torch.long, device=device)  # the slots j >= k of each run

    def rows(self, lab: torch.Tensor) -> torch.Tensor:
        """Row of each sample's centre, (A, N) int64, from labels (A, N)."""
        return self.base[lab] + torch.arange(self.A, device=lab.device)[:, None]

    def run_rows(self, a: int) -> torch.Tensor:
        """Rows of run a's centres 0..k-1, in order."""
        return self.base[: self.k[a]] + a

    def subset(self, keep: torch.Tensor) -> tuple[Layout, torch.Tensor]:
        """Layout of the runs `keep` (sorted) and, per new row, its row in this layout."""
        sub = Layout([self.k[a] for a in keep.tolist()], keep.device)
        return sub, self.base[sub.row_j] + keep[sub.row_run]


# ==== seeding ====

def _sqdist(X, xx, Y) -> torch.Tensor:
    """Squared distances (M, N) from rows Y (M, d) to X (N, d), float32, clamped at 0."""
    yy = (Y * Y).sum(1, keepdim=True)  # (M, 1)
    return torch.addmm(yy + xx[None, :], Y, X.T, alpha=-2).clamp_(min=0)


def kmeanspp(X, xx, K: int, n_init: int, gen) -> torch.Tensor:
    """Greedy k-means++ (scikit-learn's, for K centres), n_init restarts at once -> point indices (n_init, K)."""
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


# ==== assignment (E-step) ====

class _Workspace:
    """Buffers reused every iteration, grown on demand: fresh big tensors page-fault on CPU."""

    def __init__(self, device):
        self.device, self.bufs = device, {}

    def take(self, name: str, rows: int, n: int, dtype=torch.float32) -> torch.Tensor:
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < rows * n:
            buf = self.bufs[name] = torch.empty(rows * n, dtype=dtype, device=self.device)
        return buf[: rows * n].view(rows, n)


def _assign(X, xx, C, L: Layout, ws: _Workspace):
    """Nearest and second-nearest centre of each run for rows X (n, d).

    Returns labels (A, n) int64 and, for the nearest and the second-nearest
    centre, ||c||^2 - 2 x.c (A, n) float32: the squared distance less ||x||^2.
    """
    A, n = L.A, X.shape[0]
    cc = (C * C).sum(1, keepdim=True)  # (S, 1)
    G = torch.addmm(cc, C, X.T, alpha=-2, out=ws.take("G", L.S, n))  # (S, n): all runs, one matmul
    if len(L.blocks) * A * n <= _SMALL:
        return _assign_small(G, L, ws)
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


def _assign_small(G, L: Layout, ws: _Workspace):
    """_assign's reductions for a small batch in a few ops (each op's fixed cost dominates there):
    the rows in a (K, A, n) table, missing centres +inf; a reduction along K is slow on big tables."""
    K, A, n = len(L.blocks), L.A, G.shape[1]
    P = ws.take("P", K * A, n)
    P.index_copy_(0, L.padded, G).index_fill_(0, L.gaps, torch.inf)
    P3 = P.view(K, A, n)
    v1, lab = P3.min(0)  # ties: the lowest index, like argmin
    return lab, v1, P3.scatter_(0, lab[None], torch.inf).amin(0)


def _bounds(v1, v2, xx, C):
    """Hamerly bounds (A, n) from _assign's v1, v2, widened by float32 rounding error.

    u >= distance to the own centre; l <= distance to any other centre.
    """
    cmax = torch.linalg.vector_norm(C, dim=1).max()
    err = _ROUNDING * (xx.sqrt() + cmax).square()  # (n,) error of ||x||^2 - 2 x.c + ||c||^2
    u = (v1 + (xx + err)).clamp_(min=0).sqrt_()
    return u, (v2 + (xx - err)).clamp_(min=0).sqrt_()


def _reassign(X, xx, C, L: Layout, ws: _Workspace, st: dict):
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


# ==== centres (M-step) ====

def _full_sums(X, lab, L: Layout, ws: _Workspace):
    """Per-centre sums of points (S, d) and counts (S,) from scratch (one matmul)."""
    H = ws.take("G", L.S, X.shape[0]).zero_()  # the distance rows are dead by now: reuse
    H.scatter_(0, L.rows(lab), 1.0)  # (S, N) one-hot
    return H @ X, H.sum(1)


def _move_points(X, moved, L: Layout, sums, counts, ws: _Workspace) -> None:
    """Move the points that changed centre from their old to their new centre's sums."""
    a, n, old, new = moved
    new, old = L.base[new] + a, L.base[old] + a  # (M,) rows
    xs = torch.index_select(X, 0, n, out=ws.take("Xc", len(n), X.shape[1]))  # (M, d)
    sums.index_add_(0, new, xs).index_add_(0, old, xs, alpha=-1)
    one = torch.ones_like(n, dtype=counts.dtype)
    counts.index_add_(0, new, one).index_add_(0, old, one, alpha=-1)


def _relocate_empty(X, lab, C, L: Layout, sums, counts) -> bool:
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


# ==== Lloyd iterations ====

def lloyd(X, xx, C, k: list[int], max_iter: int, tol_abs: float):
    """Lloyd iterations on a batch of runs (initial centres C (S, d) in Layout(k) order).

    Returns the layout, final centres (S, d), labels (A, N) and an inertia
    estimate per run (A,) (float64, from sums; for picking restarts).
    """
    full = L = Layout(k, X.device)
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


def _centre_sums(X, lab, L: Layout, ws: _Workspace, sums, counts, moved, stale):
    """Per-centre sums and counts: from scratch (first step, after a relocation, when
    many points moved: one matmul is then cheaper), else by moving the points that changed."""
    if moved is None or stale or 64 * len(moved[0]) > L.S * X.shape[0]:
        return _full_sums(X, lab, L, ws)
    _move_points(X, moved, L, sums, counts, ws)
    return sums, counts


def _follow_centres(st: dict, delta, L: Layout) -> None:
    """Hamerly's bound update after centres moved by sqrt(delta) (S,)."""
    move = delta.sqrt() * (1 + 1e-6)  # (S,) a hair more: float32 rounding
    per_run = torch.zeros(L.A, len(L.blocks), device=move.device)
    per_run[L.row_run, L.row_j] = move  # (A, K) shift of centre j of run a
    st["u"] += per_run.gather(1, st["lab"])  # own centre moved by its own shift at most
    st["l"] -= per_run.amax(1, keepdim=True)  # any other centre by the run's largest shift


def _finish(out: dict, pending: list, st: dict, runs, rows, L: Layout, done, strict, sums, counts):
    """Store the runs that stop now; those not stopped by unchanged labels need a last E-step."""
    slots = done[L.row_run]  # (S,)
    out["lab"][runs[done]] = st["lab"][done]
    out["sums"][rows[slots]], out["counts"][rows[slots]] = sums[slots], counts[slots]
    last = done & ~strict
    if bool(last.any()):
        pending.append((runs[last], st["u"][last], st["l"][last]))


def _last_estep(X, xx, full: Layout, out: dict, pending: list, ws: _Workspace) -> None:
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


def _inertia_estimate(xx, L: Layout, out: dict) -> torch.Tensor:
    """Inertia per run (A,) from per-centre sums, float64: sum ||x||^2 - sum_j (2 c.s - n ||c||^2)."""
    C, s, n = (out[key].to(torch.float64) for key in ("C", "sums", "counts"))
    per_centre = 2 * (C * s).sum(1) - n * (C * C).sum(1)  # (S,)
    return xx.sum(dtype=torch.float64) - torch.zeros(L.A, dtype=torch.float64, device=C.device).index_add_(
        0, L.row_run, per_centre)

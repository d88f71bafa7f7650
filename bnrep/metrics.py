"""Measurements of hidden representations (paper section 3.2-3.3).

- Channel sparsity (eq. 3) and layer sparsity (eq. 4) from zero counts, so a
  streaming extractor only keeps C integers per layer, never the activations.
- The reduced representation (eq. 5): channel means over H x W, rows L2-normalised.
- The Davies-Bouldin index (eq. 2) with scikit-learn's definition and edge cases,
  computed in torch with float64 accumulation on the input's device.

    >>> channel, layer = sparsity_from_activations(A)          # A: (N, C, H, W)
    >>> dbi, reason = davies_bouldin(reduce_representation(A), y)
"""

from __future__ import annotations

import numpy as np
import torch

# scikit-learn tests its "all zero" cases with np.isclose(x, 0): |x| <= atol.
_SKLEARN_ATOL = 1e-8


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# ==== sparsity (paper eqs. 3-4) ====

def channel_sparsity(zero_counts, totals) -> np.ndarray:
    """Per-channel fraction of zero values (eq. 3).

    zero_counts: (C,) values counted as zero per channel; totals: N*H*W values
    seen per channel (a scalar, or (C,)).
    """
    z, t = _numpy(zero_counts), _numpy(totals)
    if np.any(t <= 0):
        raise ValueError("sparsity needs a positive number of values per channel (totals > 0)")
    return z / t  # (C,)


def layer_sparsity(zero_counts, totals) -> float:
    """Fraction of all N*C*H*W values that are zero (eq. 4), from per-channel counts."""
    z = _numpy(zero_counts)
    t = np.broadcast_to(_numpy(totals), z.shape)
    if np.any(t <= 0):
        raise ValueError("sparsity needs a positive number of values per channel (totals > 0)")
    return float(z.sum() / t.sum())


def zero_counts(A: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per-channel count of values with |x| <= eps; A is (N, C, ...), channels on dim 1."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0 (got {eps})")
    if A.dim() < 2:
        raise ValueError(f"activations need shape (N, C) or (N, C, H, W), got {tuple(A.shape)}")
    dims = [i for i in range(A.dim()) if i != 1]
    return (A.abs() <= eps).sum(dim=dims)  # (C,) int64


def sparsity_from_activations(A: torch.Tensor, eps: float = 0.0) -> tuple[np.ndarray, float]:
    """(channel sparsity (C,), layer sparsity) of a whole activation tensor.

    The reference for the streaming extractor: A is (N, C, H, W) for a conv layer
    or (N, C) for a fully connected one; |x| <= eps counts as zero (paper: eps = 0).
    """
    counts = zero_counts(A, eps)  # (C,)
    per_channel = A.numel() // A.shape[1]  # N*H*W
    return channel_sparsity(counts, per_channel), layer_sparsity(counts, per_channel)


# ==== reduced representation (paper eq. 5) ====

def l2_normalise_rows(X: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """Rows divided by their Euclidean norm (eq. 5), as F.normalize: norms are
    floored at 1e-12, so all-zero rows (dead samples) stay zero. `in_place`
    writes into X: no second (N, C) buffer."""
    norm = torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min_(1e-12)  # (N, 1)
    return X.div_(norm) if in_place else X / norm


def reduce_representation(A: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C): mean over H, W (eq. 5), then L2-normalised rows.

    (N, C) inputs (fully connected layers) are only normalised.
    """
    if A.dim() < 2:
        raise ValueError(f"activations need shape (N, C) or (N, C, H, W), got {tuple(A.shape)}")
    if not A.is_floating_point():
        A = A.float()
    X = A.flatten(2).mean(dim=2) if A.dim() > 2 else A  # (N, C), eq. 5
    return l2_normalise_rows(X)


# ==== Davies-Bouldin index (paper eq. 2) ====

def _encode_labels(labels, n: int, device) -> torch.Tensor:
    """Labels of any kind -> codes 0..k-1 as an int64 tensor on `device`."""
    if isinstance(labels, torch.Tensor):
        codes = torch.unique(labels.reshape(-1), return_inverse=True)[1]
    else:
        codes = torch.from_numpy(np.unique(np.asarray(labels).reshape(-1), return_inverse=True)[1])
    if codes.numel() != n:
        raise ValueError(f"labels has {codes.numel()} entries but X has {n} rows")
    return codes.to(device=device, dtype=torch.int64)


_ROWS = 2048  # rows per chunk (at most); chunks of 2**19 values keep temporaries small


def chunk_rows(values_per_row: int, budget: int = 2**19, cap: int | None = _ROWS) -> int:
    """Rows per chunk so a chunk holds at most `budget` values (and `cap` rows): the
    one rule every row-chunked loop here uses to keep its temporaries small."""
    rows = max(1, budget // max(values_per_row, 1))
    return rows if cap is None else min(cap, rows)


def _degenerate(X: torch.Tensor, k: int) -> str | None:
    """Why the DBI of X (N, d) with k labels is undefined, or None."""
    N = X.shape[0]
    if N == 0:
        return "no samples"
    lo, hi = X.aminmax()  # NaN propagates, inf shows
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        return "representations contain NaN or inf"
    if lo == 0 and hi == 0:  # before the label checks: k-means puts a dead layer in one cluster
        return "dead layer: all representations are zero"
    if all(bool((xs == X[0]).all()) for xs in X.split(_ROWS)):
        return "all samples are identical"
    if k < 2:
        return f"fewer than 2 distinct labels (got {k})"
    if k >= N:
        return f"every sample is its own cluster ({k} labels for {N} samples)"
    return None


def _cluster_stats(X: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (k, d) and mean member-to-centroid distance (k,), both float64."""
    f64 = dict(dtype=torch.float64, device=X.device)
    R = chunk_rows(X.shape[1])
    x64, c64 = torch.empty(R, X.shape[1], **f64), torch.empty(R, X.shape[1], **f64)  # reused
    counts = torch.bincount(codes, minlength=k).to(torch.float64)  # (k,)
    centroids = torch.zeros(k, X.shape[1], **f64)
    for xs, cs in zip(X.split(R), codes.split(R)):
        centroids.index_add_(0, cs, x64[: len(cs)].copy_(xs))
    centroids /= counts[:, None]  # (k, d)
    intra = torch.zeros(k, **f64)
    for xs, cs in zip(X.split(R), codes.split(R)):
        diff = torch.index_select(centroids, 0, cs, out=c64[: len(cs)])
        diff = torch.sub(x64[: len(cs)].copy_(xs), diff, out=diff)  # X itself is never written
        intra.index_add_(0, cs, diff.square_().sum(dim=1).sqrt_())
    return centroids, intra / counts


def davies_bouldin(X, labels) -> tuple[float, str | None]:
    """Davies-Bouldin index (eq. 2) of rows X (N, d) grouped by `labels` (N,).

    Same definition and conventions as sklearn.metrics.davies_bouldin_score:
    d(x_i) is the mean Euclidean distance of cluster i's members to its centroid;
    a pair of coinciding centroids is skipped (its ratio counts as 0); the score
    is 0 when all spreads or all centroid distances are ~0 (|x| <= 1e-8).

    Returns (dbi, reason). reason is None for an ordinary value. Where
    scikit-learn would raise or report a misleading 0 -- fewer than 2 labels,
    one sample per label, a dead layer (all-zero rows), all samples identical,
    non-finite values -- dbi is NaN and reason says why. When every centroid
    coincides (but samples differ) dbi is scikit-learn's 0 and reason notes it.
    """
    X = torch.as_tensor(X)
    if X.dim() != 2:
        raise ValueError(f"X must have shape (N, d), got {tuple(X.shape)}")
    if not X.is_floating_point():
        X = X.to(torch.float64)
    codes = _encode_labels(labels, X.shape[0], X.device)
    k = int(codes.max()) + 1 if codes.numel() else 0
    reason = _degenerate(X, k)
    if reason is not None:
        return float("nan"), reason

    centroids, intra = _cluster_stats(X, codes, k)  # (k, d), (k,)
    # exact differences (no ||a||^2 - 2ab + ||b||^2), so coinciding centroids give 0
    cd = torch.cdist(centroids, centroids, compute_mode="donot_use_mm_for_euclid_dist")  # (k, k)
    if bool((intra.abs() <= _SKLEARN_ATOL).all()):
        return 0.0, None  # every cluster is a single point: perfectly compact
    if bool((cd.abs() <= _SKLEARN_ATOL).all()):
        return 0.0, "all cluster centroids coincide (scikit-learn's convention: 0)"
    cd[cd == 0] = torch.inf  # sklearn: coinciding pairs (and i == j) drop out of the max
    scores = ((intra[:, None] + intra[None, :]) / cd).max(dim=1).values  # (k,)
    return float(scores.mean()), None

"""Measurements of hidden representations (paper section 3.2-3.3).

- Channel sparsity (eq. 3) and layer sparsity (eq. 4) from zero counts, so a
  streaming extractor only keeps C integers per layer, never the activations.
- The reduced representation (eq. 5): channel means over H x W, rows L2-normalised.
- The Davies-Bouldin index (eq. 2) with scikit-learn's definition and edge cases,
  computed in torch with float64 accumulation on the input's device.
- Beyond the paper, on the reduced representations: within-class variability
  collapse NC1 (Papyan et al. 2020), linear CKA between two models (Kornblith
  et al. 2019) and effective rank (Roy & Vetterli 2007); float64 on the input's
  device, d x d matrices only, NaN with a reason where a measure is undefined.
  The linear probe (Alain & Bengio 2017): cross-validated logistic regression
  accuracy, scikit-learn's, on the CPU.

    >>> channel, layer = sparsity_from_activations(A)          # A: (N, C, H, W)
    >>> X = reduce_representation(A)                           # (N, C)
    >>> dbi, reason = davies_bouldin(X, y)
    >>> collapse, reason = nc1(X, y); rank, reason = effective_rank(X)
    >>> accuracy, reason = linear_probe(X, y, folds=5, seed=0)  # cross-validated
    >>> similarity = linear_cka(X, X_other_model)              # same N samples
"""

from __future__ import annotations

import math

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


def _as_matrix(X, name: str = "X") -> torch.Tensor:
    """X as a floating (N, d) tensor on its own device (integers become float64)."""
    X = torch.as_tensor(X)
    if X.dim() != 2:
        raise ValueError(f"{name} must have shape (N, d), got {tuple(X.shape)}")
    return X if X.is_floating_point() else X.to(torch.float64)


def unusable(X: torch.Tensor) -> str | None:
    """Why no measure of the samples X (N, d) means anything, or None."""
    if X.shape[0] == 0 or X.shape[1] == 0:
        return "no samples" if X.shape[0] == 0 else "no features"
    lo, hi = X.aminmax()  # NaN propagates, inf shows
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        return "representations contain NaN or inf"
    if lo == 0 and hi == 0:  # before the label checks: k-means puts a dead layer in one cluster
        return "dead layer: all representations are zero"
    if all(bool((xs == X[0]).all()) for xs in X.split(_ROWS)):
        return "all samples are identical"
    return None


def _degenerate(X: torch.Tensor, k: int) -> str | None:
    """Why the DBI of X (N, d) with k labels is undefined, or None."""
    N = X.shape[0]
    reason = unusable(X)
    if reason is not None:
        return reason
    if k < 2:
        return f"fewer than 2 distinct labels (got {k})"
    if k >= N:
        return f"every sample is its own cluster ({k} labels for {N} samples)"
    return None


def _class_means(X: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means (k, d) and sizes (k,) of the k groups of rows of X, float64, summed in row chunks."""
    f64 = dict(dtype=torch.float64, device=X.device)
    R = chunk_rows(X.shape[1])
    x64 = torch.empty(R, X.shape[1], **f64)  # reused: X is never copied whole
    counts = torch.bincount(codes, minlength=k).to(torch.float64)  # (k,)
    sums = torch.zeros(k, X.shape[1], **f64)
    for xs, cs in zip(X.split(R), codes.split(R)):
        sums.index_add_(0, cs, x64[: len(cs)].copy_(xs))
    return sums / counts[:, None], counts


def _cluster_stats(X: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (k, d) and mean member-to-centroid distance (k,), both float64."""
    f64 = dict(dtype=torch.float64, device=X.device)
    R = chunk_rows(X.shape[1])
    x64, c64 = torch.empty(R, X.shape[1], **f64), torch.empty(R, X.shape[1], **f64)  # reused
    centroids, counts = _class_means(X, codes, k)  # (k, d), (k,)
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
    X = _as_matrix(X)
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


# ==== neural collapse, CKA, effective rank ====

# Class means closer than this to the global mean, relative to the largest sample norm, are one
# mean seen through float64 rounding: chunked sums of N rows err by at most ~N * 2.2e-16 relative.
_COINCIDE_RTOL = 1e-10


def _centred64(X: torch.Tensor) -> torch.Tensor:
    """A float64 copy of X (N, d) with zero-mean columns; X itself is never written."""
    Xc = X.to(torch.float64, copy=True)
    return Xc.sub_(Xc.mean(dim=0))


def _within_scatter(X: torch.Tensor, codes: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """sum over rows of (h_i - mu_c(i))(h_i - mu_c(i))^T, (d, d) float64, in row chunks (no N x N)."""
    f64 = dict(dtype=torch.float64, device=X.device)
    R = chunk_rows(X.shape[1])
    x64, m64 = torch.empty(R, X.shape[1], **f64), torch.empty(R, X.shape[1], **f64)  # reused
    S = torch.zeros(X.shape[1], X.shape[1], **f64)
    for xs, cs in zip(X.split(R), codes.split(R)):
        D = x64[: len(cs)].copy_(xs).sub_(torch.index_select(means, 0, cs, out=m64[: len(cs)]))
        S.addmm_(D.T, D)
    return S


def nc1(X, labels) -> tuple[float, str | None]:
    """Within-class variability collapse NC1 = Tr(Sigma_W Sigma_B^+) / C of rows X (N, d).

    Papyan, Han & Donoho, PNAS 2020: C classes present in `labels` (N,), Sigma_W =
    (1/N) sum_i (h_i - mu_c(i))(h_i - mu_c(i))^T, Sigma_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T
    with mu_G the mean of all N samples. 0 when every class is one point.

    Sigma_B^+ is torch.linalg.pinv(Sigma_B, hermitian=True, rtol=d * eps64): Sigma_B is symmetric
    PSD by construction (eigh is exact about that), and rank <= C - 1 < d, so its null space comes
    out of float64 as eigenvalues of ~1e-16 * the largest; d * eps is the numerical-rank cutoff of
    numpy.linalg.matrix_rank (and torch's default), pinned here so a library change cannot move it.

    Returns (nc1, reason); NaN with the reason for no samples, non-finite values, a dead layer
    (all zero), identical samples, fewer than 2 classes, or class means that coincide (Sigma_B = 0).
    Float64 on X's device; Sigma_W and Sigma_B are d x d, nothing is N x N.
    """
    X = _as_matrix(X)
    N, d = X.shape
    codes = _encode_labels(labels, N, X.device)
    C = int(codes.max()) + 1 if codes.numel() else 0
    reason = unusable(X) or (f"fewer than 2 classes (got {C})" if C < 2 else None)
    if reason is not None:
        return float("nan"), reason
    means, counts = _class_means(X, codes, C)  # (C, d), (C,)
    M = means - (counts[:, None] * means).sum(dim=0) / N  # (C, d): mu_c - mu_G
    scale = float(torch.linalg.vector_norm(X, dim=1).max())  # largest |h|, in X's dtype: no copy
    if torch.linalg.vector_norm(M, dim=1).max() <= _COINCIDE_RTOL * scale:
        return float("nan"), "class means coincide: between-class covariance Sigma_B is zero"
    sigma_b = M.T @ M / C  # (d, d)
    sigma_w = _within_scatter(X, codes, means) / N  # (d, d)
    sigma_b_pinv = torch.linalg.pinv(sigma_b, hermitian=True, rtol=d * torch.finfo(torch.float64).eps)
    return float((sigma_w * sigma_b_pinv).sum() / C), None  # Tr(AB) = sum(A * B) for symmetric B


def linear_cka(X, Y) -> float:
    """Linear CKA (Kornblith et al., ICML 2019) of two representations X (N, d1), Y (N, d2) of the same N samples.

    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) on column-centred float64 copies: the
    feature-space form, d x d Gram matrices only. In [0, 1]; invariant to orthogonal maps and
    isotropic scaling of either side. NaN when either side is constant (a dead layer included),
    empty or not finite. Runs on X's device (Y is moved there).
    """
    X, Y = _as_matrix(X, "X"), _as_matrix(Y, "Y").to(X.device)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must hold the same samples: {X.shape[0]} rows vs {Y.shape[0]}")
    if unusable(X) is not None or unusable(Y) is not None:
        return float("nan")
    Xc, Yc = _centred64(X), _centred64(Y)  # (N, d1), (N, d2)
    fro = torch.linalg.matrix_norm
    return float(fro(Yc.T @ Xc) ** 2 / (fro(Xc.T @ Xc) * fro(Yc.T @ Yc)))


def _hsic_u(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2012) of linear kernels K = X X^T, L = Y Y^T, times n(n-3), from d x d
    products and O(N d) sums: with the diagonals of K and L zeroed (K~, L~),
    tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2 1'K~L~1 / (n-2), where
    tr(K~ L~) = ||X^T Y||_F^2 - sum_i |x_i|^2 |y_i|^2 and (K~ 1)_i = x_i . sum_j x_j - |x_i|^2."""
    n = X.shape[0]
    kx, ky = (X * X).sum(dim=1), (Y * Y).sum(dim=1)  # diag(K), diag(L)
    rx, ry = X @ X.sum(dim=0) - kx, Y @ Y.sum(dim=0) - ky  # row sums of K~, L~
    trace = torch.linalg.matrix_norm(X.T @ Y) ** 2 - (kx * ky).sum()
    return trace + rx.sum() * ry.sum() / ((n - 1) * (n - 2)) - 2 * (rx * ry).sum() / (n - 2)


def debiased_cka(X, Y) -> tuple[float, str | None]:
    """Debiased linear CKA (Nguyen, Raghu & Kornblith 2021): CKA with the unbiased HSIC estimator
    (Song et al. 2012) in place of the biased one, so that independent representations score about
    0 at any N (linear_cka is inflated at small N: about 0.2 at N = 32). Computed from d x d
    matrices and O(N d) sums on column-centred float64 copies (the estimator is unchanged by
    centring), never an N x N Gram matrix. Can be slightly negative. Returns (value, reason);
    NaN with the reason for fewer than 4 samples, a constant or non-finite side, or a side whose
    unbiased self-similarity is not positive (too few samples for its spread).
    """
    X, Y = _as_matrix(X, "X"), _as_matrix(Y, "Y").to(X.device)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must hold the same samples: {X.shape[0]} rows vs {Y.shape[0]}")
    reason = unusable(X) or unusable(Y)
    if reason is None and X.shape[0] < 4:
        reason = f"the unbiased estimator needs at least 4 samples, got {X.shape[0]}"
    if reason is not None:
        return math.nan, reason
    Xc, Yc = _centred64(X), _centred64(Y)
    xx, yy = float(_hsic_u(Xc, Xc)), float(_hsic_u(Yc, Yc))
    if xx <= 0 or yy <= 0:
        return math.nan, "a side's unbiased self-similarity is not positive (too few samples)"
    return float(_hsic_u(Xc, Yc)) / math.sqrt(xx * yy), None


def effective_rank(X) -> tuple[float, str | None]:
    """Effective rank (Roy & Vetterli 2007) of the column-centred rows X (N, d).

    exp(-sum_i p_i log p_i) with p_i = s_i / sum_j s_j over the singular values s of X - mean(X);
    between 1 and min(N, d); r for a rank-r matrix whose r singular values are equal.
    Singular values come from torch.linalg.svdvals of the centred (N, d) matrix, not from
    a Gram matrix, whose eigenvalues would blur values below ~1e-8 * the largest.

    Returns (rank, reason); NaN with the reason for no samples, non-finite values, a dead layer
    (all zero) or a constant one (identical samples: nothing left after centring).
    """
    X = _as_matrix(X)
    reason = unusable(X)
    if reason is not None:
        return float("nan"), reason
    s = torch.linalg.svdvals(_centred64(X))  # (min(N, d),)
    p = s / s.sum()
    p = p[p > 0]  # 0 log 0 = 0
    return float(torch.exp(-(p * p.log()).sum())), None


def linear_probe(X, labels, folds: int, seed: int = 0) -> tuple[float, str | None]:
    """Linear probe accuracy (Alain & Bengio 2017) of rows X (N, d) for `labels` (N,).

    Stratified `folds`-fold cross-validation (scikit-learn's StratifiedKFold, shuffled with `seed`;
    fewer folds where the largest class has fewer samples): on each fold's training rows, the
    features are standardised (scikit-learn's StandardScaler: a constant feature keeps scale 1) and a
    multinomial logistic regression is fitted (LogisticRegression: L2, C = 1, lbfgs, at most 1,000
    iterations, one BLAS thread); the value is the fraction of all N samples its fold's model
    classifies correctly. A training fold with one class predicts that class. Chance is about the
    largest class's share (1 / classes for balanced ones).

    Returns (accuracy, reason); NaN with the reason for no samples, non-finite values, a dead layer
    (all zero), identical samples, or fewer than 2 classes or 2 folds. Float64 on the CPU.
    """
    X = _as_matrix(X)
    codes = _encode_labels(labels, X.shape[0], "cpu").numpy()
    counts = np.bincount(codes)
    n_splits = min(folds, int(counts.max()) if counts.size else 0)
    reason = (unusable(X) or (f"fewer than 2 classes (got {counts.size})" if counts.size < 2 else None)
              or ("fewer than 2 samples in every class: no fold to hold out" if n_splits < 2 else None))
    if reason is not None:
        return math.nan, reason
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits
    Z = X.detach().to("cpu", torch.float64).numpy()
    correct = 0
    # One BLAS thread (as a Ray task has, OMP_NUM_THREADS=1): the fits are small, and two threads on two cores
    # took 17x as long (1.9 s against 0.11 s at N = 1,294, d = 128).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", UserWarning)  # a class with fewer samples than folds
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fit at its iteration cap
        for train, test in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(Z, codes):
            if len(np.unique(codes[train])) < 2:
                correct += int((codes[test] == codes[train][0]).sum())
                continue
            scale = StandardScaler().fit(Z[train])
            fit = LogisticRegression(max_iter=1000).fit(scale.transform(Z[train]), codes[train])
            correct += int((fit.predict(scale.transform(Z[test])) == codes[test]).sum())
    return correct / len(codes), None

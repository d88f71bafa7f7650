"""Sparsity (eqs. 3-4), reduced representations (eq. 5), the Davies-Bouldin index,
NC1, linear CKA, effective rank and the linear probe.

References: values worked out by hand on small known tensors, numpy on random
ones (formulas written out below), sklearn.metrics.davies_bouldin_score, and
scikit-learn's cross_val_predict for the probe.
"""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import davies_bouldin_score

from bnrep.metrics import (channel_sparsity, davies_bouldin, debiased_cka, effective_rank, layer_sparsity, linear_cka,
                           linear_probe, nc1, reduce_representation, sparsity_from_activations, zero_counts)

# ==== sparsity ====

# (N=2, C=3, H=1, W=2): channel 0 has 3 zeros of 4, channel 1 none, channel 2 all.
CONV = torch.tensor([[[[0.0, 1.0]], [[2.0, 3.0]], [[0.0, 0.0]]],
                     [[[0.0, 0.0]], [[0.5, 1e-3]], [[0.0, 0.0]]]])
# (N=4, C=3) fully connected
FC = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0], [1.0, 0.0, 0.0], [0.0, 0.2, 0.0]])

SPARSITY_CASES = {
    # name: (activations, eps, channel sparsity, layer sparsity), worked out by hand
    "conv": (CONV, 0.0, [3 / 4, 0 / 4, 4 / 4], 7 / 12),
    "conv-eps": (CONV, 1e-2, [3 / 4, 1 / 4, 4 / 4], 8 / 12),
    "fc": (FC, 0.0, [3 / 4, 1 / 4, 3 / 4], 7 / 12),
    "fc-eps": (FC, 0.5, [3 / 4, 2 / 4, 3 / 4], 8 / 12),
    "fc-negative-values": (-FC, 0.5, [3 / 4, 2 / 4, 3 / 4], 8 / 12),  # |x| <= eps
}


@pytest.mark.parametrize("name", SPARSITY_CASES)
def test_sparsity_by_hand(name):
    A, eps, channel, layer = SPARSITY_CASES[name]
    got_channel, got_layer = sparsity_from_activations(A, eps)
    np.testing.assert_allclose(got_channel, channel, rtol=0, atol=1e-15)
    assert got_layer == pytest.approx(layer, abs=1e-15)


@pytest.mark.parametrize("shape", [(7, 5, 4, 3), (9, 6), (3, 2, 5)])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_sparsity_matches_numpy(shape, eps):
    A = torch.relu(torch.randn(*shape, generator=torch.Generator().manual_seed(0)))
    a = A.numpy()
    zero = np.abs(a) <= eps
    axes = tuple(i for i in range(a.ndim) if i != 1)
    channel, layer = sparsity_from_activations(A, eps)
    np.testing.assert_allclose(channel, zero.mean(axis=axes), rtol=1e-12)  # eq. 3
    assert layer == pytest.approx(zero.mean(), rel=1e-12)  # eq. 4


def test_streamed_counts_give_the_same_sparsity():
    """Summing per-batch zero counts (how the extractor streams) equals the whole tensor."""
    A = torch.relu(torch.randn(10, 4, 3, 3, generator=torch.Generator().manual_seed(1)))
    counts = sum(zero_counts(batch) for batch in A.split(3))
    per_channel = A.numel() // A.shape[1]
    whole = sparsity_from_activations(A)
    np.testing.assert_array_equal(channel_sparsity(counts, per_channel), whole[0])
    assert layer_sparsity(counts, per_channel) == whole[1]


def test_layer_sparsity_accepts_per_channel_totals():
    assert layer_sparsity(np.array([1, 2, 3]), np.array([4, 4, 4])) == pytest.approx(6 / 12)
    assert layer_sparsity(torch.tensor([0, 8]), 8) == pytest.approx(0.5)


@pytest.mark.parametrize("call", [
    lambda: sparsity_from_activations(FC, eps=-1e-3),
    lambda: sparsity_from_activations(torch.zeros(5)),
    lambda: channel_sparsity([1, 2], 0),
    lambda: layer_sparsity([1, 2], [3, 0]),
], ids=["negative-eps", "1d-input", "zero-total", "zero-total-per-channel"])
def test_sparsity_bad_input(call):
    with pytest.raises(ValueError):
        call()


# ==== reduced representation ====

def _reduce_numpy(a):
    X = a.reshape(a.shape[0], a.shape[1], -1).mean(axis=2) if a.ndim > 2 else a
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return np.where(norm > 0, X / np.where(norm > 0, norm, 1), 0)


def test_reduce_by_hand():
    # eq. 5 on CONV: channel means (0.5, 2.5, 0) and (0, 0.2505, 0), then unit rows
    got = reduce_representation(CONV)
    m0 = np.array([0.5, 2.5, 0.0])
    m1 = np.array([0.0, 0.2505, 0.0])
    np.testing.assert_allclose(got.numpy(), np.stack([m0 / np.linalg.norm(m0), m1 / np.linalg.norm(m1)]),
                               rtol=1e-6)


@pytest.mark.parametrize("shape", [(6, 5, 4, 4), (6, 5), (6, 5, 7)], ids=["conv", "fc", "conv1d"])
def test_reduce_matches_numpy(shape):
    A = torch.relu(torch.randn(*shape, generator=torch.Generator().manual_seed(2)))
    A[1] = 0  # a dead sample: its row must stay zero, not NaN
    got = reduce_representation(A)
    assert got.shape == shape[:2] and got.dtype == A.dtype
    np.testing.assert_allclose(got.numpy(), _reduce_numpy(A.double().numpy()), rtol=1e-5, atol=1e-7)
    assert torch.all(got[1] == 0)
    norms = torch.linalg.vector_norm(got, dim=1)
    np.testing.assert_allclose(norms[[0, 2, 3, 4, 5]].numpy(), 1.0, rtol=1e-6)


def test_reduce_all_zero_and_integer_input():
    assert torch.equal(reduce_representation(torch.zeros(3, 4, 2, 2)), torch.zeros(3, 4))
    got = reduce_representation(torch.tensor([[3, 4], [0, 0]]))
    np.testing.assert_allclose(got.numpy(), [[0.6, 0.8], [0.0, 0.0]])


# ==== Davies-Bouldin index ====

def _random_case(i, rng):
    N = int(rng.integers(5, 400))
    d = int(rng.integers(1, 40))
    k = int(rng.integers(2, min(N - 1, 20) + 1))
    centres = rng.normal(size=(k, d)) * rng.uniform(0, 5)
    y = rng.integers(0, k, N)
    X = (centres[y] + rng.normal(size=(N, d))) * rng.uniform(0.01, 100)
    return X, y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dbi_matches_sklearn_on_random_cases(dtype):
    rng = np.random.default_rng(0)
    checked = 0
    for i in range(120):
        X, y = _random_case(i, rng)
        if not 1 < len(np.unique(y)) < len(y):
            continue
        X = X.astype(dtype)
        dbi, reason = davies_bouldin(torch.from_numpy(X), torch.from_numpy(y))
        # the reference sees the same values in float64: scikit-learn's own float32 path
        # rounds centroids to float32 (relative errors up to ~1e-5 on overlapping clusters)
        ref = davies_bouldin_score(X.astype(np.float64), y)
        assert reason is None
        assert dbi == pytest.approx(ref, rel=1e-6), (i, X.shape)
        checked += 1
    assert checked > 80


def test_dbi_float32_close_to_sklearns_float32_path():
    X, y = _random_case(0, np.random.default_rng(3))
    X = X.astype(np.float32)
    assert davies_bouldin(torch.from_numpy(X), y)[0] == pytest.approx(davies_bouldin_score(X, y), rel=1e-4)


def test_dbi_label_types_and_input_untouched():
    X, y = _random_case(0, np.random.default_rng(4))
    X0 = X.copy()
    ref = davies_bouldin_score(X, y)
    names = np.array(["c%d" % v for v in y])
    for labels in (y, torch.from_numpy(y), names, list(y + 7)):
        assert davies_bouldin(X, labels)[0] == pytest.approx(ref, rel=1e-9)
    np.testing.assert_array_equal(X, X0)


SQUARE = [[0, 0], [2, 2], [0, 2], [2, 0]]
DBI_EDGE_CASES = {
    # name: (X, labels, whether sklearn returns the same number, expected (dbi or "nan", reason start))
    "identical-centroid-pair": (SQUARE + [[5, 5], [6, 6]], [0, 0, 1, 1, 2, 2], True, (None, None)),
    "all-centroids-coincide": (SQUARE, [0, 0, 1, 1], True, (0.0, "all cluster centroids coincide")),
    "zero-spreads": ([[0, 0], [0, 0], [1, 1], [1, 1]], [0, 0, 1, 1], True, (0.0, None)),
    "some-zero-spreads": ([[0, 0], [0, 0], [1, 1], [1, 2]], [0, 0, 1, 1], True, (None, None)),
    "single-label": (SQUARE, [3, 3, 3, 3], False, ("nan", "fewer than 2 distinct labels")),
    "one-sample-per-label": (SQUARE, [0, 1, 2, 3], False, ("nan", "every sample is its own cluster")),
    "dead-layer": ([[0, 0]] * 6, [0, 0, 1, 1, 2, 2], False, ("nan", "dead layer")),
    "dead-layer-one-label": ([[0, 0]] * 6, [0] * 6, False, ("nan", "dead layer")),
    "identical-samples": ([[0.5, 1]] * 6, [0, 0, 1, 1, 2, 2], False, ("nan", "all samples are identical")),
    "nan-values": ([[0, 0], [1, np.nan], [2, 2], [3, 3]], [0, 0, 1, 1], False, ("nan", "representations contain")),
    "inf-values": ([[0, 0], [1, np.inf], [2, 2], [3, 3]], [0, 0, 1, 1], False, ("nan", "representations contain")),
}


@pytest.mark.parametrize("name", DBI_EDGE_CASES)
def test_dbi_edge_cases(name):
    X, y, like_sklearn, (value, reason) = DBI_EDGE_CASES[name]
    X = np.asarray(X, dtype=np.float64)
    dbi, why = davies_bouldin(torch.from_numpy(X), torch.tensor(y))
    if like_sklearn:
        assert dbi == pytest.approx(davies_bouldin_score(X, y), rel=1e-12, abs=1e-15)
    if value == "nan":
        assert math.isnan(dbi)
    elif value is not None:
        assert dbi == value
    assert (why is None) if reason is None else why.startswith(reason)


def test_dbi_identical_centroid_pair_is_skipped_like_sklearn():
    # clusters 0 and 1 share the centroid (1, 1): that pair's ratio counts as 0, so
    # only pairs with cluster 2 (centroid (5.5, 5.5)) set each row's maximum
    X = np.array(SQUARE + [[5, 5], [6, 6]], dtype=float)
    s = math.sqrt(2)  # spread of clusters 0 and 1
    s2 = math.sqrt(0.5)  # spread of cluster 2
    d = math.dist((1, 1), (5.5, 5.5))
    expected = ((s + s2) / d + (s + s2) / d + (s2 + s) / d) / 3
    assert davies_bouldin(X, [0, 0, 1, 1, 2, 2])[0] == pytest.approx(expected, rel=1e-12)


def test_dbi_bad_shapes():
    with pytest.raises(ValueError):
        davies_bouldin(torch.zeros(4), [0, 1, 0, 1])
    with pytest.raises(ValueError):
        davies_bouldin(torch.zeros(4, 2), [0, 1, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_dbi_on_cuda():
    X, y = _random_case(0, np.random.default_rng(5))
    dbi, _ = davies_bouldin(torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda())
    assert dbi == pytest.approx(davies_bouldin_score(X, y), rel=1e-6)


# ==== NC1 (Papyan, Han & Donoho 2020) ====

EPS64 = np.finfo(np.float64).eps


def _nc1_numpy(X, y):
    """Tr(Sigma_W Sigma_B^+) / C written out class by class; pinv by numpy's SVD path."""
    N, d = X.shape
    classes = np.unique(y)
    C = len(classes)
    mu_G = X.mean(axis=0)
    sigma_w, sigma_b = np.zeros((d, d)), np.zeros((d, d))
    for c in classes:
        Xc = X[y == c]
        mu_c = Xc.mean(axis=0)
        sigma_w += (Xc - mu_c).T @ (Xc - mu_c)  # sum over the class's samples of outer products
        sigma_b += np.outer(mu_c - mu_G, mu_c - mu_G)
    sigma_w /= N
    sigma_b /= C
    return np.trace(sigma_w @ np.linalg.pinv(sigma_b, rtol=d * EPS64)) / C


def _nc1_case(seed, N, d, C, unbalanced):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(C, 0.5)) if unbalanced else np.full(C, 1 / C)
    y = rng.choice(C, size=N, p=p)
    y[:C] = np.arange(C)  # every class present
    centres = rng.normal(size=(C, d)) * rng.uniform(0.1, 3)
    X = (centres[y] + rng.normal(size=(N, d)) * rng.uniform(0.1, 2, size=d)) * rng.uniform(0.01, 100)
    return X, y


NC1_RANDOM = {  # name: (seed, N, d, C, unbalanced)
    "balanced-d>C": (0, 200, 16, 4, False),
    "unbalanced-d>C": (1, 300, 40, 10, True),
    "unbalanced-many-classes": (2, 400, 12, 30, True),  # d < C - 1: Sigma_B full rank
    "d-equals-C-minus-1": (3, 120, 9, 10, True),
    "two-classes-wide": (4, 60, 100, 2, True),  # d > N: Sigma_W and Sigma_B both singular
    "larger": (5, 3000, 64, 10, True),
}


@pytest.mark.parametrize("name", NC1_RANDOM)
def test_nc1_matches_numpy(name):
    X, y = _nc1_case(*NC1_RANDOM[name])
    value, reason = nc1(torch.from_numpy(X), torch.from_numpy(y))
    assert reason is None
    assert value == pytest.approx(_nc1_numpy(X, y), rel=1e-8)


def test_nc1_float32_input_and_label_kinds():
    X, y = _nc1_case(6, 250, 20, 5, True)
    X32 = X.astype(np.float32)
    ref = _nc1_numpy(X32.astype(np.float64), y)
    for labels in (y, torch.from_numpy(y), np.array(["c%d" % v for v in y]), list(y * 3 + 7)):
        assert nc1(torch.from_numpy(X32), labels)[0] == pytest.approx(ref, rel=1e-8)


def test_nc1_pinv_keeps_exactly_the_between_class_subspace():
    """Papyan et al.'s own code inverts Sigma_B on its top C - 1 eigenvectors: same number when d >= C."""
    X, y = _nc1_case(7, 500, 64, 10, True)
    N, C = len(y), 10
    means = np.stack([X[y == c].mean(axis=0) for c in range(C)])
    M = means - X.mean(axis=0)
    w, V = np.linalg.eigh(M.T @ M / C)
    w, V = w[-(C - 1):], V[:, -(C - 1):]  # rank C - 1
    D = X - means[y]
    sigma_w = D.T @ D / N
    ref = np.trace(sigma_w @ (V / w) @ V.T) / C
    assert nc1(X, y)[0] == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nc1_collapsed_classes_give_zero(dtype):
    rng = np.random.default_rng(8)
    y = rng.integers(0, 6, 300)
    X = rng.normal(size=(6, 20))[y]  # every sample sits on its class mean
    value, reason = nc1(torch.from_numpy(X).to(dtype), y)
    assert reason is None and value == pytest.approx(0.0, abs=1e-20)
    X_noisy = X + 0.1 * rng.normal(size=X.shape)  # and a little within-class spread is not 0
    assert nc1(X_noisy, y)[0] > 1e-4


NC1_UNDEFINED = {
    # name: (X, labels, reason start)
    "dead-layer": ([[0, 0]] * 6, [0, 0, 1, 1, 2, 2], "dead layer"),
    "one-class": (SQUARE, [3, 3, 3, 3], "fewer than 2 classes"),
    "nan-values": ([[0, 0], [1, np.nan], [2, 2], [3, 3]], [0, 0, 1, 1], "representations contain"),
    "inf-values": ([[0, 0], [1, -np.inf], [2, 2], [3, 3]], [0, 0, 1, 1], "representations contain"),
    "class-means-coincide": (SQUARE, [0, 0, 1, 1], "class means coincide"),  # both means (1, 1)
    "identical-samples": ([[0.5, 1]] * 6, [0, 0, 1, 1, 2, 2], "all samples are identical"),
    "no-samples": (np.zeros((0, 3)), [], "no samples"),
}


@pytest.mark.parametrize("name", NC1_UNDEFINED)
def test_nc1_undefined(name):
    X, y, reason = NC1_UNDEFINED[name]
    value, why = nc1(torch.tensor(np.asarray(X, dtype=np.float64)), torch.tensor(y, dtype=torch.int64))
    assert math.isnan(value) and why.startswith(reason)


def test_nc1_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        nc1(torch.zeros(4), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="labels has 3 entries"):
        nc1(torch.zeros(4, 2), [0, 1, 0])


# ==== linear CKA (Kornblith et al. 2019) ====

def _cka_numpy(X, Y):
    """Feature-space form on centred columns."""
    Xc, Yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
    fro = np.linalg.norm
    return fro(Yc.T @ Xc) ** 2 / (fro(Xc.T @ Xc) * fro(Yc.T @ Yc))


def _cka_hsic(X, Y):
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = XX^T, L = YY^T, H = I - 11^T / N (paper eq. 1-3)."""
    N = len(X)
    H = np.eye(N) - np.ones((N, N)) / N
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda A, B: np.trace(A @ H @ B @ H) / (N - 1) ** 2  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def _cka_pair(seed, N, d1, d2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, d1)) + rng.normal(size=d1) * 3  # columns far from zero mean: centring matters
    Y = np.maximum(X @ rng.normal(size=(d1, d2)), 0) + 0.5 * rng.normal(size=(N, d2))
    return X, Y


CKA_SHAPES = {"tall": (0, 300, 12, 7), "square-ish": (1, 50, 40, 45), "wide": (2, 20, 60, 35), "one-column": (3, 80, 1, 5)}


@pytest.mark.parametrize("name", CKA_SHAPES)
def test_cka_matches_numpy_and_hsic_form(name):
    X, Y = _cka_pair(*CKA_SHAPES[name])
    got = linear_cka(torch.from_numpy(X), torch.from_numpy(Y))
    assert got == pytest.approx(_cka_numpy(X, Y), rel=1e-10)
    assert got == pytest.approx(_cka_hsic(X, Y), rel=1e-9)
    assert 0 < got < 1


def test_cka_invariances():
    X, Y = _cka_pair(4, 200, 16, 24)
    ref = linear_cka(X, Y)
    Q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(24, 24)))  # orthogonal (24, 24)
    assert linear_cka(X, Y @ Q) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(X, 37.5 * Y) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(X * 1e-3, Y) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(X + 100.0, Y) == pytest.approx(ref, rel=1e-10)  # columns are centred
    assert linear_cka(Y, X) == pytest.approx(ref, rel=1e-12)
    assert linear_cka(X, X) == pytest.approx(1.0, rel=1e-12)
    # not invariant to anisotropic scaling: the checks above can tell maps apart
    assert abs(linear_cka(X, Y * np.linspace(0.1, 10, 24)) - ref) > 1e-3


def test_cka_float32_input():
    X, Y = _cka_pair(6, 100, 10, 10)
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    got = linear_cka(torch.from_numpy(X32), torch.from_numpy(Y32))
    assert got == pytest.approx(_cka_numpy(X32.astype(np.float64), Y32.astype(np.float64)), rel=1e-10)


X_RAND = np.random.default_rng(7).normal(size=(6, 3))
CKA_UNDEFINED = {
    "constant-X": (np.ones((6, 3)) * [1, 2, 3], X_RAND),
    "dead-Y": (X_RAND, np.zeros((6, 4))),
    "nan-in-X": (np.where(np.eye(6, 3) > 0, np.nan, X_RAND), X_RAND),
    "no-samples": (np.zeros((0, 3)), np.zeros((0, 2))),
}


@pytest.mark.parametrize("name", CKA_UNDEFINED)
def test_cka_undefined(name):
    X, Y = CKA_UNDEFINED[name]
    assert math.isnan(linear_cka(torch.from_numpy(X), torch.from_numpy(Y)))


def test_cka_bad_shapes():
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(torch.zeros(5, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="Y must have shape"):
        linear_cka(torch.zeros(5, 2), torch.zeros(5))


# ==== effective rank (Roy & Vetterli 2007) ====

def _effective_rank_numpy(X):
    s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return np.exp(-np.sum(p * np.log(p)))


def _with_singular_values(s, N, d, seed):
    """(N, d) rows with column means b (not 0) whose centred matrix has singular values s."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(N, len(s)))
    U, _ = np.linalg.qr(A - A.mean(axis=0))  # (N, r) orthonormal, columns sum to 0
    V, _ = np.linalg.qr(rng.normal(size=(d, len(s))))  # (d, r) orthonormal
    return (U * s) @ V.T + rng.normal(size=d) * 5


@pytest.mark.parametrize("r", [1, 2, 5, 17, 30])
def test_effective_rank_of_equal_singular_values_is_the_rank(r):
    X = _with_singular_values(np.full(r, 2.5), N=64, d=30, seed=r)
    value, reason = effective_rank(torch.from_numpy(X))
    assert reason is None and value == pytest.approx(r, rel=1e-9)


def test_effective_rank_by_hand():
    # singular values (2, 1, 1): p = (1/2, 1/4, 1/4), entropy 1.5 ln 2, effective rank 2 ** 1.5
    X = _with_singular_values(np.array([2.0, 1.0, 1.0]), N=20, d=8, seed=0)
    assert effective_rank(X)[0] == pytest.approx(2 ** 1.5, rel=1e-9)


@pytest.mark.parametrize("shape", [(100, 20), (15, 40), (300, 64), (7, 1)])
def test_effective_rank_matches_numpy(shape):
    rng = np.random.default_rng(shape[0])
    X = rng.normal(size=shape) * rng.uniform(0.01, 10, size=shape[1]) + rng.normal(size=shape[1])
    assert effective_rank(torch.from_numpy(X))[0] == pytest.approx(_effective_rank_numpy(X), rel=1e-10)
    X32 = X.astype(np.float32)
    assert effective_rank(torch.from_numpy(X32))[0] == pytest.approx(
        _effective_rank_numpy(X32.astype(np.float64)), rel=1e-9)


ERANK_UNDEFINED = {
    "dead-layer": (np.zeros((5, 4)), "dead layer"),
    "constant-layer": (np.ones((5, 4)) * [0, 1, 2, 3], "all samples are identical"),
    "one-sample": (np.array([[1.0, 2.0]]), "all samples are identical"),
    "inf-values": (np.array([[1.0, np.inf], [0, 1]]), "representations contain"),
}


@pytest.mark.parametrize("name", ERANK_UNDEFINED)
def test_effective_rank_undefined(name):
    X, reason = ERANK_UNDEFINED[name]
    value, why = effective_rank(torch.from_numpy(X))
    assert math.isnan(value) and why.startswith(reason)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_nc1_cka_effective_rank_on_cuda():
    X, y = _nc1_case(9, 500, 32, 10, True)
    Xg, yg = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    assert nc1(Xg, yg)[0] == pytest.approx(_nc1_numpy(X, y), rel=1e-8)
    assert linear_cka(Xg, Xg[:, :20].float()) == pytest.approx(_cka_numpy(X, X[:, :20].astype(np.float32)), rel=1e-6)
    assert effective_rank(Xg)[0] == pytest.approx(_effective_rank_numpy(X), rel=1e-10)


# ==== debiased linear CKA (Song et al. 2012; Nguyen, Raghu & Kornblith 2021) ====

def _debiased_cka_numpy(X, Y):
    """N x N form: Gram matrices centred by the unbiased estimator (zero diagonal, U-statistic means)."""
    def centre(G):
        G, n = G.astype(float).copy(), len(G)
        np.fill_diagonal(G, 0)
        means = G.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        G -= means[:, None] + means[None, :]
        np.fill_diagonal(G, 0)
        return G
    K, L = centre(X @ X.T), centre(Y @ Y.T)
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


@pytest.mark.parametrize("name", CKA_SHAPES)
def test_debiased_cka_matches_the_n_by_n_estimator(name):
    X, Y = _cka_pair(*CKA_SHAPES[name])
    got, reason = debiased_cka(torch.from_numpy(X), torch.from_numpy(Y))
    assert reason is None and got == pytest.approx(_debiased_cka_numpy(X, Y), rel=1e-9)
    assert debiased_cka(X + 7.0, Y - 3.0)[0] == pytest.approx(got, rel=1e-9)  # a shift changes nothing


def test_debiased_cka_is_near_zero_on_independent_data_where_linear_cka_is_not():
    rng = np.random.default_rng(0)
    biased, debiased = [], []
    for _ in range(20):
        X, Y = rng.normal(size=(32, 64)), rng.normal(size=(32, 64))
        biased.append(linear_cka(torch.from_numpy(X), torch.from_numpy(Y)))
        debiased.append(debiased_cka(torch.from_numpy(X), torch.from_numpy(Y))[0])
    assert np.mean(biased) > 0.5  # inflated at N = 32 with 64 features
    assert abs(np.mean(debiased)) < 0.03 and max(map(abs, debiased)) < 0.25 < min(biased)
    same = rng.normal(size=(32, 64))
    assert debiased_cka(same, same @ np.linalg.qr(rng.normal(size=(64, 64)))[0])[0] == pytest.approx(1.0)


@pytest.mark.parametrize("X, Y, reason", [
    (np.zeros((10, 3)), np.ones((10, 2)), "dead layer: all representations are zero"),
    (np.ones((10, 3)), np.arange(20.0).reshape(10, 2), "all samples are identical"),
    (np.arange(9.0).reshape(3, 3), np.arange(6.0).reshape(3, 2), "at least 4 samples, got 3"),
    (np.array([[0.0, np.nan]] * 5), np.ones((5, 2)), "NaN or inf"),
])
def test_debiased_cka_undefined_is_nan_with_a_reason(X, Y, reason):
    value, why = debiased_cka(torch.from_numpy(X), torch.from_numpy(Y))
    assert math.isnan(value) and reason in why


# ==== the linear probe (Alain & Bengio 2017) ====

def _probe_reference(X, y, folds, seed):
    """scikit-learn's own cross-validated predictions: a pipeline refitted per fold, the same folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pred = cross_val_predict(pipe, X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return float((pred == y).mean())


def _overlapping_classes(seed, n=300, d=12, k=4, spread=1.5):
    g = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    return g.normal(size=(k, d))[y] + spread * g.normal(size=(len(y), d)), y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_probe_matches_scikit_learn(seed):
    X, y = _overlapping_classes(seed)
    got, reason = linear_probe(torch.from_numpy(X).float(), torch.from_numpy(y), 5, seed=seed)
    want = _probe_reference(X.astype(np.float32).astype(np.float64), y, 5, seed)
    assert reason is None and 0.4 < got < 0.95  # neither chance nor separable: the folds' fits decide it
    assert got == want


def test_linear_probe_separable_is_one_and_shuffled_labels_near_chance():
    g = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 100)
    X = np.eye(4)[y] * 5 + 0.1 * g.normal(size=(400, 4))  # each class its own axis
    assert linear_probe(torch.from_numpy(X), y, 5) == (1.0, None)
    noise = g.normal(size=(400, 20))  # features that know nothing of the labels
    chance, _ = linear_probe(torch.from_numpy(noise), y, 5)
    assert chance < 0.4  # 4 classes: chance 0.25


def test_linear_probe_is_unchanged_by_scaling_a_feature_and_moves_with_the_seed():
    X, y = _overlapping_classes(4)
    scaled = X * np.r_[1000.0, np.ones(X.shape[1] - 1)] + 50.0  # standardised per fold: the same fits
    a = linear_probe(torch.from_numpy(X), y, 5, seed=7)[0]
    assert linear_probe(torch.from_numpy(scaled), y, 5, seed=7)[0] == pytest.approx(a, abs=1 / len(y))
    assert linear_probe(torch.from_numpy(X), y, 5, seed=7)[0] == a  # deterministic for a seed
    assert len({linear_probe(torch.from_numpy(X), y, 5, seed=s)[0] for s in range(6)}) > 1  # other folds


def test_linear_probe_with_small_classes_uses_fewer_folds():
    X, y = _overlapping_classes(5, n=12, d=3, k=4, spread=0.5)  # 3 samples a class: 3 folds
    got, reason = linear_probe(torch.from_numpy(X), y, 5, seed=1)
    assert reason is None and got == _probe_reference(X, y, 3, 1)
    # a class with one sample: the fold that holds it out trains on the others alone
    y1 = np.r_[np.zeros(6, int), 1]
    X1 = np.r_[np.zeros((6, 2)), np.ones((1, 2))] + np.arange(7)[:, None] * 0.01
    assert linear_probe(torch.from_numpy(X1), y1, 5) == (6 / 7, None)


PROBE_UNDEFINED = {
    "dead-layer": (np.zeros((6, 3)), [0, 1] * 3, "dead layer"),
    "nan-values": (np.r_[np.ones((5, 2)), [[np.nan, 1.0]]], [0, 1] * 3, "representations contain"),
    "one-class": (np.arange(12.0).reshape(6, 2), [0] * 6, "fewer than 2 classes"),
    "every-class-one-sample": (np.arange(6.0).reshape(3, 2), [0, 1, 2], "fewer than 2 samples in every class"),
}


@pytest.mark.parametrize("name", PROBE_UNDEFINED)
def test_linear_probe_undefined(name):
    X, y, reason = PROBE_UNDEFINED[name]
    value, why = linear_probe(torch.from_numpy(X), np.array(y), 5)
    assert math.isnan(value) and why.startswith(reason)

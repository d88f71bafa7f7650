"""Sparsity (eqs. 3-4), reduced representations (eq. 5) and the Davies-Bouldin index.

References: values worked out by hand on small known tensors, numpy on random
ones, and sklearn.metrics.davies_bouldin_score.
"""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import davies_bouldin_score

from bnrep.metrics import (channel_sparsity, davies_bouldin, layer_sparsity, reduce_representation,
                           sparsity_from_activations, zero_counts)

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

"""Streaming extraction against a manual forward pass and hand-computed values."""

import numpy as np
import pytest
import torch
from torch import nn

from bnrep.metrics import reduce_representation, sparsity_from_activations
from bnrep.models import build_model
from bnrep.probes import find_probes
from bnrep.represent import AnalysisSamples, extract_representations


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def manual_activations(model, X):
    """Post-ReLU outputs of every probe, by walking the modules by hand."""
    model.eval()
    acts = []
    with torch.no_grad():
        x = X
        for m in model.features:
            x = m(x)
            if isinstance(m, nn.ReLU):
                acts.append(x.clone())
        x = torch.amax(x, dim=(2, 3))
        for m in model.classifier:
            x = m(x)
            if isinstance(m, nn.ReLU):
                acts.append(x.clone())
    return acts


class OnlyReLU(nn.Module):
    """A 1-layer network whose activations are known exactly: its input, rectified."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x)


@pytest.mark.parametrize("arch,shape", [("cnn", (1, 8, 8)), ("cnn", (3, 32, 32)), ("vgg16", (3, 16, 16))])
@pytest.mark.parametrize("norm", ["batch", "group", "layer", "none"])
def test_matches_manual_forward(arch, shape, norm):
    torch.manual_seed(0)
    model = build_model(arch, norm, shape[0])
    if norm == "batch":  # non-trivial running statistics, so eval mode matters
        model.train()
        with torch.no_grad():
            model(torch.randn(64, *shape))
    X = torch.randn(37, *shape)
    n_sparse = 20
    reps = extract_representations(model, X, n_sparse, eps=(0.0, 0.05), batch_size=8)
    acts = manual_activations(model, X)
    assert [r.name for r in reps] == [p.name for p in find_probes(model, X[:2])]
    for r, A in zip(reps, acts):
        torch.testing.assert_close(r.reduced, reduce_representation(A), rtol=1e-5, atol=1e-6)
        for i, eps in enumerate((0.0, 0.05)):
            chan, layer = sparsity_from_activations(A[:n_sparse], eps)
            np.testing.assert_allclose(r.zero_counts[i] / r.values_per_channel, chan, rtol=0, atol=1e-12)
            assert r.zero_counts[i].sum() / (r.values_per_channel * r.channels) == pytest.approx(layer)
    assert no_hooks(model)  # hooks removed


def test_hand_computed_tensor():
    """A 1-layer network whose activations are known exactly."""
    X = torch.tensor([[[[1.0, -1.0], [0.0, 3.0]], [[-2.0, -2.0], [-2.0, -2.0]]],
                      [[[0.0, 0.0], [0.0, 4.0]], [[2.0, 0.0], [0.0, 0.0]]]])  # (N=2, C=2, 2, 2)
    (r,) = extract_representations(OnlyReLU(), X, n_sparsity=2, device="cpu")
    # channel 0: zeros at (-1, 0) in sample 0 and three in sample 1 -> 5/8; channel 1: 4 + 3 -> 7/8
    np.testing.assert_array_equal(r.zero_counts[0], [5, 7])
    assert r.values_per_channel == 8
    means = torch.tensor([[1.0, 0.0], [1.0, 0.5]])  # eq. 5
    torch.testing.assert_close(r.reduced, means / means.norm(dim=1, keepdim=True))


def test_zero_rows_stay_zero_and_hooks_removed_on_error():
    model = build_model("cnn", "none", 1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    reps = extract_representations(model, torch.randn(5, 1, 8, 8), 5)
    assert all(torch.count_nonzero(r.reduced) == 0 for r in reps)  # dead network: all-zero, no NaN
    assert all(r.zero_counts[0].sum() == r.values_per_channel * r.channels for r in reps)
    with pytest.raises(RuntimeError):
        extract_representations(model, torch.randn(5, 3, 8, 8), 5)  # wrong channel count
    assert no_hooks(model)


class Passthrough(nn.Module):
    """A 'network' whose one probe outputs the input unchanged: a leaky ReLU of slope 1, applied
    as a function (a probe found by the function mode), so the test sets every activation."""

    def __init__(self):
        super().__init__()
        self.forward_calls = 0

    def forward(self, x):
        self.forward_calls += 1
        return nn.functional.leaky_relu(x, 1.0)


def test_thresholds_at_and_around_each_eps_in_one_pass():
    """|x| <= eps counts as zero; values exactly at, one float32 step below and above each eps.

    The activations are float32, so "at eps" is the float32 nearest to eps (what the extractor
    compares against); below/above are its float32 neighbours. Negative values test |x|.
    """
    f32 = np.float32
    at = {e: f32(e) for e in (1e-3, 1e-2, 1e-1)}
    lo = {e: np.nextafter(a, f32(0)) for e, a in at.items()}
    hi = {e: np.nextafter(a, f32(1)) for e, a in at.items()}
    tiny = np.finfo(f32).tiny  # just above 0
    a1, a2, a3 = at[1e-3], at[1e-2], at[1e-1]
    channels = [  # per channel: sample 0 (2 x 3 values), sample 1 (2 x 3 values)
        [[0.0, -0.0, tiny, -tiny, a1, 3.0], [0.0, 0.0, 0.0, -0.5, 0.2, -2.0]],
        [[a1, -a1, lo[1e-3], -lo[1e-3], hi[1e-3], -hi[1e-3]], [0.0, 0.5, -0.5, 2.0, a1, 0.05]],
        [[a2, -a2, lo[1e-2], -lo[1e-2], hi[1e-2], -hi[1e-2]], [hi[1e-3], -lo[1e-3], 7.0, -a2, 0.0, 0.5]],
        [[a3, -a3, lo[1e-1], -lo[1e-1], hi[1e-1], -hi[1e-1]], [1.0, -1.0, hi[1e-2], 0.3, -hi[1e-1], lo[1e-1]]],
    ]
    X = torch.tensor(np.array(channels, dtype=f32).reshape(4, 2, 2, 3).transpose(1, 0, 2, 3))  # (N=2, C=4, 2, 3)
    X = torch.cat([X, torch.zeros(1, 4, 2, 3)])  # a third sample, beyond n_sparsity: never counted
    expected = np.array([  # counted by hand from the table above, one row per eps
        [5, 1, 1, 0],  # eps 0: the zeros (-0.0 included); tiny is not zero
        [8, 6, 2, 0],  # eps 1e-3: + tiny, a1 and lo(1e-3); hi(1e-3) is not
        [8, 8, 8, 0],  # eps 1e-2: + everything up to a2; hi(1e-2) is not
        [8, 9, 10, 6],  # eps 1e-1: + 0.05 and everything up to a3; hi(1e-1), 0.2, 0.3 are not
    ])
    model = Passthrough()
    probes = find_probes(model, X[:2])
    assert [(p.name, p.activation, p.rectifier) for p in probes] == [("leaky_relu", "LeakyReLU", False)]
    model.forward_calls = 0
    (r,) = extract_representations(model, X, n_sparsity=2, eps=(0, 1e-3, 1e-2, 1e-1), device="cpu", probes=probes)
    assert model.forward_calls == 1  # one pass serves every threshold
    np.testing.assert_array_equal(r.zero_counts, expected)
    assert r.values_per_channel == 2 * 2 * 3
    for i, eps in enumerate((0, 1e-3, 1e-2, 1e-1)):  # the same counts as the whole-tensor reference
        chan, _ = sparsity_from_activations(X[:2], eps=float(f32(eps)))
        np.testing.assert_array_equal(chan, expected[i] / 12)


class AddOneInPlace(nn.Module):
    def forward(self, x):
        return x.add_(1)  # writes into the probe's output tensor


def test_inplace_op_after_probe_does_not_corrupt():
    torch.manual_seed(0)
    model = build_model("cnn", "none", 1)
    X = torch.randn(6, 1, 8, 8)
    expected = manual_activations(model, X)[3]  # conv4, before any in-place change
    model.features.append(AddOneInPlace())
    reps = extract_representations(model, X, 6)
    torch.testing.assert_close(reps[3].reduced, reduce_representation(expected))
    chan, _ = sparsity_from_activations(expected)
    np.testing.assert_allclose(reps[3].zero_counts[0] / reps[3].values_per_channel, chan)


def test_samples_are_seeded_prefixes_and_capped():
    a = AnalysisSamples.draw(1000, 300, 500, seed=0)
    b = AnalysisSamples.draw(1000, 300, 500, seed=0)
    np.testing.assert_array_equal(a.indices("cluster"), b.indices("cluster"))
    np.testing.assert_array_equal(a.indices("cluster")[:300], a.indices("sparsity"))
    assert len(set(a.indices("cluster"))) == 500 and len(a.order) == 500 and not a.notes
    c = AnalysisSamples.draw(100, 50, 500, seed=0)  # a plain note, no Python warning
    assert c.notes == ("clustering: 500 samples asked, the training split holds 100; using 100",)
    assert len(c.indices("cluster")) == 100
    t = a.table()
    assert t.groupby("purpose").size().to_dict() == {"sparsity": 300, "cluster": 500}
    np.testing.assert_array_equal(t[t.purpose == "sparsity"]["index"], a.indices("sparsity"))


def test_layer_task_on_nonfinite_representations_writes_nan_with_reasons(tmp_path):
    """A diverged model's representations (NaN, inf): every measure NaN with its reason, no exception."""
    import pandas as pd

    from bnrep.config import table_hashes
    from bnrep.experiments import SMOKE, get_experiment
    from bnrep.probes import Probe
    from bnrep.stages.analysis import NONFINITE, layer_task
    from bnrep.store import Store

    exp = get_experiment("digits-cnn").override(**SMOKE)
    X = np.random.default_rng(0).random((40, 6)).astype(np.float32)
    X[3, 2], X[7, 0] = np.nan, np.inf
    y = np.arange(40) % 4
    row = {"model_id": "cnn-nobn-s0", "norm": "none", "condition": "none", "seed": 0}
    layer_task(str(tmp_path), exp, row, Probe("conv2", 2, "ReLU", "features.4"), X, y, ("class_dbi", "kmeans", "nc1", "effective_rank"),
               "torch", table_hashes(exp))
    store = Store(str(tmp_path), exp.name)
    km = store.read_table("kmeans")
    assert list(km["k"]) == list(range(exp.k_min, exp.k_max + 1))
    assert km["dbi"].isna().all() and km["inertia"].isna().all() and not km["optimal"].any()
    assert (km["dbi_reason"] == NONFINITE).all()
    for table, col, why in (("class_dbi", "dbi", "dbi_reason"), ("nc1", "value", "reason"),
                            ("effective_rank", "value", "reason")):
        t = store.read_table(table)
        assert len(t) == 1 and pd.isna(t[col].iloc[0]) and t[why].iloc[0], table


def test_nan_values_have_no_sparsity(tmp_path):
    """NaN is neither zero nor non-zero: a channel with a NaN or inf value gets NaN sparsity (its layer too),
    with the reason; the other channels keep their exact counts. Before: NaN counted as non-zero."""
    import pandas as pd

    from bnrep.config import table_hashes
    from bnrep.experiments import SMOKE, get_experiment
    from bnrep.measures import MEASURES, ModelRun
    from bnrep.stages.analysis import NONFINITE, write_model_rows
    from bnrep.store import Store

    X = torch.tensor([[[[1.0, float("nan")], [0.0, 3.0]], [[-2.0, 1.0], [-2.0, -2.0]]],
                      [[[0.0, 0.0], [0.0, 4.0]], [[2.0, 0.0], [0.0, 0.0]]]])  # (N=2, C=2, 2, 2)
    probes = find_probes(OnlyReLU(), X)
    reps = extract_representations(OnlyReLU(), X, n_sparsity=2, device="cpu", probes=probes)
    np.testing.assert_array_equal(reps[0].nonfinite, [1, 0])
    exp = get_experiment("digits-cnn").override(**SMOKE, eps=(0.0,))
    row = {"model_id": "m", "norm": "none", "condition": "none", "seed": 0}
    run = ModelRun(exp, row, OnlyReLU(), reps, probes, X, torch.zeros(2), 2, torch.device("cpu"))
    for table in ("channel_sparsity", "layer_sparsity"):
        m = MEASURES[table]
        write_model_rows(Store(str(tmp_path), exp.name), m, row, probes, m.compute(run), table_hashes(exp))
    chan = pd.read_parquet(tmp_path / exp.name / "results" / "channel_sparsity").sort_values("channel")
    assert np.isnan(chan["sparsity"].iloc[0]) and chan["sparsity"].iloc[1] == 6 / 8  # 3 zeros + 3 from ReLU
    assert list(chan["reason"]) == [NONFINITE, ""]
    (layer,) = pd.read_parquet(tmp_path / exp.name / "results" / "layer_sparsity").itertuples()
    assert np.isnan(layer.sparsity) and layer.reason == NONFINITE

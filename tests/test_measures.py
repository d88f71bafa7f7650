"""The measures table (bnrep.measures) and the measures added through it, each against a numpy or
plain-torch computation written here: signal propagation, gradient norms, batch against running statistics."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnrep import config, correlations, figures, store
from bnrep.experiments import SMOKE, get_experiment
from bnrep.measures import (GRADIENT_BATCH, GRADIENT_BATCHES, MEASURES, NO_BATCH_STATISTICS, ModelRun, of_kind)
from bnrep.models import build_model
from bnrep.probes import find_probes
from bnrep.represent import extract_representations

EXP = get_experiment("digits-cnn").override(**SMOKE)


def run_of(model, X, y, exp=EXP, n_cluster=None):
    model.eval()
    probes = find_probes(model, X[:2])
    reps = extract_representations(model, X, len(X), exp.eps, device="cpu", probes=probes)
    return ModelRun(exp, {"model_id": "m", "condition": "batch", "seed": 0}, model, reps, probes, X, y,
                    n_cluster or len(X), torch.device("cpu"))


def digits_like(norm, n=300, seed=0):
    torch.manual_seed(seed)
    model = build_model("cnn", norm, 1, 10, (8, 8))
    X, y = torch.randn(n, 1, 8, 8) * 2 + 0.5, torch.arange(n) % 10
    return model, X, y


def trained_running_stats(model, X):
    """Running statistics away from their initial (0, 1), as after training."""
    model.train()
    with torch.no_grad():
        for xb in X.split(50):
            model(xb)
    return model.eval()


# ==== the table: everything else derives from it ====

def test_every_measure_has_its_table_hash_and_task():
    th = config.table_hashes(EXP)
    for name, m in MEASURES.items():
        t = store.TABLES[name]
        assert (t.stage, t.part, t.keys) == ("analysis", m.kind, m.key_columns)
        assert config.TABLE_FIELDS[name] == m.fields and name in th
    assert {m.table for m in of_kind("pair")} == {"cka"}
    assert set(correlations.MEASURES) == {m.predictor for m in MEASURES.values() if m.predictor}
    assert {f.name for f in figures.FIGURES} >= {f"fig_{m.table}" for m in MEASURES.values() if m.caption}


def test_tables_measured_before_the_measures_table_keep_their_hashes():
    """The hashes each table had when it was written by hand (TABLE_FIELDS, TABLE_VERSIONS): old parts stay current."""
    old_fields = {"samples": ("samples_sparsity", "samples_cluster"), "channel_sparsity": ("samples_sparsity", "eps"),
                  "layer_sparsity": ("samples_sparsity", "eps"), "class_dbi": ("samples_cluster",),
                  "kmeans": ("samples_cluster", "k_min", "k_max", "n_init"), "nc1": ("samples_cluster",),
                  "effective_rank": ("samples_cluster",), "cka": ("samples_cluster",)}
    train = config.stage_hashes(EXP)["train_hash"]
    for t, fields in old_fields.items():
        extra = {"version": 2} if t == "cka" else {}
        assert config.table_hashes(EXP)[t] == config._hash({"train_hash": train, **{f: getattr(EXP, f) for f in fields},
                                                            **extra}), t


def test_a_model_not_analysed_has_every_row_nan_with_the_reason():
    probe = find_probes(build_model("cnn", "batch", 1, 10, (8, 8)), torch.zeros(2, 1, 8, 8))[1]
    exp = EXP.override(eps=(0.0, 0.1))
    rows = MEASURES["channel_sparsity"].not_analysed(exp, probe, "why")
    assert len(rows) == 2 * probe.channels and all(math.isnan(r["sparsity"]) and r["reason"] == "why" for r in rows)
    (km,) = {r["optimal"] for r in MEASURES["kmeans"].not_analysed(exp, probe, "why")}
    assert km is False
    (te,) = MEASURES["train_eval"].not_analysed(exp, probe, "why")
    assert math.isnan(te["cka"]) and math.isnan(te["rel_diff"]) and te["reason"] == "why"


# ==== signal propagation ====

def pre_and_post(model, X):
    """Every ReLU's input (cloned before it runs) and output, by forward hooks of our own."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: seen.append([a[0].detach().clone()]))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    hooks += [m.register_forward_hook(lambda mod, a, out: seen[-1].append(out.detach().clone()))
              for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model.eval()(X)
    for h in hooks:
        h.remove()
    return seen


def moments_numpy(x: np.ndarray) -> tuple[float, float]:
    x = x.astype(np.float64)
    x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 0, 2).reshape(x.shape[1], -1)  # (C, N*H*W)
    return float(np.mean(x.mean(axis=1) ** 2)), float(np.mean(x.var(axis=1)))


@pytest.mark.parametrize("norm", ["batch", "none", "group"])
def test_signal_propagation_matches_numpy(norm):
    model, X, y = digits_like(norm)
    model = trained_running_stats(model, X)
    rows = MEASURES["signal_propagation"].compute(run_of(model, X, y))
    seen = pre_and_post(model, X)
    assert len(rows) == len(seen) == 5
    for row, (pre, post) in zip(rows, seen):
        (ims, iv), (oms, ov) = moments_numpy(pre.numpy()), moments_numpy(post.numpy())
        assert row["reason"] == ""
        assert (row["input_mean_sq"], row["input_var"], row["output_mean_sq"], row["output_var"]) == \
            pytest.approx((ims, iv, oms, ov), rel=1e-6, abs=1e-12)


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True)

    def forward(self, x):
        return F.relu_(self.act(self.conv(x)) - 0.5).mean(dim=(2, 3))  # a module and a function, both in place


def test_signal_propagation_sees_the_input_before_an_in_place_activation():
    torch.manual_seed(1)
    model, X = InPlace(), torch.randn(20, 1, 6, 6)
    run = run_of(model, X, torch.zeros(20, dtype=torch.int64))
    first, second = MEASURES["signal_propagation"].compute(run)
    with torch.no_grad():
        pre1 = model.conv(X)
        pre2 = pre1.relu() - 0.5
    assert (first["input_mean_sq"], first["input_var"]) == pytest.approx(moments_numpy(pre1.numpy()), rel=1e-6)
    assert (second["input_mean_sq"], second["input_var"]) == pytest.approx(moments_numpy(pre2.numpy()), rel=1e-6)
    assert first["input_mean_sq"] != pytest.approx(first["output_mean_sq"], rel=1e-3)


def test_signal_propagation_of_a_nonfinite_model_is_nan_with_a_reason():
    model, X, y = digits_like("none", n=40)
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] = float("inf")
    rows = MEASURES["signal_propagation"].compute(run_of(model, X, y))
    assert all(math.isnan(r["input_var"]) and "NaN or inf" in r["reason"] for r in rows)


# ==== gradient norms ====

def gradient_norms_reference(model, X, y):
    """Per ReLU output: ||d mean CE / d output|| by retain_grad, norms normalising with each batch's
    statistics, over the first GRADIENT_BATCHES batches of GRADIENT_BATCH samples."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    sums = None
    for b in range(GRADIENT_BATCHES):
        outs = []

        def keep(mod, a, out):
            out.retain_grad()
            outs.append(out)

        hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, nn.ReLU)]
        F.cross_entropy(model(X[b * GRADIENT_BATCH:(b + 1) * GRADIENT_BATCH]),
                        y[b * GRADIENT_BATCH:(b + 1) * GRADIENT_BATCH]).backward()
        for h in hooks:
            h.remove()
        norms = np.array([float(o.grad.double().norm()) for o in outs])
        sums = norms if sums is None else sums + norms
        model.zero_grad()
    return sums / GRADIENT_BATCHES


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_gradient_norms_match_retain_grad_and_change_nothing(norm):
    model, X, y = digits_like(norm, n=300)
    model = trained_running_stats(model, X)
    before = copy.deepcopy(model.state_dict())
    rows = MEASURES["gradient_norms"].compute(run_of(model, X, y))
    np.testing.assert_allclose([r["gradient_norm"] for r in rows], gradient_norms_reference(model, X, y), rtol=1e-6)
    assert all(r["reason"] == "" for r in rows)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no parameter, no running statistic moved
    assert all(p.grad is None for p in model.parameters())


def test_gradient_norms_of_an_unused_layer_and_of_too_few_samples():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.fc, self.side = nn.Linear(4, 4), nn.Linear(4, 3), nn.ReLU()

        def forward(self, x):
            x = self.lin(x.flatten(1))
            self.side(x)  # computed, never used by the loss
            return self.fc(torch.relu(x))

    X, y = torch.randn(10, 1, 2, 2), torch.arange(10) % 3
    side, used = MEASURES["gradient_norms"].compute(run_of(Unused(), X, y))
    assert math.isnan(side["gradient_norm"]) and "no gradient" in side["reason"]
    assert used["gradient_norm"] > 0 and used["reason"] == ""
    one = MEASURES["gradient_norms"].compute(run_of(Unused(), X[:1], y[:1]))
    assert all(math.isnan(r["gradient_norm"]) and "fewer than 2" in r["reason"] for r in one)


# ==== batch against running statistics ====

def reduced_numpy(acts: torch.Tensor) -> np.ndarray:
    m = acts.double().mean(dim=(2, 3)) if acts.dim() == 4 else acts.double()
    return (m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def cka_numpy(A: np.ndarray, B: np.ndarray) -> float:
    A, B = A - A.mean(0), B - B.mean(0)
    K, L = A @ A.T, B @ B.T
    return float((K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum()))


def test_train_eval_matches_batches_by_hand():
    model, X, y = digits_like("batch", n=150)
    model = trained_running_stats(model, X)
    exp = EXP.override(batch_size=32)
    rows = MEASURES["train_eval"].compute(run_of(model, X, y, exp=exp, n_cluster=100))
    n = 96  # whole batches of 32 out of the 100 clustering samples
    evals, trains = pre_and_post(model, X[:n]), []
    batch = copy.deepcopy(model).eval()
    for m in batch.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.train()
    per_batch = [pre_and_post_train(batch, xb) for xb in X[:n].split(32)]
    trains = [torch.cat([pb[i] for pb in per_batch]) for i in range(len(evals))]
    for row, (_, e), t in zip(rows, evals, trains):
        A, B = reduced_numpy(e), reduced_numpy(t)
        assert row["reason"] == ""
        assert row["cka"] == pytest.approx(cka_numpy(A, B), rel=1e-6)
        assert row["rel_diff"] == pytest.approx(np.linalg.norm(B - A) / np.linalg.norm(A), rel=1e-5)
    assert rows[0]["cka"] < 1 - 1e-4  # batch statistics are not the running ones


def pre_and_post_train(model, X):
    outs = []
    hooks = [m.register_forward_hook(lambda mod, a, out: outs.append(out.detach().clone()))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(X)
    for h in hooks:
        h.remove()
    return outs


def test_train_eval_without_running_statistics_or_a_whole_batch_is_nan_with_a_reason():
    model, X, y = digits_like("group", n=60)
    rows = MEASURES["train_eval"].compute(run_of(model, X, y))
    assert all(math.isnan(r["cka"]) and r["reason"] == NO_BATCH_STATISTICS for r in rows)
    model, X, y = digits_like("batch", n=60)
    rows = MEASURES["train_eval"].compute(run_of(model, X, y, exp=EXP.override(batch_size=64)))
    assert all(math.isnan(r["cka"]) and "than one batch of 64" in r["reason"] for r in rows)


def test_train_eval_of_a_dead_layer_names_it():
    model, X, y = digits_like("batch", n=64)
    with torch.no_grad():  # conv1's BatchNorm outputs -1 everywhere: ReLU gives zeros in both modes
        model.features[1].weight.zero_()
        model.features[1].bias.fill_(-1.0)
    first = MEASURES["train_eval"].compute(run_of(model, X, y, exp=EXP.override(batch_size=16)))[0]
    assert math.isnan(first["cka"]) and first["reason"] == "eval: dead layer: all representations are zero"


def test_the_store_and_the_measures_table_load_without_torch():
    """A process that imports the store first (a Ray worker's sitecustomize, a status check) must not load
    torch before Ray sets its thread count: training's exact results depend on it."""
    import subprocess
    import sys

    code = "import sys, bnrep.store, bnrep.measures; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# ==== snapshots: the models at initialisation ====

def test_the_initial_model_is_the_one_training_started_from(tmp_path):
    """initial_model rebuilds, from the model file's record, exactly the weights Trainer started from."""
    import pandas as pd

    from bnrep.checkpoints import initial_model, save_model
    from bnrep.data import load_data
    from bnrep.store import Store
    from bnrep.train import Trainer

    exp = get_experiment("synthetic-cnn").override(**SMOKE, conditions="group")
    data = load_data(exp, None, device="cpu")
    trainer = Trainer(exp, data, "group", {"lr": 0.01, "momentum": 0.9}, seed=3, device="cpu")
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.step_epoch()
    store = Store(str(tmp_path), exp.name)
    row = {"model_id": "m", "model": exp.model, "norm": "group", "bn": False, "seed": 3}
    digest = save_model(store, "m", trainer.model, exp, {"lr": 0.01}, row, data.num_classes)
    store.write_part("training", "m", pd.DataFrame([row]), "h", model_sha256=digest)
    got = initial_model(store, "m", exp).state_dict()
    assert set(got) == set(start) and all(torch.equal(got[k], start[k]) for k in start)
    assert not all(torch.equal(trainer.model.state_dict()[k], start[k]) for k in start)  # it did train
    state = torch.get_rng_state()  # the caller's RNG: forked, not reseeded
    initial_model(store, "m", exp)
    assert torch.equal(torch.get_rng_state(), state)


def test_snapshot_files_are_verified_and_asked_epochs_decide_what_is_trained(tmp_path):
    """The weights after a snapshot epoch load as saved; a flipped byte is refused naming the file; a model
    is trained for a snapshot epoch it was asked for (also one it stopped before), not for another."""
    import pandas as pd

    from bnrep.checkpoints import (ModelFileError, is_trained, load_model, save_model, save_snapshot,
                                   snapshot_path, snapshot_record, weights_sha256)
    from bnrep.data import load_data
    from bnrep.store import Store
    from bnrep.train import Trainer

    exp = get_experiment("synthetic-cnn").override(**SMOKE, conditions="batch")
    data = load_data(exp, None, device="cpu")
    trainer = Trainer(exp, data, "batch", {"lr": 0.05, "momentum": 0.9}, seed=1, device="cpu")
    store = Store(str(tmp_path), exp.name)
    trainer.step_epoch()
    after1 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    digests = {1: save_snapshot(store, "m", trainer.model, 1)}
    trainer.step_epoch()
    row = {"model_id": "m", "model": exp.model, "norm": "batch", "bn": True, "seed": 1}
    digest = save_model(store, "m", trainer.model, exp, {"lr": 0.05}, row, data.num_classes)
    store.write_part("training", "m", pd.DataFrame([row]), "h", model_sha256=digest,
                     **snapshot_record([1, 7], digests))  # asked 1 and 7; it stopped before 7
    got = load_model(store, "m", exp, epoch=1).state_dict()
    assert all(torch.equal(got[k].cpu(), after1[k]) for k in after1)
    final = load_model(store, "m", exp).state_dict()
    assert not all(torch.equal(final[k].cpu(), after1[k]) for k in after1)  # epoch 2 moved on
    # the weights' digest: equal for equal weights, whatever file they came from; one value moved: another
    assert weights_sha256(load_model(store, "m", exp, epoch=1)) == weights_sha256(load_model(store, "m", exp, epoch=1))
    assert weights_sha256(load_model(store, "m", exp)) == weights_sha256(trainer.model)
    model = load_model(store, "m", exp)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-7
    assert weights_sha256(model) != weights_sha256(trainer.model)
    assert is_trained(store, "m", "h", (0, 1)) and is_trained(store, "m", "h", (1, 7))
    assert not is_trained(store, "m", "h", (1, 5))  # never asked for 5: the grid trains it again
    with pytest.raises(ModelFileError, match="was not saved by the grid"):
        load_model(store, "m", exp, epoch=7)
    path = tmp_path / exp.name / snapshot_path("m", 1)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match=r"epoch-1\.pt is not the model that was trained"):
        load_model(store, "m", exp, epoch=1)
    assert not is_trained(store, "m", "h", ())


def test_forgetting_a_model_deletes_its_parts_its_snapshots_and_its_pairs_only(tmp_path):
    import pandas as pd

    from bnrep.stages.final import forget_analysis
    from bnrep.store import Store

    store = Store(str(tmp_path), "e")
    names = ["cnn-bn-s1", "cnn-bn-s1-conv1", "cnn-bn-s1@e0-conv1", "cnn-bn-s1@e5", "conv1-cnn-bn-s1-cnn-none-s1",
             "conv1-cnn-bn-s0-cnn-bn-s1@e2", "cnn-bn-s10", "cnn-bn-s10-conv1", "conv1-cnn-bn-s0-cnn-bn-s10",
             "cnn-none-s1-fc1"]
    for n in names:
        store.write_part("nc1", n, pd.DataFrame({"x": [1]}))
    forget_analysis(store, ["cnn-bn-s1"])
    assert sorted(store.parts("nc1")) == ["cnn-bn-s10", "cnn-bn-s10-conv1", "cnn-none-s1-fc1",
                                          "conv1-cnn-bn-s0-cnn-bn-s10"]


def test_batch_statistics_extraction_normalises_each_batch_and_keeps_one_sample_with_the_last():
    model, X, y = digits_like("batch", n=33)
    reps = extract_representations(model, X, 0, batch_size=16, device="cpu", batch_stats=True)
    ref = copy.deepcopy(model).eval()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.train()
    with torch.no_grad():
        outs = [pre_and_post_train(ref, xb)[-1] for xb in (X[:16], X[16:])]  # 16 + 17: not 16 + 16 + 1
    torch.testing.assert_close(reps[-1].reduced, torch.tensor(reduced_numpy(torch.cat(outs)), dtype=torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), digits_like("batch", n=33)[0].state_dict().values()))


def test_which_measures_each_epoch_has():
    """The final model every measure; a snapshot all but the k-means sweep (unless --snapshot-kmeans), and
    train against eval mode only after epoch 0 (its running statistics are still 0 and 1 there)."""
    from bnrep.measures import FINAL

    exp = get_experiment("digits-cnn")
    asked = exp.override(snapshots=(0, 3), snapshot_kmeans=True)
    lacks = lambda epoch, e: {m.table for m in MEASURES.values() if not m.measured_at(epoch, e)}  # noqa: E731
    assert lacks(FINAL, exp) == set() and lacks(FINAL, asked) == set()
    assert lacks(0, exp) == {"kmeans", "train_eval"} and lacks(3, exp) == {"kmeans"}
    assert lacks(0, asked) == {"train_eval"} and lacks(3, asked) == set()


def test_models_of_an_earlier_run_s_condition_without_the_snapshots_are_measured_at_their_final_weights(tmp_path):
    """A study extended with conditions and --snapshots: the grid trains this run's conditions again with the
    snapshots; the models of an earlier run's condition, which the study keeps, have none. The analysis refused
    the whole study, naming a command that would not train them either; it measures them without the snapshot
    epochs and says so. A model of this run's conditions without them is still refused."""
    import pandas as pd

    from bnrep.checkpoints import save_model, save_snapshot, snapshot_record
    from bnrep.config import UsageError
    from bnrep.data import load_data
    from bnrep.stages.analysis import stopped_before, trained_models
    from bnrep.store import Store
    from bnrep.train import Trainer

    exp = get_experiment("synthetic-cnn").override(**SMOKE, conditions="batch; group")
    data, store = load_data(exp, None, device="cpu"), Store(str(tmp_path), exp.name)
    for mid, norm, snapshots in (("m-bn", "batch", True), ("m-gn", "group", False)):
        trainer = Trainer(exp, data, norm, {"lr": 0.05, "momentum": 0.9}, seed=0, device="cpu")
        trainer.step_epoch()
        digests = {1: save_snapshot(store, mid, trainer.model, 1)} if snapshots else {}
        row = {"model_id": mid, "model": exp.model, "norm": norm, "bn": norm == "batch", "seed": 0}
        digest = save_model(store, mid, trainer.model, exp, {"lr": 0.05}, row, data.num_classes)
        store.write_part("training", mid, pd.DataFrame([row]), "h", model_sha256=digest,
                         **snapshot_record([1] if snapshots else [], digests))
    now = exp.override(conditions="batch", snapshots=(0, 1))  # group: an earlier run's condition
    models = trained_models(store, now).set_index("model_id")
    assert models.loc["m-bn", "snapshot_epochs"] == (1,) and models.loc["m-gn", "snapshot_epochs"] == ()
    assert stopped_before(models.reset_index(), now) == [
        "1 model of group (an earlier run's conditions, not among this run's) were trained without snapshots at "
        "epoch 1: measured at their initialisation and final weights only (through training too: run bnrep final "
        "with --conditions naming them as well, and --snapshots 0,1)"]
    with pytest.raises(UsageError, match="m-gn was trained without a snapshot at epoch 1"):
        trained_models(store, exp.override(snapshots=(0, 1)))  # group among this run's conditions

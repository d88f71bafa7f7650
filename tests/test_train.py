"""Training: interpolation stop, early stopping, exact resume from a checkpoint."""

import pytest
import torch

import bnrep.train as train_mod
from bnrep.data import load_data
from bnrep.experiments import get_experiment
from bnrep.models import model_id
from bnrep.train import Trainer, train


@pytest.fixture(scope="module")
def digits():
    exp = get_experiment("digits-cnn")
    return exp, load_data(exp)


def test_model_id():
    assert model_id("cnn", "batch", 3) == "cnn-bn-s3"
    assert model_id("vgg16", "none", 0) == "vgg16-nobn-s0"


def test_digits_paper_sgd_interpolates_and_stops(digits):
    exp, data = digits  # paper 3.1.1: SGD, Nesterov 0.99, lr 0.01, batch 64
    r = train(exp, data, norm="batch", hparams=exp.paper_hparams("batch"), seed=0, device="cpu")
    assert r.interpolated and r.train_acc == 1.0
    assert r.epochs < exp.max_epochs
    # it stopped at the first epoch with 100% training accuracy, no later
    assert [m.interpolated for m in r.history] == [False] * (r.epochs - 1) + [True]
    assert r.objective == r.history[-1].val_acc  # sweep objective: val acc at interpolation
    assert r.test_acc > 0.9


def test_objective_ranks_non_interpolating_runs_last(digits):
    exp, data = digits
    t = Trainer(exp.override(max_epochs=1), data, "batch", {"lr": 1e-5, "momentum": 0.0}, seed=0, device="cpu")
    m = t.step_epoch()
    assert not m.interpolated and m.objective == pytest.approx(m.val_acc - 1.0)
    assert m.objective < 0 <= m.val_acc


def test_early_stopping_restores_best_weights(digits, monkeypatch):
    exp, data = digits
    exp = exp.override(stop="early-stop", max_epochs=20, patience=0.15)  # patience: ceil(3) epochs
    val_curve = iter([0.5, 0.7, 0.9, 0.8, 0.85, 0.89, 0.95, 0.99])  # best at epoch 3, then 3 worse
    real = train_mod.accuracy
    snapshots = {}

    def scripted(model, split, device, amp=False):
        if split is data.val:
            return next(val_curve)
        return real(model, split, device, amp)

    monkeypatch.setattr(train_mod, "accuracy", scripted)
    t = Trainer(exp, data, "batch", exp.paper_hparams("batch"), seed=0, device="cpu")
    while not t.done:
        t.step_epoch()
        snapshots[t.epoch] = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert t.epoch == 6 and t.best_epoch == 3  # 3 epochs without improvement after epoch 3
    monkeypatch.setattr(train_mod, "accuracy", real)
    r = t.finish()
    assert r.best_epoch == 3 and r.epochs == 6
    for k, v in r.model.state_dict().items():
        assert torch.equal(v, snapshots[3][k]), k


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_from_checkpoint_is_exact(optimizer):
    exp = get_experiment("synthetic-cnn").override(max_epochs=4, optimizer=optimizer, lr_step_epochs=1,
                                                   lr_gamma=0.5, stop="early-stop")
    data = load_data(exp)
    hp = {"lr": 0.01, "momentum": 0.9}
    full = train(exp, data, "batch", hp, seed=1, device="cpu")

    first = Trainer(exp, data, "batch", hp, seed=1, device="cpu")
    first.step_epoch(), first.step_epoch()
    blob = first.save_checkpoint()
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must carry what matters
    resumed = Trainer(exp, data, "batch", hp, seed=99, device="cpu")
    resumed.load_checkpoint(blob)
    while not resumed.done:
        resumed.step_epoch()
    r = resumed.finish()
    assert r.epochs == full.epochs
    for (k, a), b in zip(full.model.state_dict().items(), r.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [vars(m) for m in r.history] == [vars(m) for m in full.history]

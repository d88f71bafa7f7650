"""Training: interpolation stop, early stopping, exact resume from a checkpoint,
and epochs that evaluate only what decides stopping (against today's full evaluation)."""

import math
import os

import pytest
import torch

import bnrep.train as train_mod
from bnrep.data import batches, load_data
from bnrep.experiments import get_experiment
from bnrep.models import model_id
from bnrep.train import EpochMetrics, Trainer, train


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
    assert _rows(r.history) == _rows(full.history)


def test_a_checkpoint_resumes_on_any_device():
    """The RNG states in a checkpoint are CPU ByteTensors whatever device the trainer is on: read onto
    the trainer's device (a GPU), set_state refused them and no GPU trial could resume."""
    exp = get_experiment("synthetic-cnn").override(max_epochs=2)
    data, hp = load_data(exp), {"lr": 0.01, "momentum": 0.9}
    t = Trainer(exp, data, "batch", hp, seed=1, device="cpu")
    t.step_epoch()
    resumed = Trainer(exp, data, "batch", hp, seed=2, device="cpu")
    resumed.device = torch.device("meta")  # stands in for a GPU: any device but the CPU
    resumed.load_checkpoint(t.save_checkpoint())
    assert torch.equal(resumed.gen.get_state(), t.gen.get_state()) and resumed.epoch == 1


def test_an_epoch_with_no_batch_to_train_on_fails_not_scores_a_zero_loss():
    """A BatchNorm model skips batches of one image: with batches of one there is nothing to train
    on, and a loss of 0 from no step at all would read as a perfect fit (validate refuses such
    conditions; an as-built model with BatchNorm gets here)."""
    exp = get_experiment("synthetic-cnn").override(conditions="none", batch_size=1, max_epochs=1)
    t = Trainer(exp, load_data(exp), "batch", {"lr": 0.01, "momentum": 0.9}, seed=0, device="cpu")
    with pytest.raises(ValueError, match="no batch to train on"):
        t.step_epoch()


def _rows(history: list[EpochMetrics]) -> list[dict]:
    """History rows with NaN as None, so that equal histories compare equal."""
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in vars(m).items()}
            for m in history]


# ==== epochs that evaluate only what decides: same decisions as a full evaluation ====

@torch.inference_mode()
def _full_accuracy(model, split) -> float:
    """The evaluation every epoch made before: the whole split, eval mode, the CPU batch size."""
    model.eval()
    B = train_mod.EVAL_BATCH_CPU  # the same batches, so logits are bitwise the library's
    correct = 0
    for i in range(0, len(split), B):
        xb = split.X[i:i + B].contiguous(memory_format=torch.channels_last)
        correct += int((model(xb).argmax(1) == split.y[i:i + B]).sum())
    model.train()
    return correct / len(split)


class FullEvalTrainer(Trainer):
    """The reference: today's epoch written out here (its own training loop, then full passes
    over the training and validation splits, interpolated = train_acc >= 1.0) plus a plain
    count of the running accuracy. Only step_epoch differs from the library's Trainer."""

    def step_epoch(self) -> EpochMetrics:
        lr = self.opt.param_groups[0]["lr"]
        loss, running = self._reference_train()
        self.sched.step()
        self.epoch += 1
        train_acc, val_acc = _full_accuracy(self.model, self.data.train), _full_accuracy(self.model, self.data.val)
        if train_acc >= 1.0 and self.first_interpolation is None:
            self.first_interpolation, self.val_at_interpolation = self.epoch, val_acc
        if val_acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = val_acc, self.epoch
            if self.exp.stop == "early-stop":
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        m = EpochMetrics(self.epoch, lr, loss, train_acc, val_acc, train_acc >= 1.0, self.objective(val_acc), running)
        self.history.append(m)
        return m

    def _reference_train(self):
        self.model.train()
        X, y = self.data.train.X, self.data.train.y
        total, right, n = 0.0, 0, 0
        for idx in batches(len(y), self.exp.batch_size, self.gen, "cpu"):
            xb, yb = X[idx].contiguous(memory_format=torch.channels_last), y[idx]
            if len(yb) < 2 and self.norm == "batch":
                continue
            out = self.model(xb)
            loss = self.loss_fn(out, yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.item() * len(yb)
            right += int((out.argmax(1) == yb).sum())
            n += len(yb)
        return total / n, right / n


def _run(cls, exp, data, bn, hp, seed):
    t = cls(exp, data, bn, hp, seed, device="cpu")
    while not t.done:
        t.step_epoch()
    return t, t.finish()


SAME_DECISIONS = {
    # name: (preset, overrides, norm, hparams (None: the paper's)); small splits keep each case to seconds
    # (digits at train_size 400 does not interpolate in 40 epochs with BatchNorm's eval-mode statistics,
    # so the digits case uses the whole split, as test_digits_paper_sgd_interpolates_and_stops)
    "digits-interpolate-bn": ("digits-cnn", dict(), "batch", None),
    "synthetic-interpolate": ("synthetic-cnn", dict(max_epochs=40), "batch", {"lr": 0.01, "momentum": 0.9}),
    "digits-early-stop": ("digits-cnn", dict(train_size=300, stop="early-stop", max_epochs=8, patience=0.25),
                          "batch", None),
    "synthetic-early-stop": ("synthetic-cnn", dict(stop="early-stop", max_epochs=12, patience=0.25), "batch",
                             {"lr": 0.01, "momentum": 0.9}),
}


@pytest.mark.parametrize("name", SAME_DECISIONS)
def test_epochs_decide_as_a_full_evaluation(name):
    preset, over, bn, hp = SAME_DECISIONS[name]
    exp = get_experiment(preset).override(**over)
    data = load_data(exp)
    hp = hp or exp.paper_hparams(bn)
    new, r = _run(Trainer, exp, data, bn, hp, seed=0)
    ref, rr = _run(FullEvalTrainer, exp, data, bn, hp, seed=0)
    assert (r.epochs, r.best_epoch, r.interpolated) == (rr.epochs, rr.best_epoch, rr.interpolated)
    if exp.stop == "interpolate":  # (early stopping never asks, so never records a first interpolation)
        assert new.first_interpolation == ref.first_interpolation
        assert r.interpolated and r.epochs > 1  # the case exercises the stop after non-interpolating epochs
    for k, v in rr.model.state_dict().items():  # the saved (for early stopping: restored) weights
        assert torch.equal(r.model.state_dict()[k], v), k
    assert (r.train_acc, r.val_acc, r.test_acc, r.objective) == (rr.train_acc, rr.val_acc, rr.test_acc, rr.objective)
    for m, mr in zip(r.history, rr.history):
        assert (m.val_acc, m.objective, m.train_loss, m.train_acc_running) == pytest.approx(
            (mr.val_acc, mr.objective, mr.train_loss, mr.train_acc_running), rel=1e-12)
        interp = exp.stop == "interpolate" and mr.interpolated
        assert m.interpolated == interp
        assert m.train_acc == 1.0 if interp else math.isnan(m.train_acc)  # a full pass only where one was made



@pytest.mark.parametrize("stop", ["interpolate", "early-stop"])
def test_a_diverging_run_stops_and_says_so(digits, stop):
    """lr 1e4 without a norm: the training loss becomes NaN or inf; the run stops at that epoch, records it,
    and scores below every other run; a checkpoint carries it."""
    exp, data = digits
    t = Trainer(exp.override(max_epochs=20, stop=stop), data, "none", {"lr": 1e4, "momentum": 0.9}, seed=0,
                device="cpu")
    while not t.done:
        t.step_epoch()
    assert t.diverged_epoch == t.epoch < 20
    assert [m.diverged for m in t.history] == [False] * (t.epoch - 1) + [True]
    assert not math.isfinite(t.history[-1].train_loss)
    assert t.history[-1].objective == train_mod.DIVERGED < -1
    r = t.finish()
    assert r.diverged_epoch == t.epoch
    resumed = Trainer(exp.override(max_epochs=20, stop=stop), data, "none", {"lr": 1e4, "momentum": 0.9}, seed=0,
                      device="cpu")
    resumed.load_checkpoint(t.save_checkpoint())
    assert resumed.done and resumed.diverged_epoch == t.epoch


def test_a_100_class_model_loads_with_its_class_count(tmp_path):
    """load_model builds the model with the class count its file records (was: always 10)."""
    from bnrep.checkpoints import load_model, save_model
    from bnrep.models import build_model
    from bnrep.store import Store

    import pandas as pd

    exp = get_experiment("digits-cnn")
    store = Store(str(tmp_path), exp.name)
    model = build_model(exp.model, "batch", 1, num_classes=100, size=(8, 8))
    row = {"model_id": "cnn-bn-s0", "model": exp.model, "norm": "batch", "bn": True}
    digest = save_model(store, "cnn-bn-s0", model, exp, {"lr": 0.1}, row, num_classes=100)
    store.write_part("training", "cnn-bn-s0", pd.DataFrame([row]), "h", model_sha256=digest)
    loaded = load_model(store, "cnn-bn-s0", exp)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 100)


def test_an_epoch_that_fails_as_on_the_last_try_is_not_tried_again(monkeypatch, tmp_path):
    """A trial's epoch raises: Tune retries it (the error raised as it was), unless its last try failed in
    the same epoch with the same error; then it is RepeatedFailure, whose result ends the trial. The record
    of a try is found from either of Tune's local folders of the trial (driver_artifacts, working_dirs)."""
    from types import SimpleNamespace

    from ray import tune

    from bnrep.progress import FAILED_AGAIN
    from bnrep.stages.tuning import RepeatedFailure, train_in_tune

    class Failing:
        done, model = False, None

        def __init__(self, epoch, error):
            self.epoch, self.error = epoch, error

        def step_epoch(self):
            raise self.error

    where = {"dir": ""}
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_dir=lambda: where["dir"]))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)

    def attempt(layout, epoch, error, trial="bn-s0-ca3ab_00001"):
        where["dir"] = str(tmp_path / "final" / layout / trial)
        with pytest.raises(Exception) as e:
            train_in_tune(Failing(epoch, error))
        return e.value

    first = attempt("working_dirs", 1, RuntimeError("shapes (3x8 and 6x3)"))
    assert type(first) is RuntimeError  # Tune's to retry
    assert type(attempt("working_dirs", 1, RuntimeError("shapes (3x9 and 6x3)"))) is RuntimeError  # another error
    assert type(attempt("working_dirs", 2, RuntimeError("shapes (3x9 and 6x3)"))) is RuntimeError  # another epoch
    assert type(attempt("working_dirs", 2, ValueError("shapes (3x9 and 6x3)"))) is ValueError  # another type
    assert type(attempt("working_dirs", 2, ValueError("shapes (3x9 and 6x3)"), trial="bn-s1-ca3ab_00002")) is ValueError
    again = attempt("driver_artifacts", 2, ValueError("shapes (3x9 and 6x3)\nsee the model's code"))
    assert type(again) is not RepeatedFailure  # (its message differs in its second line)
    again = attempt("driver_artifacts", 2, ValueError("shapes (3x9 and 6x3)\nsee the model's code"))
    assert type(again) is RepeatedFailure and again.result() == {FAILED_AGAIN: "ValueError: shapes (3x9 and 6x3)",
                                                                 "failed_epoch": 3}  # its first line
    assert type(again.__cause__) is ValueError

    class FailingInEvaluation(Failing):  # as Trainer.step_epoch, which counts the epoch before it evaluates
        def step_epoch(self):
            self.epoch += 1
            raise self.error

    where["dir"] = str(tmp_path / "final" / "working_dirs" / "bn-s2-ca3ab_00003")
    for _ in range(2):
        with pytest.raises(Exception) as e:
            train_in_tune(FailingInEvaluation(4, RuntimeError("eval mode")))
    assert type(e.value) is RepeatedFailure and e.value.epoch == 5  # the epoch it trained (was 6)
    (tmp_path / "full").write_text("")  # a record that cannot be written: every failure Tune's to retry
    where["dir"] = str(tmp_path / "full" / "working_dirs" / "bn-s0-ca3ab_00001")
    for _ in range(2):
        with pytest.raises(OSError, match="^EIO$"):
            train_in_tune(Failing(5, OSError("EIO")))


def test_a_checkpoint_the_disk_refuses_is_a_write_error_not_a_trial_failure(monkeypatch):
    """Tune copying an epoch's checkpoint into a full results disk raises OSError(ENOSPC) in the trial: as a
    trial error it was retried --max-failures times (each retry failing the same way) before the stage said
    its one line. It is a StoreWriteError, which the grid's trial reports as a result that stops the grid."""
    import errno
    from types import SimpleNamespace

    from ray import tune

    from bnrep.stages.tuning import train_in_tune
    from bnrep.store import StoreWriteError

    class OneEpoch:
        epoch, done = 0, False

        def step_epoch(self):
            self.epoch, self.done = 1, True
            return SimpleNamespace(train_loss=0.1)

        def save_checkpoint(self) -> bytes:
            return b"weights"

    path = "/tmp/ray/session_1/artifacts/final/working_dirs/bn-s0-ca3ab_00001"
    for code, raised in ((errno.ENOSPC, StoreWriteError), (errno.EDQUOT, StoreWriteError), (errno.EIO, OSError)):
        def refuse(metrics, checkpoint=None, code=code):  # (Tune's OSError names the local copy it read)
            raise OSError(code, os.strerror(code), path)

        monkeypatch.setattr(tune, "report", refuse)
        monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
        with pytest.raises(raised) as e:
            train_in_tune(OneEpoch(), folder="/results/digits-cnn/train/tune/final")
        if raised is StoreWriteError:
            assert str(e.value) == (f"cannot write /results/digits-cnn/train/tune/final: {os.strerror(code)}; free "
                                    f"space or fix permissions there, then rerun the same command (results already "
                                    f"written are kept)")
        else:  # another error stays a trial's failure (retried from its checkpoint)
            assert type(e.value) is OSError and e.value.errno == errno.EIO


class FakeEpochs:
    """A trainer of `epochs` epochs that each take `seconds` on a clock of its own (`now`)."""

    def __init__(self, epochs: int, seconds: float, now: float = 0.0):
        self.epochs, self.seconds, self.epoch, self.now = epochs, seconds, 0, now

    @property
    def done(self) -> bool:
        return self.epoch >= self.epochs

    def step_epoch(self):
        from types import SimpleNamespace

        self.now += self.seconds
        self.epoch += 1
        return SimpleNamespace(epoch=self.epoch)

    def save_checkpoint(self) -> bytes:
        return str(self.epoch).encode()

    def load_checkpoint(self, blob: bytes) -> None:
        self.epoch = int(blob)


@pytest.mark.parametrize("every, seconds, checkpointed", [
    (60, 25, [3, 6, 9]),  # the first epoch ending 60 s after the start or the last checkpoint: 75 s, 150 s, 225 s
    (60, 20, [3, 6, 9]),  # 60 s is due: at 60, 120, 180 s
    (0, 25, list(range(1, 11))),  # every epoch
    (60, 100, list(range(1, 11))),  # epochs longer than the interval: every epoch
    (1e9, 25, []),  # none: a failure restarts the trial from its start
])
def test_a_trial_checkpoints_once_its_interval_has_passed_and_reports_every_epoch(every, seconds, checkpointed,
                                                                                  monkeypatch):
    """--checkpoint-every: after each epoch a trial reports its metrics (the stopping rules read each one),
    with a checkpoint only after the first epoch that ends `every` s after the trial's start or its last
    checkpoint; what a failure loses is the training since then: under `every` s plus one epoch."""
    from ray import tune

    from bnrep.stages.tuning import CHECKPOINT_FILE, train_in_tune

    reported = []

    def report(metrics, checkpoint=None):
        blob = None
        if checkpoint is not None:
            with checkpoint.as_directory() as d, open(os.path.join(d, CHECKPOINT_FILE), "rb") as f:
                blob = f.read()
        reported.append((metrics["epoch"], blob))

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    trainer = FakeEpochs(10, seconds)
    assert train_in_tune(trainer, every=every, clock=lambda: trainer.now) == (0, {})
    assert [e for e, _ in reported] == list(range(1, 11))  # every epoch reported
    assert [e for e, blob in reported if blob is not None] == checkpointed
    assert all(blob == str(e).encode() for e, blob in reported if blob is not None)  # the state after that epoch
    lost = [trainer.seconds * (e - max([c for c in [0, *checkpointed] if c < e])) for e in range(1, 11)]
    assert max(lost) < every + seconds or every == 0  # a failure after epoch e: the epochs since the checkpoint


def test_a_resumed_trial_counts_its_interval_from_the_resume(monkeypatch, tmp_path):
    """A trial Tune restarted from its checkpoint of epoch 4 trains on from there, and its next checkpoint is
    due `every` s after the resume (its start), not after the checkpoint was first written."""
    from ray import tune

    from bnrep.stages.tuning import CHECKPOINT_FILE, train_in_tune

    (tmp_path / CHECKPOINT_FILE).write_bytes(b"4")
    reported = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reported.append(
        (metrics["epoch"], checkpoint is not None)))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path)))
    trainer = FakeEpochs(10, 25, now=1000.0)  # (a monotonic clock starts anywhere)
    assert train_in_tune(trainer, every=60, clock=lambda: trainer.now)[0] == 4
    assert reported == [(5, False), (6, False), (7, True), (8, False), (9, False), (10, True)]


def test_the_grid_names_the_snapshot_epochs_its_models_were_trained_without(tmp_path):
    """A grid asked for more snapshots than its models were trained with says which epochs are new: after
    --snapshots 0,2 then 0,2,3 it said "trained without a snapshot at epoch 2, 3", epoch-2.pt there."""
    import pandas as pd

    from bnrep.checkpoints import snapshot_record
    from bnrep.stages.final import unkept
    from bnrep.store import Store

    store = Store(str(tmp_path), "digits-cnn")
    for mid, asked in (("cnn-bn-s0", [2]), ("cnn-bn-s1", [2]), ("cnn-nobn-s0", [1, 2])):
        store.write_part("training", mid, pd.DataFrame([{"model_id": mid}]), "h", **snapshot_record(asked, {}))
    assert unkept(store, ["cnn-bn-s0", "cnn-bn-s1"], (0, 2, 3)) == [3]
    assert unkept(store, ["cnn-bn-s0", "cnn-nobn-s0"], (0, 1, 2, 3)) == [1, 3]
    assert unkept(store, ["cnn-nobn-s0"], (0, 1, 2)) == []

"""One training run: (experiment, normalisation, hparams, seed) -> a model.

Paper 3.1: SGD with Nesterov momentum (or Adam), a step learning-rate
schedule, cross-entropy; stop when the model interpolates (100% accuracy on
the whole training split, checked in eval mode after every epoch) or by early
stopping on validation error with the best weights restored.

An epoch does only the evaluation that decides something: the validation
split every epoch (early stopping, the sweep objective); the training split
only for interpolation presets, and there only until the first misclassified
batch (the question is "is every image right?", and the batches are those of
a full pass, so the answer is exactly the full pass's). Early-stopping presets
never evaluate the training split per epoch; `finish()` evaluates it once, on
the kept weights, for Table 1. See EpochMetrics for what the history records.

`Trainer` advances one epoch at a time so a driver can report and checkpoint
between epochs; `train()` runs it to the end. A checkpoint holds the model,
optimiser, scheduler, epoch, early-stopping state and the batch-order RNG, so
a resumed run continues exactly where it stopped (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from bnrep.data import Data, Split, batches
from bnrep.experiments import Experiment
from bnrep.models import seeded_model
from bnrep.optim import OPTIMIZERS, SGD, StepLR

DIVERGED = -2.0  # the objective of a diverged run: below every other (early stop: [0, 1]; interpolation: [-1, 1])
OBJECTIVE_WORDS = {  # Trainer.objective, by the stopping rule, as the sweep's table says it
    "interpolate": "the validation accuracy at the epoch a trial first interpolated; val_acc - 1 for one that never "
                   "did (below every one that did)",
    "early-stop": "the best validation accuracy of the trial",
}
EVAL_BATCH = 1024  # images per forward pass when only evaluating, GPU
EVAL_BATCH_CPU = 64  # CPU: small batches stay in cache (StandardCNN 28x28: ~3.8x the images/s of 1024)


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class EpochMetrics:
    """One row of the training history (results/training_history).

    train_acc is only ever a full pass over the training split (eval mode, the
    epoch's final weights) and is NaN where none was made: it is 1.0 on the
    epoch an interpolation preset interpolates and NaN on every other epoch
    (the pass stopped at the first misclassified batch) and on every epoch of
    an early-stopping preset (no pass). For curves use train_acc_running: the
    fraction of the epoch's own training batches classified correctly as they
    passed (train mode, each batch before its optimiser step), recorded every
    epoch. `interpolated` is the exact answer where the question was asked
    (interpolation presets) and False on early-stopping presets.
    """

    epoch: int  # 1-based, epochs completed
    lr: float  # learning rate used during this epoch
    train_loss: float  # mean over the epoch's batches (train mode)
    train_acc: float  # whole training split, eval mode; NaN when no full pass was made (see above)
    val_acc: float  # whole validation split, eval mode, every epoch
    interpolated: bool  # every training image classified correctly (interpolation presets only)
    objective: float  # what the hparam sweep maximises (see Trainer.objective)
    train_acc_running: float = float("nan")  # the epoch's batches as they trained (train mode); NaN: older checkpoints
    diverged: bool = False  # the epoch's training loss was NaN or inf: training stopped here


@dataclass
class RunResult:
    model: nn.Module
    epochs: int  # epochs trained
    best_epoch: int  # epoch whose weights were kept
    train_acc: float
    val_acc: float
    test_acc: float
    interpolated: bool
    objective: float
    history: list[EpochMetrics] = field(default_factory=list)
    diverged_epoch: int = 0  # the epoch whose training loss was NaN or inf; 0: never


class Trainer:
    def __init__(self, exp: Experiment, data: Data, norm: str, hparams: dict, seed: int,
                 device: torch.device | str | None = None, amp: bool = False,
                 max_epochs: int | None = None):
        self.exp, self.data, self.norm, self.seed = exp, data, norm, seed
        self.device = torch.device(device) if device is not None else best_device()
        self.max_epochs = max_epochs or exp.max_epochs
        self.amp = amp and self.device.type == "cuda"  # bf16 autocast, GPU only
        self.patience = max(1, math.ceil(exp.patience * self.max_epochs))  # epochs (paper: 20%)
        self.lr, self.momentum = float(hparams["lr"]), float(hparams.get("momentum", 0.0))

        self.model = seeded_model(exp.model, norm, seed, data.channels, data.num_classes,
                                  tuple(data.train.X.shape[2:])).to(self.device)
        # channels_last on CPU too: oneDNN convs and max pooling skip layout reorders (2 cores:
        # StandardCNN 28x28 ~1.4x, VGG16 32x32 ~1.05x images/s; benchmarks/train_throughput.py)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.batch_stats = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self.opt = self._optimizer()
        self.sched = StepLR(self.opt, exp.lr_step_epochs, exp.lr_gamma)
        self.gen = torch.Generator().manual_seed(seed)  # batch order, on CPU for portability
        self.loss_fn = nn.CrossEntropyLoss()

        self.epoch = 0
        self.best_val_acc = -1.0
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.first_interpolation: int | None = None
        self.diverged_epoch = 0  # the epoch whose training loss became NaN or inf (0: never); training stops
        self.val_at_interpolation = float("nan")
        self.history: list[EpochMetrics] = []

    def _optimizer(self):
        """bnrep.optim's SGD (Nesterov when momentum > 0) or Adam: torch.optim's foreach updates, bit for bit,
        without the torch._dynamo import (see bnrep.optim)."""
        make = OPTIMIZERS[self.exp.optimizer]  # Adam: betas, eps at defaults (paper 3.1.2)
        momentum = {"momentum": self.momentum} if make is SGD else {}
        return make(self.model.parameters(), lr=self.lr, weight_decay=self.exp.weight_decay, **momentum)

    # ==== one epoch ====
    def step_epoch(self) -> EpochMetrics:
        """Train one epoch, then evaluate what decides stopping (see the module docstring)."""
        lr = self.opt.param_groups[0]["lr"]
        loss, running = self.train_one_epoch()
        self.sched.step()
        self.epoch += 1
        if not math.isfinite(loss) and not self.diverged_epoch:
            self.diverged_epoch = self.epoch
        train_acc, interpolated = float("nan"), False
        if self.exp.stop == "interpolate":
            interpolated = classifies_all(self.model, self.data.train, self.device, self.amp)
            train_acc = 1.0 if interpolated else float("nan")  # an early exit leaves the fraction unknown
        val_acc = accuracy(self.model, self.data.val, self.device, self.amp)
        if interpolated and self.first_interpolation is None:
            self.first_interpolation, self.val_at_interpolation = self.epoch, val_acc
        if val_acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = val_acc, self.epoch
            if self.exp.stop == "early-stop":
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        m = EpochMetrics(self.epoch, lr, loss, train_acc, val_acc, interpolated, self.objective(val_acc), running,
                         diverged=self.diverged_epoch == self.epoch)
        self.history.append(m)
        return m

    def train_one_epoch(self) -> tuple[float, float]:
        """One pass of optimiser steps over the seeded batches of the training split.

        Returns the mean training loss and the running accuracy (fraction of
        the images trained on that the model got right in its forward pass,
        train mode, before the step). Advances the batch-order RNG; touches no
        epoch counter, schedule or stopping state (step_epoch does).
        """
        self.model.train()
        X, y = self.data.train.X, self.data.train.y
        total = torch.zeros((), dtype=torch.float64, device=self.device)  # summed on-device: no sync per batch
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        n = 0
        for idx in batches(len(y), self.exp.batch_size, self.gen, self.device):
            xb, yb = _channels_last(X[idx]), y[idx]
            if len(yb) < 2 and self.batch_stats:  # BatchNorm cannot train on a single image
                continue
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp):
                logits = self.model(xb)
                loss = self.loss_fn(logits, yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach().double() * len(yb)  # float64, as the Python float sum it replaces
            correct += (logits.detach().argmax(1) == yb).sum()
            n += len(yb)
        if n == 0:  # (a train loss of 0 with no step taken would read as a perfect fit)
            raise ValueError(f"no batch to train on (batch_size {self.exp.batch_size}, {len(y)} training images; "
                             f"a model with BatchNorm skips a batch of one image)")
        return total.item() / n, correct.item() / n

    def objective(self, val_acc: float) -> float:
        """Paper 3.1.1: validation accuracy at the first interpolating epoch; runs
        that have not interpolated rank below every run that has (val_acc - 1).
        Paper 3.1.2 (early stopping): the best validation accuracy so far.
        A run that diverged scores DIVERGED, below every other."""
        if self.diverged_epoch:
            return DIVERGED
        if self.exp.stop == "early-stop":
            return self.best_val_acc
        if self.first_interpolation is not None:
            return self.val_at_interpolation
        return val_acc - 1.0

    @property
    def done(self) -> bool:
        if self.epoch >= self.max_epochs or self.diverged_epoch:
            return True
        if self.exp.stop == "interpolate":
            return self.first_interpolation is not None
        return self.epoch - self.best_epoch >= self.patience

    def finish(self) -> RunResult:
        """Restore the best weights (early stopping) and evaluate the kept weights on
        the whole training, validation and test splits (Table 1: full passes)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        kept = self.best_epoch if self.exp.stop == "early-stop" else self.epoch
        train_acc = accuracy(self.model, self.data.train, self.device, self.amp)
        val_acc = accuracy(self.model, self.data.val, self.device, self.amp)
        test_acc = accuracy(self.model, self.data.test, self.device, self.amp)
        last = self.history[-1].objective if self.history else float("nan")
        return RunResult(self.model, self.epoch, kept, train_acc, val_acc, test_acc,
                         train_acc >= 1.0, last, list(self.history), self.diverged_epoch)

    # ==== checkpoints ====
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(), "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(), "epoch": self.epoch,
            "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
            "best_state": self.best_state, "first_interpolation": self.first_interpolation,
            "val_at_interpolation": self.val_at_interpolation,
            "history": [vars(m) for m in self.history], "diverged_epoch": self.diverged_epoch,
        }

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.sched.load_state_dict(s["sched"])
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        self.epoch, self.best_epoch = s["epoch"], s["best_epoch"]
        self.best_val_acc, self.best_state = s["best_val_acc"], s["best_state"]
        self.first_interpolation = s["first_interpolation"]
        self.val_at_interpolation = s["val_at_interpolation"]
        self.history = [EpochMetrics(**m) for m in s["history"]]
        self.diverged_epoch = s.get("diverged_epoch", 0)  # checkpoints before 0.3: none diverged

    def save_checkpoint(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return buf.getvalue()

    def load_checkpoint(self, blob: bytes) -> None:
        # read on the CPU: the RNG states must stay CPU ByteTensors (on a GPU trainer, map_location=cuda made
        # every resume fail); model and optimiser state go to their parameters' device as they load
        self.load_state_dict(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))


@torch.inference_mode()
def accuracy(model: nn.Module, split: Split, device: torch.device, amp: bool = False) -> float:
    """Fraction of `split` classified correctly, eval mode (BatchNorm running stats)."""
    if len(split) == 0:
        return float("nan")
    correct = torch.zeros((), dtype=torch.int64, device=device)  # summed on-device: no sync per batch
    for c, _ in _correct_per_batch(model, split, device, amp):
        correct += c
    return correct.item() / len(split)


@torch.inference_mode()
def classifies_all(model: nn.Module, split: Split, device: torch.device, amp: bool = False) -> bool:
    """Is every image of `split` classified correctly (eval mode)? Stops at the first
    batch with an error; the batches are accuracy()'s, so the answer is exactly
    `accuracy(...) == 1.0` (an empty split: False, as NaN >= 1.0 is)."""
    if len(split) == 0:
        return False
    with contextlib.closing(_correct_per_batch(model, split, device, amp)) as counts:  # closing: eval mode ends
        return all(int(c) == n for c, n in counts)  # one sync per batch


def _correct_per_batch(model: nn.Module, split: Split, device, amp: bool):
    """Yield (correct count as a 0-dim device tensor, batch size) per evaluation batch, in order.
    Callers run it under inference_mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    B = EVAL_BATCH if device.type == "cuda" else EVAL_BATCH_CPU
    try:
        for i in range(0, len(split), B):
            xb = _channels_last(split.X[i:i + B].to(device, non_blocking=True))
            ctx = torch.autocast(device.type, torch.bfloat16) if amp else contextlib.nullcontext()
            with ctx:
                c = (model(xb).argmax(1) == split.y[i:i + B].to(device)).sum()
            yield c, len(xb)
    finally:  # also when the caller stops early
        model.train(was_training)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images in the layout the model's convs use; a no-op when already so (or C = 1)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def train(exp: Experiment, data: Data, norm: str, hparams: dict, seed: int, **kw) -> RunResult:
    """Train one model to its stopping rule."""
    t = Trainer(exp, data, norm, hparams, seed, **kw)
    while not t.done:
        t.step_epoch()
    return t.finish()

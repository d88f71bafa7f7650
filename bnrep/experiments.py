"""Named experiment presets: everything that defines a study's results.

An experiment is a frozen dataclass. Flags a user changes per run (seeds,
max epochs, train size, ...) are applied with `Experiment.override`, which
validates again, so an impossible value fails before any work starts.

    >>> exp = get_experiment("mnist-cnn").override(max_epochs=50, norms="batch,group,none")

`model` is a model spec (bnrep.models: `cnn`, `torchvision:resnet50`,
`timm:NAME`, `package.module:function`); config.json files written before it
existed name it `arch` and still load. `norms` (the normalisations compared,
bnrep.norms) and `eps` (sparsity thresholds) are tuples; a comma-separated
string (as a flag gives it), a JSON list or one number is accepted, and each
is stored in one spelling: norms in the norm table's order, thresholds
ascending.

Figure layers (`channel_layers`, `first_shown_layer`) are layer indices
(1-based), or fractions of the model's depth below 1 (0.5: the layer half way
down), so one choice fits any model; `channel_layers=()` shows four layers at
a quarter, half, three quarters and all of the depth. A preset's choices are
for its own model: `with_model` swaps the model and sets them to those that
fit any.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from bnrep.datasets import DatasetError, parse_dataset
from bnrep.models import ModelError, parse_spec
from bnrep.axis import (ConditionError, canonical, check_tags, name_of, overrides_of, register_all, split_items,
                        with_overrides)
from bnrep.axis import parse as parse_condition
from bnrep.norms import NAMES as NORM_NAMES, REF, get_norm, place_members, sort_key
from bnrep.optim import OPTIMIZERS

DEFAULT_EXPERIMENT = "digits-cnn"

# Layer indices (1-based, as in the paper's figures) shown in Figures 1-2.
CNN_CHANNEL_LAYERS = (1, 2, 3, 4)
VGG_CHANNEL_LAYERS = (6, 10, 13)
# ResNet-18: the output of each stage (s1b2.out .. s4b2.out), one per resolution and width.
RESNET_CHANNEL_LAYERS = (5, 9, 13, 17)
# ResNet-18 Figures 4-6 start at s3b1.relu1 (10): 8 layers from the first 8x8, 256-channel
# map on 32x32 inputs, as VGG16's shown conv6..conv13 (paper) start inside its 8x8, 256-channel block.
RESNET_FIRST_SHOWN = 10


class ConfigError(ValueError):
    """A preset or flag value that cannot work; the message is one line."""


@dataclass(frozen=True)
class Experiment:
    name: str
    dataset: str  # a name in bnrep.datasets (digits, mnist, cifar10, cifar100, ...) or imagefolder:PATH
    model: str  # a model spec: cnn | vgg16 | resnet18 | torchvision:NAME | timm:NAME | package.module:function
    # the axis compared (bnrep.axis): normalisations (bnrep.norms; the paper's pair by default), or
    # conditions, a normalisation plus training overrides; `norms` names them
    conditions: tuple[str, ...] = ("batch", "none")
    reference: str = REF  # the condition every claim is judged against

    # ---- training (paper 3.1) ----
    optimizer: str = "sgd"  # sgd (Nesterov momentum) | adam (default betas/eps)
    lr: float = 0.01  # initial learning rate, models with a norm (batch, group, layer)
    lr_nobn: float | None = None  # initial learning rate with norm none (None: same as lr)
    momentum: float = 0.99  # SGD Nesterov momentum; ignored by Adam
    lr_gamma: float = 0.99  # learning rate multiplied by this ...
    lr_step_epochs: int = 10  # ... every this many epochs
    batch_size: int = 64  # images per optimiser step
    max_epochs: int = 1000  # hard cap on epochs
    stop: str = "interpolate"  # interpolate (100% train acc) | early-stop (val error)
    patience: float = 0.2  # early stopping: epochs without improvement, as a fraction of max_epochs
    weight_decay: float = 0.0

    # ---- data ----
    val_size: int | float = 5000  # images held out from the official training set (float: fraction)
    test_fraction: float = 0.2  # only for datasets without an official test set (digits, synthetic)
    train_size: int | None = None  # train on the first N images of the seeded training split
    split_seed: int = 0  # seeds the train/val split and analysis samples, never the model
    image_shape: tuple[int, int, int] = (1, 28, 28)  # synthetic dataset only: (C, H, W)
    image_size: int | None = None  # imagefolder only: shorter side resized to this, then centre-cropped square
    num_images: int = 2000  # synthetic dataset only

    # ---- hparam sweep (paper 3.1.1-3.1.2) ----
    lr_range: tuple[float, float] = (1e-3, 1e-1)  # log-uniform
    momentum_choices: tuple[float, ...] = (0.0, 0.9, 0.95, 0.99)  # SGD only
    num_samples: int = 8  # Tune trials per norm
    sweep_max_epochs: int | None = None  # epoch cap for sweep trials (None: max_epochs)

    # ---- final grid ----
    seeds: int = 4  # seeds 0..seeds-1, each under every norm

    # ---- analysis (paper 3.2-3.3) ----
    samples_sparsity: int = 5000
    samples_cluster: int = 15000
    k_min: int = 2
    k_max: int = 15
    n_init: int = 3  # k-means restarts per k
    eps: tuple[float, ...] = (0.0,)  # thresholds, sorted: |x| <= eps counts as zero (paper: exactly zero)
    channel_layers: tuple[float, ...] = CNN_CHANNEL_LAYERS  # Figures 1-2; () = at 1/4, 1/2, 3/4, all of the depth
    first_shown_layer: float = 1  # Figures 4-6 start here (VGG16: 6, as in the paper); < 1: a fraction of depth
    probes: str = "all"  # which activations to measure: all | globs on names | type:ReLU,GELU (bnrep.probes)
    snapshots: tuple[int, ...] = ()  # also keep and measure each model at these epochs (0: its initialisation)
    snapshot_kmeans: bool = False  # the k-means sweep at the snapshots too (else the final models only)

    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Lists (JSON), a comma string (a flag) or one number (old config.json eps) become tuples.
        object.__setattr__(self, "conditions", _conditions(self.conditions, self.name))
        object.__setattr__(self, "eps", _as_tuple(self.eps, float, self.name, "eps"))
        object.__setattr__(self, "snapshots", tuple(sorted(set(_as_tuple(self.snapshots, int, self.name, "snapshots")))))
        object.__setattr__(self, "channel_layers", _as_tuple(self.channel_layers, layer_value, self.name, "channel_layers"))
        for key, kind in (("lr_range", float), ("momentum_choices", float), ("image_shape", int)):
            object.__setattr__(self, key, _as_tuple(getattr(self, key), kind, self.name, key))
        object.__setattr__(self, "first_shown_layer", layer_value(self.first_shown_layer))
        validate(self)
        # One spelling per study: conditions in the norm table's order, thresholds ascending.
        object.__setattr__(self, "conditions", tuple(sorted(self.conditions, key=lambda c: sort_key(name_of(c)))))
        object.__setattr__(self, "eps", tuple(sorted(self.eps)))

    def override(self, **changes) -> "Experiment":
        """A copy with `changes` applied (None values are ignored), validated."""
        changes = renamed({k: v for k, v in changes.items() if v is not None})
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown experiment field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @property
    def arch(self) -> str:
        """The model spec under its name before specs (notebooks written for bnrep 0.2)."""
        return self.model

    def with_model(self, spec: str | None) -> "Experiment":
        """A copy studying `spec`; figure layers that fit any model unless it is the preset's own."""
        if spec is None or spec == self.model:
            return self
        return self.override(model=spec, channel_layers=(), first_shown_layer=1,
                             description=f"{self.description} [model: {spec} instead of {self.model}]")

    @classmethod
    def from_dict(cls, d: dict) -> "Experiment":
        """Inverse of to_dict (JSON lists back to tuples; unknown keys ignored).

        Also reads config.json written before the norm axis (eps a float, no
        norms: the default, batch and none, is what those runs trained) and
        before model specs (`arch`).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        d = renamed(d)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    def __reduce__(self):
        """Pickled (to Ray workers) as its dict and rebuilt by the constructor, which registers its conditions."""
        return (type(self).from_dict, (self.to_dict(),))

    @property
    def norms(self) -> tuple[str, ...]:
        """The names along the axis, in display order: a normalisation's name or a condition's tag."""
        return tuple(name_of(c) for c in self.conditions)

    def condition(self, name: str) -> tuple[str, dict]:
        """(the normalisation, the training overrides) of condition `name`, as this experiment defines
        it (not as another experiment in the same process may define the same tag)."""
        for c in self.conditions:
            tag, norm, overrides, _ = parse_condition(c)
            if (tag or norm) == name:
                return norm, overrides
        return get_norm(name).norm, overrides_of(name)  # a name off the axis: the norm table's

    def for_condition(self, name: str) -> "Experiment":
        """The training recipe of condition `name`: this experiment with its overrides applied. A
        condition's `lr` or `momentum` is fixed: its sweep tries that value alone (lr_range, or
        momentum_choices, of that one value), and its lr serves norm none too (no lr_nobn)."""
        norm, changes = self.condition(name)
        if not changes:
            return self
        fixed = {"lr_range": (changes["lr"],) * 2} if "lr" in changes else {}
        if "momentum" in changes:
            fixed["momentum_choices"] = (changes["momentum"],)
        recipe = self.override(conditions=(norm,), reference=REF, **changes, **fixed)  # one norm, plain
        return dataclasses.replace(recipe, lr_nobn=None) if "lr" in changes else recipe

    @property
    def sweep_epochs(self) -> int:
        """The epoch budget of a sweep trial: sweep_max_epochs, else max_epochs."""
        return self.sweep_max_epochs or self.max_epochs

    def lr_for(self, norm: str) -> float:
        """The preset learning rate: lr_nobn (if set) for norm none, lr for every norm (a condition's
        `lr` override is already in self: for_condition)."""
        return self.lr if self.condition(norm)[0] != REF or self.lr_nobn is None else self.lr_nobn

    def paper_hparams(self, norm: str) -> dict:
        return {"lr": self.lr_for(norm), "momentum": self.momentum if self.optimizer == "sgd" else 0.0}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


OLD_NAMES = {"arch": "model", "norms": "conditions"}  # before model specs; before conditions


def renamed(d: dict) -> dict:
    """Fields under the names they had before (OLD_NAMES), for old config.json files and code."""
    return {OLD_NAMES.get(k, k): v for k, v in d.items()}


def _conditions(v, name: str) -> tuple[str, ...]:
    """Conditions as given (`batch,none` from --norms, `a; b:batch,batch_size=8`, a list) in their
    canonical spelling, their tags registered (bnrep.axis)."""
    try:
        given = split_items(v)
        check_tags(given)
        items = tuple(canonical(c) for c in given)
        register_all(items)
        place_members([name_of(c) for c in items])  # two ghost sizes of one study: two colours
    except ConditionError as e:
        raise ConfigError(f"{name}: {e}") from None
    return items


def layer_value(x) -> int | float:
    """A figure layer as written: an index (int, >= 1) or a fraction of depth (float, < 1)."""
    x = float(x)
    return int(x) if x >= 1 and x.is_integer() else x


def reference_note(e: Experiment, held=(), how: str | None = None) -> str | None:
    """A line for a study whose conditions, and the models its results already hold (`held`: their
    conditions), leave out its reference (`none` by default): it trains and measures, but no claim can be
    judged; None otherwise. `how`: the way to name another reference (a command, where the one that prints
    the note takes no --reference)."""
    if e.reference in e.norms or e.reference in held:
        return None
    other = (f", or name one of {', '.join(e.norms)} with {how or '--reference TAG'}" if len(e.norms) > 1 else
             f" ({e.norms[0]}, the one condition, judged against itself would compare nothing)")
    return (f"note: {e.name} has no models of its reference condition {e.reference!r}: the report's claims compare "
            f"with it, so none will be judged; add {e.reference} to the conditions{other}")


LR_EDGE = 0.1  # a best lr within 10% of lr_range's width (log scale) of an end, inclusive, lies at its edge


def lr_edge(lr: float, lr_range: tuple[float, float]) -> str | None:
    """'low' or 'high' when `lr` lies within LR_EDGE of that end of `lr_range` (log scale), else None:
    the one rule the sweep's note and the findings' caveat both apply."""
    lo, hi = (math.log(x) for x in lr_range)
    if hi <= lo:
        return None
    pos = (math.log(lr) - lo) / (hi - lo)  # 0 at the low end, 1 at the high end
    return "low" if pos <= LR_EDGE else "high" if pos >= 1 - LR_EDGE else None


AUTO_LAYERS = (0.25, 0.5, 0.75, 1.0)  # channel_layers=(): these fractions of the depth (1.0: the last layer)


def layer_indices(values, n_layers: int) -> list[int]:
    """Figure layers (indices, or fractions of depth below 1; () for AUTO_LAYERS) as 1-based
    layer indices of a model with n_layers, in order, each once."""
    if not values:
        return sorted({max(1, math.ceil(f * n_layers)) for f in AUTO_LAYERS})
    return list(dict.fromkeys(int(v) if v >= 1 else max(1, math.ceil(v * n_layers)) for v in values))


def _as_tuple(v, kind, name: str, field_name: str) -> tuple:
    """v as a tuple of `kind`: a comma-separated string, a list/tuple, or one number."""
    if isinstance(v, str):
        v = [p.strip() for p in v.split(",")] if v.strip() else []
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    try:
        out = tuple(kind(x) for x in v)
    except (TypeError, ValueError, OverflowError):  # (int(inf))
        out = None
    if out is None or kind is int and any(float(x) != o for x, o in zip(v, out)):  # 0.5 is no epoch 0
        what = "names" if kind is str else "whole numbers" if kind is int else "numbers"
        raise ConfigError(f"{name}: {field_name} must be a list of {what}, got {v!r}")
    return out


def _batch_statistics(norm: str, batch_size: int) -> str | None:
    """What is wrong with training `norm` on batches of batch_size: a norm that trains on batch
    statistics (bnrep.norms.Norm.batch_statistics) needs 2 or more images; ghost:B virtual batches of 2
    or more, fewer than the batch (B >= batch_size is plain BatchNorm)."""
    family, _, arg = norm.partition(":")
    if get_norm(norm).batch_statistics and batch_size == 1:  # (< 1: the field check says so)
        return f"{norm} normalises with batch statistics and cannot train on batches of 1 image (batch_size >= 2)"
    if family == "ghost" and batch_size > 1 and not 2 <= int(arg) < batch_size:
        return (f"{norm} needs virtual batches of 2 or more images, fewer than the batch size {batch_size} "
                f"(ghost:B with B >= batch_size is BatchNorm)")
    return None


def validate(e: Experiment) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{e.name}: {msg}")

    try:
        parse_dataset(e.dataset)
    except DatasetError as err:
        need(False, str(err))
    need(e.image_size is None or e.image_size > 0, f"image_size must be > 0, got {e.image_size}")
    need(e.image_size is None or str(e.dataset).startswith("imagefolder:"),
         f"image_size resizes the images of an imagefolder:PATH dataset; {e.dataset} has a size of its own")
    try:
        parse_spec(e.model)
    except ModelError as err:
        need(False, str(err))
    need(len(e.norms) > 0, f"norms is empty: name at least one of {', '.join(NORM_NAMES)}")
    twice = sorted({n for n in e.norms if e.norms.count(n) > 1})
    need(not twice, f"norms lists {', '.join(twice)} more than once")
    need(e.reference == REF or e.reference in e.norms,
         f"reference {e.reference!r} is not one of the conditions ({', '.join(e.norms)}): add it, or judge "
         f"against one of them (--reference TAG; reference = \"TAG\" in a study file)")
    need(e.optimizer in OPTIMIZERS, f"unknown optimizer {e.optimizer!r} (valid: {', '.join(OPTIMIZERS)})")
    need(e.stop in ("interpolate", "early-stop"), f"unknown stop rule {e.stop!r}")
    for name in ("lr", "lr_nobn"):
        v = getattr(e, name)
        need(v is None or 0 < v < math.inf, f"learning rate must be > 0 and finite, got {name}={v}")
    need(0 <= e.momentum < 1, f"momentum must be in [0, 1), got {e.momentum}")
    need(all(0 <= m < 1 for m in e.momentum_choices), f"momentum must be in [0, 1), got {e.momentum_choices}")
    need(len(e.momentum_choices) > 0 or e.optimizer != "sgd", "momentum_choices is empty: the sweep draws from it")
    need(len(e.lr_range) == 2 and 0 < e.lr_range[0] <= e.lr_range[1] < math.inf,
         f"learning rate range must be two numbers 0 < low <= high, finite, got {e.lr_range}")
    need(len(e.image_shape) == 3 and min(e.image_shape) > 0, f"image_shape must be (C, H, W) > 0, got {e.image_shape}")
    need(0 < e.lr_gamma <= 1, f"lr_gamma must be in (0, 1], got {e.lr_gamma}")
    for name in ("lr_step_epochs", "batch_size", "max_epochs", "num_samples", "samples_sparsity", "samples_cluster", "n_init"):
        need(getattr(e, name) > 0, f"{name} must be > 0, got {getattr(e, name)}")
    need(e.seeds >= 1, f"need at least one seed, got seeds={e.seeds}")
    need(e.sweep_max_epochs is None or e.sweep_max_epochs > 0, f"sweep_max_epochs must be > 0, got {e.sweep_max_epochs}")
    need(e.train_size is None or e.train_size > 0, f"train_size must be > 0, got {e.train_size}")
    need(0 < e.patience <= 1, f"patience is a fraction of max_epochs in (0, 1], got {e.patience}")
    need(0 <= e.weight_decay < math.inf, f"weight_decay must be >= 0 and finite, got {e.weight_decay}")
    need(0 < e.val_size and (isinstance(e.val_size, int) or e.val_size < 1),
         f"val_size must be a whole number of images > 0 or a fraction in (0, 1), got {e.val_size}")
    need(0 < e.test_fraction < 1, f"test_fraction must be in (0, 1), got {e.test_fraction}")
    need(e.k_min >= 2, f"k_min must be >= 2, got {e.k_min}")
    need(e.k_max >= e.k_min, f"k_max must be >= k_min, got k_min={e.k_min}, k_max={e.k_max}")
    need(all(x >= 0 for x in e.snapshots), f"snapshot epochs must be >= 0 (0: the initialisation), got "
                                            f"{', '.join(map(str, e.snapshots))}")
    need(all(x <= e.max_epochs for x in e.snapshots), f"snapshot epoch {max(e.snapshots, default=0)} is beyond "
                                                      f"max_epochs {e.max_epochs}: no model trains that long")
    need(not e.snapshot_kmeans or e.snapshots, "snapshot_kmeans (--snapshot-kmeans) runs the k-means sweep at the "
                                               "snapshot epochs, and there are none: give them (--snapshots 0,1,5)")
    need(len(e.eps) > 0, "eps is empty: give at least one threshold (the paper's: 0)")
    need(all(x >= 0 for x in e.eps), f"eps thresholds must be >= 0, got {', '.join(f'{x:g}' for x in e.eps)}")
    twice = sorted({x for x in e.eps if e.eps.count(x) > 1})
    need(not twice, f"eps lists {', '.join(f'{x:g}' for x in twice)} more than once")
    need(e.first_shown_layer > 0, f"first_shown_layer must be > 0 (an index, or a fraction of depth), "
                                  f"got {e.first_shown_layer}")
    need(all(x > 0 for x in e.channel_layers), f"channel_layers must be > 0, got {e.channel_layers}")
    # the conditions last: a condition's recipe is the experiment with its overrides, so a setting of the
    # whole experiment that is out of range was blamed on the first condition
    for n in e.norms:
        try:
            c = e.for_condition(n)
        except ConfigError as err:
            need(False, f"condition {n}: {str(err).removeprefix(e.name + ': ')}")
        norm = e.condition(n)[0]
        problem = _batch_statistics(norm, c.batch_size)
        need(problem is None, problem if n == norm else f"condition {n}: {problem}")


BATCH_SIZE_CONDITIONS = ("bn-b4:batch,batch_size=4", "bn-b16:batch,batch_size=16", "bn-b64:batch,batch_size=64",
                         "gn-b4:group,batch_size=4", "gn-b64:group,batch_size=64")
PAPER_NORMS = ("batch", "group", "layer", "none")  # the "-norms" presets' axis (Lubana et al. 2021's four)

_MNIST_LIKE = dict(
    model="cnn", optimizer="sgd", lr=0.01, momentum=0.99, lr_gamma=0.99, lr_step_epochs=10,
    batch_size=64, max_epochs=1000, stop="interpolate", val_size=5000,
    lr_range=(1e-3, 1e-1), num_samples=8, sweep_max_epochs=100,
)
_DIGITS = dict(dataset="digits", **{**_MNIST_LIKE, "val_size": 0.1, "max_epochs": 200, "sweep_max_epochs": 60})
# The paper's CIFAR10 recipe (3.1.2): Adam, lr x0.99 per epoch, early stopping on validation error.
_CIFAR_ADAM = dict(
    dataset="cifar10", optimizer="adam", lr=1e-3, lr_nobn=1e-4, momentum=0.0, lr_gamma=0.99,
    lr_step_epochs=1, batch_size=64, max_epochs=300, stop="early-stop", patience=0.2, val_size=5000,
    lr_range=(1e-5, 1e-2), momentum_choices=(0.0,), num_samples=8, sweep_max_epochs=60,
)
_VGG_FIGS = dict(channel_layers=VGG_CHANNEL_LAYERS, first_shown_layer=6)
_RESNET_FIGS = dict(channel_layers=RESNET_CHANNEL_LAYERS, first_shown_layer=RESNET_FIRST_SHOWN)

PRESETS: dict[str, Experiment] = {
    e.name: e
    for e in [
        Experiment(
            name="digits-cnn", **_DIGITS,
            description="scikit-learn's bundled 8x8 digits, StandardCNN, paper's MNIST recipe; "
            "minutes on 2 CPU cores, no download",
        ),
        Experiment(
            name="digits-cnn-norms", **_DIGITS, conditions=PAPER_NORMS,
            description="digits-cnn over batch, group, layer and none: the whole norm axis on a laptop "
            "(bnrep run --experiment digits-cnn-norms)",
        ),
        Experiment(
            name="digits-cnn-batchsize", **_DIGITS, conditions=BATCH_SIZE_CONDITIONS, reference="bn-b64",
            description="BatchNorm's batch-size question on a laptop: BN at batch 4, 16 and 64 against GroupNorm "
            "at 4 and 64 (Wu & He 2018), judged against BN at 64",
        ),
        Experiment(name="mnist-cnn", dataset="mnist", **_MNIST_LIKE,
                   description="paper 3.1.1: MNIST, StandardCNN, SGD + Nesterov 0.99, stop at interpolation"),
        Experiment(name="fashion-mnist-cnn", dataset="fashion-mnist", **_MNIST_LIKE,
                   description="Fashion-MNIST with the paper's MNIST recipe"),
        Experiment(
            name="cifar10-vgg16", model="vgg16", **_CIFAR_ADAM, **_VGG_FIGS,
            description="paper 3.1.2: CIFAR10, VGG16, Adam, early stopping (patience 20%)",
        ),
        Experiment(
            name="cifar10-vgg16-norms", model="vgg16", **_CIFAR_ADAM, **_VGG_FIGS, conditions=PAPER_NORMS,
            description="cifar10-vgg16 (the paper's recipe) over batch, group, layer and none",
        ),
        # Adam and the paper's VGG16 schedule rather than the usual SGD + momentum 0.9 ResNet recipe:
        # side by side with cifar10-vgg16(-norms) only the architecture differs, and Adam's
        # per-parameter step sizes let one lr range (1e-5..1e-2) serve all four norms, the sweep
        # picking each norm's lr (lr / lr_nobn below are only the --paper-hparams fallback).
        Experiment(
            name="cifar10-resnet18", model="resnet18", **_CIFAR_ADAM, **_RESNET_FIGS, conditions=PAPER_NORMS,
            description="CIFAR10, ResNet-18 (CIFAR variant), batch/group/layer/none, Adam with the "
            "sweep's lr per norm, early stopping as cifar10-vgg16",
        ),
        Experiment(
            name="cifar100-resnet18", model="resnet18", **{**_CIFAR_ADAM, "dataset": "cifar100"}, **_RESNET_FIGS,
            conditions=PAPER_NORMS,
            description="CIFAR100 (100 classes), ResNet-18 (CIFAR variant), batch/group/layer/none, the recipe "
            "of cifar10-resnet18",
        ),
        Experiment(
            name="synthetic-cnn", dataset="synthetic", **{**_MNIST_LIKE, "val_size": 0.1,
                                                          "max_epochs": 30, "sweep_max_epochs": 10,
                                                          "num_samples": 2, "seeds": 2},
            image_shape=(1, 8, 8), num_images=600, samples_sparsity=200, samples_cluster=300,
            description="seeded class-structured images for tests",
        ),
        Experiment(
            name="synthetic-vgg16", dataset="synthetic", model="vgg16", optimizer="adam",
            lr=1e-3, lr_nobn=1e-4, momentum=0.0, lr_step_epochs=1, batch_size=32, max_epochs=5,
            stop="early-stop", val_size=0.1, lr_range=(1e-5, 1e-2), momentum_choices=(0.0,),
            num_samples=2, seeds=2, image_shape=(3, 32, 32), num_images=200,
            samples_sparsity=100, samples_cluster=150, **_VGG_FIGS,
            description="seeded class-structured 3x32x32 images through VGG16, for tests",
        ),
        Experiment(
            name="synthetic-resnet18", dataset="synthetic", model="resnet18", conditions=PAPER_NORMS, optimizer="adam",
            lr=1e-3, lr_nobn=1e-4, momentum=0.0, lr_step_epochs=1, batch_size=32, max_epochs=3,
            stop="early-stop", val_size=0.1, lr_range=(1e-5, 1e-2), momentum_choices=(0.0,),
            num_samples=2, seeds=2, image_shape=(3, 16, 16), num_images=200,
            # 200 images -> 160 after the 20% test hold-out -> 144 training images after val 10%
            samples_sparsity=100, samples_cluster=120, **_RESNET_FIGS,
            description="seeded class-structured 3x16x16 images through ResNet-18, all four norms, for tests",
        ),
    ]
}

# --smoke-test: tiny everything, seconds per stage.
SMOKE = dict(max_epochs=3, sweep_max_epochs=2, num_samples=2, seeds=2, train_size=256,
             samples_sparsity=128, samples_cluster=160, k_max=6, n_init=1)


def smoke(exp: Experiment) -> Experiment:
    """`exp` shrunk to at most SMOKE's sizes (a size already smaller, a study's seeds = 1, stays), a
    condition's own max_epochs too (capped_conditions)."""
    return capped_conditions(exp.override(**{k: v if getattr(exp, k) is None else min(v, getattr(exp, k))
                                             for k, v in SMOKE.items()}))


def smoke_sizes_text(exp: Experiment) -> str:
    """The sizes a --smoke-test study has, in words (the report's note, the status' heading)."""
    return (f"at most {exp.max_epochs} epochs, {exp.seeds} seeds, up to {exp.train_size} training images (fewer "
            f"where the data has fewer), k up to {exp.k_max}")


def at_smoke_sizes(exp: Experiment) -> bool:
    """`exp` is no bigger than the smoke test makes it: given --smoke-test, or a study made with it, whose
    config.json keeps those sizes for every later run (a stage's header says so). Decided without
    building smoke(exp), which a study past those sizes need not make (a snapshot after epoch 3)."""
    return (all(getattr(exp, k) is not None and getattr(exp, k) <= v for k, v in SMOKE.items())
            and capped_conditions(exp) == exp)


def capped_conditions(exp: Experiment) -> Experiment:
    """`exp` with no condition training longer than its max_epochs (a smoke test's conditions)."""
    cap = exp.max_epochs
    conditions = tuple(with_overrides(c, max_epochs=cap) if parse_condition(c)[2].get("max_epochs", 0) > cap else c
                       for c in exp.conditions)
    return exp if conditions == exp.conditions else exp.override(conditions=conditions)


def get_experiment(name: str) -> Experiment:
    """A preset by name, or the study a .toml file defines (bnrep.studies.load_study)."""
    if name.endswith(".toml"):
        from bnrep.studies import load_study  # (it builds on this module)

        return load_study(name)
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown experiment {name!r} (valid: {', '.join(PRESETS)}, or a study file "
                          f"NAME.toml)") from None

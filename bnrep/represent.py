"""Streaming extraction of post-activation representations (paper 3.2-3.3).

Every probe (bnrep.probes: each activation call of the model, ReLU in the
paper's nets) reduces every batch as it passes, then drops it: per-channel zero counts (eq. 3-4, several eps thresholds at once) over the
sparsity samples, and channel means over H x W (eq. 5) into a preallocated
N x C buffer per layer. Memory is O(N x sum of C) plus one batch of
activations, never O(N x C x H x W).

Samples (`AnalysisSamples`): one seeded permutation of the training split;
its first `n_sparsity` images are the sparsity samples and its first
`n_cluster` the clustering samples, so one forward pass serves both and
every model of an experiment sees the same images.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from bnrep.data import input_shape
from bnrep.datasets import num_classes, one_line
from bnrep.experiments import Experiment
from bnrep.metrics import chunk_rows, l2_normalise_rows
from bnrep.models import ModelError, check_model
from bnrep.probes import Probe, ProbeError, find_probes, select_probes, tap

COUNT_CHUNK = 2 ** 22  # activation values per zero-counting step: its int64 temporary stays <= 32 MiB


def model_probes(exp: Experiment, training: bool = True) -> list[Probe]:
    """The probes the analysis measures: the study's model checked under each of its norms at its
    data's shape (one line otherwise: ModelError, NormError), its activations found (those of the
    first norm: a swap changes no activation), then `exp.probes` chooses (ProbeError).
    Built once per experiment and process: `bnrep run` checks before its stages, and each stage again.
    `training`: bnrep will train the models (bnrep.models.check_model)."""
    return list(_model_probes(exp, training))


@functools.lru_cache(maxsize=8)
def _model_probes(exp: Experiment, training: bool) -> tuple[Probe, ...]:
    C, H, W = input_shape(exp)
    model = check_model(exp.model, exp.norms, (C, H, W), num_classes(exp.dataset), training)
    try:
        found = find_probes(model, torch.zeros(2, C, H, W))
    except Exception as e:  # noqa: BLE001 - the model runs (check_model), but not with the hooks that read it
        raise ModelError(f"{exp.model}: its activations cannot be read: bnrep reads each through a forward hook, "
                         f"and with the hooks on, {type(e).__name__}: {one_line(e)}"
                         f"{HOOKLESS if 'ScriptModule' in str(e) else ''}") from None
    return tuple(select_probes(found, exp.probes, exp.model))


HOOKLESS = " (a TorchScript module takes no hooks: build the model of plain nn.Modules, torch.jit.script left out)"


def has_running_statistics(model: torch.nn.Module) -> bool:
    """A BatchNorm-like norm: its eval mode uses running statistics, its training mode the batch's."""
    return any(getattr(m, "running_mean", None) is not None for m in model.modules())


def with_batch_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` in eval mode except its norms with running statistics, which run in training mode,
    as in a training step, without updating anything (track_running_stats off): BatchNorm normalises with
    each batch's statistics, Batch Renorm corrects them toward the running statistics as they stand (its
    step count too), whatever batches pass before. Dropout stays off; the model does not change."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None:
            m.train()
            m.track_running_stats = False
    return model


@dataclass
class LayerReps:
    name: str  # "conv3"
    index: int  # 1-based layer index
    activation: str  # "ReLU", "GELU": sparsity (exact zeros) means something after a rectifier only
    zero_counts: np.ndarray  # (n_eps, C) int64: values with |x| <= eps, over the sparsity samples
    values_per_channel: int  # N_sparsity * H * W: denominator of eq. 3
    reduced: torch.Tensor  # (N, C) float32, eq. 5 means with rows L2-normalised
    nonfinite: np.ndarray  # (C,) int64: sparsity samples with a NaN or inf value there (sparsity unknown)
    moments: np.ndarray | None = None  # (4, C) float64 over all N samples and positions: sum and sum of
    #   squares of the activation's input (pre-activation), then of its output (signal propagation)
    moment_count: int = 0  # N * H * W: values per channel in each sum

    @property
    def channels(self) -> int:
        return self.reduced.shape[1]


PURPOSES = ("sparsity", "cluster")  # the two sets of samples (results/samples' purpose column)


@dataclass(frozen=True)
class AnalysisSamples:
    """The training images the analysis measures (the one home of the prefix rule)."""
    order: np.ndarray  # (max(n_sparsity, n_cluster),) indices into the training split, seeded order
    n_sparsity: int  # the first n_sparsity of `order` count toward sparsity (eq. 3-4)
    n_cluster: int  # the first n_cluster are clustered (class DBI, k-means)
    notes: tuple[str, ...] = ()  # requests capped at the split's size, as plain sentences

    @classmethod
    def draw(cls, n_train: int, samples_sparsity: int, samples_cluster: int, seed: int) -> "AnalysisSamples":
        """Seeded, independent of the model seed; capped at n_train."""
        perm = np.random.default_rng(seed).permutation(n_train)
        notes = tuple(f"{what}: {n:,} samples asked, the training split holds {n_train:,}; using {n_train:,}"
                      for what, n in (("sparsity", samples_sparsity), ("clustering", samples_cluster))
                      if n > n_train)
        ns, nc = min(samples_sparsity, n_train), min(samples_cluster, n_train)
        return cls(perm[: max(ns, nc)], ns, nc, notes)

    def indices(self, purpose: str) -> np.ndarray:
        """Training-split indices of the 'sparsity' or 'cluster' samples."""
        return self.order[: {"sparsity": self.n_sparsity, "cluster": self.n_cluster}[purpose]]

    def table(self) -> pd.DataFrame:
        """As results/samples stores it: purpose, position, index."""
        return pd.concat([pd.DataFrame({"purpose": p, "position": np.arange(len(ix)), "index": ix})
                          for p in PURPOSES for ix in [self.indices(p)]], ignore_index=True)


class _Reducer:
    """Forward hook for one probe: reduces each batch into its buffers."""

    def __init__(self, n: int, n_sparse: int, eps: torch.Tensor):
        self.n, self.n_sparse, self.eps = n, n_sparse, eps
        self.start = 0  # row of the current batch's first sample
        self.means: torch.Tensor | None = None  # (N, C)
        self.zeros: torch.Tensor | None = None  # (n_eps, C)
        self.moments: torch.Tensor | None = None  # (4, C) float64: input sum, sum of squares; output's
        self.hw = 1

    @staticmethod
    def _bchw(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
        x = t.detach().float()
        if channels_last:  # (B, H, W, C) or (B, T, C) -> channels first
            x = x.movedim(-1, 1)
        while x.dim() < 4:  # fully connected (B, C) or tokens (B, C, T) -> (B, C, H, W)
            x = x.unsqueeze(-1)
        return x

    def _accumulate(self, x: torch.Tensor, row: int) -> None:
        if self.moments is None:
            self.moments = torch.zeros(4, x.shape[1], dtype=torch.float64, device=x.device)
        x = x.double()
        self.moments[row] += x.sum(dim=(0, 2, 3))
        self.moments[row + 1] += x.square().sum(dim=(0, 2, 3))

    def pre(self, inp: torch.Tensor, channels_last: bool) -> None:
        """The activation's input, just before it is called: its first and second moments."""
        self._accumulate(self._bchw(inp, channels_last), 0)

    def __call__(self, out: torch.Tensor, channels_last: bool) -> None:
        x = self._bchw(out, channels_last)
        B, C, H, W = x.shape
        if self.means is None:
            self.means = torch.zeros(self.n, C, device=x.device)
            self.zeros = torch.zeros(len(self.eps), C, dtype=torch.int64, device=x.device)
            self.hw = H * W
        self._accumulate(x, 2)
        self.means[self.start:self.start + B] = x.mean(dim=(2, 3))  # eq. 5
        keep = max(0, min(B, self.n_sparse - self.start))  # rows that are sparsity samples
        rows = chunk_rows(C * H * W, budget=COUNT_CHUNK, cap=None)
        for a in x[:keep].split(rows):  # chunks bound the temporaries: sum casts a bool mask to int64
            for i, e in enumerate(self.eps):  # |a| <= e as two bool masks: no float copy
                self.zeros[i] += ((a <= e) & (a >= -e)).sum(dim=(0, 2, 3))
        self.start += B


def snapshot_mode(exp: Experiment, condition: str, epoch: int) -> dict:
    """How a model at `epoch` is measured (extract_representations' keywords): at its initialisation (0) its
    norms normalise with batch statistics, in batches of the condition's size as its first step saw (the
    running ones are still 0 and 1: eval mode would be no normalisation at all); otherwise eval mode."""
    return {"batch_stats": True, "batch_size": exp.for_condition(condition).batch_size} if epoch == 0 else {}


@torch.inference_mode()
def extract_representations(model: torch.nn.Module, X: torch.Tensor, n_sparsity: int,
                            eps: tuple[float, ...] = (0.0,), batch_size: int = 500,
                            device: torch.device | str | None = None,
                            probes: list[Probe] | None = None, batch_stats: bool = False) -> list[LayerReps]:
    """Representations of the `probes` (default: every activation) for the images X (N, C, H, W).

    Rows [0, n_sparsity) count toward sparsity; all N rows are reduced (eq. 5).
    The model runs in eval mode (`batch_stats`: a copy of it whose norms normalise with each batch's
    statistics, `with_batch_statistics`, batches of `batch_size`); each output is reduced as it is made (before
    any in-place operation can change it); hooks are removed afterwards, also on error.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    if probes is None:  # (find_probes leaves every module in eval mode)
        probes = find_probes(model, X[:2].to(device))
    if batch_stats:
        model = with_batch_statistics(model)
    n_sparse = min(n_sparsity, len(X))
    eps_t = torch.tensor(list(eps), dtype=torch.float32, device=device)
    reducers = {p.index: (_Reducer(len(X), n_sparse, eps_t), p.channels_last) for p in probes}

    def reduce(index, path, activation, out):
        if index in reducers:
            r, last = reducers[index]
            r(out, last)

    def before(index, inp):
        if index in reducers and isinstance(inp, torch.Tensor):
            r, last = reducers[index]
            r.pre(inp, last)

    starts = list(range(0, len(X), batch_size))
    if len(starts) > 1 and len(X) - starts[-1] == 1:
        starts.pop()  # one sample has no batch statistics, nor a batch axis probes can tell apart: it joins the batch before
    with tap(model, reduce, before):
        for i, j in zip(starts, starts[1:] + [len(X)]):
            xb = X[i:j].to(device, non_blocking=True)
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            model(xb)
    missing = [p.name for p in probes if reducers[p.index][0].start != len(X)]
    if missing:
        raise ProbeError(f"probe {missing[0]} did not see every image ({len(missing)} probe(s)): the model's "
                         f"activations differ from those found when the analysis was planned")
    reps = []
    for p in probes:
        r = reducers[p.index][0]
        # a NaN or inf value makes its sample's channel mean NaN or inf: found there, not in another pass
        # over every value (NaN is neither zero nor non-zero: that channel's sparsity is unknown)
        nonfinite = (~torch.isfinite(r.means[:n_sparse])).sum(dim=0).cpu().numpy()
        reps.append(LayerReps(p.name, p.index, p.activation, r.zeros.cpu().numpy(), n_sparse * r.hw,
                              l2_normalise_rows(r.means, in_place=True).cpu(), nonfinite,
                              r.moments.cpu().numpy(), len(X) * r.hw))
    return reps

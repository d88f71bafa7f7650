"""Streaming extraction of post-ReLU representations (paper 3.2-3.3).

Forward hooks on each probe ReLU reduce every batch as it passes, then drop
it: per-channel zero counts (eq. 3-4, several eps thresholds at once) over the
sparsity samples, and channel means over H x W (eq. 5) into a preallocated
N x C buffer per layer. Memory is O(N x sum of C) plus one batch of
activations, never O(N x C x H x W).

Samples (`AnalysisSamples`): one seeded permutation of the training split;
its first `n_sparsity` images are the sparsity samples and its first
`n_cluster` the clustering samples, so one forward pass serves both and
every model of an experiment sees the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from bnrep.metrics import chunk_rows, l2_normalise_rows
from bnrep.models import ProbedNet

COUNT_CHUNK = 2 ** 22  # activation values per zero-counting step: its int64 temporary stays <= 32 MiB


@dataclass
class LayerReps:
    name: str  # "conv3"
    index: int  # 1-based layer index
    zero_counts: np.ndarray  # (n_eps, C) int64: values with |x| <= eps, over the sparsity samples
    values_per_channel: int  # N_sparsity * H * W: denominator of eq. 3
    reduced: torch.Tensor  # (N, C) float32, eq. 5 means with rows L2-normalised

    @property
    def channels(self) -> int:
        return self.reduced.shape[1]


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
                          for p in ("sparsity", "cluster") for ix in [self.indices(p)]], ignore_index=True)


class _Reducer:
    """Forward hook for one probe: reduces each batch into its buffers."""

    def __init__(self, n: int, n_sparse: int, eps: torch.Tensor):
        self.n, self.n_sparse, self.eps = n, n_sparse, eps
        self.start = 0  # row of the current batch's first sample
        self.means: torch.Tensor | None = None  # (N, C)
        self.zeros: torch.Tensor | None = None  # (n_eps, C)
        self.hw = 1

    def __call__(self, module, inputs, out: torch.Tensor) -> None:
        x = out.detach().float()
        if x.dim() == 2:  # fully connected: (B, C) -> (B, C, 1, 1)
            x = x[:, :, None, None]
        B, C, H, W = x.shape
        if self.means is None:
            self.means = torch.zeros(self.n, C, device=x.device)
            self.zeros = torch.zeros(len(self.eps), C, dtype=torch.int64, device=x.device)
            self.hw = H * W
        self.means[self.start:self.start + B] = x.mean(dim=(2, 3))  # eq. 5
        keep = max(0, min(B, self.n_sparse - self.start))  # rows that are sparsity samples
        rows = chunk_rows(C * H * W, budget=COUNT_CHUNK, cap=None)
        for a in x[:keep].split(rows):  # chunks bound the temporaries: sum casts a bool mask to int64
            for i, e in enumerate(self.eps):  # |a| <= e as two bool masks: no float copy
                self.zeros[i] += ((a <= e) & (a >= -e)).sum(dim=(0, 2, 3))
        self.start += B


@torch.inference_mode()
def extract_representations(model: ProbedNet, X: torch.Tensor, n_sparsity: int,
                            eps: tuple[float, ...] = (0.0,), batch_size: int = 500,
                            device: torch.device | str | None = None) -> list[LayerReps]:
    """Representations of every probe layer for the images X (N, C, H, W).

    Rows [0, n_sparsity) count toward sparsity; all N rows are reduced (eq. 5).
    The model runs in eval mode; hooks are removed afterwards, also on error.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    n_sparse = min(n_sparsity, len(X))
    eps_t = torch.tensor(list(eps), dtype=torch.float32, device=device)
    probes = model.probes()
    reducers = [_Reducer(len(X), n_sparse, eps_t) for _ in probes]
    handles = [p.module.register_forward_hook(r) for p, r in zip(probes, reducers)]
    try:
        for i in range(0, len(X), batch_size):
            xb = X[i:i + batch_size].to(device, non_blocking=True)
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            model(xb)
    finally:
        for h in handles:
            h.remove()
    return [LayerReps(p.name, p.index, r.zeros.cpu().numpy(), n_sparse * r.hw,
                      l2_normalise_rows(r.means, in_place=True).cpu()) for p, r in zip(probes, reducers)]

"""The normalisation layers bnrep's norm table builds that torch does not have (bnrep.norms' entries
name them): weight-standardised convolutions (Qiao et al. 2019), ghost BatchNorm (Hoffer et al. 2017)
and Batch Renormalization (Ioffe 2017). Each takes the channel count first, as torch's norms do, so it
stands where BatchNorm stood; the BatchNorm kin subclass torch's BatchNorm, keeping its parameters,
running statistics and state-dict keys (a checkpoint loads into either)."""

from __future__ import annotations

import torch
from torch import nn


class WSConv2d(nn.Conv2d):
    """A conv whose filters are standardised in every forward pass: mean 0, std 1 over each
    filter's fan-in (in_channels/groups x kh x kw), the weights learnt as usual (Qiao et al. 2019)."""

    EPS = 1e-5  # added to the std, as the paper's code does

    def standardised_weight(self) -> torch.Tensor:
        w = self.weight  # (out, in/groups, kh, kw)
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        std = w.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (w - mean) / (std + self.EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardised_weight(), self.bias)


def _ghost(base: type) -> type:
    class Ghost(base):
        """BatchNorm over virtual batches of `virtual` samples in training (a short last one joins
        the one before: a single sample has no batch statistics); plain BatchNorm in eval mode."""

        def __init__(self, num_features: int, virtual: int):
            super().__init__(num_features)
            self.virtual = virtual

        def extra_repr(self) -> str:
            return f"{super().extra_repr()}, virtual={self.virtual}"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training or len(x) <= self.virtual:
                return super().forward(x)
            sizes = [self.virtual] * (len(x) // self.virtual)
            sizes[-1] += len(x) % self.virtual
            return torch.cat([super(Ghost, self).forward(c) for c in x.split(sizes)])

    Ghost.__name__ = Ghost.__qualname__ = f"Ghost{base.__name__}"
    return Ghost


GhostBatchNorm2d, GhostBatchNorm1d = _ghost(nn.BatchNorm2d), _ghost(nn.BatchNorm1d)

RENORM_R_MAX, RENORM_D_MAX = 3.0, 5.0  # Ioffe 2017's limits once relaxed (its ImageNet schedule reaches them)


def _renorm(base: type) -> type:
    class Renorm(base):
        """Batch Renormalization (Ioffe 2017). Training: with the batch's mean and (biased) std mu_B,
        sigma_B and the running mean and std mu, sigma (each std with eps inside the root),
        x_hat = (x - mu_B) / sigma_B * r + d, r = clip(sigma_B / sigma, 1/r_max, r_max),
        d = clip((mu_B - mu) / sigma, -d_max, d_max), r and d without gradient; then the affine
        parameters, and the running statistics updated as BatchNorm's (momentum, unbiased variance).
        r_max, d_max grow linearly from 1, 0 (BatchNorm's output) to RENORM_R_MAX, RENORM_D_MAX over the
        first `warmup` training batches (counted in num_batches_tracked: a checkpoint keeps the count).
        Eval mode: plain BatchNorm. With track_running_stats off (bnrep.represent.with_batch_statistics),
        training mode renormalises with the statistics as they stand and updates nothing, the count
        included. Statistics in float32 under autocast, as BatchNorm keeps them; no host sync per step."""

        def __init__(self, num_features: int, warmup: int):
            if warmup < 1:
                raise ValueError(f"Batch Renorm needs a warm-up of 1 or more batches, got {warmup}")
            super().__init__(num_features)
            self.warmup = warmup

        def extra_repr(self) -> str:
            return f"{super().extra_repr()}, warmup={self.warmup}"

        def limits(self) -> tuple[torch.Tensor, torch.Tensor]:
            """(r_max, d_max) for the next training batch, as 0-d tensors on the module's device."""
            ramp = (self.num_batches_tracked.to(self.running_var.dtype) / self.warmup).clamp(max=1.0)
            return 1.0 + (RENORM_R_MAX - 1.0) * ramp, RENORM_D_MAX * ramp

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.numel() // max(x.shape[1], 1)
            if not self.training or n < 2:  # one value per channel: BatchNorm's own error
                return super().forward(x)
            dims, shape = [0, *range(2, x.dim())], (1, -1, *[1] * (x.dim() - 2))
            xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16, fp16 (autocast): float32
            mean, var = xf.mean(dims), xf.var(dims, unbiased=False)
            std, running_std = (var + self.eps).sqrt(), (self.running_var + self.eps).sqrt()
            r_max, d_max = self.limits()
            r = torch.minimum(torch.maximum(std.detach() / running_std, 1.0 / r_max), r_max)
            d = torch.minimum(torch.maximum((mean.detach() - self.running_mean) / running_std, -d_max), d_max)
            y = (xf - mean.view(shape)) * (r / std).view(shape) + d.view(shape)
            if self.affine:
                y = y * self.weight.view(shape) + self.bias.view(shape)
            if self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    step = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
                    self.running_mean.lerp_(mean.to(self.running_mean.dtype), step)
                    self.running_var.lerp_((var * (n / (n - 1))).to(self.running_var.dtype), step)
            return y.to(x.dtype)

    Renorm.__name__ = Renorm.__qualname__ = f"BatchRenorm{base.__name__[-2:]}"
    return Renorm


BatchRenorm2d, BatchRenorm1d = _renorm(nn.BatchNorm2d), _renorm(nn.BatchNorm1d)

"""The optimisers and the step schedule that training uses, computed as torch.optim computes them.

torch.optim's methods are wrapped in `torch._disable_dynamo`, which imports
torch._dynamo when an optimiser is built (its add_param_group): 1.26 s of CPU
in a trial process (as much as importing torch itself; two processes start
per sweep and per grid on a 2-core machine), before the first epoch. These
classes make the same `torch._foreach_*` calls, in the same order and with
the same scalars, as torch.optim.SGD and torch.optim.Adam with `foreach=True`
and torch.optim.lr_scheduler.StepLR, so the weights are bit-identical to
theirs (tests/test_optim.py runs both side by side). Their state dicts have
torch.optim's layout, so a checkpoint written by either resumes in the other;
the one difference is where Adam's step count lives after a load with a
map_location (here always on the CPU, as in a fresh optimiser).

Only what bnrep trains with: one parameter group, SGD with momentum
(Nesterov when momentum > 0) and L2 weight decay, Adam with its default
betas and eps and L2 weight decay; no dampening, AMSGrad, maximize or
closure (a state saved with one is refused).
"""

from __future__ import annotations

import torch


_PLAIN = {"dampening": 0, "maximize": False, "amsgrad": False, "capturable": False, "differentiable": False,
          "decoupled_weight_decay": False}  # torch.optim's options, at the only values computed here


class _Optimizer:
    """One parameter group and per-parameter state, in torch.optim's state-dict layout."""

    def __init__(self, params, **hyper):
        self.params = list(params)
        self.param_groups = [{**hyper, "params": self.params}]  # the schedule writes group["lr"]
        self.state: dict[int, dict] = {}  # parameter index -> its state

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {i: dict(s) for i, s in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, sd: dict) -> None:
        """As torch.optim loads: tensors to their parameter's device and dtype, the group's values (lr,
        initial_lr, ...) as saved. Adam's step count goes to the CPU, where a fresh one is (torch.optim
        keeps it where a map_location put it; the value is the same). ValueError for a state saved
        with a variant these classes do not compute (dampening, maximize, AMSGrad, ...)."""
        (saved,) = sd["param_groups"]
        for key, value in _PLAIN.items():
            if saved.get(key, value) != value:
                raise ValueError(f"optimiser state saved with {key}={saved[key]!r}: bnrep.optim computes only "
                                 f"{key}={value!r}")
        if len(saved["params"]) != len(self.params):
            raise ValueError(f"optimiser state for {len(saved['params'])} parameters, the model has {len(self.params)}")
        self.param_groups[0].update({k: v for k, v in saved.items() if k != "params"})
        at = {int(pid): i for i, pid in enumerate(saved["params"])}  # saved id -> parameter, in order
        self.state = {}
        for pid, s in sd["state"].items():
            p = self.params[at[int(pid)]]
            self.state[at[int(pid)]] = {k: v.cpu() if k == "step" else v.to(device=p.device, dtype=p.dtype)
                                        if torch.is_tensor(v) else v for k, v in s.items()}

    def _grads(self) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        return idx, [self.params[i] for i in idx], [self.params[i].grad for i in idx]


class SGD(_Optimizer):
    """torch.optim.SGD(params, lr, momentum, nesterov=momentum > 0, weight_decay, foreach=True)."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, dampening=0, weight_decay=weight_decay,
                         nesterov=momentum > 0, maximize=False, foreach=True, differentiable=False, fused=None)

    @torch.no_grad()
    def step(self) -> None:
        g = self.param_groups[0]
        idx, params, grads = self._grads()
        if not params:
            return
        if g["weight_decay"] != 0:
            grads = torch._foreach_add(grads, params, alpha=g["weight_decay"])
        momentum = g["momentum"]
        if momentum != 0:
            bufs = [self.state.get(i, {}).get("momentum_buffer") for i in idx]
            if all(b is not None for b in bufs):
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads, alpha=1)
            else:  # the first step: the buffer is the gradient
                bufs = [grad.detach().clone() if b is None else b.mul_(momentum).add_(grad)
                        for b, grad in zip(bufs, grads)]
                for i, b in zip(idx, bufs):
                    self.state.setdefault(i, {})["momentum_buffer"] = b
            if g["nesterov"]:  # in place, as torch.optim (without weight decay: on the .grad tensors)
                torch._foreach_add_(grads, bufs, alpha=momentum)
            else:
                grads = bufs
        torch._foreach_add_(params, grads, alpha=-g["lr"])


class Adam(_Optimizer):
    """torch.optim.Adam(params, lr, weight_decay, foreach=True): betas (0.9, 0.999), eps 1e-8."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay, amsgrad=False,
                         maximize=False, foreach=True, capturable=False, differentiable=False, fused=None,
                         decoupled_weight_decay=False)

    @torch.no_grad()
    def step(self) -> None:
        g = self.param_groups[0]
        (beta1, beta2), lr = g["betas"], g["lr"]
        idx, params, grads = self._grads()
        if not params:
            return
        for i, p in zip(idx, params):
            if i not in self.state:  # as torch.optim: the step count a float32 CPU scalar
                self.state[i] = {"step": torch.tensor(0.0, dtype=torch.float32),
                                 "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                 "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        states = [self.state[i] for i in idx]
        steps = [s["step"] for s in states]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
        if g["weight_decay"] != 0:
            grads = torch._foreach_add(grads, params, alpha=g["weight_decay"])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        step_size = [(lr / (1 - beta1 ** s.item())) * -1 for s in steps]
        bias_correction2_sqrt = [(1 - beta2 ** s.item()) ** 0.5 for s in steps]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, g["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


class StepLR:
    """torch.optim.lr_scheduler.StepLR: every `step_size` epochs the group's lr is multiplied by gamma
    (the same chained product, not base_lr * gamma ** n, so the same float)."""

    def __init__(self, optimizer: _Optimizer, step_size: int, gamma: float):
        self.optimizer, self.step_size, self.gamma = optimizer, step_size, gamma
        group = optimizer.param_groups[0]
        group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"]]
        self.last_epoch = 0
        self._last_lr = [group["lr"]]

    def step(self) -> None:
        self.last_epoch += 1
        group = self.optimizer.param_groups[0]
        if self.last_epoch % self.step_size == 0:
            group["lr"] = group["lr"] * self.gamma
        self._last_lr = [group["lr"]]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {"step_size": self.step_size, "gamma": self.gamma, "base_lrs": list(self.base_lrs),
                "last_epoch": self.last_epoch, "_step_count": self.last_epoch + 1, "_last_lr": list(self._last_lr)}

    def load_state_dict(self, sd: dict) -> None:
        self.step_size, self.gamma, self.base_lrs = sd["step_size"], sd["gamma"], list(sd["base_lrs"])
        self.last_epoch, self._last_lr = sd["last_epoch"], list(sd["_last_lr"])

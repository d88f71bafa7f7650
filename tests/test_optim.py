"""bnrep.optim against torch.optim: the same weights bit for bit, step after step, and state dicts
that resume in either; training no longer imports torch._dynamo (what bnrep.optim is for)."""

import io
import subprocess
import sys

import pytest
import torch

from bnrep import optim
from bnrep.models import build_model

CASES = {  # name: (bnrep's, torch's), for the same parameters
    "sgd-nesterov-wd": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                                  foreach=True)),
    "sgd-nesterov": (lambda p: optim.SGD(p, lr=0.01, momentum=0.99),
                     lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.99, nesterov=True, foreach=True)),
    "sgd-plain": (lambda p: optim.SGD(p, lr=0.1),
                  lambda p: torch.optim.SGD(p, lr=0.1, foreach=True)),
    "sgd-wd": (lambda p: optim.SGD(p, lr=0.1, weight_decay=1e-3),
               lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-3, foreach=True)),
    "adam": (lambda p: optim.Adam(p, lr=1e-3),
             lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True)),
    "adam-wd": (lambda p: optim.Adam(p, lr=3e-3, weight_decay=1e-4),
                lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-4, foreach=True)),
}


def _model(seed=0):
    torch.manual_seed(seed)  # BatchNorm and a linear head; channels_last, as Trainer trains
    return build_model("cnn", "batch", 1, 10, (8, 8)).to(memory_format=torch.channels_last)


def _batches(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(10, (16,), generator=g)) for _ in range(n)]


def _train(model, opt, sched, batches, after=None):
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if after is not None and len(after) % 3 == 0:  # a parameter without a gradient is skipped, in both;
            list(model.parameters())[-1].grad = None  # from step 1: its momentum buffer starts later
        opt.step()
        sched.step()
        if after is not None:
            after.append(([p.detach().clone() for p in model.parameters()], opt.param_groups[0]["lr"]))


def _pair(name):
    ours, theirs = _model(), _model()
    mk_ours, mk_theirs = CASES[name]
    o, t = mk_ours(ours.parameters()), mk_theirs(theirs.parameters())
    return (ours, o, optim.StepLR(o, 3, 0.9)), (theirs, t, torch.optim.lr_scheduler.StepLR(t, 3, 0.9))


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_step_equals_torch_optim_bit_for_bit(name):
    (m1, o1, s1), (m2, o2, s2) = _pair(name)
    a, b = [], []
    _train(m1, o1, s1, _batches(), a)
    _train(m2, o2, s2, _batches(), b)
    assert len(a) == 8
    for step, ((pa, lra), (pb, lrb)) in enumerate(zip(a, b), 1):
        assert lra == lrb, step  # the schedule: 0.9x every 3 steps, the same float
        for i, (x, y) in enumerate(zip(pa, pb)):
            assert torch.equal(x, y), (step, i)
    assert s1.get_last_lr() == s2.get_last_lr() == [o2.defaults["lr"] * 0.9 * 0.9]  # after steps 3 and 6
    assert o1.state_dict()["param_groups"] == o2.state_dict()["param_groups"]  # torch.optim's layout
    mine, theirs = o1.state_dict()["state"], o2.state_dict()["state"]
    assert mine.keys() == theirs.keys() and all(
        mine[i].keys() == theirs[i].keys() and all(torch.equal(mine[i][k], theirs[i][k]) for k in mine[i])
        for i in mine)


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=True)  # as Trainer loads checkpoints


@pytest.mark.parametrize("name", ["sgd-nesterov-wd", "adam-wd"])
@pytest.mark.parametrize("writer", ["torch", "bnrep"])
def test_a_checkpoint_of_either_resumes_in_the_other(name, writer):
    (m1, o1, s1), (m2, o2, s2) = _pair(name)
    first, rest = _batches(8)[:4], _batches(8)[4:]
    if writer == "torch":  # torch trains 3 steps and checkpoints; bnrep resumes from it
        src, dst = (m2, o2, s2), (m1, o1, s1)
    else:
        src, dst = (m1, o1, s1), (m2, o2, s2)
    ref = _model()  # the writer's own optimiser, never interrupted
    ref_o = CASES[name][0 if writer == "bnrep" else 1](ref.parameters())
    ref_s = (optim.StepLR if writer == "bnrep" else torch.optim.lr_scheduler.StepLR)(ref_o, 3, 0.9)
    _train(*src, first)
    _train(ref, ref_o, ref_s, first)
    state = _roundtrip({"model": src[0].state_dict(), "opt": src[1].state_dict(), "sched": src[2].state_dict()})
    dst[0].load_state_dict(state["model"])
    dst[1].load_state_dict(state["opt"])
    dst[2].load_state_dict(state["sched"])
    assert dst[1].param_groups[0]["lr"] == src[1].param_groups[0]["lr"] == 0.9 * src[1].param_groups[0]["initial_lr"]
    assert dst[2].last_epoch == 4
    _train(*dst, rest)
    _train(ref, ref_o, ref_s, rest)
    for i, (x, y) in enumerate(zip(dst[0].parameters(), ref.parameters())):
        assert torch.equal(x, y), i
    assert dst[2].get_last_lr() == ref_s.get_last_lr()


@pytest.mark.parametrize("variant", [{"dampening": 0.1}, {"amsgrad": True}, {"maximize": True}])
def test_a_state_saved_with_a_variant_not_computed_here_is_refused(variant):
    name = "adam" if "amsgrad" in variant else "sgd-nesterov-wd"
    (_, ours, _), (_, theirs, _) = _pair(name)
    sd = theirs.state_dict()
    sd["param_groups"][0].update(variant)
    with pytest.raises(ValueError, match=next(iter(variant))):
        ours.load_state_dict(sd)


def test_training_does_not_import_torch_dynamo():
    code = """
import sys, torch
if "torch._dynamo" in sys.modules:
    print("imported by torch"); sys.exit(0)
from bnrep.experiments import get_experiment
from bnrep.data import load_data
from bnrep.train import Trainer
exp = get_experiment("synthetic-cnn").override(max_epochs=1)
for opt in ("sgd", "adam"):
    t = Trainer(exp.override(optimizer=opt), load_data(exp), "batch", {"lr": 0.01, "momentum": 0.9}, 0, device="cpu")
    t.step_epoch()
    t.load_checkpoint(t.save_checkpoint())
print("dynamo" if "torch._dynamo" in sys.modules else "clean")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out[-1] == "torch":
        pytest.skip("this torch imports torch._dynamo with torch")
    assert out[-1] == "clean"

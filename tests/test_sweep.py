"""The sweep's plan and scheduler: the configurations each condition searches, and ASHA within each
condition while every condition's trials share one Tune run."""

import math
from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from bnrep.experiments import get_experiment
from bnrep.stages.hparam import sampled
from bnrep.stages.schedule import PerCondition

ASHA = dict(time_attr="training_iteration", max_t=9, grace_period=1, reduction_factor=3)


def test_every_condition_searches_the_same_seeded_configurations_within_its_ranges():
    exp = get_experiment("digits-cnn").override(num_samples=6)
    bn, none = sampled(exp, "batch"), sampled(exp, "none")
    assert sampled(exp, "batch") == bn  # seeded
    assert [c.pop("norm") for c in bn] == ["batch"] * 6 and [c.pop("norm") for c in none] == ["none"] * 6
    assert bn == none  # paired: the same (lr, momentum) for every condition with the same ranges
    assert len({c["lr"] for c in bn}) == 6  # drawn, not repeated
    lo, hi = exp.lr_range
    assert all(lo <= c["lr"] <= hi and c["momentum"] in exp.momentum_choices for c in bn)
    other = exp.override(lr_range=(1e-5, 1e-4), split_seed=exp.split_seed + 1)
    assert all(1e-5 <= c["lr"] <= 1e-4 for c in sampled(other, "batch"))
    assert [c["lr"] for c in sampled(other, "batch")] != [c["lr"] for c in bn]
    # log-uniform: the log of the draws is spread over the log of the range (not bunched at its top)
    many = sampled(exp.override(num_samples=400), "batch")
    logs = sorted(math.log10(c["lr"]) for c in many)
    assert -3 <= logs[0] < -2.9 and -1.1 < logs[-1] <= -1 and -2.2 < logs[200] < -1.8


def trial(tid: str, norm: str):
    return SimpleNamespace(trial_id=tid, config={"run": {"norm": norm, "lr": 0.1}})


def decisions(scheduler, results):
    """The scheduler's answer to each (trial, iteration, objective) in turn."""
    scheduler.set_search_properties("objective", "max")
    seen, out = set(), []
    for t, it, obj in results:
        if t.trial_id not in seen:
            scheduler.on_trial_add(None, t)
            seen.add(t.trial_id)
        out.append(scheduler.on_trial_result(None, t, {"training_iteration": it, "objective": obj}))
    return out


def test_asha_stops_a_trial_only_against_trials_of_its_own_condition():
    b = [trial(f"b{i}", "batch") for i in range(3)]
    n = [trial(f"n{i}", "none") for i in range(2)]
    # three BatchNorm trials score high at the first rung, then the unnormalised ones score low
    results = [(b[0], 1, 0.9), (b[1], 1, 0.8), (b[2], 1, 0.7), (n[0], 1, 0.1), (n[1], 1, 0.05)]
    C, S = TrialScheduler.CONTINUE, TrialScheduler.STOP
    # one ASHA for all (what one Tune run with a plain scheduler would do): the unnormalised trials
    # are cut against the BatchNorm ones
    assert decisions(ASHAScheduler(**ASHA), results) == [C, S, S, S, S]  # (a rung's first result goes on)
    # per condition: each condition's rung holds its own trials only, as in a search of its own
    per = PerCondition({"batch": ASHA, "none": ASHA})
    assert decisions(per, results) == [C, S, S, C, S]
    alone = [decisions(ASHAScheduler(**ASHA), [r for r in results if r[0].config["run"]["norm"] == c])
             for c in ("batch", "none")]
    assert alone == [[C, S, S], [C, S]]
    assert set(per.by) == {"batch", "none"}


def test_each_condition_keeps_its_own_epoch_budget():
    per = PerCondition({"batch": ASHA, "none": {**ASHA, "max_t": 3}})
    t, u = trial("b", "batch"), trial("n", "none")
    assert decisions(per, [(t, 3, 0.5), (u, 3, 0.5)]) == [TrialScheduler.CONTINUE, TrialScheduler.STOP]

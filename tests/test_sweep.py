"""The sweep's plan and scheduler: the configurations each condition searches, and ASHA within each
condition while every condition's trials share one Tune run, in the plan's order so that the same
trials stop at the same epochs whatever order their results arrive in; and the order the grid starts its
models in."""

import heapq
import json
import math
import pickle
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from bnrep.experiments import get_experiment
from bnrep.stages.hparam import sampled
from bnrep.stages.schedule import UNKNOWN, PerCondition, stopped_at, stopped_results

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


def test_a_condition_that_fixes_lr_or_momentum_searches_that_value_with_the_others_draws():
    exp = get_experiment("digits-cnn").override(
        num_samples=6, conditions="batch; bn-lr:batch,lr=0.05; bn-m:batch,momentum=0.5; none")
    bn, fixed_lr, fixed_m = sampled(exp, "batch"), sampled(exp, "bn-lr"), sampled(exp, "bn-m")
    assert [c["lr"] for c in fixed_lr] == [0.05] * 6  # exactly the condition's, every trial
    assert [c["momentum"] for c in fixed_lr] == [c["momentum"] for c in bn]  # the other field: paired
    assert [c["momentum"] for c in fixed_m] == [0.5] * 6
    assert [c["lr"] for c in fixed_m] == [c["lr"] for c in bn]
    assert sampled(exp, "none") == [{**c, "norm": "none"} for c in bn]  # the rest unchanged


def trial(tid: str, norm: str, lr: float = 0.1):
    return SimpleNamespace(trial_id=tid, config={"run": {"norm": norm, "lr": lr}})


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


def plan(*trials):
    return [t.config["run"] for t in trials]


def test_asha_stops_a_trial_only_against_trials_of_its_own_condition():
    b = [trial(f"b{i}", "batch", 0.1 * i) for i in range(3)]
    n = [trial(f"n{i}", "none", 0.1 * i) for i in range(2)]
    # three BatchNorm trials score high at the first rung, then the unnormalised ones score low
    results = [(b[0], 1, 0.9), (b[1], 1, 0.8), (b[2], 1, 0.7), (n[0], 1, 0.1), (n[1], 1, 0.05)]
    C, S = TrialScheduler.CONTINUE, TrialScheduler.STOP
    # one ASHA for all (what one Tune run with a plain scheduler would do): the unnormalised trials
    # are cut against the BatchNorm ones
    assert decisions(ASHAScheduler(**ASHA), results) == [C, S, S, S, S]  # (a rung's first result goes on)
    # per condition: each condition's rung holds its own trials only, as in a search of its own
    per = PerCondition({"batch": ASHA, "none": ASHA}, plan(*b, *n))
    assert decisions(per, results) == [C, S, S, C, S]
    alone = [decisions(ASHAScheduler(**ASHA), [r for r in results if r[0].config["run"]["norm"] == c])
             for c in ("batch", "none")]
    assert alone == [[C, S, S], [C, S]]


def test_each_condition_keeps_its_own_epoch_budget():
    t, u = trial("b", "batch"), trial("n", "none")
    per = PerCondition({"batch": ASHA, "none": {**ASHA, "max_t": 3}}, plan(t, u))
    assert decisions(per, [(t, 3, 0.5), (u, 3, 0.5)]) == [TrialScheduler.CONTINUE, TrialScheduler.STOP]


# ==== the same trials stopped whatever the order results arrive in ====
def histories(rng, n: int, max_t: int) -> list[list[float]]:
    """Per trial, its objective after each epoch it trains unless stopped: some end early (they
    interpolate), some tie at a rung."""
    out = []
    for _ in range(n):
        end = int(rng.integers(1, max_t + 1)) if rng.random() < 0.4 else max_t
        out.append([float(rng.choice([0.5, 0.6, 0.7]) if rng.random() < 0.3 else rng.random()) for _ in range(end)])
    return out


def simulate(scheduler, trials, values, slots: int, rng) -> list[int]:
    """A Tune run in miniature: trials start in plan order on `slots` slots, each epoch takes a random
    time, and each result goes to the scheduler as it arrives. The last epoch each trial reported."""
    scheduler.set_search_properties("objective", "max")
    for t in trials:
        scheduler.on_trial_add(None, t)
    clock, events, queue, last = 0.0, [], list(range(len(trials))), [0] * len(trials)

    def start(i, at):
        heapq.heappush(events, (at + rng.exponential(), i))

    for _ in range(slots):
        if queue:
            start(queue.pop(0), clock)
    while events:
        clock, i = heapq.heappop(events)
        last[i] += 1
        result = {"training_iteration": last[i], "objective": values[i][last[i] - 1]}
        if last[i] == len(values[i]):  # its own stopping rule: the last report, then the function returns
            scheduler.on_trial_result(None, trials[i], result)
            scheduler.on_trial_complete(None, trials[i], result)
        elif scheduler.on_trial_result(None, trials[i], result) == TrialScheduler.STOP:
            scheduler.on_trial_complete(None, trials[i], result)
        else:
            start(i, clock)
            continue
        if queue:
            start(queue.pop(0), clock)
    return last


def outcome(trials, values, last, asha):
    """The epoch each trial's row reports (bnrep.stages.hparam.trials_table's view)."""
    results = [SimpleNamespace(config=t.config, metrics={"training_iteration": n, "objective": v[n - 1]},
                               metrics_dataframe=pd.DataFrame({"training_iteration": range(1, n + 1),
                                                               "objective": v[:n]}))
               for t, v, n in zip(trials, values, last)]
    return [m["training_iteration"] for m in stopped_results(results, asha, plan(*trials))]


@pytest.mark.parametrize("seed", range(6))
def test_the_same_trials_stop_at_the_same_epochs_whatever_order_their_results_arrive_in(seed):
    rng = np.random.default_rng(seed)
    spec = dict(time_attr="training_iteration", max_t=27, grace_period=1, reduction_factor=3)  # rungs 1, 3, 9, 27
    trials = [trial(f"t{i}", "batch", 0.01 * (i + 1)) for i in range(10)]
    values = histories(rng, len(trials), 27)
    # one slot: results arrive in plan order, and the decisions are Ray's ASHA's
    one = simulate(PerCondition({"batch": spec}, plan(*trials)), trials, values, 1, rng)
    assert one == simulate(ASHAScheduler(**spec), trials, values, 1, rng)
    assert outcome(trials, values, one, {"batch": spec}) == one
    # more slots, random epoch times: ASHA's outcome moves with the order; bnrep's does not
    seen_asha, seen_ours = set(), set()
    for slots in (2, 3, 4) * 8:
        seen_asha.add(tuple(simulate(ASHAScheduler(**spec), trials, values, slots, rng)))
        last = simulate(PerCondition({"batch": spec}, plan(*trials)), trials, values, slots, rng)
        assert all(a >= b for a, b in zip(last, one))  # it trained on at most, waiting on a trial before it
        seen_ours.add(tuple(outcome(trials, values, last, {"batch": spec})))
    assert seen_ours == {tuple(one)}
    assert len(seen_asha) > 1  # (else the schedules did not test the order)


def test_a_decision_waits_for_the_trials_planned_before_it():
    """The rule on its own: a trial at a rung is compared with the trials planned before it that reach
    it; it waits while one of them may still do so."""
    rungs = [1, 3]
    # t1 beats t0 at rung 1 and is behind it at 3; t2 reached rung 1 first, while t0 and t1 trained
    assert stopped_at([{}, {}, {1: 0.2}], [False] * 3, rungs, 3) == [None, None, UNKNOWN]
    assert stopped_at([{1: 0.5}, {}, {1: 0.2}], [False] * 3, rungs, 3) == [None, None, UNKNOWN]
    assert stopped_at([{1: 0.5}, {}, {1: 0.2}], [False, True, False], rungs, 3) == [None, None, 1]  # t1 ended
    assert stopped_at([{1: 0.5}, {1: 0.9}, {1: 0.2}], [False] * 3, rungs, 3) == [None, None, 1]
    assert stopped_at([{1: 0.5}, {1: 0.9}, {1: 0.95}], [False] * 3, rungs, 3) == [None, None, None]
    # at rung 3: t0 (0.5) and t1 (0.4): t1 is stopped there; t2 is compared with both
    h = [{1: 0.5, 3: 0.5}, {1: 0.9, 3: 0.4}, {1: 0.95, 3: 0.48}]
    assert stopped_at(h, [False] * 3, rungs, 3) == [None, 3, None]  # 0.48 >= the 2/3 quantile of (0.5, 0.4)
    # t1 stopped at rung 1 never reaches 3: t2 is compared with t0 alone there
    assert stopped_at([h[0], {1: 0.1, 3: 0.4}, h[2]], [False] * 3, rungs, 3) == [None, 1, 3]


def test_a_resumed_sweep_decides_with_what_its_trials_reported_before(tmp_path):
    """Tuner.restore adds a trial that ended before the interruption with its status only: the
    scheduler reads what it reported from its result.json, so the trials after it are compared with
    it as in the uninterrupted run."""
    from pyarrow import fs as pafs

    spec = dict(time_attr="training_iteration", max_t=9, grace_period=1, reduction_factor=3)
    first, second = trial("t0", "batch", 0.1), trial("t1", "batch", 0.2)
    reported = [{"training_iteration": e, "objective": v} for e, v in ((1, 0.9), (2, 0.95), (3, 0.97))]
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reported))
    first.status = "TERMINATED"
    first.storage = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), trial_fs_path=str(tmp_path))
    second.status = "PENDING"
    second.storage = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), trial_fs_path=str(tmp_path / "new"))
    resumed = PerCondition({"batch": spec}, plan(first, second))
    resumed.set_search_properties("objective", "max")
    for t in (first, second):
        resumed.on_trial_add(None, t)
    assert resumed.hist[0] == {1: 0.9, 3: 0.97} and resumed.hist[1] == {}
    C, S = TrialScheduler.CONTINUE, TrialScheduler.STOP
    results = [{"training_iteration": e, "objective": v} for e, v in ((1, 0.92), (2, 0.93), (3, 0.94))]
    assert [resumed.on_trial_result(None, second, r) for r in results] == [C, C, S]  # 0.94 < t0's 0.97 at 3
    # what the uninterrupted run decided: t0's results live, then t1's
    live = [(first, r["training_iteration"], r["objective"]) for r in reported]
    assert decisions(PerCondition({"batch": spec}, plan(first, second)),
                     live + [(second, r["training_iteration"], r["objective"]) for r in results])[3:] == [C, C, S]


def test_of_trials_that_tie_the_one_planned_first_is_best_whatever_order_tune_lists_them_in():
    from bnrep.stages.hparam import asha_spec, best_trial, trials_table

    exp = get_experiment("digits-cnn").override(num_samples=4)
    configs = sampled(exp, "none")
    asha = {"none": asha_spec(exp, "none")}
    scores = [0.90, 0.95, 0.95, 0.95]  # three tie on objective and validation accuracy

    def result(i):
        m = {"trial_id": f"t{i}", "training_iteration": 3, "epoch": 3, "objective": scores[i], "val_acc": scores[i]}
        return SimpleNamespace(config={"run": configs[i]}, metrics=m, error=None,
                               metrics_dataframe=pd.DataFrame([m]))

    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):  # a resumed run lists its trials in another order
        table = trials_table([result(i) for i in order], exp, asha, configs)
        assert list(table["trial_id"]) == ["t0", "t1", "t2", "t3"]
        assert best_trial(table, "nobn")["trial_id"] == "t1"


def test_equal_configurations_are_separate_trials():
    """A fixed learning rate and one momentum: every sample is the same configuration (they train
    alike); each trial still has a place of its own in the plan."""
    from bnrep.stages.hparam import asha_spec, trials_table

    exp = get_experiment("digits-cnn").override(num_samples=3, lr_range=(0.01, 0.01), momentum_choices=(0.9,))
    configs = sampled(exp, "none")
    assert configs[0] == configs[1] == configs[2]
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"run": dict(configs[i])}) for i in range(3)]
    spec = dict(time_attr="training_iteration", max_t=9, grace_period=1, reduction_factor=3)
    results = [(trials[0], 1, 0.5), (trials[1], 1, 0.4), (trials[2], 1, 0.6)]
    per = PerCondition({"none": spec}, configs)
    assert decisions(per, results) == decisions(ASHAScheduler(**spec), results)
    assert sorted(per.tid.values()) == [0, 1, 2]

    asha = {"none": asha_spec(exp, "none")}

    def result(i):
        m = {"trial_id": f"t{i}", "training_iteration": 2, "epoch": 2, "objective": 0.9, "val_acc": 0.9}
        return SimpleNamespace(config={"run": dict(configs[i])}, metrics=m, error=None,
                               metrics_dataframe=pd.DataFrame([m]))

    assert sorted(trials_table([result(i) for i in (2, 0, 1)], exp, asha, configs)["trial_id"]) == ["t0", "t1", "t2"]


@pytest.mark.slow
def test_in_tune_a_trial_ahead_of_one_planned_before_it_trains_on_then_keeps_its_rungs_results(tmp_path):
    """Real Tune on two slots. Trial 1 reaches the first rung while trial 0 holds back its first
    result until trial 1 has reported epoch 3 (files, no clock): trial 1 trains on meanwhile. Once
    trial 0 has reported, trial 1's next result is stopped (rung 1 decides against it) and its row
    holds its rung's results; Ray's ASHA would have kept it (it reached the rung first). Then the
    run's state, as a sweep begun by an earlier bnrep would have left it, is refused for resuming."""
    import ray
    from ray import tune

    plan = [{"norm": "batch", "lr": 0.1}, {"norm": "batch", "lr": 0.2}]
    spec = dict(time_attr="training_iteration", max_t=9, grace_period=1, reduction_factor=3)  # rungs 1, 3, 9

    def wait_for(path):
        for _ in range(60_000):  # (a cap only against a hang: the order comes from the files)
            if path.exists():
                return
            time.sleep(0.01)
        raise TimeoutError(path)

    def fn(config):
        me = plan.index(config["run"])
        for epoch in range(1, 10):
            if me == 0 and epoch == 1:
                wait_for(tmp_path / "t1-epoch3")
            if me == 1 and epoch == 4:
                wait_for(tmp_path / "t0-epoch1")
            tune.report({"objective": (0.9, 0.5)[me] + 0.001 * epoch})
            (tmp_path / f"t{me}-epoch{epoch}").write_text("")  # written once Tune took the result

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        grid = tune.Tuner(fn, param_space={"run": tune.grid_search(plan)},
                          tune_config=tune.TuneConfig(metric="objective", mode="max",
                                                      scheduler=PerCondition({"batch": spec}, plan)),
                          run_config=tune.RunConfig(storage_path=str(tmp_path / "runs/exp/hparam/tune"),
                                                    name="sweep", verbose=0)).fit()
    finally:
        ray.shutdown()
    results = sorted(grid, key=lambda r: plan.index(r.config["run"]))
    assert [r.error for r in results] == [None, None]
    assert [r.metrics["training_iteration"] for r in results] == [9, 4]  # trial 1 trained 3 epochs past rung 1
    rows = stopped_results(results, {"batch": spec}, plan)
    assert [(m["training_iteration"], m["objective"]) for m in rows] == [(9, 0.909), (1, 0.501)]

    # Tuner.restore resumes with the scheduler pickled in tuner.pkl: one from an earlier bnrep (Ray's
    # ASHA per condition, no plan) cannot resume, and the stage searches anew instead
    from bnrep.stages.tuning import tune_state_problem
    from bnrep.store import Store

    store, pkl = Store(str(tmp_path / "runs"), "exp"), tmp_path / "runs/exp/hparam/tune/sweep/tuner.pkl"
    assert tune_state_problem(store, "hparam/tune/sweep") is None
    state = pickle.loads(pkl.read_bytes())
    old = state["_tune_config"].scheduler
    for name in ("state_version", "plan", "hist", "ended", "tid", "out"):
        delattr(old, name)
    old.by = {}  # what bnrep 0.3.0's PerCondition held
    pkl.write_bytes(pickle.dumps(state))
    assert tune_state_problem(store, "hparam/tune/sweep") == (
        "an earlier bnrep began it, with a scheduler that keeps other state")


def test_the_best_trials_print_in_the_study_s_order_whatever_order_they_were_found_in(capsys):
    from bnrep.stages.hparam import print_best

    exp = get_experiment("digits-cnn").override(conditions="batch; bn-b8:batch,batch_size=8; none")
    row = dict(lr=0.01, momentum=0.9, epochs=3, val_acc=0.5, objective=0.5)
    print_best({t: row for t in ("nobn", "bn-b8", "bn")}, exp)  # (a resumed sweep adds its conditions last)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:3] == ["Best trial per condition", "condition         lr  momentum  epochs  val_acc  objective"]
    assert [line.split()[0] for line in lines[3:6]] == ["bn", "bn-b8", "nobn"]
    assert lines[6:] == ["objective: the validation accuracy at the epoch a trial first interpolated; val_acc - 1 for "
                         "one that never did (below every one that did); val_acc: at the trial's last epoch"]
    print_best({"bn": row}, get_experiment("cifar10-vgg16"))  # (the table never said what its objective was)
    assert capsys.readouterr().out.splitlines()[4] == ("objective: the best validation accuracy of the trial; "
                                                       "val_acc: at the trial's last epoch")


def test_tune_failing_on_a_full_disk_is_the_one_line_of_a_write(tmp_path, monkeypatch):
    """Tune's own state and checkpoints sit under --out: on a full disk tuner.fit() failed with pages of
    tracebacks ending in EOFError (an empty state file); it is StoreWriteError's one line now. A failure with
    room on the disk and no write error in it is raised as it was."""
    import errno
    import shutil
    from collections import namedtuple

    from bnrep.stages.tuning import fit
    from bnrep.store import Store, StoreWriteError

    store = Store(str(tmp_path / "runs"), "digits-cnn")

    class Tuner:
        def __init__(self, error):
            self.error = error

        def fit(self):
            raise self.error

    def failing(cause):
        try:
            raise cause
        except OSError:
            try:
                raise EOFError("Ran out of input")  # as Tune's result grid, on the way out
            except EOFError as e:
                return e

    usage = namedtuple("usage", "total used free")
    with pytest.raises(StoreWriteError, match=r"^cannot write .*runs/digits-cnn/train/tune/final: No space left on "
                                              r"device; free space or fix permissions there, then rerun the same "
                                              r"command \(results already written are kept\)$"):
        fit(Tuner(failing(OSError(errno.ENOSPC, "No space left on device"))), store, "train/tune/final")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100 * 2**20, 99 * 2**20, 2**20))  # 1 MiB left
    with pytest.raises(StoreWriteError, match=r": No space left on device \(1\.0 MiB free\); "):
        fit(Tuner(EOFError("Ran out of input")), store, "train/tune/final")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100 * 2**30, 2**30, 99 * 2**30))
    with pytest.raises(EOFError, match="Ran out of input"):
        fit(Tuner(EOFError("Ran out of input")), store, "train/tune/final")


def test_tune_s_tracebacks_of_saves_a_full_disk_failed_are_one_line_once(monkeypatch):
    import logging

    from bnrep import raysession

    monkeypatch.setattr(raysession, "_said_no_room", [])
    full = "Last sync command failed with the following error:\nTraceback ...\nOSError: [Errno 28] Error writing bytes"

    def record(msg):
        return logging.LogRecord("ray.train._internal.syncer", logging.WARNING, "syncer.py", 345, msg, (), None)

    first, second, other = record(full), record(full), record("Last sync command failed: [Errno 110] timed out")
    assert raysession._no_room(first) and first.getMessage() == ("Ray Tune could not save its state under --out: no "
                                                                 "space left on device")
    assert not raysession._no_room(second) and raysession._no_room(other) and "110" in other.getMessage()


def test_the_grid_starts_the_conditions_whose_best_trial_trained_longest_first(tmp_path):
    """The grid's models in the order Tune starts them: the condition whose best sweep trial trained the most
    epochs first (there a long model started last trained alone while the other slot idled), seeds in order
    within each; with --paper-hparams (no sweep) the order given."""
    from bnrep.stages.final import longest_first
    from bnrep.store import Store

    store = Store(str(tmp_path), "digits-cnn")
    store.write_json("hparam/best_hparams.json", {"bn": {"lr": 0.1, "momentum": 0.9, "epochs": 3},
                                                  "nobn": {"lr": 0.1, "momentum": 0.9, "epochs": 16},
                                                  "ln": {"lr": 0.1, "momentum": 0.9, "epochs": 7}})
    grid = [{"seed": s, "norm": n, "hparams": {}} for s in range(3) for n in ("batch", "none", "layer")]
    order = [(g["norm"], g["seed"]) for g in longest_first(grid, store, paper=False)]
    assert order == [("none", 0), ("none", 1), ("none", 2), ("layer", 0), ("layer", 1), ("layer", 2),
                     ("batch", 0), ("batch", 1), ("batch", 2)]
    assert longest_first(grid, store, paper=True) == grid


def test_conditions_whose_every_trial_failed_are_each_named_once_the_others_are_recorded(tmp_path):
    """A fault of the model's own code fails every trial of every condition alike: the stage's one line names
    each condition with no trial left, and the conditions with one are recorded first (a rerun keeps them). A
    trial whose epoch failed twice alike (its last result says so: not tried again) is a failed trial."""
    from bnrep.config import StageFailed
    from bnrep.stages.hparam import asha_spec, record_best, trials_table
    from bnrep.stages.tuning import RepeatedFailure
    from bnrep.store import Store
    from bnrep.train import DIVERGED

    exp = get_experiment("digits-cnn-norms").override(num_samples=2)
    plan = [c for n in exp.norms for c in sampled(exp, n)]
    asha = {n: asha_spec(exp, n) for n in exp.norms}
    crash = "Traceback (most recent call last):\n  ...\nRuntimeError: shapes cannot be multiplied (2x8 and 6x3)"
    again = {"condition": exp.norms[-1], "objective": DIVERGED,  # as bnrep.stages.hparam.trial reports it
             **RepeatedFailure(2, "ValueError: a batch of 3 images").result()}

    def result(config, ok):
        m = {"trial_id": f"t{plan.index(config)}", "training_iteration": 3, "epoch": 3, "objective": 0.9, "val_acc": 0.9}
        if config["norm"] == exp.norms[-1]:  # each of its trials failed twice alike in epoch 2
            m = {"trial_id": f"t{plan.index(config)}", "training_iteration": 2, "epoch": 1, "objective": 0.5,
                 "val_acc": 0.5}
            return SimpleNamespace(config={"run": config}, metrics={**again, "training_iteration": 3}, error=None,
                                   metrics_dataframe=pd.DataFrame([m, {**again, "training_iteration": 3}]))
        return SimpleNamespace(config={"run": config}, metrics=m if ok else {}, error=None if ok else crash,
                               metrics_dataframe=pd.DataFrame([m]) if ok else None)

    ok = {exp.norms[0]}  # the first condition's trials ran; every other condition's failed
    every = trials_table([result(c, c["norm"] in ok) for c in plan], exp, asha, plan)
    from bnrep.stages.hparam import written
    from bnrep.store import SWEEP_PLAN

    planned = Store(str(tmp_path / "planned"), exp.name)  # a restored sweep would hold those trials as ended:
    planned.write_json(SWEEP_PLAN, plan)  # the rerun, the model's code fixed, searches anew
    written([result(c, True) for c in plan if c["norm"] != exp.norms[-1]], planned)
    assert planned.exists(SWEEP_PLAN)
    written([result(c, c["norm"] in ok) for c in plan], planned)
    assert not planned.exists(SWEEP_PLAN)
    assert (every[every["condition"] == exp.norms[-1]]["error"] == "ValueError: a batch of 3 images").all()
    assert every[every["condition"] == exp.norms[-1]]["error"].size == 2
    store = Store(str(tmp_path), exp.name)
    with pytest.raises(StageFailed) as e:
        record_best(store, exp, every, list(exp.norms), {})
    from bnrep.norms import TAGS

    failed = [TAGS[n] for n in exp.norms[1:]]
    assert str(e.value) == (f"every trial of {', '.join(failed[:-1])} and {failed[-1]} failed ({failed[0]}: "
                            "RuntimeError: shapes cannot be multiplied (2x8 and 6x3))")
    assert list(store.read_json("hparam/best_hparams.json")) == [TAGS[exp.norms[0]]]
    assert store.has_part("hparam_trials", TAGS[exp.norms[0]]) and not store.has_part("hparam_trials", failed[0])
    with pytest.raises(StageFailed, match=f"^every trial of {failed[0]} failed \\(RuntimeError: shapes"):
        record_best(Store(str(tmp_path / "one"), exp.name), exp, every, list(exp.norms[:2]), {})
    with pytest.raises(StageFailed, match=f"^every trial of {failed[-1]} failed \\(ValueError: a batch of 3 images\\)$"):
        record_best(Store(str(tmp_path / "two"), exp.name), exp, every, [exp.norms[0], exp.norms[-1]], {})


def test_a_trial_that_failed_twice_alike_counts_as_failed_at_its_rungs():
    """Its end (a result with the error and the sweep's DIVERGED objective, at one more iteration) scored it at
    a rung it never finished: stopped_at then stopped a trial that an erred one (no result there) would not."""
    from bnrep.progress import FAILED_AGAIN
    from bnrep.stages.schedule import milestone_results
    from bnrep.train import DIVERGED

    spec = {"time_attr": "training_iteration", "max_t": 9, "grace_period": 1, "reduction_factor": 3}
    ended = {"training_iteration": 1, "objective": DIVERGED, FAILED_AGAIN: "ValueError: a batch of 3 images"}
    assert milestone_results([ended], spec, "objective") == {}
    assert milestone_results([{"training_iteration": 1, "objective": 0.5}, {**ended, "training_iteration": 2}],
                             spec, "objective") == {1: 0.5}
    # a table of results has the column as NaN in rows that are no such end: those count
    assert milestone_results([{"training_iteration": 1, "objective": 0.5, FAILED_AGAIN: float("nan")}], spec,
                             "objective") == {1: 0.5}
    histories = [{1: 0.9}, milestone_results([ended], spec, "objective"), {1: 0.5}]
    assert stopped_at(histories, [True] * 3, [1, 3, 9], 3) == stopped_at([{1: 0.9}, {}, {1: 0.5}], [True] * 3,
                                                                         [1, 3, 9], 3)

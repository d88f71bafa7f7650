"""The sweep's scheduler: ASHA within each condition, every condition in one Tune run, and the same
trials stopped at the same epochs in every run.

Ray's ASHAScheduler compares a trial at a rung with the trials whose result at that rung arrived
before its own: which trials those are depends on timing (two slots, trials of unequal speed), so two
runs of one seeded sweep could stop different trials and pick different hyperparameters. Here the
trials a trial is compared with are those before it in the sweep's plan (its configurations, in
order) that reach the rung: ASHA's rule (reduction factor rf: stopped below the 1 - 1/rf quantile of
those results) with the plan's order in place of the arrival order. When the arrival order is the
plan's, the decisions are ASHA's. A trial that reaches a rung before a trial planned before it has
settled there trains on, and is stopped at its next result if the rule stops it at that rung; its
results are then those of the rung (`stopped_results`, used by the sweep's table).

Imported when the sweep starts (it imports Ray Tune), not with the stage.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from bnrep.progress import failed_again

UNKNOWN = "unknown"  # a decision that waits for a trial planned earlier


def positions(configs: list[dict], plan: list[dict], taken: set | None = None) -> list[int]:
    """Plan position of each configuration; equal ones (a fixed lr and one momentum: every sample
    alike) take successive free positions."""
    taken, out = set(taken or ()), []
    for c in configs:
        p = next(p for p, q in enumerate(plan) if q == c and p not in taken)
        taken.add(p)
        out.append(p)
    return out


def rungs(spec: dict) -> list[int]:
    """ASHA's milestones (Ray's single bracket) for ASHAScheduler's arguments `spec`:
    grace_period * rf^k, k = 0, 1, ... up to max_t."""
    rf, first = spec["reduction_factor"], spec["grace_period"]
    return [first * rf ** k for k in range(int(np.log(spec["max_t"] / first) / np.log(rf) + 1))]


def decide(spec: dict, histories: list[dict], ended: list[bool]) -> list:
    """stopped_at for one condition's trials under ASHAScheduler's arguments `spec`."""
    return stopped_at(histories, ended, rungs(spec), spec["reduction_factor"])


def stopped_at(histories: list[dict], ended: list[bool], milestones: list[int], rf: float) -> list:
    """The rule itself, for the trials of one condition in plan order: per trial, the milestone it is
    stopped at, None (not stopped so far), or UNKNOWN (it waits on a trial planned earlier).

    histories[t]: milestone -> its result there (higher is better), for the milestones it reached;
    ended[t]: it will report nothing more (finished, failed or removed)."""
    n = len(histories)
    out: list = [None] * n
    for r in milestones:
        present: list = []  # per trial at r: its value, False (never reaches r) or UNKNOWN
        for t in range(n):
            if out[t] == UNKNOWN:  # may or may not have gone on to r
                present.append(UNKNOWN)
            elif out[t] is not None or r not in histories[t]:  # stopped before r; or not at r yet
                present.append(False if out[t] is not None or ended[t] else UNKNOWN)
            else:
                v = histories[t][r]
                before = present[:t]
                if UNKNOWN in before:
                    out[t] = UNKNOWN
                elif v < _cutoff([p for p in before if p is not False], rf):
                    out[t] = r
                present.append(v)
    return out


def _cutoff(recorded: list[float], rf: float) -> float:
    """ASHA's cutoff: the 1 - 1/rf quantile of the results recorded at a rung (-inf: none)."""
    with warnings.catch_warnings():  # every result NaN: nanpercentile warns, and nothing is stopped
        warnings.simplefilter("ignore", RuntimeWarning)
        c = np.nanpercentile(recorded, (1 - 1 / rf) * 100) if recorded else -math.inf
    return -math.inf if np.isnan(c) else float(c)


class PerCondition(FIFOScheduler):
    """ASHA within each condition in plan order: a trial is stopped early only against the trials of
    its own condition planned before it, as if each condition had its own search, while all of them
    share one Tune run (one start of the trial processes, and no slot idles at the end of one
    condition's search while another waits)."""

    # Tuner.restore resumes with the scheduler pickled when the sweep began: one pickled by an
    # earlier bnrep (1: Ray's ASHA per condition, no plan) cannot resume (bnrep.stages.tuning)
    STATE_VERSION = 2

    def __init__(self, asha: dict[str, dict], plan: list[dict]):
        # asha: condition -> ASHAScheduler's arguments (time_attr, max_t, grace_period, reduction_factor);
        # plan: every trial's config["run"], in the order the sweep lists them
        super().__init__()
        self.state_version = self.STATE_VERSION
        self.asha, self.plan, self._mode = asha, plan, None
        self.hist: dict[int, dict] = {}  # plan index -> milestone -> the trial's (signed) result there
        self.ended: dict[int, bool] = {}
        self.tid: dict[str, int] = {}  # trial id -> plan index
        self.out: dict[int, object] = {}  # plan index -> stopped_at's answer

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def _index(self, trial) -> int:
        i = self.tid.get(trial.trial_id)
        if i is None:  # equal configurations (a fixed lr): the next free position (they train alike)
            i = self.tid[trial.trial_id] = positions([trial.config["run"]], self.plan, set(self.tid.values()))[0]
            self.hist[i] = _reported(trial, self.asha[trial.config["run"]["norm"]], self._metric, self._sign())
        return i

    def _sign(self) -> float:
        return -1.0 if self._mode == "min" else 1.0

    def _record(self, trial, result: dict | None, ended: bool) -> int:
        i = self._index(trial)
        spec = self.asha[trial.config["run"]["norm"]]
        for r, v in milestone_results([result] if result else [], spec, self._metric, self._sign()).items():
            self.hist[i].setdefault(r, v)  # the first result at or past each milestone
        self.ended[i] = ended
        self._decide(trial.config["run"]["norm"])
        return i

    def _decide(self, norm: str) -> None:
        spec = self.asha[norm]
        idx = [i for i, c in enumerate(self.plan) if c["norm"] == norm]
        self.out.update(zip(idx, decide(spec, [self.hist.get(i, {}) for i in idx],
                                        [self.ended.get(i, False) for i in idx])))

    def on_trial_add(self, tune_controller, trial):
        self._record(trial, None, getattr(trial, "status", None) in ("TERMINATED", "ERROR"))  # restored: its history

    def on_trial_error(self, tune_controller, trial):
        self._record(trial, None, True)  # (a retried trial is added again)

    def on_trial_result(self, tune_controller, trial, result):
        i = self._record(trial, result, False)
        spec = self.asha[trial.config["run"]["norm"]]
        stop = result.get(spec["time_attr"], 0) >= spec["max_t"] or self.out[i] not in (None, UNKNOWN)
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result):
        self._record(trial, result, True)

    def on_trial_remove(self, tune_controller, trial):
        self._record(trial, None, True)

    def debug_string(self) -> str:
        return "\n".join(f"{c['norm']} {c.get('lr')}: {self.out.get(i)}" for i, c in enumerate(self.plan))


def _reported(trial, spec: dict, metric: str, sign: float) -> dict:
    """Milestone -> result of what a trial restored from an interrupted run reported before (its
    result.json in the run's storage); {} for a new trial."""
    storage = getattr(trial, "storage", None)
    if storage is None:
        return {}
    try:
        with storage.storage_filesystem.open_input_stream(f"{storage.trial_fs_path}/result.json") as f:
            results = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
    except (OSError, RuntimeError):  # none yet (a new trial, or no directory yet)
        return {}
    return milestone_results(results, spec, metric, sign)


def milestone_results(results: list[dict], spec: dict, metric: str, sign: float = 1.0) -> dict:
    """Milestone -> the first result at or past it, of a trial's results in order (signed). A trial's end
    after its epoch failed twice alike (bnrep.progress.failed_again) is no result: such a trial counts as one
    that failed, at the rungs it had reached."""
    out: dict = {}
    milestones = rungs(spec)
    for res in results:
        if spec["time_attr"] in res and metric in res and not failed_again(res):
            for r in milestones:
                if res[spec["time_attr"]] >= r and r not in out:
                    out[r] = sign * float(res[metric])
    return out


def stopped_results(results: list, asha: dict[str, dict], plan: list[dict], metric: str = "objective") -> list[dict]:
    """Per Tune result (of a finished sweep, mode max): its metrics, or those at the rung the rule
    stopped it at when it trained past that rung (it waited there on a trial planned before it)."""
    index = positions([r.config["run"] for r in results], plan)
    history = [[] if r.metrics_dataframe is None else r.metrics_dataframe.to_dict("records") for r in results]
    at: dict[int, object] = {}
    for norm, spec in asha.items():
        mine = sorted((i, k) for k, i in enumerate(index) if plan[i]["norm"] == norm)
        answer = decide(spec, [milestone_results(history[k], spec, metric) for _, k in mine], [True] * len(mine))
        at.update({k: a for (_, k), a in zip(mine, answer)})
    out = []
    for k, r in enumerate(results):
        metrics, spec = r.metrics or {}, asha[plan[index[k]]["norm"]]
        rung = at.get(k)
        if rung not in (None, UNKNOWN) and metrics.get(spec["time_attr"], 0) > rung:
            metrics = next(res for res in history[k] if res.get(spec["time_attr"], 0) >= rung)
        out.append(metrics)
    return out

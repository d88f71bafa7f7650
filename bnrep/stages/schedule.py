"""The sweep's scheduler: ASHA within each condition, every condition in one Tune run.

Imported when the sweep starts (it imports Ray Tune), not with the stage.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


class PerCondition(FIFOScheduler):
    """ASHA within each condition: a trial is stopped early only against trials of its own condition,
    as if each condition had its own search, while all of them share one Tune run (one start of the
    trial processes, and no slot idles at the end of one condition's search while another waits)."""

    def __init__(self, asha: dict[str, dict]):
        super().__init__()  # asha: condition -> ASHAScheduler's arguments (its epoch budget, its rungs)
        self.asha, self.by, self._mode = asha, {}, None

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return all(s.set_search_properties(metric, mode, **spec) for s in self.by.values())

    def of(self, trial):
        norm = trial.config["run"]["norm"]
        if norm not in self.by:
            self.by[norm] = ASHAScheduler(metric=self._metric, mode=self._mode, **self.asha[norm])
        return self.by[norm]

    def on_trial_add(self, tune_controller, trial):
        self.of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self.of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self.of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self.of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self.of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{norm}: {s.debug_string()}" for norm, s in self.by.items())

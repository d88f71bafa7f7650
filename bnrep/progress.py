"""What a running stage shows: the trials in flight, tasks done, time left.

On a terminal, a block of lines rewritten in place (one per running trial:
epoch / max epochs, last validation accuracy, elapsed time, and an estimate
of what remains); in a log file, one line per trial per minute at most. A
finished trial always gets one permanent line.
"""

from __future__ import annotations

import contextlib
import sys
import time

from bnrep.config import StageFailed
from bnrep.datasets import one_line
from bnrep.store import write_error

LOG_EVERY_S = 60.0  # log files: at most one line per trial per this many seconds
REDRAW_S = 1.0  # terminals: redraw the block at most this often
FAILED_AGAIN = "failed_again"  # a trial's last result: its epoch failed as on its last try (the error, one line)


def failed_again(result: dict) -> str:
    """The error of a result that ends a trial whose epoch failed twice alike, else "" (a table of a trial's
    results has the column as NaN in the others)."""
    v = (result or {}).get(FAILED_AGAIN)
    return v if isinstance(v, str) else ""


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class TrialBoard:
    """The state behind the display: running trials, finished count, time estimate."""

    def __init__(self, stage: str, total: int, max_epochs: int, clock=time.monotonic):
        self.stage, self.total, self.max_epochs, self.clock = stage, total, max_epochs, clock
        self.t0, self.done = clock(), 0
        self.running: dict[str, dict] = {}  # trial id -> label, epoch, val_acc, start
        self.epoch_seconds, self.epochs_seen = 0.0, 0

    def start(self, tid: str, label: str, cap: int | None = None) -> None:
        """A trial began; `cap`: its own epoch limit (a condition's max_epochs), at most max_epochs."""
        self.running.setdefault(tid, {"label": label, "epoch": 0, "val_acc": float("nan"), "cap": cap or self.max_epochs,
                                      "start": self.clock(), "last": self.clock()})

    def result(self, tid: str, label: str, epoch: int, val_acc: float, cap: int | None = None) -> None:
        self.start(tid, label, cap)
        r, now = self.running[tid], self.clock()
        if epoch > r["epoch"]:
            self.epoch_seconds += now - r["last"]
            self.epochs_seen += epoch - r["epoch"]
        r.update(epoch=epoch, val_acc=val_acc, last=now)

    def finish(self, tid: str) -> None:
        self.running.pop(tid, None)
        self.done += 1

    def remaining_s(self) -> float | None:
        """Upper bound: every unfinished trial runs to max epochs, as many at once as now."""
        if not self.epochs_seen:
            return None
        per_epoch = self.epoch_seconds / self.epochs_seen
        pending = max(0, self.total - self.done - len(self.running))
        epochs = sum(r["cap"] - r["epoch"] for r in self.running.values()) + pending * self.max_epochs
        return per_epoch * epochs / max(1, len(self.running))

    def lines(self) -> list[str]:
        now = self.clock()
        left = self.remaining_s()
        head = (f"[{self.stage}] {self.done}/{self.total} done, {len(self.running)} running, "
                f"{_duration(now - self.t0)} elapsed" + (f", at most ~{_duration(left)} left" if left else ""))
        return [head] + [self.line(r, now) for r in self.running.values()]

    def line(self, r: dict, now: float) -> str:
        acc = "" if r["val_acc"] != r["val_acc"] else f", val_acc {r['val_acc']:.4f}"
        return f"  {r['label']}: epoch {r['epoch']}/{r['cap']}{acc}, {_duration(now - r['start'])}"


def tune_progress(stage: str, total: int, caps: dict[str, int], label, describe, stream=None, clock=time.monotonic):
    """A Tune callback showing `TrialBoard`; `caps`: each condition's epoch limit (a trial's condition is
    its config's run.norm); `label(config) -> str` names a trial, `describe(config, last_result) -> str`
    says what a finished one achieved."""
    max_epochs = max(caps.values())

    def cap(config: dict) -> int:
        return caps.get(config.get("run", {}).get("norm"), max_epochs)

    from ray import tune

    class Progress(tune.Callback):
        def __init__(self):
            self.board = TrialBoard(stage, total, max_epochs, clock)
            self.drawn, self.last_draw, self.logged = 0, 0.0, {}

        # Tune pickles its callbacks with the experiment state: the stream is looked up when
        # printing, never kept (a captured sys.stdout does not pickle)
        @property
        def out(self):
            return stream or sys.stdout

        @property
        def tty(self) -> bool:
            return self.out.isatty()

        def _erase(self) -> None:
            if self.tty and self.drawn:
                self.out.write(f"\x1b[{self.drawn}F\x1b[J")  # up to the block's first line, clear below
                self.drawn = 0

        def _print(self, line: str) -> None:
            self._erase()
            print(line, file=self.out, flush=True)

        def _draw(self, force: bool = False) -> None:
            now = clock()
            if not self.tty or (not force and now - self.last_draw < REDRAW_S):
                return
            self._erase()
            lines = self.board.lines()
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
            self.drawn, self.last_draw = len(lines), now

        def setup(self, **info):  # at every Tune run's start, a resumed one's too (this object is then unpickled)
            self.board = TrialBoard(stage, total, max_epochs, clock)  # its time and count, not the first run's
            self.drawn, self.last_draw, self.logged, self.counted = 0, 0.0, {}, False

        def on_step_begin(self, iteration, trials, **info):
            if not self.counted:  # a resumed run: the trials an interrupted one finished count as done
                self.board.done, self.counted = sum(t.status in ("TERMINATED", "ERROR") for t in trials), True

        def on_trial_start(self, iteration, trials, trial, **info):
            self.board.start(trial.trial_id, label(trial.config), cap(trial.config))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if failed_again(result):  # no epoch: the trial's end (on_trial_complete) says it
                return
            tid = trial.trial_id
            self.board.result(tid, label(trial.config), int(result.get("epoch", 0)),
                              float(result.get("val_acc", float("nan"))), cap(trial.config))
            now = clock()
            if not self.tty and (tid not in self.logged or now - self.logged[tid] >= LOG_EVERY_S):
                self.logged[tid] = now
                r = self.board.running[tid]
                print(f"[{stage}] " + self.board.line(r, now).strip(), file=self.out, flush=True)

        def on_step_end(self, iteration, trials, **info):
            self._draw()

        def _end(self, trial, what: str) -> None:
            self.board.finish(trial.trial_id)
            self._print(f"[{stage}] {self.board.done}/{total} {what} ({clock() - self.board.t0:.0f} s)")
            self._draw(force=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            if failed_again(r):  # (bnrep.stages.tuning.RepeatedFailure)
                n, epoch = trial.run_metadata.num_failures + 1, r.get("failed_epoch", "?")
                how = f"twice in epoch {epoch}" if n == 2 else f"{n} times, the last two in epoch {epoch}"
                self._end(trial, f"{label(trial.config)} failed {how} with the same error ({failed_again(r)}): not "
                                 f"tried again (its training is seeded, so a try fails alike); see "
                                 f"{trial.local_path or 'the Tune logs'}")
            else:
                self._end(trial, describe(trial.config, r))

        def on_trial_recover(self, iteration, trials, trial, **info):  # Tune's traceback is quieted
            tries = trial.run_metadata.num_failures + 1
            since = "its last checkpoint" if trial.checkpoint is not None else "the start (no checkpoint yet)"
            self._print(f"[{stage}] {label(trial.config)} failed ({last_error(trial)}); restarting it from "
                        f"{since}, try {tries} of {trial.max_failures + 1} (its log: "
                        f"{trial.local_path or 'the Tune logs'})")
            self._draw(force=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            n = trial.run_metadata.num_failures
            self._end(trial, f"{label(trial.config)} failed{f' {n} times' if n > 1 else ''} ({last_error(trial)}): "
                             f"see {trial.local_path or 'the Tune logs'}")

        def on_experiment_end(self, trials, **info):
            self._erase()

    return Progress()


def last_error(trial) -> str:
    """The last line of a Tune trial's latest error (its error file, which Tune writes before it tells the
    callbacks): the exception as raised, one line."""
    try:
        with open(trial.error_file or "", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    return one_line(text) if text.strip() else "its error is in its log"


def wait_tasks(ray, pending: list, stage: str, stream=None, stopping=None, names: dict | None = None) -> None:
    """Block until every Ray task is done, showing a counter; raise the first error.
    A live counter on a terminal, a line per tenth of the tasks in a log. `stopping`: how the tasks are
    told to stop (stop_tasks). A task that raised (a researcher's model failing in its forward pass) or
    whose process died for good is StageFailed, one line naming the task (`names`: ref -> what it does)
    and its error, not Ray's traceback of the task."""
    out = stream or sys.stdout
    total, done, t0 = len(pending), 0, time.monotonic()
    tty, step = out.isatty(), max(1, total // 10)
    while pending:
        ready = []
        try:
            ready, pending = ray.wait(pending, num_returns=1, timeout=None)
            ray.get(ready)
        except BaseException as e:  # a failed task, Ctrl-C: stop the others before the stage ends
            stop_tasks(ray, pending, stopping=stopping)
            if isinstance(e, Exception) and write_error(e):  # disk full: its one line, not Ray's traceback
                raise write_error(e) from None
            if isinstance(e, ray.exceptions.RayError):
                raise task_failed(e, stage, (names or {}).get(ready[0]) if ready else None) from None
            raise
        done += len(ready)
        elapsed = time.monotonic() - t0
        left = f", ~{_duration(elapsed / done * (total - done))} left" if done < total else ""
        line = f"[{stage}] {done}/{total} tasks done ({elapsed:.0f} s{left})"
        if tty:
            print("\r\x1b[K" + line, end="\n" if done == total else "", file=out, flush=True)
        elif done % step == 0 or done == total:
            print(line, file=out, flush=True)


def task_failed(e: BaseException, stage: str, name: str | None) -> StageFailed:
    """One line for a failed task: what it did, its error's type and last line, what is kept."""
    cause = getattr(e, "cause", None) or e  # a task's own exception, under Ray's RayTaskError
    return StageFailed(f"{stage} task{f' {name}' if name else ''} failed: {type(cause).__name__}: "
                       f"{one_line(cause)}; the other tasks were stopped and every part written is kept "
                       f"(rerun the same command to resume once it is fixed)")


def stop_tasks(ray, pending: list, grace_s: float = 10, timeout_s: float = 60, stopping=None) -> None:
    """Stop the tasks still running or queued before the stage ends, so that none writes after it.

    With `stopping` (a function of a bool; the analysis: the writer lock's bnrep.lock.Lock.set_stopping),
    the tasks are told to stop: one that starts from now on returns at once, writing nothing, and one
    already running finishes its part. Without it, as a Ctrl-C would: `ray.cancel` raises KeyboardInterrupt
    in each running task, which unwinds it (its `finally` blocks run); a queued task never starts. (Ray
    2.60's driver can abort on that cancellation when a task completes at the same moment, "Tried to
    complete task that was not pending": seen in 2 of 6 Ctrl-Cs amid the analysis' tasks, so the analysis
    tells its tasks instead.) A task still not done after `grace_s` (a long part, or one native call) has
    its worker process killed (force); Ray may report that before the process is gone, so such a task's
    last temporary file can outlive the stage (the next lock holder removes it)."""
    if not pending:
        return
    told = False
    if stopping is not None:
        with contextlib.suppress(Exception):  # (the lock's record not writable: a full disk) cancel instead
            stopping(True)
            told = True
    if not told:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
    with contextlib.suppress(Exception):
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=grace_s)
    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    if pending:
        with contextlib.suppress(Exception):
            ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
    if told:
        with contextlib.suppress(Exception):
            stopping(False)

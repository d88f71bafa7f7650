"""What a running stage prints: the live trial block on a terminal, at most a
line per trial per minute in a log, a time estimate; driven with a fake clock."""

import io
import sys
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray

from bnrep.progress import LOG_EVERY_S, TrialBoard, stop_tasks, tune_progress, wait_tasks
from bnrep.raysession import ray_session
from bnrep.store import StoreWriteError
from tests.processes import alive


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def trial(tid, seed):
    return SimpleNamespace(trial_id=tid, config={"seed": seed}, last_result={"acc": 0.5}, local_path="/x")


def callback(stream, clock):
    return tune_progress("final", 3, {"batch": 10}, lambda c: f"model s{c['seed']}", lambda c, r: f"done acc {r['acc']}",
                         stream=stream, clock=clock)


def test_board_estimates_an_upper_bound_of_the_time_left():
    clock = Clock()
    b = TrialBoard("final", total=3, max_epochs=10, clock=clock)
    b.start("a", "model s0")
    b.start("b", "model s1")
    assert b.remaining_s() is None  # no epoch seen yet: no estimate
    clock.t += 4
    b.result("a", "model s0", 1, 0.5)  # 4 s per epoch
    b.result("b", "model s1", 2, 0.6)  # 2 epochs in 4 s
    # 3 epochs in 8 s; left: 9 + 8 epochs running, 10 for the pending trial, 2 at a time
    assert b.remaining_s() == (8 / 3) * (9 + 8 + 10) / 2
    assert b.lines() == ["[final] 0/3 done, 2 running, 4s elapsed, at most ~36s left",
                         "  model s0: epoch 1/10, val_acc 0.5000, 4s",
                         "  model s1: epoch 2/10, val_acc 0.6000, 4s"]
    b.finish("a")
    assert b.done == 1 and list(b.running) == ["b"]


def test_each_trial_shows_its_own_condition_s_epoch_limit():
    """A condition with its own max_epochs (2) shows it, and the time left counts its epochs, not the study's."""
    clock, log = Clock(), io.StringIO()
    cb = tune_progress("final", 2, {"batch": 10, "bn-e2": 2}, lambda c: c["run"]["norm"], lambda c, r: "done",
                       stream=log, clock=clock)
    short, long = (SimpleNamespace(trial_id=n, config={"run": {"norm": n, "seed": 0}}, last_result={}, local_path="/x")
                   for n in ("bn-e2", "batch"))
    for t in (short, long):
        cb.on_trial_start(0, [], t)
    clock.t += 4
    for t in (short, long):
        cb.on_trial_result(0, [], t, {"epoch": 1, "val_acc": 0.5})
    assert log.getvalue().splitlines() == ["[final] bn-e2: epoch 1/2, val_acc 0.5000, 4s",
                                           "[final] batch: epoch 1/10, val_acc 0.5000, 4s"]
    assert cb.board.remaining_s() == 4 * (1 + 9) / 2  # 4 s an epoch; 1 + 9 epochs left, 2 at a time


def test_log_gets_at_most_one_line_per_trial_per_minute():
    clock, log = Clock(), io.StringIO()
    cb = callback(log, clock)
    t = trial("a", 0)
    cb.on_trial_start(0, [], t)
    for epoch in range(1, 6):  # five epochs within a minute: one line
        clock.t += 10
        cb.on_trial_result(0, [], t, {"epoch": epoch, "val_acc": 0.1 * epoch})
        cb.on_step_end(0, [])
    clock.t += LOG_EVERY_S
    cb.on_trial_result(0, [], t, {"epoch": 6, "val_acc": 0.6})
    cb.on_trial_complete(0, [], t)
    assert log.getvalue().splitlines() == [
        "[final] model s0: epoch 1/10, val_acc 0.1000, 10s",
        "[final] model s0: epoch 6/10, val_acc 0.6000, 1m50s",
        "[final] 1/3 done acc 0.5 (110 s)"]


def test_a_finished_sweep_trial_is_named_by_its_configured_rate():
    """The sweep's line for a finished trial gives the rate the trial was configured with (hparam_trials'
    and best_hparams.json's), not the decayed rate of its last epoch that its last result reports."""
    from bnrep.stages.hparam import describe_config, describe_trial

    log = io.StringIO()
    cb = tune_progress("hparam", 2, {"batch": 60}, describe_config, describe_trial, stream=log, clock=Clock())
    t = SimpleNamespace(trial_id="a", config={"run": {"norm": "batch", "lr": 0.000814, "momentum": 0.9}},
                        last_result={"lr": 0.000806, "epoch": 2, "val_acc": 0.5, "condition": "batch"}, local_path="/x")
    cb.on_trial_start(0, [], t)
    cb.on_trial_complete(0, [], t)
    assert log.getvalue().splitlines()[-1] == "[hparam] 1/2 trials done; last: bn lr 0.000814, 2 epochs, val_acc 0.5000 (0 s)"


def test_a_resumed_run_counts_from_its_own_start_and_the_trials_done_before():
    """Tune restores the interrupted run's callback (pickled with its state) and sets it up again: the
    elapsed time is this run's, and the model the interrupted run finished counts as done."""
    clock, log = Clock(), io.StringIO()
    cb = callback(log, clock)
    cb.setup()
    a, b = trial("a", 0), trial("b", 1)
    cb.on_step_begin(0, [])
    cb.on_trial_start(0, [], a)
    clock.t += 30
    cb.on_trial_complete(0, [], a)  # then the run is interrupted
    clock.t += 1000
    cb.setup()  # the resumed run
    cb.on_step_begin(0, [SimpleNamespace(status="TERMINATED"), SimpleNamespace(status="PENDING")])
    cb.on_trial_start(0, [], b)
    clock.t += 5
    cb.on_trial_complete(0, [], b)
    assert log.getvalue().splitlines() == ["[final] 1/3 done acc 0.5 (30 s)", "[final] 2/3 done acc 0.5 (5 s)"]


def test_terminal_block_is_rewritten_in_place():
    clock, term = Clock(), Terminal()
    cb = callback(term, clock)
    a, b = trial("a", 0), trial("b", 1)
    cb.on_trial_start(0, [], a)
    cb.on_trial_start(0, [], b)
    clock.t += 2
    cb.on_trial_result(0, [], a, {"epoch": 1, "val_acc": 0.5})
    cb.on_step_end(0, [])  # draws a head line and two trial lines
    clock.t += 2
    cb.on_trial_complete(0, [], a)  # erases the block, prints the permanent line, redraws
    text = term.getvalue()
    first, rest = text.split("\x1b[3F\x1b[J", 1)  # the 3-line block erased once
    assert "model s0: epoch 1/10" in first and "model s1: epoch 0/10" in first
    assert rest.startswith("[final] 1/3 done acc 0.5 (4 s)\n")
    assert "model s0" not in rest.split("\n", 1)[1]  # the finished trial left the block


def test_a_failed_task_stops_the_others_before_the_stage_ends(tmp_path):
    """A task that cannot write ends the stage with its one line; a task still running then has
    stopped, its `finally` run, before wait_tasks returns (so it writes nothing after the stage ends),
    and is not retried."""
    started, stopped = tmp_path / "started", tmp_path / "stopped"

    @ray.remote(max_retries=3)
    def busy(started, stopped):
        Path(started).write_text(str(os.getpid()))
        try:
            while True:  # Python between short calls, as the analysis' tasks run
                time.sleep(0.01)
        finally:
            Path(stopped).write_text(str(os.getpid()))

    @ray.remote
    def full_disk(path):
        while not os.path.exists(path):
            time.sleep(0.01)
        raise StoreWriteError("cannot write results/x.parquet: No space left on device")

    with ray_session(None):  # as bnrep starts Ray (its workers interruptible even if this process ignores SIGINT)
        refs = [busy.remote(str(started), str(stopped)), full_disk.remote(str(started))]
        with pytest.raises(StoreWriteError, match="^cannot write results/x.parquet: No space left on device$"):
            wait_tasks(ray, refs, "analysis", stream=io.StringIO())
        assert stopped.read_text() == started.read_text()  # unwound in its own process, before the return
        with pytest.raises(ray.exceptions.TaskCancelledError):  # cancelled, not retried
            ray.get(refs[0], timeout=60)


def test_a_task_that_raises_is_one_line_naming_it():
    """A researcher's model failing in its forward pass inside an analysis task: StageFailed (exit 1),
    one line naming the task and the error, not Ray's traceback of the task (70 lines)."""
    from bnrep.config import StageFailed

    @ray.remote(max_retries=3)  # (Ray retries a task whose process died, not one that raised)
    def forward():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x10 and 12x3)")

    with ray_session(None):
        ref = forward.remote()
        with pytest.raises(StageFailed) as e:
            wait_tasks(ray, [ref], "analysis", stream=io.StringIO(), names={ref: "measuring m-s0 conv2"})
    assert str(e.value) == ("analysis task measuring m-s0 conv2 failed: RuntimeError: mat1 and mat2 shapes cannot be "
                            "multiplied (64x10 and 12x3); the other "
                            "tasks were stopped and every part written is kept (rerun the same command to resume "
                            "once it is fixed)")


def test_tasks_told_to_stop_end_without_ray_cancelling_them(tmp_path, monkeypatch):
    """With a way to tell its tasks (the analysis: its writer lock's record), stop_tasks cancels nothing:
    Ray 2.60's driver can abort when a cancellation meets a task completing at that moment. The tasks
    running finish their part, the queued ones start and return at once, and every one has ended,
    the flag taken back, when stop_tasks returns."""
    flag, started, parts = tmp_path / "stop", tmp_path / "started", tmp_path / "parts"
    flag.write_text("0")

    @ray.remote(num_cpus=1, max_retries=3)
    def part(i, flag, started, parts):
        if Path(flag).read_text() == "1":
            return "skipped"
        with open(started, "a") as f:
            f.write(f"{i}\n")
        while Path(flag).read_text() != "1":  # running when the stop comes: no slot frees before it
            time.sleep(0.01)
        with open(parts, "a") as f:
            f.write(f"{i}\n")
        return "done"

    told = []

    def stopping(on):
        told.append(on)
        flag.write_text("1" if on else "0")

    with ray_session(None):
        cancelled = []
        monkeypatch.setattr(ray, "cancel", lambda *a, **k: cancelled.append(a))
        refs = [part.remote(i, str(flag), str(started), str(parts)) for i in range(12)]
        while not started.exists():
            time.sleep(0.01)
        stop_tasks(ray, refs, stopping=stopping)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        assert len(ready) == len(refs)  # every task had ended
        results = ray.get(refs)
    assert cancelled == [] and told == [True, False] and flag.read_text() == "0"
    ran = sorted(int(i) for i in started.read_text().split())
    assert 1 <= len(ran) < len(refs)
    assert sorted(int(i) for i in parts.read_text().split()) == ran  # each started part was finished
    assert [i for i, r in enumerate(results) if r == "done"] == ran
    assert all(r == "skipped" for i, r in enumerate(results) if i not in ran)


def test_workers_take_sigint_even_when_the_run_ignores_it():
    """A run started in the background by a non-interactive shell ignores SIGINT, and so would every Ray
    worker it starts: then no task could be interrupted. The workers get SIGINT's default; the run keeps
    its own disposition."""
    import signal

    @ray.remote
    def disposition():
        return signal.getsignal(signal.SIGINT) is signal.default_int_handler

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ray_session(None):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert ray.get(disposition.remote())
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_private_ray_ends_without_waiting_on_its_monitor(monkeypatch):
    """ray.shutdown() stops the GCS, then sends the autoscaler monitor SIGTERM, on which the monitor reports
    its end to the GCS just stopped, and kills it a second later. The private Ray's monitor has already
    ended when ray.shutdown() begins, and every process of that Ray has ended when the session does."""
    seen, real = {}, ray.shutdown

    def shutdown(*args, **kwargs):
        node = ray._private.worker._global_node
        seen["monitor"] = [i.process.poll() for i in node.all_processes["monitor"]]
        seen["processes"] = [i.process for infos in node.all_processes.values() for i in infos]
        return real(*args, **kwargs)

    monkeypatch.setattr(ray, "shutdown", shutdown)
    with ray_session(None):
        pass
    assert seen["monitor"] == [-9]  # killed, and reaped, before ray.shutdown()
    assert len(seen["processes"]) >= 3 and all(p.poll() is not None for p in seen["processes"])


def interrupted_session(monkeypatch, shutdown, real) -> None:
    """A private Ray session whose ray.shutdown() is `shutdown`: it ends in KeyboardInterrupt; `real`, Ray's own
    shutdown, afterwards (what a failure of the test would leave). Ctrl-C as a terminal's command has it,
    whatever an earlier test in this process left."""
    monkeypatch.setattr(ray, "shutdown", shutdown)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (the test puts back what was there)
    try:
        with pytest.raises(KeyboardInterrupt):
            with ray_session(None):
                pass
    finally:
        real()


@pytest.fixture
def sigint_kept():
    """SIGINT's handler as it was before the test, put back after it."""
    was = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, was)


def test_a_second_ctrl_c_waits_until_ray_has_stopped(monkeypatch, sigint_kept):
    """A Ctrl-C (or SIGTERM) that came while ray.shutdown() ran ended the process with Ray half stopped: the
    raylet, killed with its driver, never stopped its agents, which lingered a minute. It is held until Ray
    has stopped, then raised; every process of that Ray has ended by then."""
    seen, real = {}, ray.shutdown

    def shutdown(*args, **kwargs):
        node = ray._private.worker._global_node
        seen["processes"] = [i.process for infos in node.all_processes.values() for i in infos]
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, as the shutdown begins
        seen["shutting down"] = True
        return real(*args, **kwargs)

    interrupted_session(monkeypatch, shutdown, real)
    assert seen["shutting down"] and len(seen["processes"]) >= 3
    assert all(p.poll() is not None for p in seen["processes"]), [p.args for p in seen["processes"] if p.poll() is None]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def hangs(*args, **kwargs):  # a shutdown that never ends: a further Ctrl-C still stops the command
        seen["pressed"] = 0
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            seen["pressed"] += 1
        time.sleep(60)  # (a hold that kept the second press too: this test fails after it)

    interrupted_session(monkeypatch, hangs, real)
    assert seen["pressed"] == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_task_stuck_in_a_native_call_is_killed(tmp_path):
    """A task that does not stop at the interrupt (one long native call) has its process killed."""
    started = tmp_path / "started"

    @ray.remote(max_retries=3)
    def stuck(path):
        Path(path).write_text(str(os.getpid()))
        time.sleep(600)  # one C call: the interrupt is only seen when it returns

    with ray_session(None):
        ref = stuck.remote(str(started))
        while not started.exists():
            time.sleep(0.01)
        stop_tasks(ray, [ref], grace_s=1)
        with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
            ray.get(ref, timeout=60)
        pid, deadline = int(started.read_text()), time.monotonic() + 60  # Ray may answer before it is gone
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)


def test_tunes_copy_racing_its_own_temporary_file_stays_off_the_console(tmp_path):
    """Tune's background copy of its state folder fails when a `.<uuid>-tmp-` file it listed has been
    renamed meanwhile (seen as a 30-line traceback in a resumed grid). That record, as an error with the
    exception and as the syncer's warning with the traceback in its text, is dropped; any other passes."""
    import logging
    import traceback

    import pyarrow.fs

    from bnrep.raysession import quiet_ray_logs

    def vanished(name):  # pyarrow's own error for a file gone between listing and copying
        try:
            pyarrow.fs.copy_files(str(tmp_path / name), str(tmp_path / "copy"))
        except FileNotFoundError:
            return sys.exc_info()

    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    state, syncer = (logging.getLogger(n) for n in ("ray.tune.execution.experiment_state", "ray.train._internal.syncer"))
    quiet_ray_logs()
    for log in (state, syncer):
        log.addHandler(handler)
    try:
        race, missing = vanished(".83b1d479-c5e4-4a7d-a094-275e34c18e5d-tmp-basic-variant-state.json"), vanished("basic-variant-state.json")
        state.error("Saving experiment state to storage failed with exception: ", exc_info=race)
        syncer.warning("Last sync command failed with the following error:\n" +
                       "".join(traceback.format_exception(*race)))
        state.error("Saving experiment state to storage failed with exception: ", exc_info=missing)
        syncer.warning("Last sync command failed with the following error:\nOSError: disk full")
    finally:
        for log in (state, syncer):
            log.removeHandler(handler)
    assert [(r.levelname, r.exc_info is missing) for r in seen] == [("ERROR", True), ("WARNING", False)]

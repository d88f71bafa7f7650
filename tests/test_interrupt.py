"""Ctrl-C, as a user presses it: SIGINT to a real `bnrep run` at a moment chosen by what it has printed
(a trial's first epoch; the analysis' task count). Once is enough: one line, exit 130, the writer lock
released, nothing of Tune's own, no wait for other libraries' exit handlers (one that never returns is
injected); the same command then resumes and finishes."""

import signal
import subprocess
import sys
import time

import pytest

from bnrep.lock import current_writer
from bnrep.store import Store
from tests.processes import descendants, kill_tree
from tests.conftest import injected

pytestmark = pytest.mark.slow

ARGS = ["run", "--smoke-test", "--paper-hparams"]
LINE = "interrupted: rerun the same command to resume\n"
HUNG_S = 300  # an interrupted run exits in seconds; one still there after this has hung: its stacks are shown


def interrupted(out, moment: str, **inject) -> tuple[int, str, str]:
    """Run, send SIGINT once the run has printed a line containing `moment`; (exit, stdout, stderr).
    The output goes to files, not pipes: a pipe's end is the end of every process holding it, and a
    full stderr pipe nobody reads would stop the run before the moment."""
    logs = out.parent / "stdout", out.parent / "stderr"
    with open(logs[0], "w") as o, open(logs[1], "w") as e:
        p = subprocess.Popen([sys.executable, "-m", "bnrep", *ARGS, "--out", str(out)], stdout=o, stderr=e,
                             text=True, cwd=out.parent, env=injected(BNREP_STACKS_ON_USR2="1", **inject))
    while p.poll() is None and moment not in logs[0].read_text():  # state, not time: the line is there
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=HUNG_S)
    except subprocess.TimeoutExpired:  # hung: every thread's stack, then the whole tree killed
        ray = descendants(p.pid)
        p.send_signal(signal.SIGUSR2)
        shown = time.monotonic() + 60  # (a dump takes milliseconds; this only bounds a failure's report)
        while "most recent call first" not in logs[1].read_text() and time.monotonic() < shown:
            time.sleep(0.05)
        for pid in (p.pid, *ray):
            kill_tree(pid)
        pytest.fail(f"no exit {HUNG_S} s after Ctrl-C; its threads:\n{logs[1].read_text()[-6000:]}")
    return p.returncode, logs[0].read_text(), logs[1].read_text()


def test_ctrl_c_in_training_and_in_analysis_then_resume(tmp_path):
    out = tmp_path / "runs"
    rc, log, err = interrupted(out, "epoch 1/", BNREP_HANG_AT_EXIT="1")
    assert (rc, err) == (130, LINE), log[-2000:] + err[-2000:]
    assert current_writer(Store(str(out), "digits-cnn")) is None  # the lock released
    rc, log, err = interrupted(out, "tasks to run")
    assert (rc, err) == (130, LINE), log[-2000:] + err[-2000:]
    assert "[final] 4 of 4 models already trained" in log or "models trained" in log
    r = subprocess.run([sys.executable, "-m", "bnrep", *ARGS, "--out", str(out)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "[final] 4 of 4 models already trained" in r.stdout
    assert (out / "digits-cnn" / "report" / "report.html").exists()

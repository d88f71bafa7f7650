"""Ctrl-C, as a user presses it: SIGINT to a real `bnrep run` at a moment chosen by what it has printed
(a trial's first epoch; the analysis' task count). Once is enough: one line, exit 130, the writer lock
released, nothing of Tune's own, no wait for other libraries' exit handlers (one that never returns is
injected); the same command then resumes and finishes."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bnrep.lock import current_writer
from bnrep.raysession import sigint_default_in_children
from bnrep.store import Store
from tests.conftest import injected
from tests.processes import alive, descendants, kill_tree

pytestmark = pytest.mark.slow

ARGS = ["run", "--smoke-test", "--paper-hparams"]
LINE = "interrupted: rerun the same command to resume\n"
HUNG_S = 300  # each wait below takes 3-20 s here; a run still there after this has hung: its stacks are shown


def bnrep_run(out, moment: str | None = None, sig=signal.SIGINT, **inject) -> tuple[int, str, str]:
    """`bnrep run` on `out`, with `sig` once it has printed a line containing `moment` (if given);
    (exit, stdout, stderr). The output goes to files, not pipes: a pipe's end is the end of every process
    holding it, and a full stderr pipe nobody reads would stop the run before the moment."""
    logs = out.parent / "stdout", out.parent / "stderr"
    # the run takes SIGINT as a command typed in a terminal, even in a suite started in the background
    # (which ignores SIGINT, and a child would inherit that); no preexec_fn: unsafe with pytest's threads
    with open(logs[0], "w") as o, open(logs[1], "w") as e, sigint_default_in_children(), hangup_default():
        p = subprocess.Popen([sys.executable, "-m", "bnrep", *ARGS, "--out", str(out)], stdout=o, stderr=e,
                             text=True, cwd=out.parent, env=injected(BNREP_STACKS_ON_USR2="1", **inject))
    try:
        hung = time.monotonic() + HUNG_S
        while moment and p.poll() is None and moment not in logs[0].read_text():  # state: the line is there
            if time.monotonic() > hung:
                raise subprocess.TimeoutExpired(p.args, HUNG_S)
            time.sleep(0.05)
        if moment:
            p.send_signal(sig)
        p.wait(timeout=HUNG_S)
    except subprocess.TimeoutExpired:
        waited = f"{moment!r} printed" if moment and moment not in logs[0].read_text() else "exit"
        pytest.fail(f"hung: no {waited} in {HUNG_S} s; its threads:\n{stacks(p, logs[1])[-6000:]}")
    return p.returncode, logs[0].read_text(), logs[1].read_text()


@contextlib.contextmanager
def hangup_default():
    """Processes started inside get SIGHUP's default disposition: a suite started under `nohup` ignores it,
    and a run would inherit that (a run that a test stops with SIGHUP would go on)."""
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, before)


def stacks(p: subprocess.Popen, stderr) -> str:
    """Every thread's stack of the hung driver (SIGUSR2: faulthandler), then its whole tree killed."""
    tree = descendants(p.pid)  # now: Ray's processes are reparented once the driver is gone
    p.send_signal(signal.SIGUSR2)
    dumped, size = time.monotonic() + 60, -1  # (milliseconds; this only bounds a failure's report)
    while time.monotonic() < dumped and ("most recent call first" not in stderr.read_text()
                                         or stderr.stat().st_size != size):
        size = stderr.stat().st_size
        time.sleep(0.1)
    for pid in (p.pid, *tree):
        kill_tree(pid)
    return stderr.read_text()


def test_ctrl_c_in_training_and_in_analysis_then_resume(tmp_path):
    out = tmp_path / "runs"
    rc, log, err = bnrep_run(out, "epoch 1/", BNREP_HANG_AT_EXIT="1")
    assert (rc, err) == (130, LINE), log[-2000:] + err[-2000:]
    assert current_writer(Store(str(out), "digits-cnn")) is None  # the lock released
    rc, log, err = bnrep_run(out, "tasks done (")  # tasks completing as the signal lands
    assert (rc, err) == (130, LINE), log[-2000:] + err[-2000:]
    assert "[final] 4 of 4 models already trained" in log or "models trained" in log
    rc, log, err = bnrep_run(out)
    assert rc == 0, log[-2000:] + err[-2000:]
    assert "[final] 4 of 4 models already trained" in log
    assert (out / "digits-cnn" / "report" / "report.html").exists()


def test_sigterm_and_sighup_stop_a_run_as_ctrl_c_does_then_resume(tmp_path):
    """`kill PID`, `timeout`, a batch scheduler: the driver alone gets SIGTERM. One line (not Ray's native
    stack dump), exit 143, the lock released; the same command resumes. A closed terminal's SIGHUP (in the
    analysis here) does the same, exit 129; then the same command finishes."""
    out = tmp_path / "runs"
    rc, log, err = bnrep_run(out, "epoch 1/", sig=signal.SIGTERM)
    assert (rc, err) == (143, "stopped (SIGTERM): rerun the same command to resume\n"), log[-2000:] + err[-2000:]
    assert current_writer(Store(str(out), "digits-cnn")) is None
    rc, log, err = bnrep_run(out, "tasks done (", sig=signal.SIGHUP)
    assert (rc, err) == (129, "stopped (SIGHUP): rerun the same command to resume\n"), log[-2000:] + err[-2000:]
    assert current_writer(Store(str(out), "digits-cnn")) is None
    # the grid resumes: from Tune's state, or (the signal landed while Tune rewrote its state file, as a
    # kill can: README) its unfinished models from the start, said in one line
    resumed = "[final] resuming the interrupted grid" in log or re.search(
        r"\[final\] cannot resume the interrupted grid in .* \(its state does not load: .*\): training its \d "
        r"unfinished models from the start", log)
    assert resumed, log[-2000:] + err[-2000:]
    rc, log, err = bnrep_run(out)
    assert rc == 0 and "[final] 4 of 4 models already trained" in log, log[-2000:] + err[-2000:]
    assert (out / "digits-cnn" / "report" / "report.html").exists()


def test_a_run_stopped_while_its_figures_are_drawn_leaves_no_process(tmp_path):
    """The report's figures are drawn by processes forked from the driver, after Ray's shutdown. SIGTERM
    then: one line, exit 143, the lock released, and the drawing processes gone with it (Ray's shutdown had
    put SIGTERM's default action back: the driver died of the signal, its lock held, and the drawing
    processes, stuck on a pipe no one read, kept `bnrep run | tee` from ever returning). A driver killed
    outright (SIGKILL) takes them with it too."""
    out, held = tmp_path / "runs", tmp_path / "held"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        held.mkdir()
        logs = [open(tmp_path / name, "w") for name in ("stdout", "stderr")]
        p = subprocess.Popen([sys.executable, "-m", "bnrep", *ARGS, "--out", str(out)], stdout=logs[0],
                             stderr=logs[1], cwd=tmp_path, env=injected(BNREP_HOLD_DRAWING=str(held),
                                                                        BNREP_DRAW_WORKERS="2"))
        hung, drawing = time.monotonic() + HUNG_S, []
        try:
            while len(list(held.iterdir())) < 2 and p.poll() is None and time.monotonic() < hung:
                time.sleep(0.05)  # (each worker holds before its first figure)
            drawing = [int(f.name) for f in held.iterdir()]
            assert len(drawing) == 2 and p.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
            p.send_signal(sig)
            p.wait(timeout=HUNG_S)
            while any(map(alive, drawing)) and time.monotonic() < hung:  # SIGKILL: the kernel ends them at once
                time.sleep(0.05)
            assert not any(map(alive, drawing)), drawing
        finally:  # a failure leaves nothing running: the run, and drawing processes that hold for ever
            for pid in ([p.pid] if p.poll() is None else []) + [d for d in drawing if alive(d)]:
                kill_tree(pid)
            for f in logs:
                f.close()
        if sig == signal.SIGTERM:
            err = (tmp_path / "stderr").read_text()
            assert (p.returncode, err) == (143, "stopped (SIGTERM): rerun the same command to resume\n"), err
            assert current_writer(Store(str(out), "digits-cnn")) is None
        shutil.rmtree(held)


@pytest.mark.parametrize("how", ["python -m bnrep", "bnrep"])
def test_ctrl_c_while_the_command_loads_is_one_line(tmp_path, how):
    """A Ctrl-C in the command's first seconds, while its modules (torch) load: one line, exit 130, not
    the traceback of an import; the same for the `bnrep` command (its entry point, bnrep.__main__)."""
    held = tmp_path / "held"
    command = [sys.executable, "-m", "bnrep"] if how != "bnrep" else [
        shutil.which("bnrep", path=os.path.dirname(sys.executable)) or "bnrep"]
    with sigint_default_in_children():
        p = subprocess.Popen([*command, "run", "--smoke-test", "--out", str(tmp_path / "runs")], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=injected(BNREP_HOLD_IMPORT=str(held)))
    hung = time.monotonic() + HUNG_S
    while not held.exists() and p.poll() is None and time.monotonic() < hung:
        time.sleep(0.05)
    if not held.exists():
        if p.poll() is None:
            kill_tree(p.pid)
        pytest.fail(f"the command did not reach `import torch`: {p.communicate(timeout=HUNG_S)}")
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=HUNG_S)
    finally:
        if p.poll() is None:
            kill_tree(p.pid)
    assert (p.returncode, out, err) == (130, "", LINE)
    assert not (tmp_path / "runs").exists()

"""Ctrl-C, as a user presses it: SIGINT to a real `bnrep run` at a moment chosen by what it has printed
(a trial's first epoch; the analysis' task count). Once is enough: one line, exit 130, the writer lock
released, nothing of Tune's own; the same command then resumes and finishes."""

import signal
import subprocess
import sys

import pytest

from bnrep.lock import current_writer
from bnrep.store import Store

pytestmark = pytest.mark.slow

ARGS = ["run", "--smoke-test", "--paper-hparams"]
LINE = "interrupted: rerun the same command to resume\n"


def interrupted(out, moment: str) -> tuple[int, str, str]:
    """Run, send SIGINT once the run has printed a line containing `moment`; (exit, stdout, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", "bnrep", *ARGS, "--out", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=out.parent)
    seen = []
    for line in p.stdout:  # state, not time: the line is printed when the run is there
        seen.append(line)
        if moment in line:
            p.send_signal(signal.SIGINT)
            break
    rest, err = p.communicate()
    return p.returncode, "".join(seen) + rest, err


def test_ctrl_c_in_training_and_in_analysis_then_resume(tmp_path):
    out = tmp_path / "runs"
    rc, log, err = interrupted(out, "epoch 1/")
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

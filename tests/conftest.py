"""Shared test set-up: Ray stays on loopback, torch stays small."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray binds 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):  # two test files at once, one per core (pyproject's addopts):
    # one torch thread in each test process and in the runs it starts, as Ray gives each 1-CPU trial or
    # task. With two, OpenMP threads spin on a core the other file's work needs (test_kmeans took 62 s
    # beside an end-to-end file, against 7 s alone)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def short_tmpdir(prefix: str) -> str:
    """Ray's socket paths must stay under ~100 characters: no deep pytest paths."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


# Each test process has a Ray temp folder of its own, as two users of one machine would: a cluster one
# process starts (ray.cluster_utils.Cluster writes its address to <RAY_TMPDIR>/ray/ray_current_cluster, as
# `ray start` does) is never what a plain `ray.init()` in another process joins (a private run of one test
# file joined, and lost, the three-node cluster of another's test)
RAY_TMP = short_tmpdir(f"bnrep-{os.environ.get('PYTEST_XDIST_WORKER', 'tests')}-")
os.environ["RAY_TMPDIR"] = RAY_TMP
atexit.register(shutil.rmtree, RAY_TMP, ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]  # the checkout (pytest's `pythonpath` puts it on sys.path)


INJECT = ROOT / "tests" / "inject"  # its sitecustomize: a full disk, a stop at one file, a hang at exit


def injected(**env) -> dict:
    """The environment of a run whose processes load tests/inject (BNREP_FULL_DISK, BNREP_STOP_AFTER,
    BNREP_HANG_AT_EXIT)."""
    return {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [str(INJECT), os.environ.get("PYTHONPATH")]))}


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes: compare before and after to prove nothing changed."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def old_results(tmp_path):
    """A copy of results written by bnrep 0.1.0 (tests/fixtures/results_v0_1_0: synthetic-cnn)."""
    shutil.copytree(ROOT / "tests" / "fixtures" / "results_v0_1_0", tmp_path / "runs")
    return tmp_path / "runs"


@pytest.fixture(autouse=True)
def ctrl_c_as_found(request):
    """Ctrl-C's disposition in this test process is put back after each test, and a test that left it
    ignored is named in the warnings summary: the interrupted-session tests send SIGINT, and in one
    full-suite run found it ignored by an earlier test of their process (which one, unknown then)."""
    import signal
    import warnings

    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before and before is not None:
        signal.signal(signal.SIGINT, before)
        if after is signal.SIG_IGN:
            warnings.warn(f"{request.node.nodeid} left SIGINT ignored in its process (put back)")

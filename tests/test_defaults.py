"""Defaults a cluster user relies on: GPUs per trial and task, --amp on CPU,
and the warning about a local --out on several nodes."""

import glob
import io
import os
import json
from contextlib import redirect_stdout
from types import SimpleNamespace

import pytest
import ray
import torch

from bnrep import flags
from bnrep.data import load_data
from bnrep.experiments import get_experiment
from bnrep.raysession import check_shared_out, default_gpus
from bnrep.store import Store, tables
from bnrep.train import Trainer


@pytest.mark.parametrize("gpus_on_cluster, cases", [
    (1, [(None, 1.0),  # a cluster with GPUs: one per trial/task by default
         (0.25, 0.25),  # --gpus-per-trial 0.25: four trials per GPU
         (0.0, 0.0)]),
    (0, [(None, 0.0)]),  # no GPUs: none asked
])
def test_gpus_default_to_one_when_the_cluster_has_them(gpus_on_cluster, cases):
    ray.init(num_cpus=1, num_gpus=gpus_on_cluster, include_dashboard=False)  # a node advertising a GPU
    try:  # (one Ray per cluster: a start is 4 s here)
        assert [default_gpus(ray, flag) for flag, _ in cases] == [want for _, want in cases]
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("gpus, want", [
    (None, 1.0),  # the cluster has a GPU: every trial and task asks for one
    ("0.25", 0.25),  # --gpus-per-trial 0.25 / --gpus-per-task 0.25: four per GPU
])
def test_trials_and_tasks_get_the_gpus_asked(gpus, want, tmp_path):
    """Every stage on a Ray node that advertises one GPU (none is there: torch
    stays on the CPU, as --amp does): what Ray assigned each sweep trial, grid
    trial and analysis task, as recorded with its results."""
    out = tmp_path / "runs"
    train = ["--norms", "batch", "--seeds", "2", "--num-samples", "2", "--max-epochs", "1"]  # small: 1 GPU, 1 trial
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        for stage, flag, more in (("hparam", "--gpus-per-trial", train), ("final", "--gpus-per-trial", train),
                                  ("analysis", "--gpus-per-task", [])):
            argv = ["--smoke-test", *more, "--out", str(out), *([flag, gpus] if gpus else [])]
            assert flags.run_stage(stage, argv) == 0, stage
    finally:
        ray.shutdown()
    sweep = [json.loads(line) for f in glob.glob(f"{out}/digits-cnn/hparam/tune/*/*/result.json")
             for line in open(f) if line.strip()]
    assert sweep and {r["gpus"] for r in sweep} == {want}  # Tune's record of every epoch of every trial
    store = Store(str(out), "digits-cnn")
    for table in ("training", "training_history", *tables("analysis")[1:]):  # samples: written by the driver
        got = {store.part_metadata(table, p)["gpus"] for p in store.parts(table)}
        assert got == {str(want)}, table


def test_amp_is_ignored_on_cpu():
    exp = get_experiment("synthetic-cnn").override(max_epochs=2)
    data = load_data(exp)
    runs = []
    for amp in (False, True):
        t = Trainer(exp, data, "batch", exp.paper_hparams("batch"), seed=0, device="cpu", amp=amp)
        assert not t.amp
        t.step_epoch()
        runs.append(t.model.state_dict())
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k  # no autocast on CPU: the same weights


class Nodes:
    """The calls of Ray that check_shared_out makes, on `n` alive nodes (and a dead one): each node's task runs
    here, bnrep.raysession.sees itself, except on the nodes in `blind`, which see another disk at the path."""

    def __init__(self, n: int, blind=(), dead=()):
        self.n, self.blind, self.dead, self.asked = n, set(blind), set(dead), []

    def nodes(self):
        return [{"Alive": True, "NodeID": f"{i + 1:056x}", "NodeManagerAddress": f"10.0.0.{i + 1}"}
                for i in range(self.n)] + [{"Alive": False, "NodeID": f"{99:056x}"}]

    def remote(self, **kw):
        def task(fn):
            def on(scheduling_strategy):
                node = int(scheduling_strategy.node_id, 16)
                return SimpleNamespace(remote=lambda *a: self.asked.append(node) or (node, node not in self.blind
                                                                                     and fn(*a)))
            return SimpleNamespace(options=on)
        return task

    def wait(self, refs, num_returns, timeout):
        return refs, []

    def get(self, ref):
        if ref[0] in self.dead:  # its node died after it was listed: the task failed
            raise RuntimeError("NodeDiedError")
        return ref[1]


@pytest.mark.parametrize("out, n_nodes, blind, checked", [
    ("{tmp}/runs", 3, (), True),  # a shared filesystem: every node sees the driver's file
    ("{tmp}/runs", 3, (2,), True),  # node 2 has its own disk at that path
    ("{tmp}/runs", 1, (), False),  # one node: nothing to check
    ("s3://bucket/runs", 3, (), False),  # a URI says where, explicitly
    ("file:///shared/runs", 3, (), False),
])
def test_every_node_must_see_a_local_out(out, n_nodes, blind, checked, tmp_path, monkeypatch):
    """A local --out on a multi-node cluster was a warning: a node with its own disk at that path trained and
    wrote there, the driver saw nothing, and every rerun trained again and ended in a traceback. Each node now
    looks for a file the driver writes there; one that does not see it is named in one line."""
    from bnrep.config import UsageError

    monkeypatch.setattr("bnrep.raysession.SEES_WAIT_S", 0)
    ray, out = Nodes(n_nodes, blind), out.format(tmp=tmp_path)
    store = Store(out, "x") if "s3" not in out else SimpleNamespace(out=out)
    buf = io.StringIO()
    with redirect_stdout(buf):
        if blind:
            with pytest.raises(UsageError, match=rf"^--out {out} is not the same directory on node 10.0.0.2 "
                                                 r"\(00000000\): every node must see the results at that path"):
                check_shared_out(ray, store)
        else:
            check_shared_out(ray, store)
    assert ray.asked == ([1, 2, 3] if checked else []) and buf.getvalue() == ""
    if "s3" not in out and checked:
        assert os.listdir(store.path()) == []  # the driver's file removed


def test_a_node_that_died_since_it_was_listed_is_a_warning_not_a_traceback(tmp_path, capsys):
    ray, store = Nodes(3, dead=(3,)), Store(str(tmp_path / "runs"), "x")
    check_shared_out(ray, store)
    assert capsys.readouterr().out == (f"warning: node 10.0.0.3 (00000000) did not say within 60 s whether it sees "
                                       f"--out {tmp_path}/runs (it may have left the cluster)\n")


def test_a_drawing_worker_keeps_nohup_s_ignored_hangup():
    """A drawing worker set SIGHUP's default: under nohup, a logout while the report's figures were drawn killed
    the workers and the command ended in a BrokenProcessPool traceback."""
    import signal
    import subprocess
    import sys

    code = ("import os, signal\nsignal.signal(signal.SIGHUP, {0})\nfrom bnrep.drawing import _worker_start\n"
            "_worker_start(os.getppid())\nprint(int(signal.getsignal(signal.SIGHUP)), int(signal.getsignal(signal.SIGTERM)))")
    ign, dfl = str(int(signal.SIG_IGN)), str(int(signal.SIG_DFL))
    for before, after in (("signal.SIG_IGN", ign), ("print", dfl)):  # nohup's; a handler, as bnrep's
        r = subprocess.run([sys.executable, "-c", code.format(before)], capture_output=True, text=True)
        assert r.stdout.split() == [after, dfl], r.stderr


STOP_IN_A_CALLBACK = """
import gc, os, signal, weakref


class Obj:
    pass


def on_collect(_):  # the SIGTERM arrives while Python runs this callback: its SystemExit is unraisable
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):
        pass


class Broken:
    def __del__(self):
        raise ValueError("a real problem")


def stop_in_a_callback():
    o = Obj()
    ref = weakref.ref(o, on_collect)  # (held: a dead weakref calls nothing)
    del o
    gc.collect()
    Broken()  # any other unraisable exception is still reported
"""

STOPPED_IN_A_CALLBACK = STOP_IN_A_CALLBACK + """
from bnrep.raysession import quiet_when_stopped

if {quiet}:
    quiet_when_stopped()
signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(1)))  # as Ray's workers do
stop_in_a_callback()
print("went on")
"""


@pytest.mark.parametrize("quiet", [True, False])
def test_a_worker_stopped_in_a_gc_callback_prints_nothing(quiet):
    """Ray stops a trial's or task's worker with SIGTERM, whose handler raises SystemExit; arriving while
    Python runs a weakref callback, that exception is unraisable and Python prints ten lines for it, which
    Ray forwards to the user's console. A trial or task calls quiet_when_stopped first: those lines go,
    other unraisable exceptions stay."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", STOPPED_IN_A_CALLBACK.format(quiet=quiet)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "went on\n", r.stderr
    assert ("SystemExit" in r.stderr) is not quiet, r.stderr
    assert "ValueError: a real problem" in r.stderr


STOPPED_BEFORE_ITS_WORK = STOP_IN_A_CALLBACK + """
from bnrep.raysession import ray_session


def stopped_amid_imports():  # no bnrep code has run in this worker (a trial's actor stopped as it starts)
    stop_in_a_callback()  # Ray's own SIGTERM handler, as in every Ray worker
    with open("/proc/self/fd/2") as err:  # the worker's stderr, which Ray forwards to the user's console
        return err.read()


def prestart():  # what Ray's processes were started with
    return [os.environ.get(k) for k in ("RAY_enable_worker_prestart", "RAY_prestart_worker_first_driver")]


os.environ["RAY_prestart_worker_first_driver"] = "1"  # the user's own setting
with ray_session(None) as ray:
    print(ray.get(ray.remote(stopped_amid_imports).remote()))
    print("worker", ray.get(ray.remote(prestart).remote()), "driver", prestart())
"""


def test_private_ray_workers_are_quiet_from_their_start_and_none_start_idle():
    """Tune may start a trial's actor and stop it again before the trial runs (it gives the trial an
    actor that has finished another); Ray stops it with SIGTERM, maybe amid a GC callback of its
    imports. Every worker of the private Ray is quiet from its start, not only once a trial or task
    of bnrep's has begun (a real run printed those ten lines under its one-line Ctrl-C message).
    The private Ray starts no idle workers with itself (bnrep.raysession.PRIVATE_RAY_ENV)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", STOPPED_BEFORE_ITS_WORK], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ValueError: a real problem" in r.stdout, r.stdout  # the worker's stderr was read
    assert "SystemExit" not in r.stdout + r.stderr, r.stdout + r.stderr
    # no idle workers started with Ray (Tune's trials never take them), unless the user says otherwise;
    # the driver's own environment is as it was
    assert "worker ['0', '1'] driver [None, '1']" in r.stdout, r.stdout


@pytest.mark.parametrize("n, have", [
    (1, "its one node has 1 CPU and 0 GPUs"),  # ("its 1 node have at most 1 CPUs ...")
    (2, "its 2 nodes have at most 1 CPU and 0 GPUs each"),
])
def test_the_wait_for_a_node_with_room_says_what_the_nodes_have(n, have, capsys):
    from bnrep.raysession import default_gpus

    ray = SimpleNamespace(cluster_resources=lambda: {"CPU": n}, nodes=lambda: [{"Alive": True,
                                                                              "Resources": {"CPU": 1}}] * n)
    assert default_gpus(ray, None, cpus=2) == 0.0
    assert capsys.readouterr().out.startswith(f"note: no node of the cluster has room for a trial (2 CPUs; {have}): ")

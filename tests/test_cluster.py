"""Ray cluster use, on one machine: cluster.yaml, token authentication,
multi-node runs, node failures, TensorBoard files, and results at file:// and
s3:// URIs.

    pytest tests/test_cluster.py        # minutes: three smoke-test pipeline runs and two node failures

A `ray.cluster_utils.Cluster` on loopback stands in for a cluster: a head
with no CPUs (it runs nothing but Ray's own services) and worker nodes of one
CPU each, so every trial and task runs on a worker. moto's S3 server on
loopback stands in for a bucket. Two runs of the smoke-test pipeline (all
four stages, report included) are shared by the tests (module fixtures):

    reference   a private single-node Ray (the drivers as subprocesses), --out file://...
    multinode   the 2-worker cluster, joined through --address, --out s3://...

The node-failure tests kill a worker node as a machine dies (its raylet and
every worker process it started, by SIGKILL) in the middle of sweeps/final.py
(once a trial on it has a checkpoint) or analysis/run.py (once it holds a task:
the node joins with a hook that makes its first task never end), add a
replacement node, and check that the interrupted work ran again on a live node
and that the results are complete and equal to the uninterrupted run's. A third cluster, started with
token authentication in a process of its own, runs `bnrep run` for a driver
with the token and refuses clients without it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import struct
import time

import jsonschema
import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
import yaml

from tests.conftest import ROOT, short_tmpdir

from bnrep.store import TABLES, Store, tables

EXPERIMENT = "digits-cnn"
FLAGS = ["--smoke-test"]
# A checkpoint every epoch in the training stages: the tests read Tune's checkpoints in the results, and a node
# killed mid-trial leaves one to resume from
EVERY_EPOCH = ["--checkpoint-every", "0"]
# Longer trials (about a second) for the node-failure test, so a node dies mid-training.
LONG = [*FLAGS, *EVERY_EPOCH, "--max-epochs", "12"]
STAGES = ("sweeps/hparam.py", "sweeps/final.py", "analysis/run.py", "analysis/report.py")
REPORT = ("report.md", "report.html", "table1.csv", "findings.json")  # some of the report's files
# Fast node-death detection (defaults take ~30 s): GCS health checks every 0.5 s.
FAST_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
KEYS = {name: list(t.keys) for name, t in TABLES.items()}  # rows are identified by these; compared sorted
ANALYSIS = tables("analysis")
BUCKET = "bnrep-test"
TOKEN_ON_NODE = "~/.ray/bnrep_auth_token"  # where the cluster files put the token on each node
AUTH_ENV = "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.ray/bnrep_auth_token"


def stage_flags(stage: str) -> list[str]:
    """The report reads what the stages wrote: it takes no Ray and no smoke flags."""
    return [] if stage == "analysis/report.py" else [*FLAGS, *EVERY_EPOCH] if stage.startswith("sweeps/") else FLAGS


def run_script(rel: str, argv: list[str]) -> int:
    """`python <rel> ARGV`, in this process (the scripts are flags -> bnrep.flags.run_stage)."""
    from bnrep import flags

    return flags.run_stage({v: k for k, v in flags.SCRIPTS.items()}[rel], argv)


def table(out: str, name: str) -> pd.DataFrame:
    """A results table sorted by its key columns, as a reader would compare it."""
    df = Store(out, EXPERIMENT).read_table(name)
    return df.sort_values(KEYS[name]).reset_index(drop=True)


def assert_same_table(a: str, b: str, name: str) -> None:
    ta, tb = table(a, name), table(b, name)
    assert len(ta) and not ta.duplicated(KEYS[name]).any(), f"{name}: empty or duplicated rows"
    pd.testing.assert_frame_equal(ta, tb, check_exact=True, obj=name)


# ==== environment: private Ray temp dir, S3 server, cluster ====
@pytest.fixture(scope="module")
def s3_env():
    """moto's S3 server on loopback and the AWS_* variables that point pyarrow
    (and every Ray node started afterwards) at it; RAY_TMPDIR private, so no
    other Ray on this machine finds or joins this module's cluster."""
    from moto.server import ThreadedMotoServer
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    ray_tmp = short_tmpdir("bnrep-ray-")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                     "AWS_EC2_METADATA_DISABLED": "true", "RAY_TMPDIR": ray_tmp}.items():
            mp.setenv(k, v)
        mp.delenv("RAY_ADDRESS", raising=False)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield {"endpoint": f"{host}:{port}"}
    server.stop()
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(s3_env):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": FAST_FAILURE})
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def workers(cluster) -> list:
    return [n for n in cluster.list_all_nodes() if n is not cluster.head_node]


# ==== the two pipeline runs ====
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The smoke-test pipeline as a user runs it: each driver a process with a
    private single-node Ray, --out a file:// URI. Returns that URI."""
    out = "file://" + str(tmp_path_factory.mktemp("reference") / "runs")
    ray_tmp = short_tmpdir("bnrep-ref-")  # its own: must not find the module's cluster
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT))
    try:
        for stage in STAGES:
            r = subprocess.run([sys.executable, str(ROOT / stage), *stage_flags(stage), "--out", out],
                               env=env, cwd=tmp_path_factory.getbasetemp(), capture_output=True, text=True)
            assert r.returncode == 0, f"{stage} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def multinode(cluster, s3_env):
    """The same pipeline on the 2-worker cluster through --address (drivers
    in this process), --out on the S3 server. Returns (out, worker node ids)."""
    out = f"s3://{BUCKET}/runs"
    nodes = {n.node_id for n in workers(cluster)}
    for stage in STAGES:
        ray_flags = ["--address", cluster.address] if stage != "analysis/report.py" else []
        assert run_script(stage, [*stage_flags(stage), "--out", out, *ray_flags]) == 0, stage
    return out, nodes


# ==== cluster.yaml ====
@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_cluster_config_passes_ray_validation(name):
    """What `ray up` checks before it contacts a provider, plus our rules:
    dashboard on loopback only, the project installed on every node."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / name).read_text())
    config = prepare_config(raw)
    validate_config(config)
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in (ROOT / name).read_text()
    assert config["file_mounts"] == {"~/bnrep-src": ".", TOKEN_ON_NODE: "~/.ray/auth_token"}
    assert any("pip install -e ~/bnrep-src" in c for c in config["setup_commands"])
    broken = {**raw, "head_start_ray_commandz": []}  # the validation can fail
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_cluster_config_starts_every_node_with_token_auth(name):
    """The token made on the user's machine (where `ray get-auth-token
    --generate` writes it) reaches every node, owner-only before Ray starts,
    and Ray is pointed at the file, never given the value."""
    config = yaml.safe_load((ROOT / name).read_text())
    assert config["file_mounts"][TOKEN_ON_NODE] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        cmds = config[key]
        starts = [i for i, c in enumerate(cmds) if "ray start" in c]
        assert starts and all(AUTH_ENV in cmds[i] for i in starts), f"{key}: a node starts without token auth"
        chmod = [i for i, c in enumerate(cmds) if c.strip() == f"chmod 600 {TOKEN_ON_NODE}"]
        assert chmod and chmod[0] < starts[0], f"{key}: the token is not owner-only before Ray starts"
    assert any(f"export {AUTH_ENV}" in c for c in config["setup_commands"]), "drivers on the head lack the token"
    assert "RAY_AUTH_TOKEN=" not in (ROOT / name).read_text()  # a path, never the value
    ignored = subprocess.run(["git", "check-ignore", "-q", "auth_token"], cwd=ROOT).returncode == 0
    assert ignored, "a token file in the repository would be committed"


def test_aws_cluster_has_gpu_workers_and_cpu_free_head():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = config["available_node_types"]
    gpu = [t for n, t in types.items() if n != config["head_node_type"] and t["resources"].get("GPU", 0) > 1]
    assert gpu and all(0 <= t["min_workers"] <= t["max_workers"] for t in gpu)
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0
    assert config["provider"]["type"] == "aws"


# ==== a researcher's own network on the cluster ====
@pytest.mark.slow
def test_user_module_reaches_every_worker(cluster, s3_env, tmp_path):
    """`--model labnets.nets:wide_cnn` from a folder only the driver has on its PYTHONPATH: Ray's
    runtime_env ships the package, and every worker node trains and measures the model."""
    lab = tmp_path / "lab"
    shutil.copytree(ROOT / "tests" / "labnets", lab / "labnets")
    out = f"s3://{BUCKET}/usermodule"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(lab)  # the driver's only; the workers' processes come from the cluster's raylets
    r = subprocess.run([sys.executable, "-m", "bnrep", "run", *FLAGS, "--paper-hparams", "--model",
                        "labnets.nets:wide_cnn", "--norms", "batch,none", "--address", cluster.address, "--out", out],
                       env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    store, nodes = Store(out, EXPERIMENT), {n.node_id for n in workers(cluster)}
    mids = sorted(table(out, "training")["model_id"])
    assert mids == [f"labnets.nets-wide_cnn-{t}-s{s}" for t in ("bn", "nobn") for s in (0, 1)]
    ran_on = {name: {store.part_metadata(name, p)["node_id"] for p in store.parts(name)}
              for name in ("training", "layer_sparsity", "class_dbi", "kmeans")}
    # every part written by a worker node's process (the head, where the driver runs, has no CPU), and
    # both workers at work; not both in each stage: under load, Tune can hand every trial to the trial
    # process of the worker whose process started first (as in the multi-node test below)
    assert all(r and r <= nodes for r in ran_on.values()), f"{ran_on}, workers are {nodes}"
    assert set().union(*ran_on.values()) == nodes, f"{ran_on}, workers are {nodes}"
    ls = table(out, "layer_sparsity")
    assert sorted(set(ls["layer"])) == ["relu:1", "relu:2", "relu:3"]  # its three F.relu calls
    assert store.exists("report", "report.html")


# ==== token authentication ====
AUTH_CLUSTER = """
import sys
from ray.cluster_utils import Cluster
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
nodes = [c.add_node(num_cpus=1) for _ in range(2)]
c.wait_for_nodes()
print(c.address, *[n.node_id for n in nodes], flush=True)
sys.stdin.read()  # runs until the test closes stdin
c.shutdown()
"""
CLIENT = "import sys, ray; ray.init(address=sys.argv[1]); print('connected')"
NO_INIT = ("import runpy, sys, ray\n"  # bnrep, whose process may not get as far as ray.init (Ray's 20 s of retries)
           "def init(*args, **kwargs): raise SystemExit('ray.init was called')\n"
           "ray.init = init\n"
           "sys.argv = ['bnrep', *sys.argv[1:]]\n"
           "runpy.run_module('bnrep', run_name='__main__')")


@pytest.fixture
def auth_cluster(tmp_path):
    """A head and two 1-CPU workers started with RAY_AUTH_MODE=token and the
    token in an owner-only file, as the cluster files start them; in a process
    of their own, since Ray reads the authentication mode once per process.
    Yields (address, worker node ids, token file, environment without a token)."""
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    token.chmod(0o600)
    ray_tmp = short_tmpdir("bnrep-auth-")
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    plain.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT), HOME=str(tmp_path))  # no ~/.ray/auth_token either
    env = {**plain, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    proc = subprocess.Popen([sys.executable, "-c", AUTH_CLUSTER], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address, *nodes = proc.stdout.readline().split()
        assert len(nodes) == 2, "the cluster did not start"
        yield address, set(nodes), token, plain, proc.pid
    finally:
        proc.stdin.close()
        proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_token_auth_runs_the_pipeline_with_the_token_and_refuses_others(auth_cluster, tmp_path):
    address, nodes, token, plain, pid = auth_cluster
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    fast = {"RAY_gcs_rpc_server_connect_timeout_s": "2"}  # a refused client gives up in ~20 s, not minutes
    refused = {name: subprocess.Popen([sys.executable, "-c", CLIENT, address], env={**plain, **fast, **extra},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name, extra in {"no token": {},
                                   "wrong token": {"RAY_AUTH_MODE": "token",
                                                   "RAY_AUTH_TOKEN_PATH": str(wrong)}}.items()}
    said = {"unset": "refused this process (RAY_AUTH_MODE is unset): export RAY_AUTH_MODE=token, with the "
                     "cluster's token in RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH names, or in "
                     "~/.ray/auth_token (README, Security)",
            "token": f"refused this process's token (from RAY_AUTH_TOKEN_PATH={wrong}): give it the cluster's token "
                     f"there (README, Security)"}  # (it told a process in token mode to export token mode)
    for extra, mode in (({}, "unset"), ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}, "token")):
        r = subprocess.run([sys.executable, "-c", NO_INIT, "hparam", *FLAGS, "--address", address, "--out",
                            str(tmp_path / "refused")], env={**plain, **extra}, capture_output=True, text=True)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", (
            f"error: the Ray cluster at {address} uses token authentication and {said[mode]}\n")), \
            "refused before ray.init, in one line"
    for extra in ({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "gone")}, {"HOME": str(tmp_path)}):  # no token here at all
        r = subprocess.run([sys.executable, "-c", NO_INIT, "hparam", *FLAGS, "--address", address, "--out",
                            str(tmp_path / "refused")], env={**plain, "RAY_AUTH_MODE": "token", **extra},
                           capture_output=True, text=True)  # (Ray's client ended the process, exit 1, no word)
        assert (r.returncode, r.stdout) == (2, "") and r.stderr.startswith(
            "error: RAY_AUTH_MODE is token, but this process has no token: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "refused").exists()
    secret = token.read_text()
    for p in process_tree(pid):  # the token is in no command line (`ps`) and no environment of the cluster
        with contextlib.suppress(OSError):
            assert secret not in open(f"/proc/{p}/cmdline").read() + open(f"/proc/{p}/environ").read()
    out = str(tmp_path / "runs")
    r = subprocess.run([sys.executable, "-m", "bnrep", "run", *FLAGS, "--address", address, "--out", out],
                       env={**plain, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}, cwd=tmp_path,
                       capture_output=True, text=True)  # ~2 min idle
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the trials ran on the workers (the head has no CPU): both joined with the token. (Not "on both":
    # one worker's actor can run all four short smoke trials before the other's has started.)
    ran_on = set(table(out, "hparam_trials")["node_id"])
    assert ran_on and ran_on <= nodes, f"the sweep ran on {ran_on}, not on the workers {nodes}"
    assert Store(out, EXPERIMENT).exists("report", "report.html")
    for name, p in refused.items():
        log = p.communicate()[0]  # a refused client gives up by itself (RAY_gcs_rpc_server_connect_timeout_s)
        assert p.returncode != 0 and "connected" not in log.splitlines(), f"{name}: connected"
        assert "Unauthenticated" in log and "InvalidAuthToken" in log, f"{name}: not refused for its token:\n{log[-2000:]}"


# ==== TensorBoard ====
def scalars(trial_dir: str) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a trial's TensorBoard event file: tag -> [(step, value)].
    Parsed here (TFRecord framing: length, crc, Event protobuf, crc), so the
    test does not trust the writer's own reader."""
    from tensorboardX.proto.event_pb2 import Event

    [path] = glob.glob(f"{trial_dir}/events.out.tfevents.*")
    data, i, tags = open(path, "rb").read(), 0, {}
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in event.summary.value:
            tags.setdefault(v.tag, []).append((event.step, v.simple_value))
    return tags


@pytest.mark.slow
def test_every_trial_has_tensorboard_scalars_per_epoch(reference):
    """`tensorboard --logdir <out>/<exp>/hparam/tune` (and train/tune) shows
    every trial's loss and accuracy per epoch: the event files hold the
    values of the tables (as float32, TensorBoard's type), epoch by epoch."""
    root = f"{reference[len('file://'):]}/{EXPERIMENT}"
    history = table(reference, "training_history")
    trials = glob.glob(f"{root}/train/tune/final/*/")
    assert len(trials) == history["model_id"].nunique()
    for d in trials:
        mid = json.loads(open(f"{d}/result.json").readline())["model_id"]
        assert os.path.basename(d.rstrip("/")).startswith(mid.removeprefix("cnn-") + "-"), d  # named by its model
        h, ev = history[history["model_id"] == mid], scalars(d)
        for col in ("train_loss", "val_acc"):
            want = [(int(e), float(np.float32(v))) for e, v in zip(h["epoch"], h[col])]
            assert ev[f"ray/tune/{col}"] == want, f"{mid}: {col}"
    sweep = table(reference, "hparam_trials")
    for _, row in sweep.iterrows():
        d = f"{root}/hparam/tune/sweep/{'bn' if row['bn'] else 'nobn'}-{row['trial_id']}"
        ev = scalars(d)
        trained = max(json.loads(line)["training_iteration"] for line in open(f"{d}/result.json"))
        assert [s for s, _ in ev["ray/tune/val_acc"]] == list(range(1, trained + 1)), row["trial_id"]
        # a trial may have trained on past the rung it was stopped at (waiting on one planned before
        # it: bnrep.stages.schedule); its row holds that rung's epoch
        assert trained >= row["epochs"], row["trial_id"]
        assert dict(ev["ray/tune/val_acc"])[row["epochs"]] == np.float32(row["val_acc"]), row["trial_id"]


# ==== URIs ====
def test_store_uri_keeps_endpoint_options():
    """Options in an s3:// URI (an S3-compatible endpoint) must reach Ray Tune's storage_path too."""
    out = "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    s = Store(out, "exp")
    assert s.path("hparam", "tune") == "bucket/runs/exp/hparam/tune"
    assert s.uri("hparam", "tune") == "s3://bucket/runs/exp/hparam/tune?endpoint_override=127.0.0.1:9000&scheme=http"
    fs, path = pafs.FileSystem.from_uri(s.uri("hparam", "tune"))
    assert path == "bucket/runs/exp/hparam/tune" and isinstance(fs, pafs.S3FileSystem)


def test_store_resolves_relative_paths_for_workers(tmp_path, monkeypatch):
    """A relative --out is made absolute once, in the driver: Tune trials run in another directory."""
    monkeypatch.chdir(tmp_path)
    assert Store("runs", "exp").out == str(tmp_path / "runs")
    assert Store("file:///x/runs", "exp").uri("a") == "file:///x/runs/exp/a"


@pytest.mark.slow
def test_file_uri_pipeline_reads_back_with_pandas(reference):
    local = reference[len("file://"):]
    for name in ("hparam_trials", "training", *ANALYSIS):
        assert len(pd.read_parquet(f"{reference}/{EXPERIMENT}/results/{name}")), name
    models = pd.read_parquet(f"{local}/{EXPERIMENT}/results/training")["model_id"]
    for mid in models:  # model files beside the tables
        assert os.path.isfile(f"{local}/{EXPERIMENT}/train/models/{mid}/model.pt")
    assert glob.glob(f"{local}/{EXPERIMENT}/train/tune/final/*/checkpoint_*")
    assert all(os.path.getsize(f"{local}/{EXPERIMENT}/report/{f}") for f in REPORT)


@pytest.mark.slow
def test_s3_pipeline_reads_back_with_pandas(multinode, s3_env):
    out, _ = multinode
    for name in ("hparam_trials", "training", *ANALYSIS):
        assert len(pd.read_parquet(f"{out}/{EXPERIMENT}/results/{name}")), name  # env points pyarrow at moto
    fs, root = pafs.FileSystem.from_uri(f"{out}/{EXPERIMENT}")
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))]
    models = pd.read_parquet(f"{out}/{EXPERIMENT}/results/training")["model_id"]
    assert all(f"{root}/train/models/{m}/model.pt" in files for m in models)
    assert any("/train/tune/final/" in f and "/checkpoint_" in f for f in files), "Tune's storage is not in S3"
    assert f"{root}/hparam/best_hparams.json" in files and f"{root}/config.json" in files
    assert all(f"{root}/report/{f}" in files for f in REPORT)
    with fs.open_input_stream(f"{root}/report/report.html") as f:
        assert b"<html" in f.read().lower()


# ==== multi-node ====
@pytest.mark.slow
def test_multinode_uses_both_workers_and_matches_single_node(multinode, reference):
    out, nodes = multinode
    store = Store(out, EXPERIMENT)
    ran_on = {"hparam_trials": set(table(out, "hparam_trials")["node_id"])}
    for name in ("training", "layer_sparsity", "class_dbi", "kmeans"):
        ran_on[name] = {store.part_metadata(name, p)["node_id"] for p in store.parts(name)}
    # every unit of work on a worker (the head has no CPU), and both workers at work; not both in each
    # stage: one worker's trial actor can run the four short smoke trials before the other's starts
    assert all(r and r <= nodes for r in ran_on.values()), f"{ran_on}, workers are {nodes}"
    assert set().union(*ran_on.values()) == nodes, f"{ran_on}, workers are {nodes}"
    # The sweep: the same trials stopped at the same epochs with the same results, though more slots
    # change the order results arrive in (bnrep.stages.schedule); Tune's trial ids and the nodes differ
    cols = ["bn", "lr", "momentum"]
    a, b = (table(o, "hparam_trials").drop(columns=["trial_id", "node_id"]).sort_values(cols).reset_index(drop=True)
            for o in (reference, out))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    best = [{tag: {k: v for k, v in hp.items() if k != "trial_id"} for tag, hp in
             Store(o, EXPERIMENT).read_json("hparam/best_hparams.json").items()} for o in (reference, out)]
    assert best[0] == best[1]
    for name in ("training", "training_history", *ANALYSIS):
        assert_same_table(reference, out, name)


# ==== node failures ====
def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc (Linux, as Ray's tests are)."""
    children: dict[int, list[int]] = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:  # field 4 of /proc/PID/stat, after the ")" that ends the command name, is the parent pid
            ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # ended while we read
            continue
        children.setdefault(ppid, []).append(int(d))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def is_running(pid: int) -> bool:
    """False once the process has ended (gone, or a zombie nobody reaped yet)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_node(cluster, node) -> None:
    """A machine dying: its raylet and every process the raylet started (the
    Ray workers running trials and tasks) die together, by SIGKILL.
    `Cluster.remove_node` alone stops a node's Ray services but not its worker
    processes, and an orphaned worker could finish its trial and write after
    its node was declared dead (a real case too: see "Node failures" in the
    README for what bnrep promises then; the tests model a machine that is gone)."""
    raylet = node.all_processes["raylet"][0].process.pid
    os.kill(raylet, signal.SIGSTOP)  # it starts no new worker while its children are listed
    tree = process_tree(raylet)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):  # a worker that had just ended
            os.kill(pid, signal.SIGKILL)
    while any(map(is_running, tree)):  # SIGKILL cannot be ignored: they die, however loaded the machine
        time.sleep(0.01)
    cluster.remove_node(node, allow_graceful=False)


def run_and_kill_worker(cluster, argv: list[str], victim, cwd, at_death=lambda node_id: None) -> tuple[str, str]:
    """Run a driver (a process, joined to `cluster`); as soon as `victim()`
    names a worker node, kill it with its workers (`kill_node`), call
    `at_death(node_id)` (nothing of that node runs any more: what is in the
    store then is all it ever wrote) and add a replacement. Here, not in a
    thread: Ray starts nodes only from the main thread. Returns the killed
    and the replacement node ids."""
    log = cwd / "driver.log"  # a file, not a pipe: a full pipe would stall the driver while we poll
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    try:
        node_id = None
        while node_id is None and proc.poll() is None:  # no clock: however slow the machine, wait for it
            node_id = victim()
            time.sleep(0.02)
        assert node_id, "no node to kill before the driver ended:\n" + log.read_text()[-3000:]
        kill_node(cluster, next(n for n in workers(cluster) if n.node_id == node_id))
        at_death(node_id)
        replacement = cluster.add_node(num_cpus=1)
        proc.wait()  # ~1 min idle
    finally:
        proc.kill()
    assert proc.returncode == 0, log.read_text()[-5000:]
    return node_id, replacement.node_id


def written_by(store: Store, tables, node: str) -> dict[str, int]:
    """Parts of `tables` that `node` wrote: {part file: mtime in ns}. Taken
    when the node is dead and again at the end, the end's must be a subset of
    the first: a dead node writes nothing, neither a new part nor a replaced
    one (a live node may replace its parts: Ray re-runs a task whose output
    was lost with the node, and that task rewrites its parts)."""
    return {store.part_name(t, p): os.stat(store.path(store.part_name(t, p))).st_mtime_ns
            for t in tables for p in store.parts(t) if store.part_metadata(t, p)["node_id"] == node}


def training_now(tune_dir: str) -> dict | None:
    """A trial mid-training that has reported two epochs or more (each with a
    checkpoint), from Tune's live result.json: its last epoch report
    (model_id, epoch, node_id), or None."""
    for path in glob.glob(f"{tune_dir}/*/result.json"):
        lines = open(path).read().splitlines()
        last = json.loads(lines[-1]) if lines and lines[-1].endswith("}") else {}
        if last.get("node_id") and not last.get("stopped") and last.get("epoch", 0) >= 2:
            return last
    return None


def trial_results(tune_dir: str, model_id: str) -> list[dict]:
    """Every result Tune recorded for the trial that trains `model_id`, in order."""
    for path in glob.glob(f"{tune_dir}/*/result.json"):
        rows = [json.loads(line) for line in open(path).read().splitlines() if line.endswith("}")]
        if any(r.get("model_id") == model_id for r in rows):
            return rows
    raise AssertionError(f"no Tune trial of {model_id} in {tune_dir}")


def seed_out(reference: str, out: str, rels: list[str]) -> None:
    """Copy what a stage reads (files or directories) from the reference run."""
    src, dst = reference[len("file://"):] + f"/{EXPERIMENT}", f"{out}/{EXPERIMENT}"
    for rel in rels:
        os.makedirs(os.path.dirname(f"{dst}/{rel}"), exist_ok=True)
        (shutil.copytree if os.path.isdir(f"{src}/{rel}") else shutil.copy)(f"{src}/{rel}", f"{dst}/{rel}")


def train_uninterrupted(argv: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The grid's models trained here without Tune, on one thread like a 1-CPU
    Ray worker: (training rows, history rows) to compare a resumed grid with."""
    import torch

    from bnrep import flags
    from bnrep.data import load_data
    from bnrep.models import model_id
    from bnrep.stages.final import grid_hparams
    from bnrep.train import train

    exp = flags.resolve_experiment(flags.build_parser("final").parse_args(argv))
    hparams = grid_hparams(exp, Store(argv[argv.index("--out") + 1], exp.name), paper=False)
    data, threads = load_data(exp), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {model_id(exp.arch, n, s): train(exp, data, n, hparams[n], s)
                for s in range(exp.seeds) for n in exp.norms}
    finally:
        torch.set_num_threads(threads)
    rows = pd.DataFrame([{"model_id": m, "epochs": r.epochs, "train_acc": r.train_acc, "val_acc": r.val_acc,
                          "test_acc": r.test_acc} for m, r in runs.items()])
    hist = pd.DataFrame([{"model_id": m, **vars(h)} for m, r in runs.items() for h in r.history])
    return rows.sort_values("model_id").reset_index(drop=True), hist.sort_values(KEYS["training_history"])


@pytest.mark.slow
def test_final_survives_node_failure(cluster, reference, tmp_path):
    """A worker dies after the first checkpoints: its trial restarts on the
    replacement from its last checkpoint and the grid ends as if nothing happened."""
    out = str(tmp_path / "runs")
    seed_out(reference, out, ["hparam/best_hparams.json"])  # the sweep's hparams, as in the reference grid
    tune_dir = f"{out}/{EXPERIMENT}/train/tune/final"
    argv = [*LONG, "--out", out, "--address", cluster.address]

    store, at_kill = Store(out, EXPERIMENT), {}

    def victim():  # the node of a trial that is training and has a checkpoint
        at_kill.update(trial=training_now(tune_dir) or {})
        return at_kill["trial"].get("node_id")

    def at_death(node_id):
        at_kill["written"] = written_by(store, ("training", "training_history"), node_id)

    killed, replacement = run_and_kill_worker(cluster, [str(ROOT / "sweeps/final.py"), *argv], victim, tmp_path,
                                              at_death)
    meta = {m: store.part_metadata("training", m) for m in store.parts("training")}
    assert len(meta) == len(table(reference, "training")), "a model is missing"
    assert written_by(store, ("training", "training_history"), killed).items() <= at_kill["written"].items(), \
        "the dead node wrote after it died"
    # The trial that was training on the dead node restarts from the last
    # checkpoint Tune registered before the kill. Every epoch reports a
    # checkpoint, and Tune registers it in a second round trip (a `save` call)
    # after logging the result; the trial trains on only once that is done. So
    # with e the last epoch Tune logged from the dead node (read from Tune's own
    # record once the run is over), the trial resumes from e, or from e - 1 when
    # the node died between the two (epoch e is then trained again, and no
    # later epoch had begun: either way at most one epoch of work is lost).
    hit = at_kill["trial"]["model_id"]
    epochs = [(r["epoch"], r["node_id"]) for r in trial_results(tune_dir, hit) if "epoch" in r]
    before, after = [e for e, n in epochs if n == killed], [e for e, n in epochs if n != killed]
    resumed = int(meta[hit]["resumed_from_epoch"])
    assert before == list(range(1, len(before) + 1)) and len(before) >= 2, before
    assert resumed in (before[-1] - 1, before[-1]), \
        f"{hit} resumed from epoch {resumed}, the last epoch it reported before the kill was {before[-1]}"
    assert after == list(range(resumed + 1, resumed + 1 + len(after))) and after, \
        f"after resuming from epoch {resumed}, Tune recorded epochs {after}"  # none skipped, none twice
    assert meta[hit]["node_id"] != killed
    history = table(out, "training_history")
    for mid, g in history.groupby("model_id"):  # every epoch exactly once, resumed or not
        assert g["epoch"].tolist() == list(range(1, len(g) + 1)), mid
    # Resuming is exact on CPU: the same models, to the bit, as without the failure.
    rows, hist = train_uninterrupted(argv)
    got = table(out, "training")
    pd.testing.assert_frame_equal(got[rows.columns], rows, check_exact=True)
    pd.testing.assert_frame_equal(history[hist.columns].reset_index(drop=True), hist.reset_index(drop=True),
                                  check_exact=True)


STALL = '''
import os
if os.environ.get("BNREP_TEST_STALL_DIR"):  # the Ray workers of the one node started with it
    import functools, inspect, json, time

    import ray
    import bnrep.stages.analysis as analysis

    def parts(name, args):
        """(table, part) pairs the analysis task `name` writes, from its arguments."""
        if name == "extract":
            return [(t, args["row"]["model_id"]) for t in args["todo"]]
        if name == "layer_task":
            return [(t, f"{args['row']['model_id']}-{args['probe'].name}") for t in args["todo"]]
        return [(t, analysis.pair_part(args["layer"], args["a"], args["b"])) for t in args["todo"]]

    def stalling(task):
        @functools.wraps(task)
        def first_task_never_ends(*args, **kwargs):
            """The node's first analysis task records itself (its node, the parts it would
            write) and never ends: the node dies holding it. Later tasks run as usual."""
            d = os.environ["BNREP_TEST_STALL_DIR"]
            try:
                os.close(os.open(os.path.join(d, "claimed"), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return task(*args, **kwargs)
            named = inspect.signature(task).bind(*args, **kwargs).arguments
            record = {"node_id": ray.get_runtime_context().get_node_id(), "parts": parts(task.__name__, named)}
            with open(os.path.join(d, "task.tmp"), "w") as f:
                json.dump(record, f)
            os.rename(os.path.join(d, "task.tmp"), os.path.join(d, "task.json"))  # whole, or not at all
            while True:
                time.sleep(60)
        return first_task_never_ends

    for name in ("extract", "layer_task", "pair_task"):
        setattr(analysis, name, stalling(getattr(analysis, name)))
'''


@pytest.mark.slow
def test_analysis_survives_node_failure(cluster, reference, tmp_path):
    """A worker node dies holding an analysis task (a node joins whose first
    task never ends, and is killed once that task has started): Ray runs the
    task again on a live node, the dead node wrote nothing, and every table is
    complete, without duplicates, equal to the uninterrupted run's."""
    out = str(tmp_path / "runs")
    seed_out(reference, out, ["config.json", "train/models", "results/training"])
    hooks, stall = tmp_path / "hooks", tmp_path / "stall"
    hooks.mkdir()
    stall.mkdir()
    (hooks / "sitecustomize.py").write_text(STALL)
    stalling = cluster.add_node(num_cpus=1, env_vars={  # its raylet's environment, which its workers inherit
        "PYTHONPATH": f"{hooks}:{os.environ.get('PYTHONPATH', '')}", "BNREP_TEST_STALL_DIR": str(stall)})
    cluster.wait_for_nodes()
    record = stall / "task.json"

    def victim():  # the stalling node, once its task has started (it is holding it)
        return json.loads(record.read_text())["node_id"] if record.exists() else None

    argv = [str(ROOT / "analysis/run.py"), *FLAGS, "--out", out, "--address", cluster.address]
    store = Store(out, EXPERIMENT)
    killed, replacement = run_and_kill_worker(cluster, argv, victim, tmp_path)
    task = json.loads(record.read_text())
    assert killed == task["node_id"] == stalling.node_id and task["parts"], task
    assert not written_by(store, ANALYSIS[1:], killed), "the dead node wrote parts"  # its only task never ended
    for name, part in task["parts"]:  # the task held by the dead node ran again, on a live node
        assert (store.part_metadata(name, part) or {}).get("node_id") not in (killed, None), (name, part)
    for name in ANALYSIS:
        assert_same_table(reference, out, name)


@pytest.mark.slow
def test_endpoint_in_the_uri_works_end_to_end(s3_env, tmp_path):
    """`--out "s3://bucket/path?endpoint_override=HOST:PORT&scheme=http"` with no AWS_ENDPOINT_URL: every
    stage, Tune's storage, the Ray workers and the writer lock reach the store through the URI alone
    (offline, anything that fell back to AWS's own endpoint would fail)."""
    out = f"s3://{BUCKET}/by-uri?endpoint_override={s3_env['endpoint']}&scheme=http"
    ray_tmp = short_tmpdir("bnrep-uri-")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AWS_ENDPOINT_URL")}
    env.update(RAY_TMPDIR=ray_tmp)
    try:
        r = subprocess.run([sys.executable, "-m", "bnrep", "run", *FLAGS, "--paper-hparams", "--out", out], env=env,
                           cwd=tmp_path, capture_output=True, text=True)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    store = Store(out, EXPERIMENT)
    assert len(store.read_table("training")) == 4 and store.exists("report", "report.html")
    for name in ANALYSIS:
        assert len(store.read_table(name)), name


def test_a_trial_no_node_has_room_for_waits_for_one_to_join_and_says_so(cluster, tmp_path):
    """A trial asking 2 CPUs of a cluster whose nodes have 1 each (a head of none: cluster.yaml's): Ray waits
    for a node to join, and bnrep said nothing while Ray logged its autoscaler's warnings. The stage says
    the wait in one line before it; a node that has room joins, and the sweep runs on it to its end."""
    log = tmp_path / "driver.log"  # a file, not a pipe: a full pipe would stall the driver while we poll
    argv = [str(ROOT / "sweeps/hparam.py"), "--smoke-test", "--norms", "batch", "--num-samples", "1",
            "--cpus-per-trial", "2", "--address", cluster.address, "--out", str(tmp_path / "runs")]
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *argv], cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT)
    node = None
    try:
        note = re.escape("note: no node of the cluster has room for a trial (2 CPUs; its N nodes have at most 1 CPU "
                         "and 0 GPUs each): the trials wait until one joins (an autoscaler's worker, or `ray start "
                         "--address` on another machine); Ctrl-C stops the wait, and the same command resumes\n")
        note = note.replace("N", r"\d+")  # (the head, the workers, the replacements of those other tests killed)
        while "[hparam] bn: 1 trials" not in log.read_text() and proc.poll() is None:  # the sweep's first line
            time.sleep(0.05)  # (no clock: however slow the machine, wait for it)
        assert proc.poll() is None and re.search(note, log.read_text().split("[hparam] bn: 1 trials")[0]), \
            log.read_text()
        assert not Store(str(tmp_path / "runs"), EXPERIMENT).exists("hparam", "best_hparams.json")
        node = cluster.add_node(num_cpus=2)
        assert proc.wait() == 0, log.read_text()[-3000:]
    finally:
        proc.kill()
        if node is not None:
            cluster.remove_node(node)
    trials = Store(str(tmp_path / "runs"), EXPERIMENT).read_table("hparam_trials")
    assert len(trials) == 1 and set(trials["node_id"]) == {node.node_id}

"""One writer per results directory (bnrep.lock), on a local path and on
moto's S3 server on loopback.

    pytest tests/test_lock.py        # about 30 s on 2 CPU cores

Staleness is made deterministic: lease expiry by an injected clock, a dead
holder by SIGKILL of a real process that has taken the lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from tests.conftest import ROOT

from bnrep.lock import LockError, acquire, current_writer, stop_requested, stopping, writer_lock
from bnrep.store import Store

BUCKET = "bnrep-lock"
ROUNDS, CONTENDERS = 20, 4  # the race: 20 rounds of 4 processes released at one barrier


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on loopback; the AWS_* variables point boto3 and
    pyarrow (and the processes the tests start) at it."""
    from moto.server import ThreadedMotoServer
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as m:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                     "AWS_EC2_METADATA_DISABLED": "true"}.items():
            m.setenv(k, v)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    """A results root: a local path, or an s3:// URI on the moto server."""
    if request.param == "local":
        return str(tmp_path / "runs")
    request.getfixturevalue("s3_server")
    return f"s3://{BUCKET}/{tmp_path.name}"


def tree(out: str) -> dict[str, str]:
    """Every file under `out` and a digest of its bytes: what 'nothing changed' compares."""
    fs, root = (pafs.FileSystem.from_uri(out) if "://" in out else (pafs.LocalFileSystem(), out))
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    files = {}
    for i in infos:
        if i.type == pafs.FileType.File:
            with fs.open_input_stream(i.path) as f:
                files[i.path] = hashlib.sha256(f.read()).hexdigest()
    return files


# ==== one writer ====
def test_second_writer_is_refused_with_one_line_naming_the_first(out):
    store = Store(out, "exp")
    store.write_json("config.json", {"a": 1})  # earlier results
    with writer_lock(store, "final", renew=False):
        before = tree(out)
        with pytest.raises(LockError) as e:
            acquire(Store(out, "exp"), "analysis")
        msg = str(e.value)
        assert "\n" not in msg
        holder = current_writer(store)
        assert (f"final on host {socket.gethostname()}, pid {os.getpid()}, started {holder['started']}" in msg
                and store.uri() in msg), msg
        assert tree(out) == before, "the refused writer changed something under --out"
    assert current_writer(store) is None, "a released lock still names a writer"
    with writer_lock(store, "analysis", renew=False):  # free again
        assert current_writer(store)["stage"] == "analysis"


def test_a_stopping_writer_says_so_to_its_tasks(out):
    """The analysis' tasks ask the lock's record whether its holder is stopping (bnrep.progress.stop_tasks);
    a renewal keeps the answer, and only the holder's own directory is told."""
    store, other = Store(out, "exp"), Store(out, "other")
    stopping(store)(True)  # held by no one here: nothing to tell, nothing written
    assert not stop_requested(store) and tree(out) == {}
    with writer_lock(store, "analysis", renew=False) as lock, writer_lock(other, "analysis", renew=False):
        assert not stop_requested(store)
        stopping(store)(True)
        assert stop_requested(store) and not stop_requested(other)
        lock.renew()
        assert stop_requested(store)
        stopping(store)(False)
        assert not stop_requested(store)
        stopping(store)(True)
    assert not stop_requested(store)  # released: no writer, nothing to stop


def test_other_experiments_are_not_locked(out):
    with writer_lock(Store(out, "a"), "final", renew=False):
        with writer_lock(Store(out, "b"), "final", renew=False):
            pass


def test_the_writer_removes_the_temporaries_of_killed_writes_and_keeps_tune_s(out):
    """A write a kill interrupted leaves `.tmp-*` beside its file: the next writer removes them when it
    takes the lock, and its own (a task it stopped) when it lets go; Ray Tune's folders are Tune's."""
    store = Store(out, "a")
    kept = ["results/cka/conv2-a-b.parquet", "train/tune/final/.tmp-trial-state", "hparam/tune/bn/.tmp-x"]
    stale = ["results/cka/.tmp-0f-conv2-a-b.parquet", "train/models/m/.tmp-1e-model.pt", "report/.tmp-2d-r.html"]
    for rel in kept + stale:
        store.mkdir(rel.rsplit("/", 1)[0])
        with store.fs.open_output_stream(store.path(rel)) as f:
            f.write(b"half")
    present = lambda: sorted(rel for rel in kept + stale + ["results/sparsity/.tmp-3c-p.parquet"]
                             if store.exists(rel))
    with writer_lock(store, "analysis", renew=False):
        assert present() == sorted(kept)
        store.mkdir("results/sparsity")
        with store.fs.open_output_stream(store.path("results/sparsity/.tmp-3c-p.parquet")) as f:
            f.write(b"half")  # a task killed mid-write
    assert present() == sorted(kept)


# ==== stale locks: lease and liveness ====
def test_expired_lease_is_taken_over_and_a_live_one_is_not(out):
    """A holder on another host (no pid to check) that stopped renewing at
    t=1000 with a 60 s lease: refused at t=1059, taken over at t=1061."""
    store = Store(out, "exp")
    held = acquire(store, "final", lease_s=60, clock=lambda: 1000.0, renew=False)
    held.record["host"] = "elsewhere"  # as if written on another machine
    held.backend.overwrite(f"{held.gen:012d}.json", json.dumps(held.record).encode())
    with pytest.raises(LockError, match="final on host elsewhere"):
        acquire(store, "analysis", clock=lambda: 1059.0, renew=False)
    assert current_writer(store, clock=lambda: 1059.0)["host"] == "elsewhere"
    assert current_writer(store, clock=lambda: 1061.0) is None
    taken = acquire(store, "analysis", clock=lambda: 1061.0, renew=False)
    assert current_writer(store, clock=lambda: 1061.0)["stage"] == "analysis"
    taken.release()


def test_renewal_extends_the_lease(out):
    store, now = Store(out, "exp"), [1000.0]
    held = acquire(store, "final", lease_s=60, clock=lambda: now[0], renew=False)
    held.record["host"] = "elsewhere"
    now[0] = 1050.0
    held.renew()  # what the background thread does every lease/3: expires = 1110
    with pytest.raises(LockError):
        acquire(store, "analysis", clock=lambda: 1100.0, renew=False)
    acquire(store, "analysis", clock=lambda: 1111.0, renew=False).release()
    held.renew()
    assert held.lost, "a holder whose lock was taken over must notice it"


HOLDER = """
import sys, time
from bnrep.lock import acquire
from bnrep.store import Store
lock = acquire(Store(sys.argv[1], "exp"), "final", lease_s=3600)
print("held", flush=True)
time.sleep(600)
"""


def test_killed_holder_is_taken_over_at_once_and_a_live_one_is_not(out, tmp_path):
    """The holder process on this host: while alive (lease of an hour) it
    keeps the lock; killed with SIGKILL, its lock is taken over at once."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, out], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        store = Store(out, "exp")
        with pytest.raises(LockError, match=f"pid {p.pid},"):
            acquire(store, "analysis", renew=False)
        assert current_writer(store)["pid"] == p.pid
    finally:
        p.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)  # dead, but a zombie: not reaped yet
    assert current_writer(store) is None, "a killed (zombie) holder still holds the lock"
    p.wait()
    with writer_lock(store, "analysis", renew=False) as lock:
        assert current_writer(store)["pid"] == os.getpid() and lock.gen == 1


def test_a_dead_pid_of_another_pid_space_is_not_a_dead_writer():
    """Two containers with the host's network share its host name, not its pids: a writer in one (pid 3 there)
    was judged dead from the other, which has no pid 3, and both wrote the report at once. A pid now counts
    only in the boot and pid namespace it was recorded in; elsewhere the lease decides."""
    from bnrep.lock import is_stale, pid_space

    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(p.stdout)  # a process that has ended (and been reaped)
    rec = {"host": socket.gethostname(), "pid": dead, "expires": 100.0}
    assert pid_space() and is_stale({**rec, "pid_space": pid_space()}, now=50.0)
    assert is_stale(rec, now=50.0)  # recorded before pid spaces were: its host name alone, as before
    elsewhere = {**rec, "pid_space": pid_space().split("/")[0] + "/pid:[1]"}  # another pid namespace
    assert not is_stale(elsewhere, now=50.0) and is_stale(elsewhere, now=101.0)


# ==== the race ====
def contender(out: str, me: int, start, done, results) -> None:
    """One process of the race: every round, wait at the barrier, try, report,
    and hold what it won until all have tried (so no one wins a released lock)."""
    for r in range(ROUNDS):
        start.wait()
        try:
            lock = acquire(Store(out, f"race-{r}"), f"contender-{me}", renew=False)
        except LockError:
            lock = None
        results.put((r, me, lock and lock.gen))
        done.wait()


def race(out: str) -> dict[int, list[tuple[int, int]]]:
    """ROUNDS rounds of CONTENDERS processes: round -> [(winner, its generation)]."""
    ctx = mp.get_context("spawn")  # fresh interpreters: no state copied from pytest's threads
    start, done, results = ctx.Barrier(CONTENDERS), ctx.Barrier(CONTENDERS), ctx.Queue()
    procs = [ctx.Process(target=contender, args=(out, i, start, done, results)) for i in range(CONTENDERS)]
    for p in procs:
        p.start()
    rows = [results.get() for _ in range(ROUNDS * CONTENDERS)]
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    return {r: sorted((me, gen) for rr, me, gen in rows if rr == r and gen is not None) for r in range(ROUNDS)}


def test_processes_started_at_one_instant_exactly_one_wins(out):
    winners = race(out)
    assert all(len(w) == 1 and w[0][1] == 0 for w in winners.values()), winners


def test_takeover_of_a_stale_lock_at_one_instant_exactly_one_wins(out):
    """Every round starts from a lock whose holder is dead (lease expired):
    all contenders see it stale at once; exactly one takes it over."""
    for r in range(ROUNDS):
        stale = acquire(Store(out, f"race-{r}"), "killed", lease_s=-1.0, renew=False)  # expired already
        assert stale.gen == 0
    winners = race(out)
    assert all(len(w) == 1 and w[0][1] == 1 for w in winners.values()), winners  # generation 1 took over 0


def test_s3_uri_with_endpoint_options(s3_server, tmp_path, monkeypatch):
    """--out s3://...?endpoint_override=...&scheme=http reaches the lock too, without AWS_ENDPOINT_URL."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    out = f"s3://{BUCKET}/{tmp_path.name}?endpoint_override={s3_server}&scheme=http"
    with writer_lock(Store(out, "exp"), "final", renew=False):
        with pytest.raises(LockError, match="final on host"):
            acquire(Store(out, "exp"), "analysis", renew=False)


def test_unsupported_filesystem_is_a_clear_error():
    class Other:  # neither local nor S3 (gs://, hdfs://)
        fs, out, root, experiment = object(), "gs://b/runs", "b/runs/exp", "exp"

    with pytest.raises(LockError, match="local paths and s3:// only"):
        acquire(Other(), "final")


def test_a_contender_with_an_old_listing_withdraws(out, monkeypatch):
    """A writer that listed the lock before others took and released it can still create the generation
    it saw as next (its name was freed by the release); the check after creating finds a higher live
    generation, so it withdraws: refused, its file gone, the live holder untouched."""
    from bnrep import lock as lockmod

    store = Store(out, "exp")
    old_listing = lockmod._head(lockmod.backend(store))  # nothing there yet: generation 0 is next
    acquire(store, "final", renew=False).release()  # generation 0, then the tombstone 1 (0 deleted)
    holder = acquire(store, "analysis", renew=False)  # generation 2, live
    monkeypatch.setattr(lockmod, "_head", lambda b: old_listing)
    with pytest.raises(LockError):
        acquire(store, "report", renew=False)  # creates generation 0 again, sees 2, withdraws
    monkeypatch.undo()
    assert lockmod._generations(lockmod.backend(store)) == [2]
    assert current_writer(store)["stage"] == "analysis"
    holder.release()


def test_a_lock_released_on_a_full_disk_is_freed_and_leaves_no_empty_record(tmp_path, monkeypatch):
    """No room for the release's tombstone (ENOSPC): the holder's own record is deleted instead, which frees
    the lock; the failed write leaves no .tmp file (the lock stayed held, with empty temporaries beside it)."""
    import errno

    from bnrep import lock

    store = Store(str(tmp_path / "runs"), "exp")
    held = acquire(store, "final", renew=False)
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lock.os, "fsync", full)
    held.release()  # (raised OSError: No space left on device)
    monkeypatch.setattr(lock.os, "fsync", real)
    assert current_writer(store) is None
    assert not [n for n in os.listdir(tmp_path / "runs" / "exp" / ".lock") if n.startswith(".tmp-")]
    with writer_lock(store, "analysis", renew=False):  # free again
        assert current_writer(store)["stage"] == "analysis"


def test_a_lock_write_whose_answer_was_lost_and_retried_is_the_writer_s_own(s3_server, tmp_path, monkeypatch):
    """boto3 retries a request whose answer it lost (a reset connection, a slow server): the retried
    conditional write of the lock's record finds the record its first attempt wrote and fails with 412. The
    writer then took itself for another and refused ("being written by ... pid <its own>"), and the lock
    stayed held by no one until its lease ran out. A record with its own bytes is its own."""
    from botocore.exceptions import ClientError

    from bnrep import lock as lock_module

    init = lock_module.S3Backend.__init__

    def answer_lost(self, *args, **kwargs):
        init(self, *args, **kwargs)
        put = self.client.put_object

        def put_object(**kw):
            put(**kw)  # it lands...
            if "IfNoneMatch" in kw:  # ...and the retry is what answers
                raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")

        self.client.put_object = put_object

    monkeypatch.setattr(lock_module.S3Backend, "__init__", answer_lost)
    store = Store(f"s3://{BUCKET}/{tmp_path.name}", "exp")
    with writer_lock(store, "final", renew=False) as held:
        assert held.gen == 0 and current_writer(store)["pid"] == os.getpid()
        with pytest.raises(LockError, match=f"final on host .*pid {os.getpid()},"):  # another record: refused
            acquire(Store(f"s3://{BUCKET}/{tmp_path.name}", "exp"), "analysis", renew=False)
    assert current_writer(store) is None


@pytest.mark.parametrize("record", ['{"host": "vm", "pid": 12', "[1, 2]"])
def test_a_record_cut_or_edited_outside_bnrep_is_no_record(record, tmp_path):
    """A lock record that is not a JSON object (cut by a crash of the disk, edited by hand): `bnrep status` and
    `bnrep run` raised a JSONDecodeError traceback; it is read as no writer, as an empty record was."""
    store = Store(str(tmp_path / "runs"), "exp")
    with writer_lock(store, "final", renew=False):
        pass
    folder = tmp_path / "runs" / "exp" / ".lock"
    last = max(int(n[:-5]) for n in os.listdir(folder) if n[:-5].isdigit())
    (folder / f"{last + 1:012d}.json").write_text(record)  # (as bnrep names them)
    assert current_writer(store) is None
    with writer_lock(store, "analysis", renew=False):  # taken over
        assert current_writer(store)["stage"] == "analysis"

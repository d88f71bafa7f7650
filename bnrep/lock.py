"""One writer per results directory: a lock on `<out>/<experiment>`.

A stage takes the lock before Ray starts and holds it to the end:

    with writer_lock(store, "final"):
        ...                          # LockError (one line) if another writer holds it

The lock lives beside the results, so every machine that can write them sees
it, on a local or shared file system and on s3://:

    <out>/<experiment>/.lock/<generation>.json   {host, pid, started, stage, expires, ...}

The holder is the writer of the highest generation. Taking the lock creates
the next generation with a create-if-absent write, the one primitive both
backends make atomic: a hard link of a complete temporary file on a file
system (os.link fails when the name exists, also on NFS), and PutObject with
`If-None-Match: *` on S3. Of two processes that try at the same instant
exactly one creates generation n+1; the other sees it and is refused.
Generations only grow (release writes a tombstone as the next one), so a
contender with an old listing can never reuse a number and hold the lock
beside a live holder: it checks after creating that its generation is the
highest, and otherwise withdraws.

A killed writer cannot release, so a lock also ends when it is stale:
- lease: the holder renews `expires` every lease/3 from a background thread;
  a record whose `expires` has passed is stale. This works on S3, where a
  process on another host cannot be asked whether it is alive. It assumes
  the hosts' clocks agree to well within the lease (NTP).
- liveness: a record written on this host whose process has ended (pid gone,
  or reused by a process started at another time) is stale at once, so a
  run killed with Ctrl-C or SIGKILL on a laptop is taken over without
  waiting for the lease.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pyarrow.fs as pafs

from bnrep.store import LOCK_DIR, Store, cannot_write

LEASE_S = 60.0  # seconds a lock outlives its last renewal; renewed every LEASE_S / 3


class LockError(Exception):
    """Another writer holds the results directory (one-line message)."""


# ==== backends: create-if-absent, overwrite, list, read, delete ====
class LocalBackend:
    def __init__(self, root: str):
        self.dir = os.path.join(root, LOCK_DIR)

    def names(self) -> list[str]:
        return os.listdir(self.dir) if os.path.isdir(self.dir) else []

    def read(self, name: str) -> bytes | None:
        with contextlib.suppress(FileNotFoundError), open(os.path.join(self.dir, name), "rb") as f:
            return f.read()
        return None

    def _tmp(self, data: bytes) -> str:
        os.makedirs(self.dir, exist_ok=True)
        tmp = os.path.join(self.dir, f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # a full disk: no empty record left behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def create(self, name: str, data: bytes) -> bool:
        tmp = self._tmp(data)  # complete before it gets its name: a reader never sees half a record
        try:
            os.link(tmp, os.path.join(self.dir, name))
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def overwrite(self, name: str, data: bytes) -> None:
        os.replace(self._tmp(data), os.path.join(self.dir, name))

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, name))


class S3Backend:
    """boto3, because pyarrow's S3 filesystem cannot make a conditional write.
    Endpoint, region and credentials come from the --out URI's options
    (endpoint_override, scheme, region) and the AWS_* environment, as for pyarrow."""

    def __init__(self, uri: str, root: str):
        import boto3

        q = {k: v[-1] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).items()}
        endpoint = q.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{q.get('scheme', 'https')}://{endpoint}"
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=q.get("region"))
        self.bucket, _, key = root.partition("/")
        self.prefix = f"{key}/{LOCK_DIR}/"

    def names(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return [o["Key"][len(self.prefix):] for page in pages for o in page.get("Contents", [])]

    def read(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def create(self, name: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:  # 412: the name exists; 409: a concurrent conditional write won
            if e.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
                # boto3 retries a request whose answer it lost: the retry finds what the first attempt wrote
                return self.read(name) == data  # (a record holds this process's pid and start: no other's bytes)
            raise

    def overwrite(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)


def backend(store: Store):
    if isinstance(store.fs, pafs.LocalFileSystem):
        return LocalBackend(store.root)
    if isinstance(store.fs, pafs.S3FileSystem):
        return S3Backend(store.out, store.root)
    raise LockError(f"cannot lock {store.out}: one writer at a time is enforced on local paths and s3:// only")


# ==== records: who holds the lock, and whether it still does ====
def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (Linux): [0] the state, [19] the start time in
    clock ticks since boot, which with the pid names one process, not a later one reusing the pid."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _process_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[19] if len(stat) > 19 else None


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    stat = _proc_stat(pid)
    if stat[:1] == ["Z"]:  # killed, not yet reaped by its parent
        return False
    return start is None or len(stat) <= 19 or stat[19] == start


def pid_space() -> str | None:
    """Where a pid names one process: this boot of this machine, and its pid namespace (Linux). Two containers
    with the host's network share its host name, not its pids; nor do two clones of a machine's image."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def is_stale(rec: dict, now: float) -> bool:
    """Released, past its lease, or (written where this process's pids name the same processes: this host, in
    this boot and pid namespace) its process has ended. A record from before pid spaces were recorded is judged
    by its host name alone."""
    if rec.get("released") or now > rec["expires"]:
        return True
    here = rec["host"] == socket.gethostname() and rec.get("pid_space", pid_space()) == pid_space()
    return here and not _pid_alive(rec["pid"], rec.get("proc_start"))


def describe(rec: dict) -> str:
    return f"{rec['stage']} on host {rec['host']}, pid {rec['pid']}, started {rec['started']}"


def _gen_name(gen: int) -> str:
    return f"{gen:012d}.json"  # zero-padded: listing order is generation order


def _generations(b) -> list[int]:
    return sorted(int(n[:-5]) for n in b.names() if n.endswith(".json") and n[:-5].isdigit())


def _head(b) -> tuple[int, dict | None]:
    """The highest generation and its record (None: no lock yet, or unreadable)."""
    gens = _generations(b)
    if not gens:
        return -1, None
    data = b.read(_gen_name(gens[-1]))
    try:  # (bnrep writes each record whole; one cut or edited outside it is no record)
        rec = json.loads(data) if data else None
    except ValueError:
        rec = None
    return gens[-1], rec if isinstance(rec, dict) else None


def current_writer(store: Store, clock: Callable[[], float] = time.time) -> dict | None:
    """The record of the writer that holds `store` now (host, pid, started,
    stage, expires), or None. For `bnrep status`; never writes."""
    if not store.exists(LOCK_DIR):
        return None
    _, rec = _head(backend(store))
    return rec if rec is not None and not is_stale(rec, clock()) else None


def stop_requested(store: Store) -> bool:
    """Whether the writer that holds `store` is stopping its work (Lock.set_stopping): a task of the
    analysis asks before it starts, so that a stage stops its queued tasks without Ray's cancellation
    (bnrep.progress.stop_tasks)."""
    rec = current_writer(store)
    return bool(rec and rec.get("stopping"))


def stopping(store: Store) -> Callable[[bool], None]:
    """`set_stopping` of the lock this process holds on `store` (a no-op when it holds none)."""
    lock = _HELD.get(store.uri())
    return lock.set_stopping if lock is not None else (lambda stopping: None)


# ==== the held lock ====
@dataclass
class Lock:
    backend: object
    gen: int
    record: dict
    lease_s: float
    clock: Callable[[], float]
    lost: bool = False  # another writer took over (this one missed its renewals for a whole lease)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _writing: threading.Lock = field(default_factory=threading.Lock)  # one record write at a time

    def renew(self) -> None:
        """Extend the lease, unless another writer took over meanwhile."""
        with self._writing:
            if _generations(self.backend)[-1:] != [self.gen]:
                self.lost = True
                return
            self.record["expires"] = self.clock() + self.lease_s
            self.backend.overwrite(_gen_name(self.gen), json.dumps(self.record).encode())

    def set_stopping(self, stopping: bool) -> None:
        """Say in the record that the holder is stopping its work (Ctrl-C, a failed task): a task that starts
        now returns without working or writing (stop_requested)."""
        with self._writing:
            self.record["stopping"] = stopping
        self.renew()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3) and not self.lost:
            with contextlib.suppress(Exception):  # a failed renewal is retried at the next tick
                self.renew()
        if self.lost:
            print(f"bnrep: lost the writer lock of generation {self.gen}: another writer took over")

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="bnrep-lock-renewal", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing; a tombstone as the next generation frees the lock
        (generations only grow), then this one's record is deleted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if not self.lost and self.backend.create(_gen_name(self.gen + 1), json.dumps({"released": True}).encode()):
                self.backend.delete(_gen_name(self.gen))
        except OSError:  # no room for the tombstone (a full disk): deleting this record frees the lock too (the
            with contextlib.suppress(OSError):  # one before it is a tombstone, or a writer that had gone)
                self.backend.delete(_gen_name(self.gen))

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(store: Store, stage: str, lease_s: float = LEASE_S, clock: Callable[[], float] = time.time,
            renew: bool = True) -> Lock:
    """Take the writer lock of `store` for `stage`, or raise LockError naming
    the writer that holds it. Writes nothing when refused."""
    b = backend(store)
    gen, rec = _head(b)
    if rec is not None and not is_stale(rec, clock()):
        raise _refusal(store, rec)
    host, pid = socket.gethostname(), os.getpid()
    mine = {"host": host, "pid": pid, "pid_space": pid_space(), "proc_start": _process_start(pid), "stage": stage,
            "lease_s": lease_s,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "expires": clock() + lease_s}
    name = _gen_name(gen + 1)
    created = b.create(name, json.dumps(mine).encode())
    if created and _generations(b)[-1] == gen + 1:
        for old in _generations(b):  # earlier generations: stale records and tombstones
            if old <= gen:
                b.delete(_gen_name(old))
        lock = Lock(b, gen + 1, mine, lease_s, clock)
        if renew:
            lock.start_renewing()
        return lock
    if created:  # a later generation exists (our listing was old): it holds the lock, withdraw
        b.delete(name)
    raise _refusal(store, _head(b)[1])  # another writer took this generation first


def refuse_if_held(store: Store) -> None:
    """LockError (the lock's own line) when another writer holds `store` now. A stage says so before its
    other checks, whose findings (no trained models yet, another configuration) would describe the run under
    way rather than what to do. The lock held by this process (`bnrep run` around its stages) is no refusal."""
    if store.uri() not in _HELD and store.exists(LOCK_DIR):
        rec = current_writer(store)
        if rec is not None:
            raise _refusal(store, rec)


def _refusal(store: Store, rec: dict | None) -> LockError:
    who = describe(rec) if rec and not rec.get("released") else "another writer"
    return LockError(f"{store.uri()} is being written by {who}: wait for it to end or stop it "
                     "(the lock of a killed writer is taken over)")


_HELD: dict[str, Lock] = {}  # locks this process holds, by directory: `bnrep run` around its stages


@contextlib.contextmanager
def writer_lock(store: Store, stage: str, **kw):
    """`with writer_lock(store, stage):` holds the lock for the block (already
    held by this process, e.g. by `bnrep run` around its stages: kept as is)."""
    key = store.uri()
    if key in _HELD:
        yield _HELD[key]
        return
    try:
        lock = _HELD[key] = acquire(store, stage, **kw)
    except OSError as e:  # a place open_store's checks could not see (/proc, a mount that refuses): one line
        raise cannot_write(store.display(LOCK_DIR), e.strerror or type(e).__name__) from None
    try:
        store.remove_temporaries()  # of a writer killed before it could rename them
        yield lock
    finally:
        del _HELD[key]
        if not lock.lost:  # its tasks are stopped by now (bnrep.progress.wait_tasks)
            store.remove_temporaries()
        lock.release()

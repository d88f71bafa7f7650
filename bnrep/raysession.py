"""The Ray connection every stage shares, and what a trial or task asks of it.

    with ray_session(opts.address, exp.model) as ray:   # join a cluster, or a private local Ray
        gpus = default_gpus(ray, opts.gpus_per_trial)

A model from a researcher's own code (`--model mylab.nets:wide_cnn`) reaches
every worker: the local folder of its top-level package (or its single file)
is shipped with Ray's runtime_env `py_modules`, so the nodes of a cluster need
only bnrep and its dependencies (and timm for timm: models) installed.

Ray's own console output is turned down here (no Tune tables, no TensorBoard
hint pointing into the session directory, no INFO logs): a run prints only
bnrep's lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bnrep.store import Store
# (no torch here: every worker of the private Ray imports this module as it starts, see quiet_when_stopped)

QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's old reporter, which verbose=0 silences entirely
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "1",
    # Ctrl-C stops the run: a KeyboardInterrupt in the driver (bnrep.flags.main_guard: one line, exit 130,
    # the lock released, Ray shut down) instead of Tune's own handler, which ends the grid quietly,
    # prints its restore hint and lets bnrep train the models again
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}


_TUNE_TEMPORARY = re.compile(r"/\.[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}-tmp-")  # ray.tune.utils.util._atomic_save


_NO_ROOM = re.compile(r"\[Errno (28|122)\]|No space left on device|Disk quota exceeded")
_said_no_room: list[bool] = []


def _no_room(record: logging.LogRecord) -> bool:
    """Tune's tracebacks of the saves a full disk failed (a page each, one per save and sync): one line, once;
    the stage then ends with the one line of the write (bnrep.stages.tuning.fit). Every other record passes."""
    e = record.exc_info[1] if record.exc_info else None
    if not _NO_ROOM.search(f"{e or ''} {record.getMessage()}"):
        return True
    if _said_no_room:
        return False
    _said_no_room.append(True)
    record.msg, record.args, record.exc_info, record.exc_text = (
        "Ray Tune could not save its state under --out: no space left on device", (), None, None)
    return True


def _staging_race(record: logging.LogRecord) -> bool:
    """False for Tune's traceback of one harmless race, kept off the console: Tune saves its experiment
    state (a `.<uuid4>-tmp-...` file renamed into place) while its background copy of that folder to --out
    may be listing it; the copy then fails on the vanished temporary and Tune logs it, as an error when
    it waits for that copy and as a warning when it starts the next. A copy of the whole folder always
    follows a save (the last one waited for), so nothing is lost. Every other record passes."""
    e = record.exc_info[1] if record.exc_info else None
    text = str(e) if e else record.getMessage()
    vanished = isinstance(e, FileNotFoundError) or "FileNotFoundError" in text
    return not (vanished and _TUNE_TEMPORARY.search(text))


def quiet_ray_logs() -> None:
    """Ray's loggers as bnrep's console wants them: its own lines, a failure once, no Tune noise."""
    # bnrep reads its own tables, never Tune's metrics: no warning about trials whose result files a
    # kill or a Ctrl-C left missing ("Failed to fetch metrics ... FileNotFoundError")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # a failed trial: a line from bnrep's progress (bnrep.progress), its traceback in the trial's own log,
    # not on the console ("Trial task failed for trial ...": 40 lines per attempt)
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)  # "Trials did not complete": bnrep says which
    for name in ("ray.tune.execution.experiment_state", "ray.train._internal.syncer"):
        logging.getLogger(name).addFilter(_staging_race)
        logging.getLogger(name).addFilter(_no_room)


@contextlib.contextmanager
def ray_session(address: str | None, model: str | None = None):
    """Join `address` / $RAY_ADDRESS (else, as Ray does, a cluster that `ray start` runs on this machine),
    or start a private local Ray; shut down
    only what this process started. The dashboard is never started here.
    `model`: the study's model spec; a researcher's own module is shipped to the workers."""
    global _PRIVATE
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    import ray

    from bnrep.address import join
    from bnrep.models import user_module_path

    quiet = {"log_to_driver": True, "configure_logging": True, "logging_level": "WARNING"}
    quiet_ray_logs()
    shipped = user_module_path(model) if model else None
    if shipped:  # (no other runtime_env: one changes how Ray starts workers, and training's last bits with it)
        quiet["runtime_env"] = {"py_modules": [shipped]}
    home = _beside_a_namesake()
    if home:
        from ray.job_config import JobConfig

        quiet["job_config"] = JobConfig(_py_driver_sys_path=[home])
    address = address or os.environ.get("RAY_ADDRESS")
    started = not ray.is_initialized()
    try:  # a Ctrl-C during ray.init too: what it started is shut down
        if started and address:
            join(ray, address, quiet)
        elif started:  # Ray turns token auth on for a private cluster by default and warns that it did: as wanted
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            with sigint_default_in_children(), private_ray_env():
                ray.init(include_dashboard=False, **quiet)
        if started and _stop_on_sigterm:
            stop_on_sigterm()
        if started:
            _PRIVATE = not address
        yield ray
    finally:
        if started:
            with interrupts_held():  # a second Ctrl-C (or a SIGTERM) waits until Ray has stopped
                if _PRIVATE:
                    stop_monitor(ray)
                _PRIVATE = False
                ray.shutdown()
                if _stop_on_sigterm:  # the shutdown put SIGTERM's default action back (Python's record unchanged)
                    stop_on_sigterm()


@contextlib.contextmanager
def interrupts_held():
    """Ctrl-C, SIGTERM and SIGHUP held while Ray stops, then delivered (to the handlers there were before): one
    that interrupted ray.shutdown() midway ended this process with Ray's processes half stopped, and the
    raylet, killed with it, never stopped its agents, which lingered a minute (their parent gone). A
    further one is delivered at once (a shutdown that hangs can still be stopped). In the main thread only (signal handlers live there); an ignored signal stays ignored, and SIGTERM and SIGHUP are
    held only where bnrep's own handler takes it (stop_on_sigterm)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, *(STOP_SIGNALS if _stop_on_sigterm else ()))}

    def restore():
        for s, h in before.items():
            if h is not signal.SIG_IGN:
                signal.signal(s, h if h is not None else signal.SIG_DFL)

    def hold(signum, frame):
        held.append(signum)
        if len(held) > 1:  # pressed again (a shutdown that hangs): delivered now, as before
            restore()
            signal.raise_signal(signum)

    for s, h in before.items():
        if h is not signal.SIG_IGN:
            signal.signal(s, hold)
    try:
        yield
    finally:
        restore()
        if len(held) == 1:
            signal.raise_signal(held[0])  # as it would have been: KeyboardInterrupt, or stop_on_sigterm's


def stop_monitor(ray) -> None:
    """Stop the private Ray's autoscaler monitor before ray.shutdown() does: ray.shutdown() stops the GCS
    first and then sends the monitor SIGTERM, on which it reports its own end to the GCS just stopped, and
    waits a second for it before killing it (a second of every private session's end). The monitor of a
    one-machine Ray scales nothing and keeps no state: killed here, it has ended when ray.shutdown() looks."""
    import subprocess

    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    for info in getattr(node, "all_processes", {}).get("monitor", ()):  # (Ray's process type names it so)
        with contextlib.suppress(OSError, AttributeError, subprocess.TimeoutExpired):
            info.process.kill()
            info.process.wait(timeout=5)


_PRIVATE = False  # the Ray of the session is this process's own local one (nothing else joins it)
STOPPED_BY: list[int] = []  # the signal that stopped this command, when it was one of STOP_SIGNALS rather than Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
STOPPED_CODES = (130, *(128 + s for s in STOP_SIGNALS))  # a command's exit status when Ctrl-C or one of these stopped it
_stop_on_sigterm = False


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, `timeout`, a batch scheduler ending a job) and SIGHUP (the terminal closed, an SSH
    connection dropped) stop a command as Ctrl-C does: a KeyboardInterrupt in the main thread, so the same
    cleanup runs (tasks stopped, the lock released, Ray shut down) and bnrep.flags.main_guard says one line.
    A SIGHUP that is ignored (`nohup`) stays ignored. A command's entry point installs it; ray_session installs
    it again after ray.init, which puts Ray's in its place (sys.exit, and a native stack dump)."""
    global _stop_on_sigterm
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        STOPPED_BY.append(signum)
        raise KeyboardInterrupt

    for s in STOP_SIGNALS:
        if s == signal.SIGTERM or signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, stop)
    _stop_on_sigterm = True


INTERRUPTED: list[int] = []  # a Ctrl-C reached this command (noting_interrupts)


@contextlib.contextmanager
def noting_interrupts():
    """Ctrl-C recorded in INTERRUPTED as it raises KeyboardInterrupt, so that an error it causes later is known
    as its own (an import cut midway, which a library then meets as a RecursionError). In the main thread, where
    SIGINT has Python's default handler; the handler there before comes back after."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def note(signum, frame):
        INTERRUPTED.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _beside_a_namesake() -> str | None:
    """The folder bnrep's package sits in, when the current folder holds another `bnrep` (a results folder,
    `--out bnrep`, or a clone's parent): Ray puts the driver's current folder first on its workers' sys.path,
    and Python would import that folder as an empty namespace package in bnrep's place where bnrep is found
    by an editable install's finder rather than by a path entry. With its own folder on the path too, Python
    takes the real package (a regular package wins over namespace portions). None otherwise."""
    import bnrep

    package = os.path.dirname(os.path.abspath(bnrep.__file__))
    there = os.path.join(os.getcwd(), "bnrep")
    if os.path.exists(there) and os.path.realpath(there) != os.path.realpath(package):
        return os.path.dirname(package)
    return None


@contextlib.contextmanager
def sigint_default_in_children():
    """Processes started inside get SIGINT's default disposition even when this one ignores it (a run
    started in the background by a non-interactive shell: an ignored signal is inherited, a handled
    one is reset in the child). Stopping a stage's tasks interrupts them through SIGINT's handler in
    their Ray worker (bnrep.progress.stop_tasks); a worker that ignores SIGINT would run on until it
    is killed. This process keeps its own disposition."""
    main = threading.current_thread() is threading.main_thread()  # (signal handlers: the main thread only)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN or not main:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


SEES_WAIT_S = 5  # how long a node looks for the driver's file (a shared filesystem's own delay)
NODE_ANSWER_S = 60  # how long the check waits for a node's answer (one just killed may still be listed as alive)


def check_shared_out(ray, store: Store) -> None:
    """A multi-node cluster writing to a local path: every alive node must see the results directory at that
    path (a filesystem they all mount), else the trials and tasks it runs write where the driver never looks
    (every rerun trained them again, and ended in a traceback). The driver writes a file of a fresh name in it,
    and each node looks for it (ask_every_node); UsageError (one line) naming the first that does not see
    it. A URI (s3://, file://) says where, explicitly: not checked; nor are nodes that join later (an
    autoscaler's)."""
    import uuid

    from bnrep.config import UsageError
    from bnrep.store import is_uri

    if is_uri(store.out) or len(alive_nodes(ray)) < 2:
        return
    token = uuid.uuid4().hex
    marker = os.path.join(store.path(), f".bnrep-seen-{token}")
    os.makedirs(store.path(), exist_ok=True)
    with open(marker, "w") as f:
        f.write(token)
    try:
        answers = ask_every_node(ray, f"whether it sees --out {store.out}", sees, marker, token)
    finally:
        with contextlib.suppress(OSError):
            os.remove(marker)
    for n, seen in answers:
        if seen is False:
            raise UsageError(f"--out {store.out} is not the same directory on node {node_text(n)}: every node must "
                             f"see the results at that path (a filesystem they all mount, at the same path), or "
                             f"give an s3:// URI")


def sees(path: str, token: str) -> bool:
    """Whether this node sees the file at `path` holding `token` (looked for up to SEES_WAIT_S)."""
    import time

    until = time.monotonic() + SEES_WAIT_S
    while True:
        with contextlib.suppress(OSError):
            with open(path) as f:
                if f.read() == token:
                    return True
        if time.monotonic() > until:
            return False
        time.sleep(0.2)


def alive_nodes(ray) -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def node_text(n: dict) -> str:
    return f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})"


NO_ANSWER = object()  # a node's answer in ask_every_node when it gave none


def ask_every_node(ray, what: str, fn, *args) -> list[tuple[dict, object]]:
    """(node, fn(*args) as run there) for every alive node, each in a zero-CPU task pinned to it; a node that
    does not answer within NODE_ANSWER_S, or whose task failed (it died after it was listed), answers NO_ANSWER
    and is named in a warning (`what` it did not say), its task cancelled."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes(ray)
    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    asked = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args)
             for n in nodes]
    answered, unanswered = ray.wait(asked, num_returns=len(asked), timeout=NODE_ANSWER_S)
    got = {}
    for r in answered:
        with contextlib.suppress(Exception):  # (a node that died meanwhile: its task failed)
            got[r] = ray.get(r)
    for r in unanswered:
        with contextlib.suppress(Exception):
            ray.cancel(r, force=True)
    for n, r in zip(nodes, asked):
        if r not in got:
            print(f"warning: node {node_text(n)} did not say within {NODE_ANSWER_S} s {what} (it may have left the "
                  f"cluster)", flush=True)
    return [(n, got.get(r, NO_ANSWER)) for n, r in zip(nodes, asked)]


def check_nodes(ray, store: Store, dataset: str) -> None:
    """Before any trial or task: the results and the data are the same on every node."""
    check_shared_out(ray, store)
    check_data_on_nodes(ray, dataset)


def check_data_on_nodes(ray, dataset: str) -> None:
    """Every node's trials and tasks read an image folder at its path, so every alive node must see the
    same folder there (a filesystem they all mount); DatasetError (one line) naming the first that does
    not. Each node lists the folder (ask_every_node: names and sizes, no decoding)."""
    from bnrep.datasets import FOLDER, DatasetError, folder_fingerprint, parse_dataset

    kind, path = parse_dataset(dataset)
    if kind != FOLDER or len(alive_nodes(ray)) < 2:
        return
    here = folder_fingerprint(path)
    for n, there in ask_every_node(ray, f"what it sees at imagefolder:{path}", folder_fingerprint, path):
        if there is not NO_ANSWER and there != here:
            raise DatasetError(f"imagefolder:{path} differs on node {n['NodeManagerAddress']} ({n['NodeID'][:8]}: "
                               f"{there}; here: {here}): every node must see the folder at that path, on a "
                               f"filesystem they all mount")


def quiet_when_stopped() -> None:
    """A worker that Ray stops (SIGTERM, when a run ends or fails) while Python runs a garbage-collection
    callback then prints nothing. Ray's SIGTERM handler raises SystemExit; raised inside a weakref or
    __del__ callback, Python can only report it as unraisable ("Exception ignored in ... SystemExit: 1",
    ten lines per worker, forwarded to the user's console under bnrep's one-line error). Every other
    unraisable exception is reported as before.

    Every worker of the private local Ray runs it as it starts (private_ray_env): Tune may
    start a trial's actor and stop it again before the trial runs (when it gives the trial an actor
    that has finished another), and Ray stops it with SIGTERM amid its imports. A trial or task calls
    it first as well, for the workers of a cluster, which bnrep does not start."""
    import sys

    if getattr(sys.unraisablehook, "quiet_when_stopped", False):
        return
    report = sys.unraisablehook

    def hook(unraisable):
        if unraisable.exc_type is not SystemExit:
            report(unraisable)

    hook.quiet_when_stopped = True
    sys.unraisablehook = hook


# The environment the private Ray's processes inherit while ray.init starts them (not a runtime_env: that
# changes how Ray starts workers), besides Ray's worker setup hook (private_ray_env); a variable the
# user has set stays as it is.
PRIVATE_RAY_ENV = {
    # no idle workers started with Ray, one per CPU: Tune's trials start workers of their own and never
    # take them, and the analysis starts its task workers when it needs them (about 0.6 s of CPU each,
    # at the start of every run, beside the driver's checks)
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
}


@contextlib.contextmanager
def private_ray_env():
    """PRIVATE_RAY_ENV, and Ray's worker setup hook (run by each worker as it starts, before any task or
    actor) set to quiet_when_stopped, in this process's environment while the private Ray starts."""
    from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR as HOOK

    env = {**PRIVATE_RAY_ENV, HOOK: f"{__name__}.quiet_when_stopped"}
    added = [k for k in env if k not in os.environ]
    os.environ.update({k: env[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def node_id() -> str:
    """The Ray node this task or trial runs on ('' outside Ray): provenance."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def placement() -> dict:
    """Where this task or trial runs, as provenance: its Ray node and the GPUs
    Ray assigned it (0 outside a task: the driver, or no Ray; a fraction when several share one GPU)."""
    import ray

    ctx = ray.get_runtime_context() if ray.is_initialized() else None
    gpus = ctx.get_assigned_resources().get("GPU", 0.0) if ctx and ctx.worker.mode == ray._private.worker.WORKER_MODE else 0.0
    return {"node_id": node_id(), "gpus": float(gpus)}


def check_resources(ray, opts, stages) -> None:
    """The resource checks of `stages` (default_gpus: a trial or task asking more than the private local Ray
    has is UsageError), all before any of them works or deletes (--fresh)."""
    if {"hparam", "final"} & set(stages):
        default_gpus(ray, opts.gpus_per_trial, opts.cpus_per_trial, say=False)  # (each stage says its note)
    if "analysis" in stages:
        default_gpus(ray, opts.gpus_per_task, opts.cpus_per_task, "task", say=False)


def default_gpus(ray, requested: float | None, cpus: float = 1, per: str = "trial", say: bool = True) -> float:
    """GPUs per trial/task: the flag, else 1 when the cluster has GPUs, else 0. A trial or task runs on one
    node: on the private local Ray (nothing can join it) one that asks more CPUs or GPUs than it has is
    UsageError, one line (Ray would wait for them forever); on a cluster that no node of has room for
    one, the wait for a node to join (an autoscaler's) is said, with `say`, once, before it begins."""
    have = ray.cluster_resources()
    gpus = requested if requested is not None else 1.0 if have.get("GPU", 0) > 0 else 0.0
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return gpus
    if _PRIVATE:  # (one node)
        from bnrep.config import UsageError

        short = [f"{n:g} {w}{'s' * (n != 1)}" for n, w, h in ((cpus, "CPU", have.get("CPU", 0)),
                                                             (gpus, "GPU", have.get("GPU", 0))) if n > h]
        raise UsageError(f"a {per} asks {' and '.join(short)} (--cpus-per-{per} / --gpus-per-{per}), more than this "
                         f"machine's Ray has ({have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs): ask for at "
                         f"most that, or join a cluster that has them (--address)")
    if say:
        asks = " and ".join(f"{n:g} {w}{'s' * (n != 1)}" for n, w in ((cpus, "CPU"), (gpus, "GPU")) if n)
        most = {w: max((n.get(w, 0) for n in nodes), default=0) for w in ("CPU", "GPU")}
        has = " and ".join(f"{most[w]:g} {w}{'s' * (most[w] != 1)}" for w in ("CPU", "GPU"))
        have = f"its {len(nodes)} nodes have at most {has} each" if len(nodes) != 1 else f"its one node has {has}"
        print(f"note: no node of the cluster has room for a {per} ({asks}; {have}): the "
              f"{per}s wait until one joins (an autoscaler's worker, or `ray start --address` on "
              f"another machine); Ctrl-C stops the wait, and the same command resumes", flush=True)
    return gpus

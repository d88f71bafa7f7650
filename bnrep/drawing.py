"""The report's figures drawn on every core: each worker draws whole figures (PNG and SVG).

Drawing is matplotlib's Python code, one core per figure, and a report has a dozen figures or more
(about 12 s on one core for digits-cnn). They are drawn by a pool of processes forked from this one
(`bnrep report`, and `bnrep run` once its Ray session has ended): a fork shares the results and
every imported module without copying them (a forkserver would import torch again, 5 s; Ray's
workers import matplotlib and bnrep.figures, 1.7 s). Where this process runs Ray (a notebook that
started it), which a fork must not copy, they are Ray tasks on this machine's workers instead. The
forked workers draw only: they touch neither Ray, torch nor the writer lock. A figure's bytes are
the same whichever process draws it.

    drawn = draw(results_list)   # {figure name: (png bytes, svg bytes) or None}
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor

WORKERS_ENV = "BNREP_DRAW_WORKERS"  # processes drawing figures (default: the cores, at most one per figure)
_RESULTS: list = []  # in a forked worker: the results it draws from


def draw_some(names: list[str], rs) -> dict[str, tuple[bytes, bytes] | None]:
    """Figures `names` (bnrep.figures.FIGURES) of `rs` as PNG and SVG bytes, None where there is no data."""
    from bnrep import figures

    out = {}
    for name in names:
        fig = figures.figure(name).make(rs)
        out[name] = None if fig is None else figures.png_and_svg(fig)
    return out


def _forked(names: list[str]) -> dict:
    return draw_some(names, _RESULTS)


def workers(n_figures: int) -> int:
    asked = os.environ.get(WORKERS_ENV)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n_figures, int(asked) if asked else cores))


def draw(rs: list, names: list[str] | None = None) -> dict[str, tuple[bytes, bytes] | None]:
    """The figures `names` (default: every figure of the report, in bnrep.figures.FIGURES order)."""
    from bnrep.figures import FIGURES

    names = names or [spec.name for spec in FIGURES]
    n = workers(len(names))
    ray = sys.modules.get("ray")
    if n > 1 and ray is not None and ray.is_initialized():  # a task per worker: each imports matplotlib
        shares = [names[i::n] for i in range(n)]  # FIGURES alternates cheap and dear figures: dealt round-robin
        task = ray.remote(draw_some).options(num_cpus=1, scheduling_strategy=local_node(ray))
        ref = ray.put(rs)
        done = {k: v for part in ray.get([task.remote(s, ref) for s in shares]) for k, v in part.items()}
    elif n > 1 and "fork" in mp.get_all_start_methods():
        _RESULTS[:] = rs  # the forked workers see it as it is now
        # the workers' garbage collection leaves this process's objects alone: it would write to every one, and
        # each page it writes is copied (the driver of `bnrep run` holds Ray, torch and pandas: 1.3 s more)
        gc.freeze()
        pool = None
        try:
            pool = ProcessPoolExecutor(n, mp_context=mp.get_context("fork"), initializer=_worker_start,
                                       initargs=(os.getpid(),))  # (a worker that dies: BrokenProcessPool)
            # a figure at a time, to whichever worker is free: the figures' costs differ by 6x
            done = {k: v for part in pool.map(_forked, [[name] for name in names]) for k, v in part.items()}
        except BaseException:  # Ctrl-C, SIGTERM, a figure's error: the workers end now, not after every figure
            for p in list((getattr(pool, "_processes", None) or {}).values()):  # (no public way before 3.14)
                with contextlib.suppress(Exception):
                    p.kill()
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            gc.unfreeze()
            _RESULTS.clear()
    else:
        done = draw_some(names, rs)
    return {name: done[name] for name in names}


def _worker_start(parent: int) -> None:
    """A drawing worker leaves Ctrl-C to the report's own process (one line, exit 130): Ctrl-C reaches the
    whole process group, and each worker would print its own KeyboardInterrupt traceback. SIGTERM and SIGHUP
    (a closed terminal's, to the whole group) end it at once; a SIGHUP that `nohup` ignores stays ignored. And it dies with its parent, however the parent ends (a second Ctrl-C while the workers are
    killed, a SIGKILL): it would otherwise wait for ever on a pipe no one reads, holding the command's
    stdout open (`bnrep run | tee log` would never return)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    with contextlib.suppress(Exception):  # Linux; elsewhere the kill in draw is all there is
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before the line above
        os._exit(1)


def local_node(ray):
    """Ray tasks on this machine: the results and the bytes do not cross the network."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)

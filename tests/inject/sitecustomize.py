"""Faults and moments chosen by state, in every process of a run (the driver, Ray workers, Tune trials).

On PYTHONPATH, with
- BNREP_FULL_DISK=<dir>/<name> (e.g. kmeans/m-conv2.parquet): writing that file (under its temporary
  name) writes half of
  its bytes, then fails with ENOSPC as a full disk does;
- BNREP_STOP_AFTER=<dir>/<name>: once that file is complete (renamed into place), the process that
  wrote it stops itself (SIGSTOP), so a test kills it at exactly that moment, whatever the machine's load.
- BNREP_STACKS_ON_USR2=1: SIGUSR2 writes every thread's stack to stderr (faulthandler), so a test can
  show where a process it finds hung waits;
- BNREP_HANG_AT_EXIT=1: the `python -m bnrep` process (not Ray's workers, not its children), on its
  way out, runs an exit handler that never returns, as a library's handler waiting for a thread or a
  queue that a Ctrl-C stopped would.
- BNREP_FULL_CHECKPOINTS=1: Ray Tune's copy of a trial's checkpoint into the results fails with ENOSPC
  (naming the local copy it read, as Tune's does), as on a full results disk;
- BNREP_HOLD_DRAWING=<dir>: a process forked to draw the report's figures writes <dir>/<its pid> and
  then waits for ever before its first figure, so a test signals the command while its figures are drawn;
- BNREP_HOLD_IMPORT=<file>: the first `import torch` writes <file>, then waits for ever, so a test
  signals a command while its modules load;
- BNREP_EXIT_MARKS=<dir>: an exit handler writes <dir>/atexit; with BNREP_EXIT_THREAD=1 too, a thread
  that outlives the main thread writes <dir>/thread once the main thread has ended (for a command
  without Ray: every Python process of the run does this).
Everything else writes normally. It replaces the store's filesystem below bnrep's own write code, so
that code runs as it would on a full disk.
"""

import os
import signal

if os.environ.get("BNREP_FULL_DISK") or os.environ.get("BNREP_STOP_AFTER"):
    import errno

    import pyarrow.fs as pafs

    import bnrep.store

    full, stop = os.environ.get("BNREP_FULL_DISK"), os.environ.get("BNREP_STOP_AFTER")

    def _is(path, rel):  # also under a temporary name: <dir>/.tmp-<id>-<name>
        if not rel:
            return False
        folder, name = os.path.split(rel)
        return os.path.dirname(path).endswith(folder) and path.endswith(name)

    class _HalfWritten:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

        def write(self, data):
            self.stream.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class Injected(pafs.LocalFileSystem):
        def open_output_stream(self, path, *args, **kwargs):
            stream = super().open_output_stream(path, *args, **kwargs)
            return _HalfWritten(stream) if _is(path, full) else stream

        def move(self, src, dest):
            super().move(src, dest)
            if _is(dest, stop):
                os.kill(os.getpid(), signal.SIGSTOP)

    _resolve = bnrep.store.resolve

    def resolve(out):
        fs, root = _resolve(out)
        return (Injected(), root) if isinstance(fs, pafs.LocalFileSystem) else (fs, root)

    bnrep.store.resolve = resolve

if os.environ.get("BNREP_HANG_AT_EXIT"):
    import atexit
    import multiprocessing
    import sys
    import threading

    def _hang():
        driver = sys.argv[0].endswith(os.path.join("bnrep", "__main__.py"))  # not Ray's workers
        if driver and multiprocessing.parent_process() is None:  # nor a child spawned with its argv
            threading.Event().wait()

    atexit.register(_hang)

if os.environ.get("BNREP_STACKS_ON_USR2"):
    import faulthandler

    faulthandler.register(signal.SIGUSR2, all_threads=True)

if os.environ.get("BNREP_EXIT_MARKS"):  # what a command's exit still does (bnrep.flags.exit_process)
    import atexit
    import threading

    def _mark(name):
        open(os.path.join(os.environ["BNREP_EXIT_MARKS"], name), "w").close()

    atexit.register(_mark, "atexit")  # an exit handler ran
    if os.environ.get("BNREP_EXIT_THREAD"):  # a thread still running when the command returns, then done
        def _outlive_main():
            threading.main_thread().join()
            _mark("thread")

        threading.Thread(target=_outlive_main, name="outlives main").start()

if os.environ.get("BNREP_HOLD_DRAWING"):
    import threading

    import bnrep.drawing

    def _held(names):
        open(os.path.join(os.environ["BNREP_HOLD_DRAWING"], str(os.getpid())), "w").close()
        threading.Event().wait()

    bnrep.drawing._forked = _held

if os.environ.get("BNREP_HOLD_IMPORT"):
    import sys
    import time

    class _HoldTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                open(os.environ["BNREP_HOLD_IMPORT"], "w").close()
                while True:
                    time.sleep(0.05)

    sys.meta_path.insert(0, _HoldTorch())

if os.environ.get("BNREP_FULL_CHECKPOINTS"):  # ray.tune patched once it is imported (not in every process)
    import errno
    import importlib.abc
    import importlib.util
    import sys

    def _full_report(report):
        def refused(metrics, *args, checkpoint=None, **kwargs):
            if checkpoint is None:
                return report(metrics, *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), checkpoint.path)
        return refused

    class _PatchTune(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "ray.tune":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                module.report = _full_report(module.report)
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _PatchTune())

"""Ctrl-C, remembered. A press raises KeyboardInterrupt, as Python's own handler does, and also sets
a flag, so that a library which catches the KeyboardInterrupt cannot make the run forget it (seen
once: a smoke grid ran to its end after a Ctrl-C in its first epoch). bnrep looks at the flag where
control comes back to it: every step of a Tune run (bnrep.progress), every finished task
(bnrep.progress.wait_tasks) and the end of the command (bnrep.flags.main_guard).

    with remembered():      # around a command, in the main thread
        ...
        check()             # KeyboardInterrupt if Ctrl-C was pressed meanwhile
"""

from __future__ import annotations

import contextlib
import signal
import threading

_PRESSED = threading.Event()


def _on_sigint(signum, frame):
    _PRESSED.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def remembered():
    """Within the block, Ctrl-C is remembered. Only where Python's default handler is in place and in
    the main thread: a process started with SIGINT ignored (a background job) keeps ignoring it."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _PRESSED.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _PRESSED.clear()


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed inside `remembered()` (and caught by a library)."""
    if _PRESSED.is_set():
        raise KeyboardInterrupt

"""Killing a process tree as a machine failure would: every descendant at once.

`os.killpg` reaches only the process group; Ray's raylet and workers may sit in
other groups and outlive the driver for a moment, finishing work "after" the
kill. `kill_tree` freezes the whole tree first (SIGSTOP: a stopped process
cannot fork or write), then SIGKILLs every process in it and waits until all
are gone, so nothing the tree started can write afterwards.
"""

import os
import signal
import time


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> set[int]:
    kids, out, todo = _children(), set(), [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _signal(pids, sig) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped for good
    except OSError:
        return False


def stopped(pid: int) -> bool:
    """Has `pid` stopped (SIGSTOP: state T)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def freeze_tree(pid: int) -> set[int]:
    """SIGSTOP `pid` and every descendant; returns the frozen set. A frozen
    process cannot fork or write: the files the tree writes stand still."""
    tree = {pid}
    while True:  # freeze until no frozen process has a child we have not frozen
        _signal(tree, signal.SIGSTOP)
        grown = tree | descendants(pid) | {d for p in tree for d in descendants(p)}
        if grown == tree:
            return tree
        tree = grown


def thaw(tree: set[int]) -> None:
    _signal(tree, signal.SIGCONT)


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant, frozen first; return once all are dead (SIGKILL cannot be
    ignored: they die, however loaded the machine)."""
    tree = freeze_tree(pid)
    _signal(tree, signal.SIGKILL)
    while any(alive(p) for p in tree):
        time.sleep(0.01)

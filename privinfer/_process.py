"""Process hygiene shared by every child privinfer starts (servers, 2PC parties, dealers)."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time


def exit_with_parent(interval: float = 0.5, code: int = 0) -> None:
    """Exit this process as soon as its parent dies, so that no child is ever orphaned."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(code)

    threading.Thread(target=watch, daemon=True, name="privinfer-parent-watch").start()


_main_lock = threading.RLock()


@contextlib.contextmanager
def no_main_reimport():
    """Start `spawn`/`forkserver` children without re-running the caller's script.

    multiprocessing's spawn re-imports the parent's `__main__` *file* in the child, so a script without
    an `if __name__ == "__main__":` guard starts again in the child, fails in bootstrapping, and the parent
    waits forever. Every privinfer child runs a function from a privinfer module and receives only bytes
    and plain data, so it never needs the caller's `__main__`: hiding `__main__.__file__` while the
    child starts makes multiprocessing skip that import (as it does in a notebook or `python -c`).
    """
    main = sys.modules.get("__main__")
    with _main_lock:
        hidden = main is not None and getattr(main, "__spec__", None) is None and hasattr(main, "__file__")
        if hidden:
            path = main.__file__
            del main.__file__
        try:
            yield
        finally:
            if hidden:
                main.__file__ = path


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc; empty elsewhere), children before grandchildren."""
    kids: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for d in entries:
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                kids.setdefault(int(fields[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    """Running (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_child(proc, ask_exit, grace: float = 2.0) -> None:
    """Stop a `subprocess.Popen` child that talks over its stdin/stdout pipes; never raises.

    `ask_exit()` sends the child its own exit message (only while it runs); then its pipes are closed and it
    gets `grace` seconds to leave, then SIGTERM, then SIGKILL, each with the same grace.
    """
    import signal
    import subprocess
    try:
        if proc.poll() is None:
            try:
                ask_exit()
            except Exception:
                pass
        for f in (proc.stdin, proc.stdout):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and proc.poll() is None:
                proc.send_signal(sig)
            try:
                proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                continue
    except Exception:
        pass

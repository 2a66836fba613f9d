"""The private scratch directory that SEAL (de)serialization and the batch engine's shared arrays live in.

Why: the sealapi bindings (de)serialize only through file paths, and what passes through them is the peer's
keys and ciphertexts. A predictable name in a shared directory would let another local user plant a symlink
(SEAL follows it and writes through it); a 0700 directory with an unpredictable name only we can enter cannot
hold anybody else's entries. It sits on tmpfs (/dev/shm) when available, which is memory: a process killed
before its atexit hook runs (SIGKILL, OOM, `os._exit` in a child) would leave its files there for good, and
the batch engine's pooled arrays are gigabytes. So the directory's name carries its pid, and each new one
removes the directories of processes that no longer exist.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading

PREFIX = "privinfer-he-"
_lock = threading.Lock()
_dirs: dict[int, str] = {}


def _base() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(base: str | None = None) -> list[str]:
    """Delete our own scratch directories whose process is gone; returns what was removed."""
    base = base or _base() or tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    uid = os.getuid()
    for e in entries:
        if not e.name.startswith(PREFIX):
            continue
        pid_text = e.name[len(PREFIX):].split("-", 1)[0]
        try:
            if not pid_text.isdigit() or e.is_symlink() or not e.is_dir() or e.stat().st_uid != uid:
                continue
        except OSError:
            continue
        if not _alive(int(pid_text)):
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(e.path)
    return removed


def private_dir() -> str:
    """This process's private scratch directory (mode 0700), made once per pid."""
    pid = os.getpid()
    with _lock:
        d = _dirs.get(pid)
        if d is not None and not (os.path.isdir(d) and not os.path.islink(d)):
            d = None  # removed under us (a tmpfs cleaner): make a new one rather than fail every (de)serialization
        if d is None:
            base = _base()
            remove_orphans(base)
            d = tempfile.mkdtemp(prefix=f"{PREFIX}{pid}-", dir=base)  # 0700, unpredictable suffix
            _dirs[pid] = d
            atexit.register(shutil.rmtree, d, True)
    return d

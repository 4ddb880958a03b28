"""One pipeline per run folder: an exclusive lock on run_dir/.pipeline.lock.

    with runlock.hold(run_dir, log):      # RunDirBusy if another live pipeline holds it
        ...

The lock is `flock`, so the kernel releases it when its process ends, however it ends (SIGKILL, power
cut on a local disk): a killed run never blocks the next one. The file names its holder (pid, host,
start time) for the refusal message; a next run that finds a name but a free lock knows the previous run
ended without cleaning up, and says so before taking over. POSIX only (fcntl).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".pipeline.lock"


class RunDirBusy(RuntimeError):
    pass


@contextmanager
def hold(run_dir: str | Path, log=print):
    """Hold run_dir's lock for the body; raise RunDirBusy (one sentence) if a live pipeline holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunDirBusy(f"{run_dir} is in use by another pipeline ({holder}): wait for it to finish, or give "
                         "this run its own --run-dir.") from None
    try:
        stale = _holder(fd, default="")
        if stale:
            log(f"taking over {run_dir / LOCK_FILE}: the run that held it ({stale}) ended without releasing it, "
                "so its last notebook is rerun.", flush=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)  # an empty file: released cleanly
        os.close(fd)  # closing releases the flock


def _holder(fd: int, default: str = "holder unknown") -> str:
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if not text:
        return default
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return default

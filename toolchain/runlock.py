"""One writer per run directory: an flock on RUN_DIR/.lock that holds the holder's pid, host and start.

The kernel drops an flock when its process dies (SIGKILL included), so a lock file left by
a dead run is stale by definition and the next run takes it over. The file stays in place
between runs (deleting a lock file races with a process that has just opened it); it is
emptied when its holder releases it, so a non-empty file we can lock was left by a run
that did not finish.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import InputError, RunLockedError

LOCK_NAME = ".lock"
TEMP_DIR_PREFIXES = (".quantize-", ".quant-debug-", ".tmp-")


class RunLock:
    """Exclusive, non-blocking lock of a run directory for the life of one run."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.recovered: dict[str, Any] | None = None  # holder info of a stale lock we took over

    @property
    def held(self) -> bool:
        return self._fd is not None

    def check_free(self) -> None:
        """Fail now if another process holds the lock; creates and writes nothing."""
        if self.held or not self.path.is_file():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            self._try_lock(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Create the run directory if needed and take the lock, or raise RunLockedError."""
        if self.held:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"cannot create the run directory {self.run_dir} ({e.strerror or e}); "
                             "give a writable folder with --out") from e
        try:
            self._try_lock(fd)
            previous = _parse(os.pread(fd, 4096, 0))
            self.recovered = previous or None
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def sweep_temp_files(self) -> list[Path]:
        """Remove temp files and folders a killed run left behind; only safe while holding the lock.

        Atomic writes go to hidden `.NAME.*.tmp` files renamed into place, and conversions
        work in hidden temp folders: whatever of these exists now was never completed.
        """
        if not self.held:
            raise RuntimeError("sweep_temp_files needs the lock")
        removed = []
        for path in sorted(self.run_dir.rglob(".*"), reverse=True):
            if path.is_file() and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                removed.append(path)
            elif path.is_dir() and path.parent == self.run_dir and path.name.startswith(TEMP_DIR_PREFIXES):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _try_lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 4096, 0))
            raise RunLockedError(
                f"run directory {self.run_dir} is locked by another edge-toolchain run "
                f"({describe_holder(holder)}); wait for it to finish or give another --out"
            ) from None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder details not written yet"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started_utc', '?')}")


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}

"""Device leases: one benchmark at a time per board, across runs, processes and users of a lab.

A lease is an exclusive `flock` on a file named after the board (its SSH host and port, so
two profiles or fleets that reach the same board share one lease), in the lab's lease
folder: `$EDGE_TOOLCHAIN_LEASE_DIR`, default `/tmp/edge-toolchain-leases` (every run on
this machine sees it; for drivers on several machines point it at a shared folder that
supports locks, e.g. NFSv4). The kernel drops a flock when its process dies, so a run that
is killed never leaves a board leased. The file holds the holder's pid and host, for the
message of a run that waits too long.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .config import TargetProfile
from .errors import TargetError

DEFAULT_LEASE_DIR = Path("/tmp/edge-toolchain-leases")
DEFAULT_WAIT_SECONDS = 3600.0


def lease_dir() -> Path:
    return Path(os.environ.get("EDGE_TOOLCHAIN_LEASE_DIR") or DEFAULT_LEASE_DIR)


def device_key(profile: TargetProfile) -> str | None:
    """The board a profile measures on (None: not a device, e.g. this machine or an emulator)."""
    c = profile.connection
    if c.kind != "ssh":
        return None
    return f"ssh:{c.host}:{c.port or 22}"


def lease_file(key: str) -> Path:
    return lease_dir() / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".lease")


@contextlib.contextmanager
def device_lease(profile: TargetProfile, wait_seconds: float = DEFAULT_WAIT_SECONDS,
                 on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the board of `profile` for the block; wait for another holder at most `wait_seconds`."""
    key = device_key(profile)
    if key is None:
        yield
        return
    path = lease_file(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held for the block
    except OSError as e:
        raise TargetError(f"target '{profile.name}': cannot open its lease file {path}: {e}; "
                          "set EDGE_TOOLCHAIN_LEASE_DIR to a writable folder") from e
    with handle:
        _acquire(handle, profile, key, wait_seconds, on_wait)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()} {socket.gethostname()} {key}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle, profile: TargetProfile, key: str, wait_seconds: float,
             on_wait: Callable[[str], None] | None) -> None:
    deadline = time.monotonic() + wait_seconds
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(handle)
        if time.monotonic() >= deadline:
            raise TargetError(f"target '{profile.name}': the board {key} stayed leased by {holder} for "
                              f"{wait_seconds:g} s; wait for that benchmark to finish or stop it")
        if on_wait is not None and not told:
            on_wait(f"target '{profile.name}': waiting for the board {key} (leased by {holder})")
            told = True
        time.sleep(0.05)


def _holder(handle) -> str:
    handle.seek(0)
    words = handle.read().split()
    return f"pid {words[0]} on {words[1]}" if len(words) >= 2 else "another run"

"""Device leases: one benchmark at a time per board, across runs, processes and users of a lab.

A lease is an exclusive `flock` on a file named after the board (its SSH host and port, so
two profiles or fleets that reach the same board share one lease), in the lab's lease
folder: `$EDGE_TOOLCHAIN_LEASE_DIR`, default `/tmp/edge-toolchain-leases` (every run on
this machine sees it; for drivers on several machines point it at a shared folder that
supports locks, e.g. NFSv4). The kernel drops a flock when its process dies, so a run that
is killed never leaves a board leased. The file holds the holder's pid and host, for the
message of a run that waits too long.

Drivers on several machines share one Ray cluster instead (`ClusterLeases`, used when a run
uses the Ray executor, `[execution] leases = "cluster"` or `bench --ray-address`): each board
has a named, detached `BoardLease` actor in the namespace `edge-toolchain-leases`, which
grants the board to one holder at a time. The holder renews its lease every third of its
time to live (TTL); a driver that dies stops renewing, and its lease expires after the TTL.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


Waiting = Callable[[str], None]
_IN_USE: dict[str, Any] = {"leases": None, "on_wait": None}  # set by `leases_in_use` for a run


@contextlib.contextmanager
def leases_in_use(leases: Any = None, on_wait: Waiting | None = None) -> Iterator[None]:
    """Benchmarks in the block lease boards with `leases` (None: flock) and show waits with `on_wait`."""
    before = dict(_IN_USE)
    _IN_USE.update(leases=leases, on_wait=on_wait)
    try:
        yield
    finally:
        _IN_USE.update(before)


@contextlib.contextmanager
def device_lease(profile: TargetProfile, wait_seconds: float = DEFAULT_WAIT_SECONDS,
                 on_wait: Waiting | None = None) -> Iterator[None]:
    """Hold the board of `profile` for the block; wait for another holder at most `wait_seconds`."""
    key = device_key(profile)
    on_wait = on_wait or _IN_USE["on_wait"]
    if key is None:
        yield
    elif _IN_USE["leases"] is not None:
        with _IN_USE["leases"].hold(profile.name, key, wait_seconds, on_wait):
            yield
    else:
        with _flock_lease(profile, key, wait_seconds, on_wait):
            yield


@contextlib.contextmanager
def _flock_lease(profile: TargetProfile, key: str, wait_seconds: float, on_wait: Waiting | None) -> Iterator[None]:
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


LEASE_NAMESPACE = "edge-toolchain-leases"
DEFAULT_TTL_SECONDS = 30.0


class BoardLease:
    """A Ray actor per board: grants it to one holder at a time, until released or not renewed in time."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.holder: str | None = None
        self.expires = 0.0

    def acquire(self, holder: str, ttl_seconds: float) -> str | None:
        """Grant (or renew) the lease to `holder`: None; or the one who holds it."""
        now = time.monotonic()
        if self.holder not in (None, holder) and now < self.expires:
            return self.holder
        self.holder, self.expires = holder, now + ttl_seconds
        return None

    def release(self, holder: str) -> None:
        if self.holder == holder:
            self.holder = None


class ClusterLeases:
    """Board leases held by the Ray cluster: exclusive across every driver connected to it."""

    def __init__(self, connect: Callable[[], None], ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 call_timeout_seconds: float = 60.0, poll_seconds: float = 0.25,
                 renew_seconds: float | None = None) -> None:
        self.connect = connect  # ray.init, bounded (RayExecutor.connect)
        self.ttl_seconds = ttl_seconds
        self.call_timeout_seconds = call_timeout_seconds
        self.poll_seconds = poll_seconds
        self.renew_seconds = renew_seconds or ttl_seconds / 3

    def actor(self, key: str) -> Any:
        import ray

        self.connect()
        return ray.remote(num_cpus=0, max_restarts=-1)(BoardLease).options(
            name=f"board {key}", namespace=LEASE_NAMESPACE, lifetime="detached", get_if_exists=True).remote(key)

    def call(self, key: str, method: Any, *args: Any) -> Any:
        import ray

        try:
            return ray.get(method.remote(*args), timeout=self.call_timeout_seconds)
        except Exception as e:  # noqa: BLE001 - any failure of the cluster
            raise TargetError(f"board {key}: the Ray cluster did not answer its lease request "
                              f"({type(e).__name__}: {e}); check the cluster (ray status) and run again") from e

    @contextlib.contextmanager
    def hold(self, target: str, key: str, wait_seconds: float, on_wait: Waiting | None) -> Iterator[None]:
        lease = self.actor(key)
        holder = f"pid {os.getpid()} on {socket.gethostname()} (lease {uuid.uuid4().hex[:8]})"
        self._acquire(lease, holder, target, key, wait_seconds, on_wait)
        renewing = _Renewal(self, lease, key, holder)
        renewing.start()
        try:
            yield
        except BaseException:
            renewing.stop()
            with contextlib.suppress(TargetError):
                self.call(key, lease.release, holder)
            raise
        renewing.stop()
        taken_by = self.call(key, lease.acquire, holder, self.ttl_seconds)  # still ours at the end?
        self.call(key, lease.release, holder)
        if taken_by is not None or renewing.lost_to is not None:
            raise TargetError(f"target '{target}': the lease on board {key} expired during the benchmark and "
                              f"{taken_by or renewing.lost_to} took it (no renewal reached the cluster within "
                              f"{self.ttl_seconds:g} s); the figures may overlap another run's: run again, or "
                              "raise [execution] lease_ttl_seconds")

    def _acquire(self, lease: Any, holder: str, target: str, key: str, wait_seconds: float,
                 on_wait: Waiting | None) -> None:
        deadline = time.monotonic() + wait_seconds
        told = False
        while True:
            current = self.call(key, lease.acquire, holder, self.ttl_seconds)
            if current is None:
                return
            if time.monotonic() >= deadline:
                raise TargetError(f"target '{target}': the board {key} stayed leased by {current} for "
                                  f"{wait_seconds:g} s; wait for that benchmark to finish or stop it")
            if on_wait is not None and not told:
                on_wait(f"target '{target}': waiting for the board {key} (held by {current}, "
                        "leased on the Ray cluster)")
                told = True
            time.sleep(self.poll_seconds)


class _Renewal(threading.Thread):
    """Renews a held lease every `renew_seconds` until stopped; notes who took it if it expired."""

    def __init__(self, leases: ClusterLeases, lease: Any, key: str, holder: str) -> None:
        super().__init__(name=f"lease {key}", daemon=True)
        self.leases, self.lease, self.key, self.holder = leases, lease, key, holder
        self.stopped = threading.Event()
        self.lost_to: str | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.leases.renew_seconds):
            try:
                taken_by = self.leases.call(self.key, self.lease.acquire, self.holder, self.leases.ttl_seconds)
            except TargetError:
                continue  # the end-of-benchmark check reports it
            self.lost_to = self.lost_to or taken_by

    def stop(self) -> None:
        self.stopped.set()
        self.join()

"""The Ray executor: units that can run elsewhere become Ray tasks; the rest run here as before.

A stage's unit runs remotely when the stage gives it as a `RemoteUnit` (export, verify): its
input files go to the cluster's object store once per content (sha256-checked on the
worker), its outputs come back as bytes, are checked against the sha256 the worker computed
and written atomically by this driver alone, once per unit. A worker that dies mid-unit is
retried by Ray (`max_retries`); a unit's own error (a bad model, a parity failure) is not
retried. Units that must run here (truncation, benchmarks: they hold device leases) run
in this process while the cluster works.

Progress: a unit is `queued` when submitted, `running` when a worker starts it (the worker
tells the run's small `RunActor` actor, which the driver polls) and `done` when its
outputs are written; running and done name the node. Losing the cluster mid-run (the head
or this driver's node gone) is a TargetError (exit 6); units done so far are in the cache.

`ray` is an optional extra: `pip install 'edge-toolchain[ray]'`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError, StageError, TargetError, ToolchainError
from .executor import InProcessExecutor
from .fileio import atomic_write_bytes

POLL_SECONDS = 1.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise MissingDependencyError("--executor ray needs Ray: pip install 'edge-toolchain[ray]'") from e
    return ray


UNITS_PER_WORKER = 8


def remote_task(ray: Any) -> Any:
    """A worker process runs up to UNITS_PER_WORKER units, then Ray starts a fresh one.

    Reuse saves the ~6 s a fresh worker spends importing TensorFlow per unit (benchmarks/
    ray_suite_wall.py). It is safe for the bytes since export no longer depends on process history
    (tf2onnx's name counter and the ONNX doc string are reset per export; tests/test_determinism.py,
    and the Ray tests compare every artifact and optimize candidate with an in-process run).
    The limit hands a conversion's memory (1-6 GB for ImageNet-size models) back to the node regularly."""
    return ray.remote(max_calls=UNITS_PER_WORKER)(run_remote)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunActor:
    """A Ray actor per run, on the cluster: workers report the units they start (the driver drains the
    reports), and it owns the run's input blobs, so that this driver owns no object (see RayExecutor._lost)."""

    def __init__(self) -> None:
        self.started: list[tuple[int, str]] = []

    def store(self, blob: bytes) -> list[Any]:
        import ray

        return [ray.put(blob)]  # in a list: the caller borrows the reference, this actor owns the object

    def start(self, token: int, node: str) -> None:
        self.started.append((token, node))

    def drain(self) -> list[tuple[int, str]]:
        started, self.started = self.started, []
        return started


def _report_start(progress: Any, token: int | None) -> None:
    """Tell the driver this unit runs here; progress is best effort, it never fails a unit."""
    import ray

    if progress is None or token is None:
        return
    try:
        ray.get(progress.start.remote(token, _node()), timeout=10)
    except Exception:  # noqa: BLE001, S110 - a lost progress report only loses a "running" line
        pass


def run_remote(function: Callable, spec: Any, inputs: dict[str, tuple[str, Any]], progress: Any = None,
               token: int | None = None) -> dict[str, Any]:
    """On a worker: fetch and check the inputs, run the unit, hash its outputs; name the node it ran on."""
    import ray

    _report_start(progress, token)
    data = {}
    for name, (digest, ref) in inputs.items():
        blob = ray.get(ref)
        if _sha256(blob) != digest:
            raise StageError(f"input {name!r} arrived corrupted on node {_node()} (sha256 mismatch); run again")
        data[name] = blob
    result, outputs = function(spec, data)
    return {"result": result, "outputs": {k: (_sha256(v), v) for k, v in outputs.items()}, "node": _node(),
            "pid": os.getpid()}


def _node() -> str:
    import ray

    context = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{context.get_node_id()[:8]}"


@dataclass
class RayExecutor:
    """Runs remote-capable units as Ray tasks on the cluster at `address` (connects on first use)."""

    parallel = True  # the loop hands it all of a stage's units at once

    address: str | None = None
    max_retries: int = 2
    connect_timeout_seconds: float = 60.0
    on_event: Callable[[dict[str, Any]], None] | None = None  # unit queued / running / done, with its node
    _task: Any = field(default=None, repr=False)
    _progress: Any = field(default=None, repr=False)  # the run's RunActor actor
    _blobs: dict[str, Any] = field(default_factory=dict, repr=False)  # sha256 -> object ref, once per stage
    _stage: str = ""
    _tokens: Any = field(default_factory=itertools.count, repr=False)

    def connect(self) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            self._check_reachable()
            self._init_within_timeout(ray)
        self._task = self._task or remote_task(ray)
        if self._progress is None:
            self._progress = ray.remote(num_cpus=0)(RunActor).remote()

    def _init_within_timeout(self, ray: Any) -> None:
        """ray.init, bounded: for `auto` and ray:// it would otherwise retry for minutes."""
        failure: list[BaseException] = []

        def init() -> None:
            try:
                ray.init(address=self.address or "auto", log_to_driver=False, logging_level="ERROR",
                         include_dashboard=False)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                failure.append(e)

        thread = threading.Thread(target=init, name="ray-connect", daemon=True)
        thread.start()
        thread.join(self.connect_timeout_seconds)
        if thread.is_alive():
            raise TargetError(f"cannot connect to the Ray cluster at {self.address or 'auto'}: no answer within "
                              f"{self.connect_timeout_seconds:g} s; check the address, that the head node is "
                              "running (ray status) and [execution] connect_timeout_seconds")
        if failure and isinstance(failure[0], ConnectionError | RuntimeError | ValueError):
            raise TargetError(f"cannot connect to the Ray cluster at {self.address or 'auto'}: {failure[0]}; "
                              "start one (ray start --head) or pass --ray-address HOST:PORT / "
                              "ray://HOST:10001") from failure[0]
        if failure:
            raise failure[0]

    def _check_reachable(self) -> None:
        """A HOST:PORT that does not answer fails within the connect timeout (ray.init would retry for minutes)."""
        import socket

        if not self.address or self.address in ("auto", "local"):
            return
        host, _, port = self.address.removeprefix("ray://").rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=self.connect_timeout_seconds):
                pass
        except (OSError, ValueError) as e:
            raise TargetError(f"cannot connect to the Ray cluster at {self.address} within "
                              f"{self.connect_timeout_seconds:g} s ({e}); check the address and that the "
                              "head node is running (ray status)") from e

    def run(self, units: Sequence[Any], work: Callable[[Any], Any],
            on_done: Callable[[Any, Any], None]) -> None:
        remote_of = getattr(work, "remote", None)
        remote, local = [], []
        for item in units:
            spec = remote_of(item) if remote_of is not None else None
            (local if spec is None else remote).append((item, spec))
        if not remote:
            InProcessExecutor().run([item for item, _ in local], work, on_done)
            return
        self.connect()
        self._stage = getattr(getattr(work, "stage", None), "name", "")
        tokens = {next(self._tokens): (item, spec) for item, spec in remote}
        pending = {self._submit(spec, token): token for token, (item, spec) in tokens.items()}
        self._blobs.clear()  # the submitted tasks keep their inputs alive
        for item, _ in remote:
            self._event(item, "queued")
        InProcessExecutor().run([item for item, _ in local], work, on_done)
        self._collect(pending, tokens, on_done)

    def _submit(self, spec: Any, token: int) -> Any:
        ray = import_ray()
        inputs = {}
        for name, path in spec.inputs.items():
            blob = Path(path).read_bytes()
            digest = _sha256(blob)
            if digest not in self._blobs:
                self._blobs[digest] = ray.get(self._progress.store.remote(blob),
                                              timeout=self.connect_timeout_seconds)[0]
            inputs[name] = (digest, self._blobs[digest])
        options: dict[str, Any] = {"num_cpus": spec.cpus, "max_retries": self.max_retries,
                                   "retry_exceptions": False}
        if spec.memory_bytes:
            options["memory"] = spec.memory_bytes
        return self._task.options(**options).remote(spec.function, spec.spec, inputs, self._progress, token)

    def _collect(self, pending: dict[Any, int], tokens: dict[int, tuple[Any, Any]],
                 on_done: Callable[[Any, Any], None]) -> None:
        ray = import_ray()
        waiting = list(pending)
        while waiting:
            try:
                ready, waiting = ray.wait(waiting, num_returns=1, timeout=POLL_SECONDS)
            except Exception as e:  # noqa: BLE001 - every failure of the cluster itself
                raise self._lost(e) from e
            self._report_running(tokens)  # before "done": a worker reports its start before it returns
            for ref in ready:
                item, spec = tokens[pending[ref]]
                answer = self._get(ref, item)
                self._write(spec, answer, item)
                self._event(item, "done", answer["node"])
                on_done(item, answer["result"])

    def _report_running(self, tokens: dict[int, tuple[Any, Any]]) -> None:
        ray = import_ray()
        try:
            started = ray.get(self._progress.drain.remote(), timeout=self.connect_timeout_seconds)
        except Exception as e:  # noqa: BLE001 - the actor lives on the cluster: losing it is losing the cluster
            raise self._lost(e) from e
        for token, node in started:
            if token in tokens:
                self._event(tokens[token][0], "running", node)

    def _event(self, item: Any, status: str, node: str | None = None) -> None:
        if self.on_event is not None:
            event = {"stage": self._stage, "unit": getattr(item.unit, "label", ""), "status": status}
            self.on_event({**event, "node": node} if node else event)

    def _get(self, ref: Any, item: Any) -> dict[str, Any]:
        ray = import_ray()
        from ray import exceptions as rex

        try:
            return ray.get(ref)
        except rex.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
            if isinstance(cause, ToolchainError):
                raise cause from e
            raise StageError(f"unit {getattr(item.unit, 'label', '?')} failed on the cluster: "
                             f"{cause or e}") from e
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.TaskUnschedulableError) as e:
            raise StageError(f"unit {getattr(item.unit, 'label', '?')}: its worker died "
                             f"{self.max_retries + 1} time(s) (out of memory?); raise "
                             "[execution] memory_mb_per_unit or give the cluster more memory") from e
        except Exception as e:  # noqa: BLE001 - the cluster connection itself
            raise self._lost(e) from e

    def _lost(self, error: BaseException) -> TargetError:
        """The cluster is gone: disconnect at once. (Ray ends a driver whose node died while it tries to
        recover objects the driver owns; so the driver owns none: the inputs belong to the run's actor.)"""
        _disconnect()
        self._task = self._progress = None
        reason = ANSI.sub("", (str(error).strip().splitlines() or [""])[0])[:200]  # Ray's are whole tracebacks
        return TargetError(f"lost the Ray cluster at {self.address or 'auto'} ({type(error).__name__}: {reason}); "
                           "units finished so far are cached: run again to resume")

    def _write(self, spec: Any, answer: dict[str, Any], item: Any) -> None:
        """Each output checked against the worker's sha256, then written atomically (never partially)."""
        checked = {}
        for name, path in spec.outputs.items():
            if name not in answer["outputs"]:
                raise StageError(f"unit {item.unit.label}: the worker on {answer['node']} returned no {name!r}")
            digest, blob = answer["outputs"][name]
            if _sha256(blob) != digest:
                raise StageError(f"unit {item.unit.label}: {name!r} from {answer['node']} arrived corrupted "
                                 "(sha256 mismatch); run again")
            checked[path] = blob
        for path, blob in checked.items():
            atomic_write_bytes(path, blob)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _disconnect(timeout: float = 10.0) -> None:
    """ray.shutdown, bounded: with the cluster gone it may wait on dead sockets."""
    ray = import_ray()
    thread = threading.Thread(target=ray.shutdown, name="ray-disconnect", daemon=True)
    thread.start()
    thread.join(timeout)


def executor_for(backend: str, address: str | None, max_retries: int = 2,
                 connect_timeout_seconds: float = 60.0) -> Any:
    if backend == "ray":
        import_ray()  # a missing extra fails before anything runs
        return RayExecutor(address, max_retries, connect_timeout_seconds)
    return InProcessExecutor()


def wait_for_nodes(count: int, timeout: float = 60.0) -> None:
    """Until `count` nodes are alive (tests, benchmarks)."""
    ray = import_ray()
    deadline = time.monotonic() + timeout
    while sum(n["Alive"] for n in ray.nodes()) < count:
        if time.monotonic() > deadline:
            raise TargetError(f"the Ray cluster has fewer than {count} live node(s) after {timeout:g} s")
        time.sleep(0.2)

"""Runs the stages in order and writes the run directory and its manifest."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from . import steps
from .budgets import raise_if_release_candidate_fails
from .cache import StageCache
from .config import PipelineConfig, config_sha256, find_profile
from .errors import ToolchainError
from .executor import Executor, InProcessExecutor
from .fileio import os_error, sha256_file
from .fleet import expand_targets
from .keras_io import input_signature, load_model, output_signature
from .manifest import new_manifest, write_manifest
from .rerun import check_only, missing_cached, read_json, replay_run, run_key, stage_mode, store_run
from .runlock import RunLock
from .steps import Done, RunState, Stage, Unit
from .steps.verify import RESULT_SCHEMA_VERSION

__all__ = ["RESULT_SCHEMA_VERSION", "RunContext", "RunResult", "StageLog", "run_pipeline"]


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict[str, Any]
    verify: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None
    report: Path | None = None
    budgets: dict[str, Any] | None = None


@dataclass
class StageEvent:
    """Yielded by StageLog.stage: a stage sets `cached` when its result came from the cache."""

    cached: bool = False


@dataclass
class StageLog:
    """Progress on the console (or JSON lines on stderr with `json_lines`) and the manifest's stage records."""

    console: Console
    quiet: bool = False
    json_lines: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    _status: Any = field(default=None, repr=False)  # the running stage's spinner line
    _label: str = ""
    _units: dict[str, str] = field(default_factory=dict, repr=False)  # unit -> queued/running/done, this stage

    def _emit(self, **event: Any) -> None:
        if self.json_lines:
            sys.stderr.write(json.dumps(event) + "\n")
            sys.stderr.flush()

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[StageEvent]:
        started = time.perf_counter()
        label = f"{name} {detail}".strip()
        event = StageEvent()
        self._emit(stage=name, detail=detail, status="started")
        status = None if self.quiet or self.json_lines else self.console.status(f"[bold]{label}[/] …")
        self._status, self._label, self._units = status, label, {}
        if status:
            status.start()
        try:
            yield event
        except BaseException:
            seconds = round(time.perf_counter() - started, 3)
            self.records.append({"name": label, "stage": name, "status": "failed", "seconds": seconds})
            self._emit(stage=name, detail=detail, status="failed", seconds=seconds, cached=False)
            if status:
                status.stop()
            if not (self.quiet or self.json_lines):
                self.console.print(f"[red]✗[/] {label}")
            raise
        seconds = time.perf_counter() - started
        self.records.append({"name": label, "stage": name, "status": "done", "seconds": round(seconds, 3),
                             "cached": event.cached})
        self._emit(stage=name, detail=detail, status="done", seconds=round(seconds, 3), cached=event.cached)
        if status:
            status.stop()
        if not (self.quiet or self.json_lines):
            note = "cached" if event.cached else f"{seconds:.1f} s"
            self.console.print(f"[green]✓[/] {label} [dim]({note})[/]")

    def unit_event(self, event: dict[str, Any]) -> None:
        """A unit queued, running on a node or done on a node: a JSON line; on the console, the stage's
        spinner counts its units (queued / running / done) and each unit prints a line when done."""
        self._emit(**event)
        self._units[event["unit"]] = event["status"]
        if self.quiet or self.json_lines:
            return
        if self._status is not None:
            counts = [f"{sum(s == state for s in self._units.values())} {state}"
                      for state in ("queued", "running", "done")]
            where = f" · {event['unit']} {event['status']} on {event['node']}" if event.get("node") else ""
            self._status.update(f"[bold]{self._label}[/] … {', '.join(counts)}{where}")
        if event["status"] == "done":
            self.console.print(f"  [green]·[/] {event['unit']} [dim](on {event['node']})[/]", highlight=False)

    def wait(self, message: str) -> None:
        """A benchmark waits for a board another run holds."""
        self._emit(status="waiting", message=message)
        if not (self.quiet or self.json_lines):
            self.console.print(f"  [yellow]…[/] {message}", highlight=False)

    def skip(self, name: str, detail: str = "", reason: str = "") -> None:
        label = f"{name} {detail}".strip()
        self.records.append({"name": label, "stage": name, "status": "skipped", "seconds": 0.0, "cached": False})
        self._emit(stage=name, detail=detail, status="skipped", seconds=0.0, cached=False)
        if not (self.quiet or self.json_lines):
            self.console.print(f"[dim]- {label} skipped{f' ({reason})' if reason else ''}[/]")


def _tensor_records(infos: list[Any]) -> list[dict[str, Any]]:
    return [{"name": i.name, "shape": [None, *i.shape], "dtype": i.dtype, "quantization": None}
            for i in infos]


@dataclass
class RunContext:
    """What a run needs besides the config: its cache, its lock and the --only/--force choices."""

    cache: StageCache
    lock: RunLock
    only: str | None = None
    profiles: list[Any] = field(default_factory=list)
    profile_dirs: list[Path] | None = None
    executor: Executor = field(default_factory=InProcessExecutor)
    fleet_of: dict[str, str] = field(default_factory=dict)  # device target -> its fleet (fleet.py)

    def mode(self, stage: str) -> str:
        """'run', 'cached' or 'skip' for a stage's --only name."""
        return stage_mode(self.only, stage)

    def lookup(self, stage: str, key: str) -> Any:
        """A cache hit, or None. `--force` applies to the stages that run, not to cached prerequisites."""
        return self.cache.get(stage, key, force=self.cache.force and self.mode(stage) == "run")


def run_pipeline(
    config: PipelineConfig,
    raw_config: dict[str, Any],
    out_dir: Path | None = None,
    *,
    console: Console | None = None,
    quiet: bool = False,
    force: bool = False,
    only: str | None = None,
    log_json: bool = False,
    executor: Executor | None = None,
) -> RunResult:
    """Run the pipeline into `out_dir`.

    Inputs are validated before anything is written: a bad model, data file, target or
    --only value leaves the run directory untouched. Then the run directory is locked and
    each stage result is taken from the cache when its inputs did not change. `executor`
    runs the stages' units of work (default: in this process).
    """
    console = console or Console(stderr=True)
    log = StageLog(console, quiet, json_lines=log_json)
    run_dir = Path(out_dir or config.output.dir).resolve()
    lock = RunLock(run_dir)
    lock.check_free()  # a second run on this directory fails at once
    ctx = _run_context(config, run_dir, lock, force, only, executor or _executor(config, log))

    key = run_key(ctx.cache, config, ctx.profiles, ctx.profile_dirs) if only is None and not force else None
    if key is not None and replay_run(ctx.cache, key) is not None:
        with lock:
            result = _replay(run_dir, ctx, key, log)
        if result is not None:
            raise_if_release_candidate_fails(result.budgets)
            return result

    try:
        with log.stage("load model", config.model.path.name):
            model = load_model(config.model.path, trust=config.model.trust)
        manifest = new_manifest(raw_config, config_sha256(raw_config), _source_record(config, model))
        try:
            with _board_leases(config, ctx.executor, log):
                result = _run_loop_mapping_os_errors(config, model, run_dir, manifest, log, ctx)
        except ToolchainError as e:
            if not lock.held:  # failed validating inputs: nothing was written
                raise
            _write_failed_manifest(run_dir, manifest, log, e)
            raise
        if key is not None:
            store_run(ctx.cache, key, result.manifest)
    finally:
        lock.release()
    raise_if_release_candidate_fails(result.budgets)  # exit 7, after the run's outputs are written
    return result


def _run_loop_mapping_os_errors(*args: Any) -> RunResult:
    """_run_loop, with an OSError (a full disk) turned into its ToolchainError: it gets the failed manifest."""
    try:
        return _run_loop(*args)
    except OSError as e:
        raise os_error(e) from e


def _write_failed_manifest(run_dir: Path, manifest: dict[str, Any], log: StageLog, error: Exception) -> None:
    """The manifest lists only what this run completed, so it always matches the files."""
    manifest["status"] = "failed"
    manifest["error"] = str(error)
    manifest["stages"] = log.records
    with contextlib.suppress(ToolchainError, OSError):  # a full disk may refuse it too
        write_manifest(run_dir, manifest)


def _run_context(config: PipelineConfig, run_dir: Path, lock: RunLock, force: bool, only: str | None,
                 executor: Executor | None) -> RunContext:
    profile_dirs = [config.bench.targets_dir] if config.bench.targets_dir else None
    profiles = [find_profile(t, profile_dirs) for t in config.bench.targets] if config.bench.enabled else []
    profiles, fleet_of = expand_targets(profiles)  # a fleet profile becomes one target per board
    return RunContext(StageCache(run_dir, force=force), lock, check_only(only), profiles, profile_dirs,
                      executor=executor or InProcessExecutor(), fleet_of=fleet_of)


def _source_record(config: PipelineConfig, model: Any) -> dict[str, Any]:
    return {
        "path": str(config.model.path),
        "name": config.model_name,
        "sha256": sha256_file(config.model.path),
        "bytes": config.model.path.stat().st_size,
        "inputs": _tensor_records(input_signature(model)),
        "outputs": _tensor_records(output_signature(model)),
    }

def _executor(config: PipelineConfig, log: StageLog) -> Executor:
    """[execution] backend: in this process, or Ray (units report the node they ran on)."""
    execution = config.execution
    if execution.backend == "inprocess":
        return InProcessExecutor()
    from .ray_executor import executor_for

    executor = executor_for(execution.backend, execution.ray_address, execution.max_retries,
                            execution.connect_timeout_seconds)
    executor.on_event = log.unit_event
    return executor


def _board_leases(config: PipelineConfig, executor: Executor, log: StageLog) -> Any:
    """Benchmarks lease their boards from the Ray cluster when the run uses one, else with flock."""
    from .leases import ClusterLeases, leases_in_use

    execution = config.execution
    if (execution.leases or ("cluster" if execution.backend == "ray" else "local")) == "local":
        return leases_in_use(None, log.wait)
    connect = getattr(executor, "connect", None)
    if connect is None:  # conversions in process, leases on the cluster
        from .ray_executor import RayExecutor

        connect = RayExecutor(execution.ray_address, connect_timeout_seconds=execution.connect_timeout_seconds).connect
    return leases_in_use(ClusterLeases(connect, execution.lease_ttl_seconds, execution.connect_timeout_seconds),
                         log.wait)


def _replay(run_dir: Path, ctx: RunContext, key: str, log: StageLog) -> RunResult | None:
    """Nothing changed since the last complete run: re-write its manifest, marked as cached."""
    manifest = replay_run(ctx.cache, key)  # again, now that we hold the lock
    if manifest is None:
        return None
    for record in manifest["stages"]:
        stage = record.get("stage", record["name"])
        detail = record["name"].removeprefix(stage).strip()
        if record["status"] == "skipped":
            log.skip(stage, detail)
            continue
        with log.stage(stage, detail) as event:
            event.cached = True
    manifest["stages"] = log.records
    manifest["created_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for artifact in manifest["artifacts"]:
        artifact["cached"] = {"export": True, "verify": artifact.get("verify") is not None,
                              "bench": bool(artifact.get("bench"))}
    write_manifest(run_dir, manifest)
    store_run(ctx.cache, key, manifest)
    report = manifest["files"].get("report")
    return RunResult(run_dir, manifest, read_json(run_dir, manifest, "verify"),
                     read_json(run_dir, manifest, "bench"), run_dir / report if report else None,
                     read_json(run_dir, manifest, "budgets"))


def _run_loop(config: PipelineConfig, model: Any, run_dir: Path, manifest: dict[str, Any], log: StageLog,
                ctx: RunContext) -> RunResult:
    """Prepare every stage (nothing written), lock the run directory, then run the stages in order."""
    run = RunState(config, run_dir, manifest, ctx, log, model=model,
                   source_key=manifest["source_model"]["sha256"])
    stages = [s for s in steps.STAGES if s.enabled(run)]
    for stage in stages:
        stage.prepare(run)
        _check_cached(stage, run)
    # Everything above validates inputs and writes nothing; from here on the run directory is written.
    ctx.lock.acquire()
    ctx.lock.sweep_temp_files()  # half-written files of a run that was killed
    for stage in stages:
        try:
            _run_stage(stage, run, ctx.executor)
        finally:
            stage.cleanup(run)
    manifest["status"] = "complete"
    manifest["stages"] = log.records
    write_manifest(run_dir, manifest)
    return RunResult(run_dir, manifest, run.documents.get("verify"), run.documents.get("bench"), run.report,
                     run.documents.get("budgets"))


def _check_cached(stage: Stage, run: RunState) -> None:
    """With --only, the stages before it must all be in the cache; checked before anything is written."""
    if run.mode(stage) != "cached":
        return
    for unit in stage.units(run):
        if unit.key is not None and run.lookup(stage, unit.key) is None:
            raise missing_cached(run.only, stage.cache_name or stage.only, unit.what, run.run_dir)


def _run_stage(stage: Stage, run: RunState, executor: Executor) -> None:
    if run.mode(stage) == "skip":
        run.log.skip(stage.name, stage.label(run), f"--only {run.only}")
        return
    units = stage.units(run)
    if not units:
        return
    if stage.per_unit_log and not getattr(executor, "parallel", False):
        done = []
        for unit in units:
            with run.log.stage(stage.name, unit.label) as event:
                done += _execute(stage, run, [unit], executor)
                event.cached = done[-1].cached
        stage.finish(run, done)
        return
    with run.log.stage(stage.name, stage.label(run)) as event:
        done = _execute(stage, run, units, executor)
        event.cached = bool(done) and all(d.cached for d in done) and units[0].key is not None
        stage.finish(run, done)


def _execute(stage: Stage, run: RunState, units: list[Unit], executor: Executor) -> list[Done]:
    """Cache hits as they are; the rest through the executor, each cached as soon as it is done."""
    results: dict[int, Done] = {}
    todo = []
    for index, unit in enumerate(units):
        hit = run.lookup(stage, unit.key)
        result = stage.from_cache(hit.result) if hit is not None else None
        if hit is not None and (result is not None or stage.result_type is None):
            results[index] = Done(unit, result, True)
        else:
            todo.append(index)

    def finished(index: int, result: Any) -> None:
        unit = units[index]
        if unit.key is not None:
            as_json = result.to_json() if hasattr(result, "to_json") else result
            run.context.cache.put(stage.cache_name or stage.only or stage.name, unit.key, unit.outputs,
                                  result=as_json)
        results[index] = Done(unit, result, False)

    indexed = [_Indexed(i, units[i]) for i in todo]
    executor.run(indexed, _UnitWork(stage, run), lambda item, r: finished(item.index, r))
    return [results[i] for i in range(len(units))]


@dataclass
class _UnitWork:
    """How an executor runs a unit: here (`__call__`), or elsewhere from plain specs (`remote`)."""

    stage: Stage
    run: RunState

    def __call__(self, item: _Indexed) -> Any:
        return self.stage.run_unit(self.run, item.unit)

    def remote(self, item: _Indexed) -> Any:
        return self.stage.remote_unit(self.run, item.unit)


@dataclass
class _Indexed:
    index: int
    unit: Unit

    @property
    def lane(self) -> str | None:
        return self.unit.lane

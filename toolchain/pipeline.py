"""Runs the stages in order and writes the run directory and its manifest."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from .artifact_info import describe
from .budgets import check_release_candidate, evaluate_budgets, profile_limits, raise_if_release_candidate_fails
from .cache import StageCache, content_view, file_digest
from .config import (
    CALIBRATED_RECIPES,
    PipelineConfig,
    config_sha256,
    find_profile,
    profile_by_name_or_path,
)
from .data import Dataset, RunData, prepare_run_data
from .emulator.gate import gate_profile
from .errors import TargetError, ToolchainError
from .estimate import write_estimates
from .fileio import atomic_write_json, sha256_file
from .keras_io import input_signature, load_model, output_signature, run_keras
from .manifest import bench_summary, new_manifest, write_manifest
from .preflight import check_reachable
from .recipes import RECIPES
from .rerun import check_only, missing_cached, read_json, replay_run, run_key, stage_mode, store_run
from .runlock import RunLock
from .stages.bench import run_benchmarks
from .stages.compat import SAMPLES as COMPAT_SAMPLES
from .stages.compat import check_compat, raise_on_incompatible
from .stages.export_onnx import export_onnx
from .stages.export_tflite import export_tflite, tflite_layer_errors
from .stages.quantize_onnx import onnx_layer_errors, quantize_onnx
from .stages.report import RunDocuments
from .stages.report_html import write_reports
from .stages.truncate import save_truncated, truncate_from_config
from .stages.verify import raise_on_failures, run_artifact, tolerance_for, verify_artifact

RESULT_SCHEMA_VERSION = "1.0"


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

    def skip(self, name: str, detail: str = "", reason: str = "") -> None:
        label = f"{name} {detail}".strip()
        self.records.append({"name": label, "stage": name, "status": "skipped", "seconds": 0.0, "cached": False})
        self._emit(stage=name, detail=detail, status="skipped", seconds=0.0, cached=False)
        if not (self.quiet or self.json_lines):
            self.console.print(f"[dim]- {label} skipped{f' ({reason})' if reason else ''}[/]")


def _tensor_records(infos: list[Any]) -> list[dict[str, Any]]:
    return [{"name": i.name, "shape": [None, *i.shape], "dtype": i.dtype, "quantization": None}
            for i in infos]


def _random_dataset(model: Any, count: int) -> Dataset:
    rng = np.random.default_rng(0)
    inputs = {
        spec.name: rng.uniform(0, 1, size=(count, *[d or 1 for d in spec.shape])).astype(spec.dtype)
        for spec in input_signature(model)
    }
    return Dataset(inputs, None, "random", ["no evaluation data configured: random inputs in [0, 1)"])


@dataclass
class RunContext:
    """What a run needs besides the config: its cache, its lock and the --only/--force choices."""

    cache: StageCache
    lock: RunLock
    only: str | None = None
    profiles: list[Any] = field(default_factory=list)
    profile_dirs: list[Path] | None = None

    def mode(self, stage: str) -> str:
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
) -> RunResult:
    """Run the pipeline into `out_dir`.

    Inputs are validated before anything is written: a bad model, data file, target or
    --only value leaves the run directory untouched. Then the run directory is locked and
    each stage result is taken from the cache when its inputs did not change.
    """
    console = console or Console(stderr=True)
    log = StageLog(console, quiet, json_lines=log_json)
    run_dir = Path(out_dir or config.output.dir).resolve()
    lock = RunLock(run_dir)
    lock.check_free()  # a second run on this directory fails at once
    profile_dirs = [config.bench.targets_dir] if config.bench.targets_dir else None
    profiles = [find_profile(t, profile_dirs) for t in config.bench.targets] if config.bench.enabled else []
    ctx = RunContext(StageCache(run_dir, force=force), lock, check_only(only), profiles, profile_dirs)

    key = run_key(ctx.cache, config, profiles, profile_dirs) if only is None and not force else None
    if key is not None and replay_run(ctx.cache, key) is not None:
        with lock:
            result = _replay(run_dir, ctx, key, log)
        if result is not None:
            raise_if_release_candidate_fails(result.budgets)
            return result

    try:
        with log.stage("load model", config.model.path.name):
            model = load_model(config.model.path, trust=config.model.trust)
        source = {
            "path": str(config.model.path),
            "name": config.model_name,
            "sha256": sha256_file(config.model.path),
            "bytes": config.model.path.stat().st_size,
            "inputs": _tensor_records(input_signature(model)),
            "outputs": _tensor_records(output_signature(model)),
        }
        manifest = new_manifest(raw_config, config_sha256(raw_config), source)
        try:
            result = _run_stages(config, model, run_dir, manifest, log, ctx)
        except ToolchainError as e:
            if not lock.held:  # failed validating inputs: nothing was written
                raise
            # the manifest lists only what this run completed, so it always matches the files
            manifest["status"] = "failed"
            manifest["error"] = str(e)
            manifest["stages"] = log.records
            write_manifest(run_dir, manifest)
            raise
        if key is not None:
            store_run(ctx.cache, key, result.manifest)
    finally:
        lock.release()
    raise_if_release_candidate_fails(result.budgets)  # exit 7, after the run's outputs are written
    return result


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


def _run_stages(
    config: PipelineConfig, model: Any, run_dir: Path, manifest: dict[str, Any], log: StageLog,
    ctx: RunContext,
) -> RunResult:
    truncation = None
    source_key = manifest["source_model"]["sha256"]
    if config.truncate is not None:  # validated here, saved once the run directory is locked
        with log.stage("truncate", "and train the head" if config.truncate.train else ""):
            truncation = truncate_from_config(model, config.truncate, parent_sha256=source_key,
                                              trust=config.model.trust)
        model, source_key = truncation.model, truncation.key
    run_data = _load_run_data(config, model, log)
    data: Dataset | None = run_data.evaluation
    if data is not None and truncation is not None and not truncation.keeps_labels:
        data = Dataset(data.inputs, None, data.source, [*data.notes, "labels not used: the truncated model "
                                                        "outputs features (no classes head)"])
    manifest["data"] = run_data.record

    artifacts: list[tuple[Path, str, str]] = []
    name = config.model_name
    planned = []
    for fmt in config.export.formats:
        section = config.export.tflite if fmt == "tflite" else config.export.onnx
        for recipe in section.recipes:
            path = run_dir / "artifacts" / f"{name}.{recipe}.{fmt}"
            key = ctx.cache.key("export", source=source_key, format=fmt, recipe=recipe,
                                export=_export_settings(config),
                                data=content_view(config.data) if recipe in CALIBRATED_RECIPES[fmt] else None)
            hit = ctx.lookup("export", key)
            if hit is None and ctx.mode("export") == "cached":
                raise missing_cached(ctx.only, "export", path.name, run_dir)
            planned.append((path, fmt, recipe, key, hit))
    _check_cached_prerequisites(config, manifest, ctx, [(p, f, r) for p, f, r, _, _ in planned])
    if config.bench.enabled and ctx.mode("bench") == "run" and _bench_needs_targets(config, ctx, planned):
        check_reachable(ctx.profiles)  # an unreachable device fails the run before any conversion
    # Everything above validates inputs and writes nothing; from here on the run directory is written.
    ctx.lock.acquire()
    ctx.lock.sweep_temp_files()  # half-written files of a run that was killed
    parent = manifest["source_model"]["sha256"]
    if truncation is not None:
        with log.stage("save truncated model"):
            saved = save_truncated(truncation, run_dir / "models" / f"{name}.truncated.keras", parent)
        saved["path"] = str(Path(saved["path"]).relative_to(run_dir))
        manifest["models"] = [saved]
        parent = saved["sha256"]
    export_cached: dict[str, bool] = {}
    scratch = tempfile.TemporaryDirectory(prefix=".quantize-", dir=run_dir)
    with scratch:
        for path, fmt, recipe, key, hit in planned:
            with log.stage("export", f"{fmt} {recipe}") as event:
                event.cached = export_cached[path.name] = hit is not None
                if hit is None:
                    _export_one(config, model, path, fmt, recipe, manifest, run_data, Path(scratch.name))
                    ctx.cache.put("export", key, [path])
            artifacts.append((path, fmt, recipe))
    check_release_candidate(config.budgets, [p.name for p, _, _ in artifacts])

    for path, fmt, recipe in artifacts:
        info = describe(path)
        record = {
            "name": path.name,
            "path": str(path.relative_to(run_dir)),
            "format": fmt,
            "recipe": recipe,
            "bytes": info["bytes"],
            "sha256": info["sha256"],
            "parent": parent,
            "inputs": info["inputs"],
            "outputs": info["outputs"],
            "ops": info["ops"],
            "verify": None,
            "bench": {},
            "cached": {"export": export_cached[path.name]},
        }
        if fmt == "onnx":
            record["opset"] = info["opset"]
        record["quantization"] = _quantization_record(config, fmt, recipe, run_data)
        manifest["artifacts"].append(record)
    records = {a["name"]: a for a in manifest["artifacts"]}

    verify_doc = None
    if config.verify.enabled and ctx.mode("verify") == "skip":
        log.skip("verify", f"{len(artifacts)} artifact(s)", f"--only {ctx.only}")
    elif config.verify.enabled:
        with log.stage("verify", f"{len(artifacts)} artifact(s)") as event:
            sample = data.head(config.verify.samples) if data else _random_dataset(model, 16)
            reference = None  # the Keras model runs only when some artifact is not in the cache
            results = {}
            for path, _fmt, recipe in artifacts:
                tolerance = _tolerance(config, recipe, _fmt)
                key = _verify_key(ctx, config, manifest, path, recipe, tolerance)
                hit = ctx.lookup("verify", key)
                records[path.name]["cached"]["verify"] = hit is not None
                if hit is not None:
                    results[path.name] = hit.result
                else:
                    if reference is None:
                        reference = run_keras(model, sample.inputs)
                    results[path.name] = verify_artifact(path, reference, sample, tolerance)
                    ctx.cache.put("verify", key, result=results[path.name])
                records[path.name]["verify"] = {
                    k: results[path.name][k] for k in ("verdict", "failures")
                } | {"outputs": results[path.name]["outputs"]}
            verify_doc = {
                "schema_version": RESULT_SCHEMA_VERSION,
                "reference": manifest["models"][-1]["path"] if truncation else manifest["source_model"]["path"],
                "data": sample.source,
                "samples": len(sample),
                "notes": sample.notes + ([run_data.record["warning"]] if run_data.record.get("warning") else []),
                "calibration": run_data.record,
                "artifacts": results,
            }
            layer_reports = _layer_error_reports(config, model, run_dir, run_data, artifacts, results)
            for artifact_name, report_path in layer_reports.items():
                records[artifact_name]["verify"]["layer_report"] = report_path
            atomic_write_json(run_dir / "verify.json", verify_doc)
            manifest["files"]["verify"] = "verify.json"
            event.cached = all(records[p.name]["cached"]["verify"] for p, _, _ in artifacts)
            raise_on_failures(results, layer_reports)

    if config.export.targets:
        _check_targets(config, model, run_dir, records, artifacts, data, log, verify_doc)

    bench_doc = None
    bench_label = f"{len(artifacts)} artifact(s) on {', '.join(config.bench.targets)}"
    if config.bench.enabled and ctx.mode("bench") == "skip":
        log.skip("benchmark", bench_label, f"--only {ctx.only}")
    elif config.bench.enabled:
        with log.stage("benchmark", bench_label) as event:
            results_list = _bench_with_cache(ctx, config, [p for p, _, _ in artifacts])
            event.cached = all(r["cached"] for r in results_list)
        bench_doc = {"schema_version": RESULT_SCHEMA_VERSION, "results": results_list}
        atomic_write_json(run_dir / "bench.json", bench_doc)
        manifest["files"]["bench"] = "bench.json"
        for artifact_name, record in records.items():
            record["bench"] = bench_summary([r for r in results_list if r["artifact"] == artifact_name])
            record["cached"]["bench"] = all(r["cached"] for r in results_list if r["artifact"] == artifact_name)

    profile_dirs = [config.bench.targets_dir] if config.bench.targets_dir else None
    with log.stage("budgets"):
        target_budgets = {t: profile_limits(find_profile(t, profile_dirs)) for t in config.bench.targets}
        budgets_doc = evaluate_budgets(manifest, config.budgets, target_budgets)
        atomic_write_json(run_dir / "budgets.json", budgets_doc)
        manifest["files"]["budgets"] = "budgets.json"
    with log.stage("estimate", "unmeasured targets"):
        # emulated timing says nothing about the board: those targets keep their estimate
        measured = [t for t in config.bench.targets if find_profile(t, profile_dirs).connection.kind != "emulated"
                    ] if config.bench.enabled else []
        estimates_doc = write_estimates(run_dir, model, manifest["artifacts"], config.export.batch_size, measured,
                                        profile_dirs)
        manifest["files"]["estimates"] = "estimates.json"

    report_path = None
    manifest["status"] = "complete"
    if config.report.enabled and ctx.mode("report") == "skip":
        log.skip("report", "", f"--only {ctx.only}")
    elif config.report.enabled:
        with log.stage("report"):
            manifest["files"]["report"] = "report/report.md"
            manifest["files"]["report_html"] = "report/report.html"
            report_path, _ = write_reports(RunDocuments(run_dir, manifest, bench_doc, budgets_doc, estimates_doc))
    manifest["stages"] = log.records
    write_manifest(run_dir, manifest)
    return RunResult(run_dir, manifest, verify_doc, bench_doc, report_path, budgets_doc)


def _export_settings(config: PipelineConfig) -> Any:
    """[export] as an export's cache key sees it: which formats and recipes run does not change one artifact."""
    settings = content_view(config.export.model_dump(mode="json", exclude={"formats"}))
    for fmt in ("tflite", "onnx"):
        if isinstance(settings.get(fmt), dict):
            settings[fmt].pop("recipes", None)
    return settings


def _tolerance(config: PipelineConfig, recipe: str, fmt: str | None = None) -> Any:
    overrides = config.verify.tolerances.get(recipe)
    return tolerance_for(recipe, overrides.model_dump() if overrides else None, fmt)


def _verify_key(ctx: RunContext, config: PipelineConfig, manifest: dict[str, Any], path: Path, recipe: str,
                tolerance: Any) -> str:
    return ctx.cache.key("verify", artifact=file_digest(path), source=manifest["source_model"]["sha256"],
                         recipe=recipe, tolerance=vars(tolerance), verify=content_view(config.verify),
                         data=content_view(config.data))


def _bench_slots(ctx: RunContext, config: PipelineConfig, artifacts: list[Path]) -> list[tuple[Any, Path, int, str]]:
    """(profile, artifact, threads, cache key) of every benchmark the config asks for, in report order."""
    settings = config.bench.model_dump(mode="json", exclude={"enabled", "targets", "threads", "targets_dir"})
    slots = []
    for profile in ctx.profiles:
        for artifact in artifacts:
            digest = file_digest(artifact)
            for threads in config.bench.threads or profile.threads:
                key = ctx.cache.key("bench", artifact=digest, target=profile, threads=threads, settings=settings)
                slots.append((profile, artifact, threads, key))
    return slots


def _bench_with_cache(ctx: RunContext, config: PipelineConfig, artifacts: list[Path]) -> list[dict[str, Any]]:
    """Benchmark what the cache lacks (targets in parallel); each result is cached as soon as it is measured."""
    slots = _bench_slots(ctx, config, artifacts)
    found: dict[str, dict[str, Any]] = {}
    todo: dict[str, list[tuple[Any, Path, int, str]]] = {}
    for slot in slots:
        hit = ctx.lookup("bench", slot[3])
        if hit is not None:
            found[slot[3]] = {**hit.result, "cached": True}
        else:
            todo.setdefault(slot[0].name, []).append(slot)

    def run_target(pending: list[tuple[Any, Path, int, str]]) -> None:
        for profile, artifact, threads, key in pending:
            record = run_benchmarks([artifact], [profile], [threads], config.bench)[0]
            ctx.cache.put("bench", key, result=record)
            found[key] = {**record, "cached": False}

    if len(todo) == 1:
        run_target(next(iter(todo.values())))
    elif todo:
        with ThreadPoolExecutor(max_workers=len(todo)) as pool:
            futures = [pool.submit(run_target, pending) for pending in todo.values()]
        failures = [f.exception() for f in futures if f.exception() is not None]
        for failure in failures:
            if not isinstance(failure, TargetError):
                raise failure
        if failures:
            raise TargetError("; ".join(str(f) for f in failures))
    return [found[key] for _, _, _, key in slots]


def _bench_needs_targets(config: PipelineConfig, ctx: RunContext, planned: list[tuple]) -> bool:
    if any(hit is None for *_, hit in planned):
        return True
    return any(ctx.lookup("bench", key) is None for *_, key in _bench_slots(ctx, config, [p for p, *_ in planned]))


def _check_cached_prerequisites(config: PipelineConfig, manifest: dict[str, Any], ctx: RunContext,
                                artifacts: list[tuple[Path, str, str]]) -> None:
    """With --only, the stages before it must all be in the cache; checked before anything is written."""
    if ctx.only is None:
        return
    if config.verify.enabled and ctx.mode("verify") == "cached":
        for path, fmt, recipe in artifacts:
            key = _verify_key(ctx, config, manifest, path, recipe, _tolerance(config, recipe, fmt))
            if ctx.lookup("verify", key) is None:
                raise missing_cached(ctx.only, "verify", path.name, ctx.cache.run_dir)
    if config.bench.enabled and ctx.mode("bench") == "cached":
        for profile, path, threads, key in _bench_slots(ctx, config, [p for p, _, _ in artifacts]):
            if ctx.lookup("bench", key) is None:
                raise missing_cached(ctx.only, "bench", f"{path.name} on {profile.name} with {threads} thread(s)",
                                     ctx.cache.run_dir)


def _check_targets(config: PipelineConfig, model: Any, run_dir: Path, records: dict[str, Any],
                   artifacts: list[tuple[Path, str, str]], data: Dataset | None, log: StageLog,
                   verify_doc: dict[str, Any] | None) -> None:
    """Every artifact must load and run in each export target's own runtime (stages/compat.py)."""
    profiles = [profile_by_name_or_path(t) for t in config.export.targets]
    sample = data.head(COMPAT_SAMPLES) if data else _random_dataset(model, COMPAT_SAMPLES)
    with log.stage("compat", f"{len(artifacts)} artifact(s) on {', '.join(config.export.targets)}"):
        for path, _fmt, recipe in artifacts:
            host = run_artifact(path, sample.inputs)
            results = {p.name: gate_profile(path, p, sample.inputs, host, recipe=recipe, golden_dir=run_dir / "golden")
                       if p.connection.kind == "emulated" else check_compat(path, p, sample.inputs, host, recipe=recipe)
                       for p in profiles}
            records[path.name]["compat"] = results
            if verify_doc is not None and path.name in verify_doc["artifacts"]:
                verify_doc["artifacts"][path.name]["compat"] = results
        if verify_doc is not None:
            atomic_write_json(run_dir / "verify.json", verify_doc)
        for path, _fmt, _recipe in artifacts:
            raise_on_incompatible(path.name, records[path.name]["compat"])


def _provenance(manifest: dict[str, Any], recipe: str) -> dict[str, str]:
    return {
        "edge_toolchain_version": manifest["toolchain_version"],
        "source_model_sha256": manifest["source_model"]["sha256"],
        "recipe": recipe,
    }


# ---- quantization: calibration data, exports per recipe, per-layer error reports ----

def _load_run_data(config: PipelineConfig, model: Any, log: StageLog) -> RunData:
    """Calibration and evaluation data, checked against the model before any conversion."""
    needs = any(
        recipe in CALIBRATED_RECIPES[fmt]
        for fmt in config.export.formats
        for recipe in (config.export.tflite if fmt == "tflite" else config.export.onnx).recipes
    )
    sources = [s for s in (config.data.eval, config.data.calibration.source) if s]
    if not sources and not needs:
        return RunData(None, None, {"calibration": None, "evaluation": None, "split": None})
    with log.stage("load data", ", ".join(Path(s).name for s in sources) or "random calibration"):
        return prepare_run_data(config.data, input_signature(model), needs_calibration=needs)


def _export_one(config: PipelineConfig, model: Any, path: Path, fmt: str, recipe: str,
                manifest: dict[str, Any], run_data: RunData, scratch: Path) -> None:
    """One recipe of one format -> artifacts/<name>.<recipe>.<ext>.

    ONNX fp16/dynamic/int8 start from the fp32 ONNX conversion: the fp32 artifact when
    it exists, else one conversion kept in `scratch` for the run's other ONNX recipes.
    """
    batch = None if config.export.dynamic_batch else config.export.batch_size
    calibrated = recipe in CALIBRATED_RECIPES[fmt]
    if fmt == "tflite":
        keep = config.export.tflite.keep_float if RECIPES[fmt, recipe].keep_float_applies else None
        export_tflite(model, path, recipe=recipe, batch_size=batch,
                      calibration=run_data.calibration if calibrated else None, keep_float=keep or None,
                      metadata=_provenance(manifest, recipe), allow_flex=config.export.tflite.allow_flex)
        return
    section = config.export.onnx
    if recipe == "fp32":
        export_onnx(model, path, recipe=recipe, batch_size=batch, opset=section.opset,
                    metadata=_provenance(manifest, recipe), nchw=section.nchw)
        return
    float_onnx = path.with_name(f"{config.model_name}.fp32.onnx")
    if "fp32" not in section.recipes or not float_onnx.exists():
        float_onnx = scratch / f"{config.model_name}.fp32.onnx"
        if not float_onnx.exists():
            export_onnx(model, float_onnx, recipe="fp32", batch_size=batch, opset=section.opset,
                        metadata=_provenance(manifest, "fp32"), nchw=section.nchw)
    quantize_onnx(float_onnx, path, recipe=recipe,
                  calibration=run_data.calibration if calibrated else None,
                  batch_size=batch, per_channel=section.per_channel,
                  calibration_method=section.calibration_method,
                  keep_float=section.keep_float if RECIPES[fmt, recipe].keep_float_applies else None,
                  metadata=_provenance(manifest, recipe))


def _quantization_record(config: PipelineConfig, fmt: str, recipe: str, run_data: RunData) -> dict[str, Any]:
    record: dict[str, Any] = {"recipe": recipe}
    if recipe in CALIBRATED_RECIPES[fmt]:
        cal = run_data.record.get("calibration") or {}
        record["calibration"] = {"source": cal.get("source"), "samples": cal.get("samples"),
                                 "random": cal.get("random", False)}
        if run_data.record.get("warning"):
            record["warning"] = run_data.record["warning"]
    if fmt == "onnx" and recipe == "int8":
        record["per_channel"] = config.export.onnx.per_channel
        record["calibration_method"] = config.export.onnx.calibration_method
    keep = (config.export.tflite if fmt == "tflite" else config.export.onnx).keep_float
    record["keep_float"] = list(keep) if RECIPES[fmt, recipe].keep_float_applies else []
    return record


def _layer_error_reports(config: PipelineConfig, model: Any, run_dir: Path, run_data: RunData,
                         artifacts: list[tuple[Path, str, str]], results: dict[str, Any]) -> dict[str, str]:
    """For each int8 artifact that failed verification: its worst layers, in quant-debug/."""
    reports: dict[str, str] = {}
    failed = [(p, f, r) for p, f, r in artifacts
              if RECIPES[f, r].layer_report and results[p.name]["verdict"] != "pass"]
    if not failed or run_data.calibration is None:
        return reports
    name = config.model_name
    batch = None if config.export.dynamic_batch else config.export.batch_size
    sample = run_data.calibration.head(32)
    with tempfile.TemporaryDirectory(prefix=".quant-debug-", dir=run_dir) as work:
        float_onnx = run_dir / "artifacts" / f"{name}.fp32.onnx"
        if any(fmt == "onnx" for _, fmt, _ in failed) and not float_onnx.exists():
            float_onnx = export_onnx(model, Path(work) / "float.onnx", batch_size=batch,
                                     opset=config.export.onnx.opset, nchw=config.export.onnx.nchw)
        for path, fmt, recipe in failed:
            if fmt == "tflite":
                layers = tflite_layer_errors(model, sample, batch)
                tool = "tf.lite.experimental.QuantizationDebugger"
                metric = "error_in_steps: RMS(float - quantized) / scale, worst first"
            else:
                layers = onnx_layer_errors(float_onnx, path, sample, batch)
                tool = "onnxruntime.quantization.qdq_loss_debug"
                metric = "snr_db of each activation vs the float model, worst (lowest) first"
            report = run_dir / "quant-debug" / f"{path.name}.layers.json"
            atomic_write_json(report, {"schema_version": RESULT_SCHEMA_VERSION, "artifact": path.name,
                                       "recipe": recipe, "tool": tool, "metric": metric,
                                       "samples": len(sample), "worst_layers": layers})
            relative = str(report.relative_to(run_dir))
            results[path.name]["layer_report"] = relative
            reports[path.name] = relative
    return reports

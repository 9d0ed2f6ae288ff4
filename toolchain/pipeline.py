"""Runs the stages in order and writes the run directory and its manifest."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from .artifact_info import describe
from .budgets import check_release_candidate, evaluate_budgets, profile_limits, raise_if_release_candidate_fails
from .config import PipelineConfig, config_sha256, find_profile
from .data import Dataset, load_npz
from .errors import ToolchainError
from .estimate import write_estimates
from .fileio import atomic_write_json, sha256_file
from .keras_io import input_signature, load_model, output_signature, run_keras
from .manifest import bench_summary, new_manifest, write_manifest
from .stages.bench import run_benchmarks
from .stages.export_onnx import export_onnx
from .stages.export_tflite import export_tflite
from .stages.report import RunDocuments
from .stages.report_html import write_reports
from .stages.verify import raise_on_failures, tolerance_for, verify_artifact

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
class StageLog:
    console: Console
    quiet: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        started = time.perf_counter()
        label = f"{name} {detail}".strip()
        status = None if self.quiet else self.console.status(f"[bold]{label}[/] …")
        if status:
            status.start()
        try:
            yield
        except BaseException:
            self.records.append({"name": label, "status": "failed",
                                 "seconds": round(time.perf_counter() - started, 3)})
            if status:
                status.stop()
            if not self.quiet:
                self.console.print(f"[red]✗[/] {label}")
            raise
        seconds = time.perf_counter() - started
        self.records.append({"name": label, "status": "done", "seconds": round(seconds, 3),
                             "cached": False})
        if status:
            status.stop()
        if not self.quiet:
            self.console.print(f"[green]✓[/] {label} [dim]({seconds:.1f} s)[/]")


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


def run_pipeline(
    config: PipelineConfig,
    raw_config: dict[str, Any],
    out_dir: Path | None = None,
    *,
    console: Console | None = None,
    quiet: bool = False,
) -> RunResult:
    console = console or Console(stderr=True)
    log = StageLog(console, quiet)
    run_dir = Path(out_dir or config.output.dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)

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
        result = _run_stages(config, model, run_dir, manifest, log)
    except ToolchainError as e:
        manifest["status"] = "failed"
        manifest["error"] = str(e)
        manifest["stages"] = log.records
        write_manifest(run_dir, manifest)
        raise
    raise_if_release_candidate_fails(result.budgets)  # exit 7, after the run's outputs are written
    return result


def _run_stages(
    config: PipelineConfig, model: Any, run_dir: Path, manifest: dict[str, Any], log: StageLog
) -> RunResult:
    data: Dataset | None = None
    if config.data.eval is not None:
        with log.stage("load data", config.data.eval.name):
            data = load_npz(config.data.eval, input_signature(model),
                            labels_key=config.data.labels_key, limit=config.data.samples)

    artifacts: list[tuple[Path, str, str]] = []
    name = config.model_name
    for fmt in config.export.formats:
        section = config.export.tflite if fmt == "tflite" else config.export.onnx
        for recipe in section.recipes:
            path = run_dir / "artifacts" / f"{name}.{recipe}.{fmt}"
            with log.stage("export", f"{fmt} {recipe}"):
                if fmt == "tflite":
                    export_tflite(model, path, recipe=recipe, batch_size=config.export.batch_size)
                else:
                    export_onnx(model, path, recipe=recipe, batch_size=config.export.batch_size,
                                opset=config.export.onnx.opset,
                                metadata=_provenance(manifest, recipe))
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
            "parent": manifest["source_model"]["sha256"],
            "inputs": info["inputs"],
            "outputs": info["outputs"],
            "ops": info["ops"],
            "verify": None,
            "bench": {},
        }
        if fmt == "onnx":
            record["opset"] = info["opset"]
        manifest["artifacts"].append(record)
    records = {a["name"]: a for a in manifest["artifacts"]}

    verify_doc = None
    if config.verify.enabled:
        with log.stage("verify", f"{len(artifacts)} artifact(s)"):
            sample = data.head(config.verify.samples) if data else _random_dataset(model, 16)
            reference = run_keras(model, sample.inputs)
            results = {}
            for path, _fmt, recipe in artifacts:
                overrides = config.verify.tolerances.get(recipe)
                tolerance = tolerance_for(recipe, overrides.model_dump() if overrides else None)
                results[path.name] = verify_artifact(path, reference, sample, tolerance)
                records[path.name]["verify"] = {
                    k: results[path.name][k] for k in ("verdict", "failures")
                } | {"outputs": results[path.name]["outputs"]}
            verify_doc = {
                "schema_version": RESULT_SCHEMA_VERSION,
                "reference": manifest["source_model"]["path"],
                "data": sample.source,
                "samples": len(sample),
                "notes": sample.notes,
                "artifacts": results,
            }
            atomic_write_json(run_dir / "verify.json", verify_doc)
            manifest["files"]["verify"] = "verify.json"
            raise_on_failures(results)

    bench_doc = None
    if config.bench.enabled:
        profiles = [find_profile(t) for t in config.bench.targets]
        with log.stage("benchmark", f"{len(artifacts)} artifact(s) on {', '.join(config.bench.targets)}"):
            results_list = run_benchmarks([p for p, _, _ in artifacts], profiles,
                                          config.bench.threads, config.bench)
        bench_doc = {"schema_version": RESULT_SCHEMA_VERSION, "results": results_list}
        atomic_write_json(run_dir / "bench.json", bench_doc)
        manifest["files"]["bench"] = "bench.json"
        for artifact_name, record in records.items():
            record["bench"] = bench_summary([r for r in results_list if r["artifact"] == artifact_name])

    profile_dirs = [config.bench.targets_dir] if config.bench.targets_dir else None
    with log.stage("budgets"):
        target_budgets = {t: profile_limits(find_profile(t, profile_dirs)) for t in config.bench.targets}
        budgets_doc = evaluate_budgets(manifest, config.budgets, target_budgets)
        atomic_write_json(run_dir / "budgets.json", budgets_doc)
        manifest["files"]["budgets"] = "budgets.json"
    with log.stage("estimate", "unmeasured targets"):
        measured = config.bench.targets if config.bench.enabled else []
        estimates_doc = write_estimates(run_dir, model, manifest["artifacts"], config.export.batch_size, measured,
                                        profile_dirs)
        manifest["files"]["estimates"] = "estimates.json"

    report_path = None
    manifest["status"] = "complete"
    if config.report.enabled:
        with log.stage("report"):
            manifest["files"]["report"] = "report/report.md"
            manifest["files"]["report_html"] = "report/report.html"
            report_path, _ = write_reports(RunDocuments(run_dir, manifest, bench_doc, budgets_doc, estimates_doc))
    manifest["stages"] = log.records
    write_manifest(run_dir, manifest)
    return RunResult(run_dir, manifest, verify_doc, bench_doc, report_path, budgets_doc)


def _provenance(manifest: dict[str, Any], recipe: str) -> dict[str, str]:
    return {
        "edge_toolchain_version": manifest["toolchain_version"],
        "source_model_sha256": manifest["source_model"]["sha256"],
        "recipe": recipe,
    }

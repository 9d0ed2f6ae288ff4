"""Benchmark artifacts on targets: one fresh runner process per artifact x threads.

Used by the pipeline's bench stage and by `edge-toolchain bench`. Targets run in
parallel (one thread each); the runs on one target are sequential so they do not
compete for its cores. Settings: command-line values, then the pipeline's [bench] keys
that were written, then the profile's [bench], then the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..config import BenchSection, TargetProfile
from ..errors import InputError, TargetError
from ..fileio import sha256_file
from ..targets import open_target

BENCH_SCHEMA_VERSION = "1.0"
SETTING_KEYS = ("warmup_runs", "warmup_seconds", "min_runs", "min_seconds", "max_seconds", "timeout_seconds")


def resolve_settings(
    profile: TargetProfile, pipeline: BenchSection | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The benchmark settings used on one target."""
    defaults = BenchSection()
    settings = {key: getattr(defaults, key) for key in SETTING_KEYS}
    settings.update({k: v for k, v in profile.bench.model_dump().items() if v is not None})
    if pipeline is not None:
        settings.update({k: getattr(pipeline, k) for k in SETTING_KEYS if k in pipeline.model_fields_set})
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None and k in SETTING_KEYS})
    return settings


def resolve_threads(profile: TargetProfile, pipeline: BenchSection | None, threads: list[int] | None) -> list[int]:
    if threads:
        return threads
    if pipeline is not None and pipeline.threads:
        return pipeline.threads
    return profile.threads


def bench_request(artifact: Path, threads: int, settings: dict[str, Any] | BenchSection,
                  inputs: Path | None = None, session_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The runner request; `session_options` (onnxruntime) only when given, so a request without
    them is one every runner protocol accepts."""
    if isinstance(settings, BenchSection):
        settings = {key: getattr(settings, key) for key in SETTING_KEYS}
    request = {"model": str(artifact), "mode": "benchmark", "threads": threads}
    request.update({k: settings[k] for k in SETTING_KEYS if k != "timeout_seconds"})
    if inputs is not None:
        request["inputs"] = str(inputs)
    if session_options:
        request["session_options"] = dict(session_options)
    return request


def run_benchmarks(
    artifacts: list[Path],
    profiles: list[TargetProfile],
    threads: list[int] | None = None,
    settings: BenchSection | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    inputs: Path | None = None,
    failures: dict[str, str] | None = None,
    fleet_of: dict[str, str] | None = None,
    session_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One record per artifact x target x threads; any failure raises one TargetError for all.

    `session_options`: onnxruntime session options for .onnx artifacts (the runner's request key).

    With `failures` (a dict to fill), a target that fails is recorded there (name -> message)
    and the other targets' records are returned: a fleet reports every device it could measure.
    Each benchmark holds its board's lease (leases.py) while it runs.
    """
    from ..leases import device_lease

    for artifact in artifacts:
        if not Path(artifact).is_file():
            raise InputError(f"artifact not found: {artifact}")
        if Path(artifact).suffix not in (".tflite", ".onnx"):
            raise InputError(f"cannot benchmark {artifact}: expected a .tflite or .onnx file")
    if inputs is not None and not Path(inputs).is_file():
        raise InputError(f"inputs file not found: {inputs} (give an .npz keyed by input name)")
    hashes = {Path(a): sha256_file(a) for a in artifacts}

    def run_target(profile: TargetProfile) -> list[dict[str, Any]]:
        target = open_target(profile)
        used = resolve_settings(profile, settings, overrides)
        results = []
        for artifact in artifacts:
            for count in resolve_threads(profile, settings, threads):
                with device_lease(profile):
                    request = bench_request(Path(artifact), count, used, inputs, session_options)
                    answer = target.run(request, used["timeout_seconds"])
                record = {
                    "artifact": Path(artifact).name,
                    "artifact_sha256": hashes[Path(artifact)],
                    "target": profile.name,
                    "connection": profile.connection.kind,
                    "threads": count,
                    "valid": True,
                    "latency_ms": answer["latency_ms"],
                    "latency_samples_ms": answer.get("latency_samples_ms"),  # None from older runners
                    "load_ms": answer["load_ms"],
                    "first_inference_ms": answer["first_inference_ms"],
                    "warmup_runs": answer["warmup_runs"],
                    "timed_seconds": answer["timed_seconds"],
                    "capped_by_max_seconds": answer["capped_by_max_seconds"],
                    "memory": answer["memory"],
                    "throttled": answer["throttled"],
                    "throttling": answer.get("throttling", []),
                    "inputs": answer["inputs"],
                    "settings": used,
                    "environment": answer["environment"],
                }
                if session_options:
                    record["session_options"] = answer.get("session_options")
                if fleet_of and profile.name in fleet_of:
                    record["fleet"] = fleet_of[profile.name]
                results.append(record)
                if on_result:
                    on_result(record)
        return results

    if len(profiles) == 1 and failures is None:
        return run_target(profiles[0])
    with ThreadPoolExecutor(max_workers=len(profiles)) as pool:
        futures = [pool.submit(run_target, p) for p in profiles]
        results: list[dict[str, Any]] = []
        errors: list[str] = []
        for profile, future in zip(profiles, futures, strict=True):
            try:
                results.extend(future.result())
            except TargetError as e:
                errors.append(str(e))
                if failures is not None:
                    failures[profile.name] = str(e)
        if errors and failures is None:
            raise TargetError("; ".join(errors))
        return results


def bench_document(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The bench.json document."""
    return {"schema_version": BENCH_SCHEMA_VERSION, "results": results}


COMPARISON_COLUMNS = (
    ("artifact", "artifact"), ("target", "target"), ("threads", "threads"),
    ("p50", "p50 ms"), ("p90", "p90 ms"), ("p99", "p99 ms"), ("std", "std ms"),
    ("vs_best", "vs best"), ("load", "load ms"), ("peak", "peak RSS MB"), ("runs", "runs"),
    ("backend", "backend"), ("notes", "notes"),
)


def comparison_rows(results: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Rows for the comparison table; `vs best` compares p50 with the fastest run of the same artifact."""
    best: dict[str, float] = {}
    for r in results:
        best[r["artifact"]] = min(best.get(r["artifact"], float("inf")), r["latency_ms"]["p50"])
    rows = []
    for r in results:
        lat = r["latency_ms"]
        env = r["environment"]
        notes = []
        if r.get("connection") == "emulated":  # QEMU timing: hundreds of times slower than the board
            notes.append("EMULATED timing, not a device figure")
        if r.get("throttled"):
            notes.append("THROTTLED")
        if r.get("capped_by_max_seconds"):
            notes.append("capped by max_seconds")
        peak = r["memory"].get("peak_rss_after_runs_kib")
        rows.append({
            "artifact": r["artifact"],
            "target": r["target"],
            "threads": str(r["threads"]),
            "p50": f"{lat['p50']:.3f}",
            "p90": f"{lat['p90']:.3f}",
            "p99": f"{lat['p99']:.3f}",
            "std": f"{lat['std']:.3f}",
            "vs_best": f"{lat['p50'] / best[r['artifact']]:.2f}x" if best[r["artifact"]] > 0 else "-",
            "load": f"{r['load_ms']:.1f}",
            "peak": f"{peak / 1024:.1f}" if peak is not None else "-",
            "runs": str(lat["count"]),
            "backend": f"{env.get('backend')} {env.get('backend_version') or ''}".strip(),
            "notes": ", ".join(notes),
        })
    return rows

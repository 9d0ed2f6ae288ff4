"""Benchmark artifacts on targets: one fresh runner process per artifact x threads."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..config import BenchSection, TargetProfile
from ..errors import TargetError
from ..targets import open_target


def bench_request(artifact: Path, threads: int, settings: BenchSection) -> dict[str, Any]:
    return {
        "model": str(artifact),
        "mode": "benchmark",
        "threads": threads,
        "warmup_runs": settings.warmup_runs,
        "warmup_seconds": settings.warmup_seconds,
        "min_runs": settings.min_runs,
        "min_seconds": settings.min_seconds,
        "max_seconds": settings.max_seconds,
    }


def run_benchmarks(
    artifacts: list[Path],
    profiles: list[TargetProfile],
    threads: list[int] | None,
    settings: BenchSection,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Targets run in parallel; runs on one target are sequential so they don't compete."""

    def run_target(profile: TargetProfile) -> list[dict[str, Any]]:
        target = open_target(profile)
        results = []
        for artifact in artifacts:
            for count in threads or profile.threads:
                answer = target.run(bench_request(artifact, count, settings), settings.timeout_seconds)
                record = {
                    "artifact": artifact.name,
                    "target": profile.name,
                    "threads": count,
                    "latency_ms": answer["latency_ms"],
                    "load_ms": answer["load_ms"],
                    "first_inference_ms": answer["first_inference_ms"],
                    "warmup_runs": answer["warmup_runs"],
                    "capped_by_max_seconds": answer["capped_by_max_seconds"],
                    "memory": answer["memory"],
                    "throttled": answer["throttled"],
                    "inputs": answer["inputs"],
                    "environment": answer["environment"],
                }
                results.append(record)
                if on_result:
                    on_result(record)
        return results

    if len(profiles) == 1:
        return run_target(profiles[0])
    with ThreadPoolExecutor(max_workers=len(profiles)) as pool:
        futures = [pool.submit(run_target, p) for p in profiles]
        results: list[dict[str, Any]] = []
        errors: list[str] = []
        for future in futures:
            try:
                results.extend(future.result())
            except TargetError as e:
                errors.append(str(e))
        if errors:
            raise TargetError("; ".join(errors))
        return results

"""The run manifest: the index of a run directory, validated against a shipped schema."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from . import __version__
from .fileio import atomic_write_json

SCHEMA_VERSION = "1.0"
TOOL_DISTRIBUTIONS = {
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "keras": ("keras",),
    "tf2onnx": ("tf2onnx",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime",),
    "ai_edge_litert": ("ai-edge-litert",),
    "numpy": ("numpy",),
}


def tool_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for key, dists in TOOL_DISTRIBUTIONS.items():
        versions[key] = None
        for dist in dists:
            try:
                versions[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def load_schema() -> dict[str, Any]:
    text = resources.files("toolchain").joinpath("schemas/manifest.schema.json").read_text()
    return json.loads(text)


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when the manifest breaks the schema."""
    import jsonschema

    jsonschema.validate(manifest, load_schema())


def bench_summary(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    summary: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        summary.setdefault(r["target"], []).append({
            "threads": r["threads"],
            "p50_ms": r["latency_ms"]["p50"],
            "p90_ms": r["latency_ms"]["p90"],
            "mean_ms": r["latency_ms"]["mean"],
            "peak_rss_kib": r["memory"]["peak_rss_after_runs_kib"],
            "throttled": bool(r["throttled"]),
        })
    return summary


def new_manifest(config: dict[str, Any], config_sha256: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "toolchain_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "failed",
        "error": None,
        "tool_versions": tool_versions(),
        "config": config,
        "config_sha256": config_sha256,
        "source_model": source,
        "artifacts": [],
        "stages": [],
        "files": {},
    }


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> Path:
    validate_manifest(manifest)
    path = run_dir / "manifest.json"
    atomic_write_json(path, manifest)
    return path

"""Typed results of the pipeline's stages; JSON only at the edges (cache records, result files).

verify.json, bench.json, budgets.json, estimates.json and optimize.json are dumps of VerifyDocument,
BenchDocument, BudgetsDocument, EstimatesDocument and OptimizeDocument; their JSON
schemas (toolchain/schemas/*.schema.json) are generated from these models
(`python -m toolchain.records` rewrites them; a test checks they are current).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
VERIFY_SCHEMA_VERSION = "1.0"
BENCH_SCHEMA_VERSION = "1.0"
BUDGETS_SCHEMA_VERSION = "1.0"
ESTIMATES_SCHEMA_VERSION = "1.1"
OPTIMIZE_SCHEMA_VERSION = "1.1"  # 1.1: session_options, shares_file, derived_from, derived, settings.force


class Record(BaseModel):
    """A typed record; `to_json` leaves out what was never set, so the files keep their shape."""

    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class OutputMetrics(Record):
    """One output of an artifact compared with its reference (compare.compare_outputs)."""

    samples: int
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    normalized_max_error: float | None = None
    cosine_min: float | None = None
    cosine_mean: float | None = None
    snr_db: float | None = None  # None: identical outputs
    top1_agreement: float | None = None
    accuracy_reference: float | None = None
    accuracy: float | None = None
    accuracy_delta: float | None = None
    top5_accuracy_reference: float | None = None
    top5_accuracy: float | None = None
    top5_accuracy_delta: float | None = None
    non_finite_values: int | None = None


class VerifyResult(Record):
    """One artifact vs the Keras model; `compat`: target name -> device check or emulator gate record."""

    verdict: Literal["pass", "fail"]
    failures: list[str]
    outputs: dict[str, OutputMetrics]
    samples: int | None = None
    tolerance: dict[str, float] | None = None
    layer_report: str | None = None
    compat: dict[str, dict[str, Any]] | None = None


class VerifyDocument(Record):
    """verify.json"""

    schema_version: str = VERIFY_SCHEMA_VERSION
    reference: str
    data: str
    samples: int
    notes: list[str]
    calibration: dict[str, Any]
    artifacts: dict[str, VerifyResult]


class Latency(Record):
    model_config = ConfigDict(extra="allow")

    count: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float


class BenchRecord(Record):
    """One benchmark: artifact x target x threads."""

    artifact: str
    artifact_sha256: str
    target: str
    connection: str
    threads: int
    valid: bool
    latency_ms: Latency
    latency_samples_ms: list[float] | None = None  # None from older runners
    load_ms: float
    first_inference_ms: float
    warmup_runs: int
    timed_seconds: float
    capped_by_max_seconds: bool
    memory: dict[str, Any]
    throttled: bool | None
    throttling: list[Any]
    inputs: Any
    settings: dict[str, Any]
    environment: dict[str, Any]
    cached: bool | None = None  # in a pipeline run: served from the stage cache
    fleet: str | None = None  # the fleet target this device belongs to (target is <fleet>.<device>)


class FleetGroupRow(Record):
    """One fleet x artifact x threads: the devices' p50 median and spread, outliers and failed devices."""

    fleet: str
    artifact: str
    threads: int
    devices: int
    median_p50_ms: float
    spread: float  # (max - min) / median of the devices' p50
    p50_ms: dict[str, float]  # device -> p50
    outliers: list[str]
    failed: list[str]


class BenchDocument(Record):
    """bench.json"""

    schema_version: str = BENCH_SCHEMA_VERSION
    results: list[BenchRecord]
    groups: list[FleetGroupRow] | None = None  # fleet targets only
    failed: dict[str, str] | None = None  # device target -> why it has no rows


class BudgetValues(Record):
    """What the budgets look at for one artifact on one target (None: not measured)."""

    threads: int | None
    throttled: bool
    p90_latency_ms: float | None
    peak_memory_mb: float | None
    file_size_mb: float
    accuracy: float | None
    accuracy_drop: float | None


class BudgetCheck(Record):
    metric: str
    value: float | None
    limit: float
    comparison: Literal["<=", ">="]
    source: str  # "pipeline budget" or "target '<name>' budget"
    passed: bool
    reason: str


class BudgetResult(Record):
    """One artifact on one target against every limit that applies."""

    artifact: str
    format: str
    recipe: str
    target: str
    threads: int | None
    throttled: bool
    values: BudgetValues
    passed: bool
    checks: list[BudgetCheck]
    failures: list[str]


class BudgetsDocument(Record):
    """budgets.json"""

    schema_version: str = BUDGETS_SCHEMA_VERSION
    limits: dict[str, Any]
    release_candidate: str | None
    release_candidate_passed: bool | None
    results: list[BudgetResult]


class EstimateRow(Record):
    """One artifact x unmeasured target: a roofline lower bound, never a measurement."""

    artifact: str
    target: str
    recipe: str | None
    peak_gflops: float
    compute_peak_gops: float
    compute_precision: Literal["int8", "fp32"]
    memory_bandwidth_gbs: float
    bytes: int
    note: str | None
    compute_ms: float
    memory_ms: float
    lower_bound_ms: float
    bound: Literal["compute", "memory"]


class EstimateSkip(Record):
    """A target that got no estimate, and why."""

    target: str
    reason: str


class EstimatesDocument(Record):
    """estimates.json"""

    schema_version: str = ESTIMATES_SCHEMA_VERSION
    kind: Literal["estimate"] = "estimate"
    method: str
    macs_per_sample: int | None
    batch_size: int
    estimates: list[EstimateRow]
    skipped: list[EstimateSkip]


class OptimizeCandidate(Record):
    """One candidate of the optimize search: what it is, its file, and its target-independent verdict."""

    name: str
    format: Literal["tflite", "onnx"]
    recipe: str
    keep_float: list[str]
    knobs: dict[str, Any]  # ONNX quantizer settings (quantize_onnx.QUANT_KNOBS)
    rewrite: str | None
    session_options: dict[str, Any]  # onnxruntime's, as the device runner takes them; {}: its defaults
    why_tried: str
    path: str  # relative to the folder of optimize.json
    int8_class: bool
    verdict: Literal["pass", "rejected-accuracy", "rejected-size", "build-failed", "not-tried"]
    why: str
    bytes: int | None = None
    sha256: str | None = None
    accuracy: dict[str, int | float] | None = None
    tolerance: dict[str, Any] | None = None
    cached: dict[str, bool] | None = None
    explain: dict[str, Any] | None = None  # what the runtime did not accelerate (optimize/explain.py)
    shares_file: str | None = None  # runs this candidate's file with other session options
    derived_from: str | None = None  # follow-up of this slow candidate's profile (optimize/derive.py)


class OptimizeTiming(Record):
    p50_ms: float
    p90_ms: float
    runs: int
    backend: str | None
    cached: bool
    session_options: dict[str, Any] | None = None  # as the runner applied them (candidates with their own)


class OptimizeResult(Record):
    """One candidate on one target: its probe, its full benchmark (unless pruned) and the verdict."""

    verdict: Literal["recommended", "accepted", "rejected", "not-tried"]
    why: str
    probe: OptimizeTiming | None = None
    pruned: bool | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    runs: int | None = None
    backend: str | None = None
    cached: bool | None = None
    session_options: dict[str, Any] | None = None
    p50_first_ms: float | None = None  # the first full measurement, when a confirmation round re-measured it
    confirm_p50s_ms: list[float] | None = None  # that measurement and the confirmation rounds; p50_ms is their median


class OptimizeRecommendation(Record):
    candidate: str
    path: str
    format: Literal["tflite", "onnx"]
    session_options: dict[str, Any]  # run the file with these (the device runner's request key); {}: defaults
    p50_ms: float | None  # None: not measured (ranked by file size, an estimate)
    measured: bool
    note: str


class OptimizeTarget(Record):
    target: str
    connection: str
    measured: bool
    results: dict[str, OptimizeResult]
    recommended: OptimizeRecommendation | None
    front: list[str]  # the latency-accuracy front


class DerivedNote(Record):
    """Per format: the follow-up derived from a slow candidate's profile, or why there is none."""

    format: Literal["tflite", "onnx"]
    candidate: str | None
    derived_from: str | None
    why: str


class OptimizeDocument(Record):
    """optimize.json"""

    schema_version: str = OPTIMIZE_SCHEMA_VERSION
    model: dict[str, str]
    data: dict[str, Any]
    budget: dict[str, Any]
    settings: dict[str, Any]
    candidates: list[OptimizeCandidate]
    derived: list[DerivedNote]
    targets: dict[str, OptimizeTarget]
    recommended: dict[str, OptimizeRecommendation | None]
    candidate_count: int
    wall_seconds: float


SCHEMAS = {"verify": VerifyDocument, "bench": BenchDocument, "budgets": BudgetsDocument,
           "estimates": EstimatesDocument, "optimize": OptimizeDocument}
PIPELINE_DOCUMENTS = ("verify", "bench", "budgets", "estimates")  # every pipeline run writes these


def json_schema(name: str) -> dict[str, Any]:
    model = SCHEMAS[name]
    schema = model.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://edge-toolchain/schemas/{name}.schema.json", **schema}


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.schema.json"


def write_schemas() -> list[Path]:
    paths = []
    for name in SCHEMAS:
        path = schema_path(name)
        path.write_text(json.dumps(json_schema(name), indent=2) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_schemas():
        print(written)

"""Follow-up candidates from the profile of an int8 candidate that lost to fp32 (one per format).

After the search has measured and explained its candidates, the first int8 candidate of a
format (in candidate order: deterministic) that a target rejected for speed (slower than
fp32, or pruned after its probe) and whose profile names a cause gets one follow-up:

- TFLite: the Keras layers owning the ops XNNPACK left outside its partitions are kept in
  float (on top of the candidate's own keep_float): XNNPACK then takes those ops in float
  instead of the built-in int8 kernels splitting the graph;
- ONNX: the op types (other than Conv/MatMul/Gemm) with the largest share of onnxruntime's
  per-operator time, their own plus that of the Quantize/DequantizeLinear nodes around them
  (explain.qdq_by_neighbour), are no longer quantized: no Q/DQ pairs around them.

The follow-up is built, verified and measured like any candidate, once (it is not itself
derived from), and records `derived_from` and why.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .candidates import Candidate

DERIVABLE_RECIPES = ("int8", "int8-float-io")  # static int8: XNNPACK partitions / Q/DQ pairs
FAST_INT8_OPS = ("Conv", "MatMul", "Gemm")  # what int8 is for: never excluded
MIN_SHARE = 0.05  # an op type under 5% of the profiled time is not worth a candidate
MAX_EXCLUDED = 2


def lost_on_speed(name: str, per_target: dict[str, dict[str, Any]]) -> str | None:
    """Why a target rejected the candidate for speed (the first such target), else None."""
    for target, found in per_target.items():
        result = found["results"].get(name, {})
        why = result.get("why", "")
        if result.get("verdict") == "rejected" and (why.startswith("slower than") or result.get("pruned")):
            return f"on {target}: {why}"
    return None


def derive_candidates(model: Any, candidates: list[Candidate], records: list[dict[str, Any]],
                      per_target: dict[str, dict[str, Any]], out_dir: Path) -> tuple[list[Candidate], list[dict]]:
    """(the follow-up candidates, one note per format saying what was derived or why nothing was)."""
    by_name = {c.name: c for c in candidates}
    derived: list[Candidate] = []
    notes: list[dict[str, Any]] = []
    for fmt in dict.fromkeys(c.format for c in candidates):
        source = _slow_source(fmt, by_name, records, per_target)
        if source is None:
            notes.append({"format": fmt, "candidate": None, "derived_from": None,
                          "why": "no int8 candidate lost to fp32 on speed with a profile to read"})
            continue
        record, lost = source
        follow_up, why = _follow_up(model, by_name[record["name"]], record, records, out_dir)
        if follow_up is not None and any(c.file_settings() == follow_up.file_settings() for c in candidates):
            follow_up, why = None, f"{why}; a candidate with these settings was already tried"
        if follow_up is not None:
            follow_up = replace(follow_up, why=f"derived from {record['name']}'s profile ({lost}): {why}")
            derived.append(follow_up)
        notes.append({"format": fmt, "candidate": follow_up.name if follow_up else None,
                      "derived_from": record["name"], "why": why})
    return derived, notes


def _slow_source(fmt: str, by_name: dict[str, Candidate], records: list[dict[str, Any]],
                 per_target: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], str] | None:
    for record in records:
        candidate = by_name.get(record["name"])
        if (candidate is None or candidate.format != fmt or candidate.recipe not in DERIVABLE_RECIPES
                or candidate.shares_file or "reason" not in record.get("explain", {})
                or "error" in record["explain"]):
            continue
        lost = lost_on_speed(record["name"], per_target)
        if lost:
            return record, lost
    return None


def _follow_up(model: Any, base: Candidate, record: dict[str, Any], records: list[dict[str, Any]],
               out_dir: Path) -> tuple[Candidate | None, str]:
    if base.format == "tflite":
        return tflite_follow_up(model, base, record["explain"])
    fp32 = next((r for r in records if r["name"] == "onnx-fp32" and "sha256" in r), None)
    if fp32 is None:
        return None, "the float ONNX file is not there to read its op types"
    from .explain import op_counts

    return onnx_follow_up(base, record["explain"], set(op_counts(out_dir / fp32["path"])))


def tflite_follow_up(model: Any, base: Candidate, explain: dict[str, Any]) -> tuple[Candidate | None, str]:
    """Keep in float the Keras layers that own the ops outside the XNNPACK partitions."""
    from ..stages.export_tflite import _belongs_to

    tensors = explain.get("outside_delegate_tensors", [])
    owners = [layer.name for layer in model.layers
              if any(_belongs_to(tensor, layer.name) for tensor in tensors)]
    keep = [name for name in owners if name not in base.keep_float]
    outside = ", ".join(f"{k}×{v}" for k, v in sorted(explain.get("xnnpack", {}).get("outside_delegate", {}).items()))
    if not keep:
        return None, (f"ops outside XNNPACK ({outside or 'none'}) belong to no Keras layer not already kept "
                      "in float")
    candidate = replace(base, name=f"{base.name}-derived", keep_float=(*base.keep_float, *keep),
                        derived_from=base.name)
    return candidate, f"ops outside XNNPACK ({outside}) belong to {', '.join(keep)}: kept in float"


def onnx_follow_up(base: Candidate, explain: dict[str, Any], float_ops: set[str]) -> tuple[Candidate | None, str]:
    """Stop quantizing the op types (not Conv/MatMul/Gemm) that take most of onnxruntime's time."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    profile = explain.get("onnxruntime", {})
    per_op = profile.get("ms_per_op_type", {})
    total = sum(per_op.values()) or 1.0
    shares: dict[str, float] = {}
    for op, ms in [*per_op.items(), *profile.get("qdq_ms_by_op_type", {}).items()]:
        float_op = op.removeprefix("QLinear")  # a fused int8 kernel stands for its float op
        if float_op in float_ops and float_op not in FAST_INT8_OPS:
            shares[float_op] = shares.get(float_op, 0.0) + ms / total
    slow = [op for op, share in sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])) if share >= MIN_SHARE]
    slow = slow[:MAX_EXCLUDED]
    quantizable = set(base.knobs.get("op_types") or (set(QDQRegistry) | set(QLinearOpsRegistry))) & float_ops
    kept = sorted(quantizable - set(slow))
    if not slow or set(kept) == quantizable:
        return None, "no quantized op type other than Conv/MatMul/Gemm takes 5% of onnxruntime's time"
    candidate = replace(base, name=f"{base.name}-derived", knobs={**base.knobs, "op_types": kept},
                        derived_from=base.name)
    spent = ", ".join(f"{op} {shares[op]:.0%}" for op in slow)
    return candidate, (f"{spent} of onnxruntime's time (with the Q/DQ around them): {', '.join(slow)} no "
                       "longer quantized")

"""Estimated lower-bound latency on targets that were not measured.

A roofline bound from the profile's hardware facts: an inference cannot be faster
than doing its MACs at peak compute (2 FLOP per MAC) nor than reading the model's
bytes once at peak memory bandwidth, so

    lower bound = max(MACs * 2 / peak FLOP/s, artifact bytes / bandwidth).

Real latency is higher (runtime overhead, caches, activations, imperfect kernels),
often by 3-10x on small models: this is an ESTIMATE, labelled as one everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TargetProfile, list_profiles, load_profile
from .errors import ConfigError, ToolchainError
from .fileio import atomic_write_json

ESTIMATES_SCHEMA_VERSION = "1.0"
METHOD = ("lower bound = max(MACs x 2 / peak FLOP/s, artifact bytes / memory bandwidth) "
          "from the target profile's [hardware] facts, assuming the weights stream from DRAM once per "
          "inference (a model that fits in cache can beat the memory term); not a measurement")


def lower_bound_ms(macs: int, nbytes: int, peak_gflops: float, bandwidth_gbs: float) -> dict[str, Any]:
    compute_ms = macs * 2 / (peak_gflops * 1e9) * 1000
    memory_ms = nbytes / (bandwidth_gbs * 1e9) * 1000
    return {
        "compute_ms": compute_ms,
        "memory_ms": memory_ms,
        "lower_bound_ms": max(compute_ms, memory_ms),
        "bound": "compute" if compute_ms >= memory_ms else "memory",
    }


def estimate(
    macs_per_sample: int,
    batch_size: int,
    artifacts: list[dict[str, Any]],
    profiles: list[TargetProfile],
) -> dict[str, Any]:
    """Estimates for every artifact on every profile that has the hardware facts."""
    macs = macs_per_sample * batch_size
    rows, skipped = [], []
    for profile in profiles:
        hw = profile.hardware
        if hw.peak_gflops is None or hw.memory_bandwidth_gbs is None:
            missing = [k for k in ("peak_gflops", "memory_bandwidth_gbs") if getattr(hw, k) is None]
            skipped.append({"target": profile.name,
                            "reason": f"profile has no hardware.{' / hardware.'.join(missing)}"})
            continue
        for artifact in artifacts:
            rows.append({
                "artifact": artifact["name"],
                "target": profile.name,
                "peak_gflops": hw.peak_gflops,
                "memory_bandwidth_gbs": hw.memory_bandwidth_gbs,
                "bytes": artifact["bytes"],
                **lower_bound_ms(macs, artifact["bytes"], hw.peak_gflops, hw.memory_bandwidth_gbs),
            })
    return {
        "schema_version": ESTIMATES_SCHEMA_VERSION,
        "kind": "estimate",
        "method": METHOD,
        "macs_per_sample": macs_per_sample,
        "batch_size": batch_size,
        "estimates": rows,
        "skipped": skipped,
    }


def unmeasured_profiles(
    measured: list[str], extra_dirs: list[Path] | None = None
) -> tuple[list[TargetProfile], list[dict[str, str]]]:
    """Every known profile the run did not benchmark on, and the ones that could not be read.

    An unreadable profile the run does not use must not fail the run: it is listed as skipped.
    """
    profiles, skipped = [], []
    for name, path in sorted(list_profiles(extra_dirs).items()):
        if name in measured:
            continue
        try:
            profiles.append(load_profile(path))
        except ConfigError as e:
            skipped.append({"target": name, "reason": f"profile could not be read: {e}"})
    return profiles, skipped


def write_estimates(
    run_dir: Path,
    model: Any,
    artifacts: list[dict[str, Any]],
    batch_size: int,
    measured: list[str],
    extra_dirs: list[Path] | None = None,
) -> dict[str, Any]:
    """estimates.json for the run's unmeasured targets (MACs counted on the exported Keras model)."""
    from .model_stats import count_macs

    try:
        macs = count_macs(model)
    except ToolchainError as e:
        doc = {"schema_version": ESTIMATES_SCHEMA_VERSION, "kind": "estimate", "method": METHOD,
               "macs_per_sample": None, "batch_size": batch_size, "estimates": [],
               "skipped": [{"target": "*", "reason": f"MACs could not be counted: {e}"}]}
    else:
        profiles, unreadable = unmeasured_profiles(measured, extra_dirs)
        doc = estimate(macs, batch_size, artifacts, profiles)
        doc["skipped"] += unreadable
    atomic_write_json(run_dir / "estimates.json", doc)
    return doc

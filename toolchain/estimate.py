"""Estimated lower-bound latency on targets that were not measured.

A roofline bound from the profile's hardware facts: an inference cannot be faster
than doing its MACs at peak compute (2 FLOP per MAC) nor than reading the model's
bytes once at peak memory bandwidth, so

    lower bound = max(MACs * 2 / peak FLOP/s, artifact bytes / bandwidth).

The bytes are the artifact's, so a quantized file's smaller weights lower the memory
term. Fully integer artifacts (int8, int8-float-io) do their MACs at the profile's
`peak_int8_gops` when it gives one; without it their compute term uses the fp32 peak
and the row says the estimate does not tell int8 from fp32 compute. An emulated
profile describes the board it emulates: it gets no estimate of its own.

Real latency is higher (runtime overhead, caches, activations, imperfect kernels),
often by 3-10x on small models: this is an ESTIMATE, labelled as one everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TargetProfile, list_profiles, load_profile
from .errors import ConfigError, ToolchainError
from .fileio import atomic_write_json
from .records import ESTIMATES_SCHEMA_VERSION, EstimatesDocument

METHOD = ("lower bound = max(MACs x 2 / peak op/s, artifact bytes / memory bandwidth) "
          "from the target profile's [hardware] facts (int8 artifacts at peak_int8_gops where the profile "
          "gives it, else at the fp32 peak), assuming the weights stream from DRAM once per "
          "inference (a model that fits in cache can beat the memory term); not a measurement")
INT8_COMPUTE_RECIPES = ("int8", "int8-float-io")  # integer-only kernels; dynamic and int16x8 are not
NO_INT8_PEAK = ("profile has no hardware.peak_int8_gops: compute at the fp32 peak, so this bound does not "
                "distinguish int8 from fp32 compute")


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
        rows.extend(_estimate_row(macs, artifact, profile) for artifact in artifacts)
    return {
        "schema_version": ESTIMATES_SCHEMA_VERSION,
        "kind": "estimate",
        "method": METHOD,
        "macs_per_sample": macs_per_sample,
        "batch_size": batch_size,
        "estimates": rows,
        "skipped": skipped,
    }


def _estimate_row(macs: int, artifact: dict[str, Any], profile: TargetProfile) -> dict[str, Any]:
    hw = profile.hardware
    int8 = artifact.get("recipe") in INT8_COMPUTE_RECIPES
    peak, precision = (hw.peak_int8_gops, "int8") if int8 and hw.peak_int8_gops else (hw.peak_gflops, "fp32")
    return {
        "artifact": artifact["name"],
        "target": profile.name,
        "recipe": artifact.get("recipe"),
        "peak_gflops": hw.peak_gflops,
        "compute_peak_gops": peak,
        "compute_precision": precision,
        "memory_bandwidth_gbs": hw.memory_bandwidth_gbs,
        "bytes": artifact["bytes"],
        "note": NO_INT8_PEAK if int8 and precision == "fp32" else None,
        **lower_bound_ms(macs, artifact["bytes"], peak, hw.memory_bandwidth_gbs),
    }


def _emulated_board(profile: TargetProfile, known: set[str]) -> str | None:
    """The real board's profile name when `profile` emulates a board that has its own profile."""
    board = profile.connection.board if profile.connection.kind == "emulated" else None
    return board if board in known else None


def unmeasured_profiles(
    measured: list[str], extra_dirs: list[Path] | None = None
) -> tuple[list[TargetProfile], list[dict[str, str]]]:
    """Every known profile the run did not benchmark on, and the ones that could not be read.

    An unreadable profile the run does not use must not fail the run: it is listed as skipped.
    """
    profiles, skipped = [], []
    known = list_profiles(extra_dirs)
    for name, path in sorted(known.items()):
        if name in measured:
            continue
        try:
            profile = load_profile(path)
        except ConfigError as e:
            skipped.append({"target": name, "reason": f"profile could not be read: {e}"})
            continue
        board = _emulated_board(profile, set(known))
        if board is None:
            profiles.append(profile)
        else:  # the same hardware facts: one estimate, under the real board's name
            where = "measured in this run" if board in measured else "see its estimate"
            skipped.append({"target": name, "reason": f"emulates {board}'s hardware ({where})"})
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
    doc = EstimatesDocument.model_validate(doc).to_json()  # typed: a wrong shape fails here, not in a reader
    atomic_write_json(run_dir / "estimates.json", doc)
    return doc

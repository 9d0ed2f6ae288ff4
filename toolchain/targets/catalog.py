"""Target profiles as the CLI shows them: a listing row each, and one profile in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import TargetProfile, list_profiles, load_profile


def where(profile: TargetProfile) -> str:
    c = profile.connection
    if c.kind == "local":
        return f"this machine ({c.python or 'current python'})"
    if c.kind != "ssh":
        return f"{c.kind} {getattr(c, 'board', None) or ''}".strip()
    if c.kind == "emulated":
        return f"this machine, emulated {c.board} (QEMU)"
    user = f"{c.user}@" if c.user else ""
    port = f":{c.port}" if c.port else ""
    return f"ssh {user}{c.host}{port}"


def runtime_summary(profile: TargetProfile) -> str:
    r = profile.runtime
    parts = [r.tflite_backend + (f" {r.tflite_version}" if r.tflite_version else "")]
    if r.onnxruntime_version:
        parts.append(f"onnxruntime {r.onnxruntime_version}")
    if r.max_onnx_opset:
        parts.append(f"opset <= {r.max_onnx_opset}")
    return ", ".join(parts)


def hardware_summary(profile: TargetProfile) -> str:
    h = profile.hardware
    parts = [p for p in (h.arch, f"{h.cores} cores" if h.cores else None,
                         f"{h.ram_mb / 1024:g} GB" if h.ram_mb else None,
                         f"{h.peak_gflops:g} GFLOP/s" if h.peak_gflops else None,
                         f"{h.memory_bandwidth_gbs:g} GB/s" if h.memory_bandwidth_gbs else None) if p]
    return ", ".join(parts) or "-"


def profile_rows(extra_dirs: list[Path] | None = None) -> list[dict[str, str]]:
    """Every known profile (shipped, then user folders); a broken one raises its ConfigError."""
    rows = []
    for name, path in sorted(list_profiles(extra_dirs).items()):
        profile = load_profile(path)
        rows.append({"name": name, "where": where(profile), "runtime": runtime_summary(profile),
                     "hardware": hardware_summary(profile), "threads": ",".join(map(str, profile.threads)),
                     "file": str(path)})
    return rows


def profile_document(name: str, extra_dirs: list[Path] | None = None) -> dict[str, Any]:
    from ..config import find_profile

    profile = find_profile(name, extra_dirs)
    return {"file": str(list_profiles(extra_dirs)[name]), **profile.model_dump(mode="json")}

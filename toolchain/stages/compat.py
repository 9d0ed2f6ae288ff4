"""Device check: run an artifact with a target's own runtime and compare it with this machine's.

The device runner runs in "infer" mode on the target: a local Python executable (for
example a venv with tflite-runtime 2.14 and numpy<2, what a Raspberry Pi installs) or an
SSH device. The artifact must load, run, and give the same outputs as on the host, within
the recipe's device tolerance (recipes.py, compared by compare.py like verify and the
emulator gate). A runtime that rejects the artifact (an op version it does not know, a
kernel without int16 support...) makes the export fail for that target, quoting the
runtime's own message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..artifact_info import describe, to_artifact_layout
from ..compare import Tolerance, compare_outputs, sample_count, tolerance_for, trim, whole_batches
from ..config import TargetProfile
from ..errors import ConfigError, StageError, TargetError
from ..targets import open_target
from ..targets.infer import RejectedError

SAMPLES = 8


def check_compat(
    artifact: str | Path,
    profile: TargetProfile,
    inputs: dict[str, np.ndarray],
    host_outputs: dict[str, np.ndarray],
    *,
    timeout: float = 300.0,
    recipe: str | None = None,
) -> dict[str, Any]:
    """Compatibility record of `artifact` on `profile` (local or SSH); never raises for a rejection.

    `inputs` are in the Keras layout, `host_outputs` are the artifact's outputs on the
    host for the same inputs (verify.run_artifact). `recipe` picks the device tolerance
    (default: the one in the artifact's metadata, else fp32).
    """
    artifact = Path(artifact).resolve()
    if profile.connection.kind == "emulated":
        raise ConfigError(
            f"target '{profile.name}': emulated targets are checked by the emulator gate "
            "(emulator.gate.gate_profile), not by check_compat"
        )
    info = describe(artifact)
    batch = (info["inputs"][0]["shape"][0] or 1) if info["inputs"] else 1
    count = min(SAMPLES, sample_count(inputs)) if inputs else 0
    inputs = whole_batches({k: v[:count] for k, v in inputs.items()}, batch)
    host_outputs = whole_batches(trim(host_outputs, count), batch)
    count = sample_count(inputs)
    recipe = recipe or info.get("metadata", {}).get("recipe") or "fp32"
    tolerance = tolerance_for(recipe, fmt=info["format"], against="host")
    target = open_target(profile)
    record: dict[str, Any] = {"target": profile.name, "kind": profile.connection.kind,
                              "python": getattr(target, "python", None),
                              "min_runtime_version": info.get("min_runtime_version")}
    runtime = _probe_runtime(target, artifact, timeout, record)
    try:
        _, device = target.infer(artifact, to_artifact_layout(inputs, info.get("metadata", {})), timeout)
    except RejectedError as e:
        reason = _runtime_message(e.reason)
        loads = e.kind == "inference_failed"  # loaded, then invoke failed
        summary = f"loads on {runtime}: " + (f"yes, but inference fails ({reason})" if loads else f"no ({reason})")
        return record | {"loads": loads, "runs": False, "verdict": "fail", "reason": reason,
                         "failures": [reason], "summary": summary}
    return record | _compared(device, host_outputs, tolerance, runtime, count)


def _probe_runtime(target: Any, artifact: Path, timeout: float, record: dict[str, Any]) -> str:
    """Which backend the target picks for `artifact`, recorded in `record`."""
    try:
        probe = target.run({"model": str(artifact), "mode": "probe"}, timeout)
    except RejectedError as e:
        raise TargetError(str(e)) from e
    env = probe["environment"]
    record["backend"], record["backend_version"] = env["backend"], env["backend_version"]
    return f"{env['backend']} {env['backend_version']}"


def _compared(device: dict[str, np.ndarray], host: dict[str, np.ndarray], tolerance: Tolerance,
              runtime: str, count: int) -> dict[str, Any]:
    metrics, failures = compare_outputs(host, device, tolerance)
    worst = max((m.get("max_abs_error", 0.0) for m in metrics.values()), default=0.0)
    summary = f"loads on {runtime}: yes" + (
        f", but outputs differ from the host ({'; '.join(failures)})" if failures else "")
    return {"loads": True, "runs": True, "verdict": "fail" if failures else "pass", "reason": None,
            "failures": failures, "samples": count, "max_abs_error_vs_host": worst, "outputs": metrics,
            "tolerance": tolerance.as_dict(), "summary": summary}


def raise_on_incompatible(artifact_name: str, results: dict[str, dict[str, Any]]) -> None:
    """Export fails for every target whose runtime rejected the artifact."""
    failed = {target: r for target, r in results.items() if r["verdict"] != "pass"}
    if failed:
        raise StageError(
            f"{artifact_name} is not usable on target(s) {', '.join(failed)}: "
            + " | ".join(f"{target}: {r['summary']}" for target, r in failed.items())
            + "; export with another recipe, or upgrade the runtime on the device"
        )


def _runtime_message(message: str) -> str:
    """The runtime's own words, without the runner's prefix and hint."""
    text = message.split(" (is the file complete")[0]
    if text.startswith("infer failed on ") or " cannot load " in text.split(":")[0]:
        text = text.split(": ", 1)[-1]
    return " ".join(text.split())[:600]

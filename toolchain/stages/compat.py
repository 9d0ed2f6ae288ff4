"""Target compatibility: load and invoke an artifact with the target's own Python and runtime.

The device runner runs in "infer" mode under the target profile's python executable (for
example a venv with tflite-runtime 2.14 and numpy<2, what a Raspberry Pi installs). The
artifact must load, run, and give the same outputs as on the host. A runtime that rejects
the artifact (an op version it does not know, a kernel without int16 support...) makes the
export fail for that target, quoting the runtime's own message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact_info import describe, to_artifact_layout
from ..config import TargetProfile
from ..errors import ConfigError, StageError, TargetError
from ..targets.local import RUNNER_PATH

# Device vs host outputs of the SAME artifact: only the kernels differ (another
# interpreter build, XNNPACK on or off), which reorders float additions: ~1e-6 of the
# output scale. 1e-4 leaves two orders of headroom while a wrong kernel gives errors near 1.
# Quantized outputs may also round one step apart, so one quantization step is added.
RELATIVE_TOLERANCE = 1e-4
# runner error types that mean "this runtime rejects this artifact" (others: setup problems)
REJECTIONS = ("load_failed", "inference_failed", "crashed")
SAMPLES = 8


def check_compat(
    artifact: str | Path,
    profile: TargetProfile,
    inputs: dict[str, np.ndarray],
    host_outputs: dict[str, np.ndarray],
    *,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Compatibility record of `artifact` on `profile`; never raises for a rejection.

    `inputs` are in the Keras layout, `host_outputs` are the artifact's outputs on the
    host for the same inputs (verify.run_artifact).
    """
    artifact = Path(artifact).resolve()
    if profile.connection.kind != "local":
        raise ConfigError(
            f"target '{profile.name}': compatibility checks run a local python executable; "
            f"connection kind '{profile.connection.kind}' is not supported for them"
        )
    python = profile.connection.python or sys.executable
    info = describe(artifact)
    batch = (info["inputs"][0]["shape"][0] or 1) if info["inputs"] else 1
    count = max(batch, min(SAMPLES, len(next(iter(inputs.values())))) // batch * batch)
    # whole batches only; fewer samples than one batch are repeated (outputs likewise)
    inputs = to_artifact_layout(_take(inputs, count), info.get("metadata", {}))
    host_outputs = _take(host_outputs, count)
    request: dict[str, Any] = {"model": str(artifact), "mode": "infer"}
    if artifact.suffix == ".tflite" and profile.runtime.tflite_backend != "auto":
        request["backend"] = profile.runtime.tflite_backend
    record: dict[str, Any] = {
        "target": profile.name,
        "python": python,
        "min_runtime_version": info.get("min_runtime_version"),
    }
    with tempfile.TemporaryDirectory(prefix="edge-toolchain-compat-") as work:
        probe = _run_runner(python, {**request, "mode": "probe"}, profile.name, timeout)
        if not probe.get("ok"):
            raise TargetError(f"target '{profile.name}': {probe['error']['message']}")
        env = probe["environment"]
        record["backend"], record["backend_version"] = env["backend"], env["backend_version"]
        runtime = f"{env['backend']} {env['backend_version']}"
        np.savez(Path(work) / "inputs.npz", **inputs)
        request |= {"inputs": str(Path(work) / "inputs.npz"), "outputs": str(Path(work) / "outputs.npz")}
        answer = _run_runner(python, request, profile.name, timeout)
        if not answer.get("ok"):
            reason = _runtime_message(answer["error"]["message"])
            loads = answer["error"]["type"] == "inference_failed"  # loaded, then invoke failed
            summary = f"loads on {runtime}: " + (f"yes, but inference fails ({reason})" if loads
                                                  else f"no ({reason})")
            return record | {"loads": loads, "runs": False, "verdict": "fail", "reason": reason,
                             "failures": [reason], "summary": summary}
        with np.load(request["outputs"]) as loaded:
            device = {k: loaded[k] for k in loaded.files}
    failures, max_error = _compare(device, host_outputs,
                                   {o["name"]: o for o in answer["io"]["outputs"]})
    verdict = "fail" if failures else "pass"
    summary = f"loads on {runtime}: yes" + (
        f", but outputs differ from the host ({'; '.join(failures)})" if failures else "")
    return record | {"loads": True, "runs": True, "verdict": verdict, "reason": None, "failures": failures,
                     "samples": count, "max_abs_error_vs_host": max_error, "summary": summary}


def raise_on_incompatible(artifact_name: str, results: dict[str, dict[str, Any]]) -> None:
    """Export fails for every target whose runtime rejected the artifact."""
    failed = {target: r for target, r in results.items() if r["verdict"] != "pass"}
    if failed:
        raise StageError(
            f"{artifact_name} is not usable on target(s) {', '.join(failed)}: "
            + " | ".join(f"{target}: {r['summary']}" for target, r in failed.items())
            + "; export with another recipe, or upgrade the runtime on the device"
        )


def _take(arrays: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {k: np.resize(v, (count, *v.shape[1:])) for k, v in arrays.items()}


def _run_runner(python: str, request: dict[str, Any], target: str, timeout: float) -> dict[str, Any]:
    try:
        done = subprocess.run([python, str(RUNNER_PATH), "-"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise TargetError(
            f"target '{target}': python executable not found: {python}; "
            "fix connection.python in the target profile"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise TargetError(f"target '{target}': the runner did not finish within {timeout:g} s") from e
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        # a native crash while loading (segfault, abort) is a rejection too, quote stderr
        tail = " ".join(done.stderr.strip().splitlines()[-3:])[:600]
        if done.returncode < 0 or done.returncode == 1:
            return {"ok": False, "error": {"type": "crashed", "message":
                    f"the runtime crashed (exit {done.returncode}): {tail or 'no output'}"}}
        raise TargetError(f"target '{target}': the runner exited {done.returncode} without an answer: {tail}")
    if not answer.get("ok") and answer.get("error", {}).get("type") not in REJECTIONS:
        raise TargetError(f"target '{target}': {answer['error']['message']} [{answer['error']['type']}]")
    return answer


def _runtime_message(message: str) -> str:
    """The runtime's own words, without the runner's prefix and hint."""
    text = message.split(" (is the file complete")[0]
    if text.startswith("infer failed on ") or " cannot load " in text.split(":")[0]:
        text = text.split(": ", 1)[-1]
    return " ".join(text.split())[:600]


def _compare(device: dict[str, np.ndarray], host: dict[str, np.ndarray],
             io: dict[str, dict[str, Any]]) -> tuple[list[str], float]:
    failures = []
    worst = 0.0
    for name, expected in host.items():
        if name not in device:
            failures.append(f"output '{name}' missing on the device (it has {sorted(device)})")
            continue
        got = device[name].astype(np.float64)
        if got.shape != expected.shape:
            failures.append(f"output '{name}': shape {list(got.shape)} != host {list(expected.shape)}")
            continue
        error = float(np.max(np.abs(got - expected))) if got.size else 0.0
        worst = max(worst, error)
        quant = io.get(name, {}).get("quantization") or {}
        limit = RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
        limit += float(quant.get("scale") or 0.0)
        if not np.isfinite(error) or error > limit:
            failures.append(f"output '{name}': max difference from the host {error:.3g} > {limit:.3g}")
    return failures, worst

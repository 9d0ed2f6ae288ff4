"""Compatibility gate and golden outputs on the emulated Pi.

Every artifact is loaded and invoked by the Pi's own aarch64 runtime build (the target's
runtime for .tflite, onnxruntime for .onnx); its outputs are compared with the host's and
can be saved as golden files for on-device tests. A load error, a wrong result, a crash
(signal) fails the artifact on that target, with the runtime's message; no answer within
the timeout is its own verdict (TIMEOUT: slow emulation says nothing about the artifact).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..compare import Tolerance, compare_outputs, tolerance_for
from ..config import RuntimeSection, TargetProfile
from ..errors import InputError, ToolchainError
from ..fileio import atomic_output
from ..recipes import all_recipe_names
from .run import run_runner
from .stack import BOARDS, RUNTIMES, Stack, default_cache_dir, runtime_for
from .timeouts import artifact_macs, default_timeout

GATE_SCHEMA_VERSION = "1.0"

# Emulated aarch64 runtime vs the host's x86 runtime: the recipe's device tolerance
# (recipes.py, with the measurements behind each number), compared by compare.py.
GATE_TOLERANCES: dict[str, Tolerance] = {name: tolerance_for(name, against="host") for name in all_recipe_names()}

# Runtime messages a converter setting avoids: (pattern, advice; {0}, {1} are the match's groups).
KNOWN_FIXES: tuple[tuple[str, str], ...] = (
    (r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'",
     "the converter emitted {0} v{1}, newer than this runtime knows; use the fp32 or fp16 recipe, keep "
     "the layer that makes it in float (recipe int8-float-io with export.tflite.keep_float), or run "
     "ai-edge-litert on the device"),
    (r"INT16|int16|got 7\.",
     "this runtime has no int16 kernel for that op (int16x8 recipe); use the int8 recipe, or keep the "
     "layer in float (int8-float-io with export.tflite.keep_float)"),
    (r"Encountered unresolved custom op: Flex",
     "the artifact uses Flex (TF Select) ops, which tflite-runtime does not link; convert with "
     "supported_ops = [TFLITE_BUILTINS] only (leave export.tflite.allow_flex off)"),
)


def tolerance_for_recipe(recipe: str, fmt: str | None = None) -> Tolerance:
    return tolerance_for(recipe, fmt=fmt, against="host")


def advice_for(message: str) -> str | None:
    for pattern, advice in KNOWN_FIXES:
        found = re.search(pattern, message)
        if found:
            return advice.format(*found.groups())
    return None


def golden_path(folder: Path, artifact: Path, board: str, runtime: str) -> Path:
    return folder / f"{artifact.name}.{board}.{runtime}.golden.npz"


def gate_artifact(
    stack: Stack,
    artifact: Path,
    board: str,
    *,
    tflite_backend: str = "tflite_runtime",
    inputs: dict[str, np.ndarray],
    host_outputs: dict[str, np.ndarray] | None,
    tolerance: Tolerance,
    timeout: float | None = None,
    golden_dir: Path | None = None,
    device: RuntimeSection | None = None,
    heartbeat: Callable[[float, float], None] | None = None,
) -> dict[str, Any]:
    """One artifact on one emulated board: a verdict record, never an exception for a failure.

    Verdicts: pass, fail (load error, crash, wrong outputs, an opset newer than the device's
    onnxruntime) or timeout (no verdict: the emulation was slower than the timeout, which
    defaults to one scaled from the artifact's MACs). `device` is the board's runtime as its
    target profile declares it: where the emulated runtime differs, the record says so.
    """
    if board not in BOARDS:
        raise InputError(f"no emulated board '{board}'; choose one of {', '.join(BOARDS)}")
    artifact = Path(artifact).resolve()
    runtime = runtime_for(artifact, tflite_backend)
    stack.require(board, runtime)
    macs = artifact_macs(artifact)
    samples = len(next(iter(inputs.values()))) if inputs else 1
    record: dict[str, Any] = {
        "board": board,
        "qemu_cpu": BOARDS[board].qemu_cpu,
        "runtime": runtime,
        "backend": "onnxruntime" if artifact.suffix == ".onnx" else RUNTIMES[runtime].backend,
        "timing": "emulated",
        "macs_per_sample": macs,
        "timeout_seconds": timeout or default_timeout(macs, samples),
    }
    refusal = _opset_refusal(artifact, device)
    if refusal is not None:
        return record | {"verdict": "fail", "failure": "opset", "failures": [refusal], "signal": None,
                         "loads": False, "runs": False, "reason": refusal, "summary": refusal,
                         "emulated_seconds": 0.0}
    with tempfile.TemporaryDirectory(prefix="edge-gate.") as scratch:
        inputs_file = Path(scratch) / "inputs.npz"
        outputs_file = Path(scratch) / "outputs.npz"
        np.savez(inputs_file, **inputs)
        request = {"model": str(artifact), "mode": "infer", "inputs": str(inputs_file),
                   "outputs": str(outputs_file)}
        limit = record["timeout_seconds"]
        run = run_runner(stack, board, runtime, request, limit,
                         None if heartbeat is None else lambda seconds: heartbeat(seconds, limit))
        record["emulated_seconds"] = run.seconds
        failure = run.failure()
        if failure is not None:
            return record | _failure_verdict(failure, run.signal, macs)
        with np.load(outputs_file) as data:
            outputs = {name: data[name] for name in data.files}
    environment = (run.answer or {}).get("environment", {})
    record |= {"backend_version": environment.get("backend_version"), "numpy": environment.get("numpy")}
    record |= _outputs_verdict(record, host_outputs, outputs, tolerance, device)
    if golden_dir is not None and not record["failures"]:
        record["golden"] = _save_golden(golden_dir, artifact, board, runtime, inputs, outputs)
    return record


def _outputs_verdict(record: dict[str, Any], host_outputs: dict[str, np.ndarray] | None,
                     outputs: dict[str, np.ndarray], tolerance: Tolerance,
                     device: RuntimeSection | None) -> dict[str, Any]:
    """It loads and runs: pass, or fail when the outputs differ from the host's."""
    verdict: dict[str, Any] = {}
    if host_outputs is None:
        metrics, failures = {}, []
    else:
        metrics, failures = compare_outputs(host_outputs, outputs, tolerance)
        verdict["tolerance"] = {k: v for k, v in vars(tolerance).items() if v is not None}
    gap = _runtime_gap(record, device)
    where = f"emulated {record['board']} ({record['backend']})"
    return verdict | {
        "verdict": "fail" if failures else "pass", "failure": "mismatch" if failures else None,
        "failures": failures, "outputs": metrics, "loads": True, "runs": True,
        "reason": "; ".join(failures) or None, "runtime_gap": gap,
        "summary": f"{where} {record['backend_version']}: loads and runs"
        + (f", but outputs differ from the host ({'; '.join(failures)})" if failures else "")
        + (f" [{gap}]" if gap else ""),
    }


def _failure_verdict(failure: dict[str, str], signal: str | None, macs: int | None) -> dict[str, Any]:
    """A runtime that failed is a fail; one that ran out of time has no verdict yet."""
    if failure["kind"] == "timeout":
        message = (f"{failure['message']}; TIMEOUT, not a failure: emulation is far slower than the board, so "
                   f"this says nothing about the artifact ({f'{macs:,} MACs per sample' if macs else 'MACs unknown'})"
                   "; give it longer with --timeout (or timeout_seconds in the target profile's [bench])")
        return {"verdict": "timeout", "failure": "timeout", "failures": [message], "signal": None, "loads": None,
                "runs": None, "reason": message, "summary": message}
    advice = advice_for(failure["message"])
    message = " ".join(failure["message"].split()) + (f" (fix: {advice})" if advice else "")
    loads = failure["kind"] == "inference_failed"  # loaded, then invoke failed
    return {"verdict": "fail", "failure": failure["kind"], "failures": [message], "signal": signal, "loads": loads,
            "runs": False, "reason": message, "summary": message}


def _opset_refusal(artifact: Path, device: RuntimeSection | None) -> str | None:
    """An ONNX opset newer than the device's onnxruntime: the emulated (newer) one would run it."""
    if artifact.suffix != ".onnx" or device is None or device.max_onnx_opset is None:
        return None
    from ..artifact_info import describe

    opset = describe(artifact).get("opset", {}).get("ai.onnx")
    if opset is None or opset <= device.max_onnx_opset:
        return None
    version = f"onnxruntime {device.onnxruntime_version}" if device.onnxruntime_version else "onnxruntime"
    return (f"{artifact.name} uses ONNX opset {opset}, but the device's {version} runs opset <= "
            f"{device.max_onnx_opset} (target profile); export it with opset {device.max_onnx_opset} "
            f"(--opset {device.max_onnx_opset}, or export.onnx.opset)")


def _runtime_gap(record: dict[str, Any], device: RuntimeSection | None) -> str | None:
    """Where the emulated runtime is not the one the device profile declares, say so in the verdict."""
    if device is None:
        return None
    if record["backend"] == "onnxruntime":
        wanted, version = "onnxruntime", device.onnxruntime_version
    else:
        wanted, version = device.tflite_backend, device.tflite_version
    if version is None or wanted == "auto" or (wanted, version) == (record["backend"], record["backend_version"]):
        return None
    checked = (f"; the opset was checked against the device's (<= {device.max_onnx_opset})"
               if wanted == "onnxruntime" and device.max_onnx_opset else "")
    return (f"emulated with {record['backend']} {record['backend_version']}, the device profile says {wanted} "
            f"{version}: kernels and numerics are the emulated version's{checked}")


def _save_golden(folder: Path, artifact: Path, board: str, runtime: str, inputs: dict[str, np.ndarray],
                 outputs: dict[str, np.ndarray]) -> str:
    path = golden_path(Path(folder), artifact, board, runtime)
    with atomic_output(path, suffix=".npz") as tmp:
        np.savez(tmp, **{f"input:{k}": v for k, v in inputs.items()},
                 **{f"output:{k}": v for k, v in outputs.items()})
    return str(path.relative_to(path.parent.parent))  # "golden/<file>" in a run dir


def gate_profile(
    artifact: Path,
    profile: TargetProfile,
    inputs: dict[str, np.ndarray],
    host_outputs: dict[str, np.ndarray] | None,
    *,
    recipe: str,
    timeout: float | None = None,
    golden_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """The gate for a target profile of kind "emulated": inputs in the Keras layout."""
    from ..artifact_info import describe, to_artifact_layout

    if profile.connection.kind != "emulated" or profile.connection.board is None:
        raise InputError(f"target '{profile.name}' is not an emulated target (connection.kind = 'emulated')")
    metadata = describe(artifact).get("metadata", {})
    record = gate_artifact(
        Stack(Path(cache_dir or default_cache_dir()).resolve()), artifact, profile.connection.board,
        tflite_backend=profile.runtime.tflite_backend, inputs=to_artifact_layout(inputs, metadata),
        host_outputs=host_outputs, tolerance=tolerance_for_recipe(recipe, Path(artifact).suffix[1:]),
        timeout=timeout or profile.bench.timeout_seconds, golden_dir=golden_dir, device=profile.runtime,
    )
    return {"target": profile.name, **record}


def check_files(
    artifacts: list[Path],
    board: str,
    runtime: str,
    *,
    inputs: Path | None = None,
    recipe: str | None = None,
    golden_dir: Path | None = None,
    timeout: float | None = None,
    cache_dir: Path | None = None,
    samples: int = 8,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
    heartbeat: Callable[[str, float, float], None] | None = None,
) -> dict[str, Any]:
    """`emulator check`: each artifact on the emulated board vs the host's runtime (x86 build).

    `timeout` None scales each artifact's from its MACs; `on_result(name, record)` is called as
    each artifact finishes, `heartbeat(name, seconds, timeout)` while a long one runs.
    """
    if board not in BOARDS:
        raise InputError(f"--target must be one of {', '.join(BOARDS)}, got {board!r}")
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    stack = Stack(Path(cache_dir or default_cache_dir()).resolve())
    device = _device_runtime(board)
    results = {}
    for artifact in artifacts:
        name = Path(artifact).name
        record = _check_one(stack, Path(artifact), board, runtime, inputs=inputs, recipe=recipe,
                            golden_dir=golden_dir, timeout=timeout, samples=samples, device=device,
                            heartbeat=None if heartbeat is None else _named(heartbeat, name))
        results[name] = record
        if on_result is not None:
            on_result(name, record)
    return {"schema_version": GATE_SCHEMA_VERSION, "board": board, "runtime": runtime,
            "device_profile": board if device is not None else None, "artifacts": results}


def _named(heartbeat: Callable[[str, float, float], None], name: str) -> Callable[[float, float], None]:
    return lambda seconds, limit: heartbeat(name, seconds, limit)


def _device_runtime(board: str) -> RuntimeSection | None:
    """The runtime the board's own target profile (targets/<board>.toml) declares, if there is one."""
    from ..config import find_profile
    from ..errors import ConfigError

    try:
        return find_profile(board).runtime
    except ConfigError:
        return None


def _check_one(stack: Stack, artifact: Path, board: str, runtime: str, *, inputs: Path | None, recipe: str | None,
               golden_dir: Path | None, timeout: float | None, samples: int, device: RuntimeSection | None,
               heartbeat: Callable[[float, float], None] | None) -> dict[str, Any]:
    from ..artifact_info import describe, to_artifact_layout
    from ..stages.verify import run_artifact

    info = describe(artifact)
    stack.require(board, runtime_for(artifact, runtime))
    data = _load_inputs(inputs, info, samples) if inputs else _random_inputs(info, samples)
    try:
        host, host_error = run_artifact(artifact, data), None
    except ToolchainError as e:  # the host cannot run it: still see what the Pi's runtime does
        host, host_error = None, str(e)
    chosen = recipe or _recipe_from_name(artifact)
    record = gate_artifact(
        stack, artifact, board, tflite_backend=runtime, inputs=to_artifact_layout(data, info.get("metadata", {})),
        host_outputs=host, tolerance=tolerance_for_recipe(chosen, artifact.suffix[1:]), timeout=timeout,
        golden_dir=golden_dir,
        device=device, heartbeat=heartbeat,
    ) | {"recipe": chosen, "host_error": host_error}
    if host_error and record["verdict"] == "pass":
        message = f"the host runtime cannot run it, so outputs were not compared: {host_error}"
        record |= {"verdict": "fail", "failure": "host_error", "failures": [message],
                   "summary": record["summary"] + f"; {message}"}
    return record


def _recipe_from_name(path: Path) -> str:
    parts = path.name.split(".")
    return parts[-2] if len(parts) >= 3 and parts[-2] in GATE_TOLERANCES else "fp32"


def _load_inputs(path: Path, info: dict[str, Any], samples: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as e:
        raise InputError(f"--inputs {path}: cannot read it as .npz ({e})") from e
    missing = [t["name"] for t in info["inputs"] if t["name"] not in arrays]
    if missing:
        raise InputError(f"--inputs {path} has no array for input(s) {', '.join(missing)} "
                         f"(it has: {', '.join(sorted(arrays)) or 'nothing'})")
    return {t["name"]: arrays[t["name"]][:samples] for t in info["inputs"]}


def _random_inputs(info: dict[str, Any], samples: int) -> dict[str, np.ndarray]:
    """Floats in [0, 1) in the Keras layout (the runner quantizes them); small ints for int inputs."""
    rng = np.random.default_rng(0)
    arrays = {}
    for tensor in info["inputs"]:
        shape = [d or 1 for d in tensor["shape"][1:]]
        count = samples * (tensor["shape"][0] or 1)
        quantized = tensor.get("quantization") is not None
        if tensor["dtype"].startswith(("int", "uint")) and not quantized:
            arrays[tensor["name"]] = rng.integers(0, 10, size=(count, *shape)).astype(tensor["dtype"])
        else:
            arrays[tensor["name"]] = rng.uniform(0, 1, size=(count, *shape)).astype(np.float32)
    return arrays

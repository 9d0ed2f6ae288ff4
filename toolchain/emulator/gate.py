"""Compatibility gate and golden outputs on the emulated Pi.

Every artifact is loaded and invoked by the Pi's own aarch64 runtime build (the target's
runtime for .tflite, onnxruntime for .onnx); its outputs are compared with the host's and
can be saved as golden files for on-device tests. A load error, a wrong result, a crash
(signal) or a hang (timeout) fails the artifact on that target, with the runtime's message.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..compare import Tolerance, compare_outputs, tolerance_for
from ..config import TargetProfile
from ..errors import InputError, ToolchainError
from ..fileio import atomic_output
from ..recipes import all_recipe_names
from .run import run_runner
from .stack import BOARDS, RUNTIMES, Stack, default_cache_dir, runtime_for

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
    timeout: float = 300.0,
    golden_dir: Path | None = None,
) -> dict[str, Any]:
    """One artifact on one emulated board: a verdict record, never an exception for a failure."""
    if board not in BOARDS:
        raise InputError(f"no emulated board '{board}'; choose one of {', '.join(BOARDS)}")
    artifact = Path(artifact).resolve()
    runtime = runtime_for(artifact, tflite_backend)
    stack.require(board, runtime)
    record: dict[str, Any] = {
        "board": board,
        "qemu_cpu": BOARDS[board].qemu_cpu,
        "runtime": runtime,
        "backend": "onnxruntime" if artifact.suffix == ".onnx" else RUNTIMES[runtime].backend,
        "timing": "emulated",
    }
    with tempfile.TemporaryDirectory(prefix="edge-gate.") as scratch:
        inputs_file = Path(scratch) / "inputs.npz"
        outputs_file = Path(scratch) / "outputs.npz"
        np.savez(inputs_file, **inputs)
        request = {"model": str(artifact), "mode": "infer", "inputs": str(inputs_file),
                   "outputs": str(outputs_file)}
        run = run_runner(stack, board, runtime, request, timeout)
        record["emulated_seconds"] = run.seconds
        failure = run.failure()
        where = f"emulated {board} ({record['backend']})"
        if failure is not None:
            advice = advice_for(failure["message"])
            message = " ".join(failure["message"].split()) + (f" (fix: {advice})" if advice else "")
            loads = failure["kind"] == "inference_failed"  # loaded, then invoke failed
            return record | {"verdict": "fail", "failure": failure["kind"], "failures": [message],
                             "signal": run.signal, "loads": loads, "runs": False, "reason": message,
                             "summary": message}
        with np.load(outputs_file) as data:
            outputs = {name: data[name] for name in data.files}
    environment = (run.answer or {}).get("environment", {})
    record["backend_version"] = environment.get("backend_version")
    record["numpy"] = environment.get("numpy")
    if host_outputs is None:
        metrics, failures = {}, []
    else:
        metrics, failures = compare_outputs(host_outputs, outputs, tolerance)
        record["tolerance"] = {k: v for k, v in vars(tolerance).items() if v is not None}
    record |= {"verdict": "fail" if failures else "pass", "failure": "mismatch" if failures else None,
               "failures": failures, "outputs": metrics, "loads": True, "runs": True,
               "reason": "; ".join(failures) or None,
               "summary": f"{where} {record['backend_version']}: loads and runs"
               + (f", but outputs differ from the host ({'; '.join(failures)})" if failures else "")}
    if golden_dir is not None and not failures:
        path = golden_path(Path(golden_dir), artifact, board, runtime)
        with atomic_output(path, suffix=".npz") as tmp:
            np.savez(tmp, **{f"input:{k}": v for k, v in inputs.items()},
                     **{f"output:{k}": v for k, v in outputs.items()})
        record["golden"] = str(path.relative_to(path.parent.parent))  # "golden/<file>" in a run dir
    return record


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
        timeout=timeout or profile.bench.timeout_seconds or 300.0, golden_dir=golden_dir,
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
    timeout: float = 300.0,
    cache_dir: Path | None = None,
    samples: int = 8,
) -> dict[str, Any]:
    """`emulator check`: each artifact on the emulated board vs the host's runtime (x86 build)."""
    from ..artifact_info import describe, to_artifact_layout
    from ..stages.verify import run_artifact

    if board not in BOARDS:
        raise InputError(f"--target must be one of {', '.join(BOARDS)}, got {board!r}")
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    stack = Stack(Path(cache_dir or default_cache_dir()).resolve())
    results = {}
    for artifact in artifacts:
        info = describe(artifact)
        stack.require(board, runtime_for(Path(artifact), runtime))
        data = _load_inputs(inputs, info, samples) if inputs else _random_inputs(info, samples)
        try:
            host, host_error = run_artifact(artifact, data), None
        except ToolchainError as e:  # the host cannot run it: still see what the Pi's runtime does
            host, host_error = None, str(e)
        chosen = recipe or _recipe_from_name(Path(artifact))
        record = gate_artifact(
            stack, Path(artifact), board, tflite_backend=runtime,
            inputs=to_artifact_layout(data, info.get("metadata", {})), host_outputs=host,
            tolerance=tolerance_for_recipe(chosen, Path(artifact).suffix[1:]), timeout=timeout,
            golden_dir=golden_dir,
        ) | {"recipe": chosen, "host_error": host_error}
        if host_error and record["verdict"] == "pass":
            message = f"the host runtime cannot run it, so outputs were not compared: {host_error}"
            record |= {"verdict": "fail", "failure": "host_error", "failures": [message],
                       "summary": record["summary"] + f"; {message}"}
        results[Path(artifact).name] = record
    return {"schema_version": GATE_SCHEMA_VERSION, "board": board, "runtime": runtime, "artifacts": results}


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

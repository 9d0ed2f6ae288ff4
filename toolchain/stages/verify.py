"""Run each artifact in its real runtime and compare it with the Keras model.

Checks names, then shapes, then values; every failing output is collected before a
single ParityError is raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..artifact_info import to_artifact_layout
from ..compare import Tolerance, batches, compare_outputs, sample_count, tolerance_for
from ..data import Dataset
from ..errors import ModelLoadError, ParityError

__all__ = ["Tolerance", "compare_outputs", "raise_on_failures", "run_artifact", "tolerance_for", "verify_artifact"]


def run_artifact(path: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of a .tflite (ai-edge-litert) or .onnx (onnxruntime) file, sample by batch."""
    path = Path(path)
    if path.suffix == ".tflite":
        return _run_tflite(path, inputs)
    if path.suffix == ".onnx":
        return _run_onnx(path, inputs)
    raise ModelLoadError(f"cannot verify {path}: expected a .tflite or .onnx file")


def _quantize(array: np.ndarray, dtype: np.dtype, quant: tuple[float, int]) -> np.ndarray:
    scale, zero_point = quant
    if dtype.kind in "iu" and scale and array.dtype.kind == "f":
        limits = np.iinfo(dtype)
        array = np.clip(np.round(array / scale + zero_point), limits.min, limits.max)
    return array.astype(dtype)


def _dequantize(array: np.ndarray, quant: tuple[float, int]) -> np.ndarray:
    scale, zero_point = quant
    if array.dtype.kind in "iu" and scale:
        return (array.astype(np.float32) - zero_point) * scale
    return array


def _run_tflite(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    except Exception as e:
        raise ModelLoadError(f"{path}: ai-edge-litert cannot load it: {e}") from e
    signatures = interpreter.get_signature_list()
    if signatures:
        runner = interpreter.get_signature_runner(sorted(signatures)[0])
        in_details = runner.get_input_details()
        out_details = runner.get_output_details()
        del runner  # a live SignatureRunner makes invoke() refuse to run
    else:
        in_details = {d["name"]: d for d in interpreter.get_input_details()}
        out_details = {d["name"]: d for d in interpreter.get_output_details()}
    _check_input_names(path, list(in_details), list(inputs))
    batch = int(next(iter(in_details.values()))["shape"][0]) or 1
    count = sample_count(inputs)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in out_details}
    for chunk in batches({name: inputs[name] for name in in_details}, batch):
        for name, detail in in_details.items():
            interpreter.set_tensor(detail["index"], _quantize(chunk[name], np.dtype(detail["dtype"]),
                                                              detail["quantization"]))
        interpreter.invoke()
        for name, detail in out_details.items():
            collected[name].append(_dequantize(interpreter.get_tensor(detail["index"]).copy(), detail["quantization"]))
    return {name: np.concatenate(parts)[:count] for name, parts in collected.items()}


def _run_onnx(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelLoadError(f"{path}: onnxruntime cannot load it: {e}") from e
    in_nodes = session.get_inputs()
    _check_input_names(path, [n.name for n in in_nodes], list(inputs))
    inputs = to_artifact_layout(inputs, session.get_modelmeta().custom_metadata_map)
    first_dim = in_nodes[0].shape[0]
    count = sample_count(inputs)
    batch = first_dim if isinstance(first_dim, int) and first_dim > 0 else min(count, 64)
    out_names = [o.name for o in session.get_outputs()]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in out_names}
    types = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
             "tensor(float16)": np.float16, "tensor(int32)": np.int32, "tensor(int64)": np.int64}
    for chunk in batches({node.name: inputs[node.name] for node in in_nodes}, batch):
        feed = {node.name: chunk[node.name].astype(types.get(node.type, chunk[node.name].dtype)) for node in in_nodes}
        for name, value in zip(out_names, session.run(out_names, feed), strict=True):
            collected[name].append(np.asarray(value))
    return {name: np.concatenate(parts)[:count] for name, parts in collected.items()}


def _check_input_names(path: Path, model_names: list[str], data_names: list[str]) -> None:
    missing = sorted(set(model_names) - set(data_names))
    if missing:
        raise ParityError(
            f"{path}: artifact inputs {missing} are not inputs of the reference model "
            f"({sorted(data_names)}); the converter renamed them",
            [f"input name {m}" for m in missing],
        )


def verify_artifact(
    artifact: str | Path,
    reference_outputs: dict[str, np.ndarray],
    data: Dataset,
    tolerance: Tolerance,
) -> dict[str, Any]:
    """Verdict record for one artifact; never raises for a parity failure (see raise_on_failures)."""
    try:
        outputs = run_artifact(artifact, data.inputs)
    except ParityError as e:
        return {"verdict": "fail", "failures": e.failures or [str(e)], "outputs": {}}
    metrics, failures = compare_outputs(reference_outputs, outputs, tolerance, data.labels)
    return {
        "verdict": "fail" if failures else "pass",
        "samples": len(data),
        "tolerance": tolerance.as_dict(),
        "outputs": metrics,
        "failures": failures,
    }


def raise_on_failures(results: dict[str, dict[str, Any]], reports: dict[str, str] | None = None) -> None:
    """One ParityError for every failed artifact; `reports` names per-layer error reports."""
    failed = {name: r for name, r in results.items() if r["verdict"] != "pass"}
    if not failed:
        return
    reports = reports or {}
    lines = [
        f"{name}: {'; '.join(r['failures'])}"
        + (f" (per-layer error report: {reports[name]})" if name in reports else "")
        for name, r in failed.items()
    ]
    raise ParityError(
        f"{len(failed)} artifact(s) failed verification: " + " | ".join(lines),
        [line for r in failed.values() for line in r["failures"]],
    )

"""Run each artifact in its real runtime and compare it with the Keras model.

Checks names, then shapes, then values; every failing output is collected before a
single ParityError is raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact_info import to_artifact_layout
from ..data import Dataset
from ..errors import ConfigError, ModelLoadError, ParityError
from ..native_chatter import filtered_native_stderr

# Default tolerances per recipe.
# fp32: the converters fuse ops (conv+bias+activation) and use other GEMM kernels, which
# reorders float additions; measured differences are ~1e-6 of the output scale. 1e-4 of
# the output scale leaves two orders of headroom, while a wrong op or weight gives errors
# near 1. Cosine 0.9999 and top-1 agreement 99% catch the same bugs on classifiers whose
# outputs are near a tie (a tie may flip on a 1e-6 difference, hence not 100%).
#
# Quantized recipes are never compared element-wise (a quantization step is ~1/256 of a
# tensor's range, so max error says little); they get cosine, top-1 agreement and, with
# labels, the accuracy drop vs Keras fp32, which is what a deployment cares about.
# fp16: 11-bit mantissas give ~5e-4 relative error per weight; TFLite dequantizes fp16
# weights to float32 at load, ONNX computes in float16, so errors reach ~1e-3 of the
# output scale; 1e-2 leaves headroom, cosine 0.999 and 98% agreement allow near-tie flips,
# and a 0.5 pt accuracy drop is a real regression for a recipe sold as lossless.
# dynamic: int8 weights, activations re-quantized per inference; measured cosine >= 0.999
# on the demo digits CNN, so 0.99 flags a broken layer but not rounding.
# int8 / int8-float-io: the budget is 1.0 pt on TFLite, 1.5 pt on ONNX (QDQ keeps a
# float-input Quantize and per-tensor activation scales chosen by ORT's calibrator).
# min_cosine is the worst single sample: on the demo digits CNN one near-tie softmax
# sample reaches 0.93 under ONNX QDQ with top-1 unchanged (mean 0.9996), while a wrong
# input scale or zero point gives ~0.1-0.5 on most samples; 0.9 separates the two. 90%
# agreement allows random-weight models' near-tie outputs and still catches such mistakes
# (agreement near chance).
# int16x8: 16-bit activations are ~256x finer than int8: cosine 0.999, 0.5 pt.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_error": 1e-4, "min_cosine": 0.9999, "min_top1_agreement": 0.99},
    "fp16": {"max_abs_error": 1e-2, "min_cosine": 0.999, "min_top1_agreement": 0.98,
             "max_accuracy_drop": 0.005},
    "dynamic": {"min_cosine": 0.99, "min_top1_agreement": 0.95, "max_accuracy_drop": 0.01},
    "int8": {"min_cosine": 0.9, "min_top1_agreement": 0.9, "max_accuracy_drop": 0.01},
    "int8-float-io": {"min_cosine": 0.9, "min_top1_agreement": 0.9, "max_accuracy_drop": 0.01},
    "int16x8": {"min_cosine": 0.999, "min_top1_agreement": 0.98, "max_accuracy_drop": 0.005},
    "onnx:int8": {"min_cosine": 0.9, "min_top1_agreement": 0.9, "max_accuracy_drop": 0.015},
}


@dataclass
class Tolerance:
    max_abs_error: float | None = None  # relative to max(1, max |reference|) per output
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None  # vs the Keras model on labelled data, 0.01 = 1 pt


def tolerance_for(recipe: str, overrides: dict[str, Any] | None = None, fmt: str | None = None) -> Tolerance:
    """Defaults for `recipe` (a 'format:recipe' entry wins), then the config's overrides."""
    if recipe not in DEFAULT_TOLERANCES:
        raise ConfigError(f"no default tolerances for recipe {recipe!r}")
    values = dict(DEFAULT_TOLERANCES.get(f"{fmt}:{recipe}", DEFAULT_TOLERANCES[recipe]))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return Tolerance(**values)


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
        with filtered_native_stderr():
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
    count = len(next(iter(inputs.values())))
    collected: dict[str, list[np.ndarray]] = {name: [] for name in out_details}
    for start in range(0, count, batch):
        for name, detail in in_details.items():
            chunk = inputs[name][start:start + batch]
            if len(chunk) < batch:  # pad the last batch, drop the padding below
                pad = np.repeat(chunk[-1:], batch - len(chunk), axis=0)
                chunk = np.concatenate([chunk, pad])
            chunk = _quantize(chunk, np.dtype(detail["dtype"]), detail["quantization"])
            interpreter.set_tensor(detail["index"], chunk)
        interpreter.invoke()
        for name, detail in out_details.items():
            value = _dequantize(interpreter.get_tensor(detail["index"]).copy(), detail["quantization"])
            collected[name].append(value[: min(batch, count - start)])
    return {name: np.concatenate(parts) for name, parts in collected.items()}


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
    count = len(next(iter(inputs.values())))
    batch = first_dim if isinstance(first_dim, int) and first_dim > 0 else min(count, 64)
    out_names = [o.name for o in session.get_outputs()]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in out_names}
    types = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
             "tensor(float16)": np.float16, "tensor(int32)": np.int32, "tensor(int64)": np.int64}
    for start in range(0, count, batch):
        feed = {}
        for node in in_nodes:
            chunk = inputs[node.name][start:start + batch]
            if len(chunk) < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            feed[node.name] = chunk.astype(types.get(node.type, chunk.dtype))
        for name, value in zip(out_names, session.run(out_names, feed), strict=True):
            collected[name].append(np.asarray(value)[: min(batch, count - start)])
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def _check_input_names(path: Path, model_names: list[str], data_names: list[str]) -> None:
    missing = sorted(set(model_names) - set(data_names))
    if missing:
        raise ParityError(
            f"{path}: artifact inputs {missing} are not inputs of the reference model "
            f"({sorted(data_names)}); the converter renamed them",
            [f"input name {m}" for m in missing],
        )


def compare_outputs(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    tolerance: Tolerance,
    labels: np.ndarray | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Per-output metrics and the list of failures (names, then shapes, then values)."""
    failures: list[str] = []
    missing = [n for n in reference if n not in candidate]
    extra = [n for n in candidate if n not in reference]
    for name in missing:
        failures.append(f"output '{name}' is missing from the artifact (it has {sorted(candidate)})")
    for name in extra:
        failures.append(f"artifact has an unexpected output '{name}'")
    metrics: dict[str, Any] = {}
    for name, ref in reference.items():
        if name not in candidate:
            continue
        got = candidate[name]
        if got.shape != ref.shape:
            failures.append(f"output '{name}': shape {list(got.shape)} != reference {list(ref.shape)}")
            continue
        ref64 = ref.astype(np.float64).reshape(len(ref), -1)
        got64 = got.astype(np.float64).reshape(len(got), -1)
        if not np.all(np.isfinite(got64)):
            bad = int(got64.size - np.count_nonzero(np.isfinite(got64)))
            failures.append(f"output '{name}': {bad} NaN/inf values in the artifact's output")
            metrics[name] = {"samples": int(len(ref)), "non_finite_values": bad}
            continue
        diff = np.abs(ref64 - got64)
        scale = max(1.0, float(np.max(np.abs(ref64))) if ref64.size else 1.0)
        norms = np.linalg.norm(ref64, axis=1) * np.linalg.norm(got64, axis=1)
        dots = np.sum(ref64 * got64, axis=1)
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 1.0)
        entry: dict[str, Any] = {
            "samples": int(len(ref)),
            "max_abs_error": float(diff.max()) if diff.size else 0.0,
            "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
            "normalized_max_error": float(diff.max() / scale) if diff.size else 0.0,
            "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()),
            "snr_db": _snr_db(ref64, got64),
        }
        is_classifier = ref64.shape[1] > 1 and ref.ndim == 2
        if is_classifier:
            ref_top1 = ref64.argmax(axis=1)
            got_top1 = got64.argmax(axis=1)
            entry["top1_agreement"] = float(np.mean(ref_top1 == got_top1))
            if labels is not None and name == next(iter(reference)):
                entry["accuracy_reference"] = float(np.mean(ref_top1 == labels))
                entry["accuracy"] = float(np.mean(got_top1 == labels))
                entry["accuracy_delta"] = entry["accuracy"] - entry["accuracy_reference"]
                if ref64.shape[1] > 5:
                    entry["top5_accuracy_reference"] = _top5(ref64, labels)
                    entry["top5_accuracy"] = _top5(got64, labels)
                    entry["top5_accuracy_delta"] = entry["top5_accuracy"] - entry["top5_accuracy_reference"]
        metrics[name] = entry
        if (
            tolerance.max_accuracy_drop is not None
            and "accuracy_delta" in entry
            and -entry["accuracy_delta"] > tolerance.max_accuracy_drop + 1e-9
        ):
            failures.append(
                f"output '{name}': accuracy {entry['accuracy'] * 100:.2f}% is "
                f"{-entry['accuracy_delta'] * 100:.2f} pt below the Keras model's "
                f"{entry['accuracy_reference'] * 100:.2f}% (allowed {tolerance.max_accuracy_drop * 100:g} pt)"
            )
        if tolerance.max_abs_error is not None and entry["normalized_max_error"] > tolerance.max_abs_error:
            failures.append(
                f"output '{name}': max error {entry['max_abs_error']:.3g} "
                f"({entry['normalized_max_error']:.3g} of the output scale) > {tolerance.max_abs_error:g}"
            )
        if tolerance.min_cosine is not None and entry["cosine_min"] < tolerance.min_cosine:
            failures.append(
                f"output '{name}': cosine similarity {entry['cosine_min']:.6f} < {tolerance.min_cosine:g}"
            )
        if (
            is_classifier
            and tolerance.min_top1_agreement is not None
            and entry["top1_agreement"] < tolerance.min_top1_agreement
        ):
            failures.append(
                f"output '{name}': top-1 agreement {entry['top1_agreement']:.4f} "
                f"< {tolerance.min_top1_agreement:g}"
            )
    return metrics, failures


def _snr_db(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Signal-to-noise ratio of the artifact's output, in dB (None when exact)."""
    noise = float(np.sum((reference - candidate) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0 or signal == 0:
        return None
    return float(10 * np.log10(signal / noise))


def _top5(scores: np.ndarray, labels: np.ndarray) -> float:
    top5 = np.argpartition(-scores, 5, axis=1)[:, :5]
    return float(np.mean(np.any(top5 == labels[:, None], axis=1)))


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
        "tolerance": {k: v for k, v in vars(tolerance).items() if v is not None},
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

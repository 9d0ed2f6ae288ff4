"""What a user would pick instead of edge-toolchain, each with its documented defaults.

- Keras 3's own `model.export(path, format="litert")` and `format="onnx"` (fp32 only:
  Keras offers no quantized export).
- `tf.lite.TFLiteConverter.from_keras_model` with default settings (fp32), and with the
  documented full-integer recipe: `optimizations=[DEFAULT]` plus a representative dataset
  of the same calibration samples our int8 recipe uses (float input and output).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def export_all(model: Any, calibration: np.ndarray, folder: Path) -> tuple[dict, dict, dict]:
    """({(format, recipe, producer): path}, {file name: export seconds}, {file name: problem}).

    A baseline that fails, or produces a file with inputs the model does not have, is a
    result too (what the user would have hit), not a crash."""
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[tuple[str, str, str], Path] = {}
    seconds: dict[str, float] = {}
    failures: dict[str, str] = {}
    defects: dict[str, str] = {}
    expected_inputs = len(model.inputs)

    def timed(key: tuple[str, str, str], path: Path, export: Any) -> None:
        started = time.perf_counter()
        try:
            export(path)
        except Exception as e:
            first_line = (str(e).strip().splitlines() or [""])[0][:300]
            failures[path.name] = f"{type(e).__name__}: {first_line}"
            return
        seconds[path.name] = time.perf_counter() - started
        paths[key] = path
        extra = _extra_inputs(path, expected_inputs)
        if extra:
            defects[path.name] = (f"{len(extra)} graph input(s) the Keras model does not have: {', '.join(extra)} "
                                  "(the caller must feed them; the runner fed random values)")

    timed(("tflite", "fp32", "keras.export"), folder / "keras_export.fp32.tflite",
          lambda p: model.export(str(p), format="litert", verbose=False))
    timed(("onnx", "fp32", "keras.export"), folder / "keras_export.fp32.onnx",
          lambda p: model.export(str(p), format="onnx", verbose=False))

    def converter_file(int8: bool) -> Any:
        def export(path: Path) -> None:
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if int8:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
            path.write_bytes(converter.convert())
        return export

    timed(("tflite", "fp32", "TFLiteConverter"), folder / "tfliteconverter.fp32.tflite", converter_file(False))
    timed(("tflite", "int8", "TFLiteConverter"), folder / "tfliteconverter.int8.tflite", converter_file(True))
    return paths, seconds, {**failures, **{name: f"defect: {text}" for name, text in defects.items()}}


def _extra_inputs(path: Path, expected: int) -> list[str]:
    """Input names beyond the model's own (Keras' ONNX export turns some constants into inputs)."""
    from toolchain.artifact_info import describe

    names = [i["name"] for i in describe(path)["inputs"]]
    return names[expected:] if len(names) > expected else []

"""Shared by the benchmark scripts: the machine they ran on, test models, result files."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the figures depend on; recorded beside every result."""
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for module in ("numpy", "onnxruntime", "ai_edge_litert", "tensorflow"):
        try:
            from importlib import metadata

            versions[module] = metadata.version(module.replace("_", "-"))
        except Exception:
            versions[module] = None
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": platform.node(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
    }


def export_models(folder: Path, large: bool) -> list[Path]:
    """A small CNN (and, if `large`, MobileNetV2 alpha 0.35 at 128x128, weights=None) as .tflite and .onnx."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from toolchain.stages.export_onnx import export_onnx
    from toolchain.stages.export_tflite import export_tflite

    keras.utils.set_random_seed(0)
    models = {}
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    models["small_cnn"] = keras.Model(inputs, keras.layers.Dense(10, name="scores")(x))
    if large:
        models["mobilenet_v2_035_128"] = keras.applications.MobileNetV2(
            input_shape=(128, 128, 3), alpha=0.35, weights=None, classes=1000)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in models.items():
        tflite, onnx = folder / f"{name}.tflite", folder / f"{name}.onnx"
        export_tflite(model, tflite, recipe="fp32", batch_size=1)
        export_onnx(model, onnx, recipe="fp32", batch_size=1, opset=17)
        paths += [tflite, onnx]
    return paths


def write_results(name: str, quick: bool, document: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """results/NAME.json and .md (NAME-quick.* for quick runs, which are smoke tests, not figures)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-quick" if quick else name
    json_path, md_path = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def python_for_runner() -> str:
    return sys.executable

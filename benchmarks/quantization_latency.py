"""int8 vs fp32 latency of MobileNetV2 per format, measured side by side in one run.

MobileNetV2 (weights=None: latency does not depend on the weights' values) is exported
as fp32 and as the int8 recipes of each format (TFLite: int8, int8-float-io, dynamic;
ONNX: int8 static QDQ, dynamic), calibrated on synthetic images. Then, in alternating
rounds, every artifact is benchmarked by toolchain/device/runner.py in a fresh process,
so fp32 and int8 see the same machine state; a format's speedup is the median over
rounds of (fp32 p50 / recipe p50) within the same round.

    python benchmarks/quantization_latency.py           # full: alpha 1.0, 224x224, 5 rounds, 1 and 2 threads
    python benchmarks/quantization_latency.py --quick   # smoke test: alpha 0.35, 96x96, 1 round

Writes benchmarks/results/quantization_latency.{json,md} (…-quick.* with --quick).
Figures depend on the machine and its load: the JSON records both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, write_results  # noqa: E402

from toolchain.targets.local import RUNNER_PATH  # noqa: E402

RECIPES = {"tflite": ["fp32", "int8", "int8-float-io", "dynamic"], "onnx": ["fp32", "int8", "dynamic"]}


def export_artifacts(folder: Path, alpha: float, size: int, calibration_count: int) -> list[tuple[str, str, Path]]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from toolchain.data import Dataset
    from toolchain.stages.export_onnx import export_onnx
    from toolchain.stages.export_tflite import export_tflite
    from toolchain.stages.quantize_onnx import quantize_onnx

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None)
    name = model.layers[0].name
    rng = np.random.default_rng(0)
    cells = max(2, size // 8)  # smooth synthetic images in [-1, 1], MobileNetV2's input range
    small = rng.uniform(-1, 1, (calibration_count, cells, cells, 3)).astype(np.float32)
    images = np.repeat(np.repeat(small, size // cells, axis=1), size // cells, axis=2)[:, :size, :size]
    calibration = Dataset({name: np.ascontiguousarray(images)})
    artifacts = []
    for recipe in RECIPES["tflite"]:
        path = folder / f"mobilenet_v2.{recipe}.tflite"
        export_tflite(model, path, recipe=recipe, calibration=calibration if "int8" in recipe else None)
        artifacts.append(("tflite", recipe, path))
    float_onnx = export_onnx(model, folder / "mobilenet_v2.fp32.onnx")
    artifacts.append(("onnx", "fp32", float_onnx))
    for recipe in RECIPES["onnx"][1:]:
        path = quantize_onnx(float_onnx, folder / f"mobilenet_v2.{recipe}.onnx", recipe=recipe,
                             calibration=calibration if recipe == "int8" else None)
        artifacts.append(("onnx", recipe, path))
    return artifacts


def p50_ms(model: Path, threads: int, runs: int, seconds: float) -> tuple[float, str]:
    request = {"model": str(model), "threads": threads, "min_runs": runs, "min_seconds": seconds,
               "max_seconds": 300, "warmup_runs": 10, "warmup_seconds": 0.5}
    if model.suffix == ".tflite":
        request["backend"] = "ai_edge_litert"
    done = subprocess.run([sys.executable, str(RUNNER_PATH), json.dumps(request)],
                          capture_output=True, text=True, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    backend = f"{answer['environment']['backend']} {answer['environment']['backend_version']}"
    return answer["latency_ms"]["p50"], backend


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: small MobileNetV2, one round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=None)
    args = parser.parse_args()
    quick = args.quick
    alpha, size = (0.35, 96) if quick else (1.0, 224)
    rounds = args.rounds or (1 if quick else 5)
    thread_counts = args.threads or ([1] if quick else [1, 2])
    runs, seconds = (20, 0.2) if quick else (100, 3.0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        artifacts = export_artifacts(Path(folder), alpha, size, 16 if quick else 64)
        sizes = {(fmt, recipe): path.stat().st_size for fmt, recipe, path in artifacts}
        for threads in thread_counts:
            timings: dict[tuple[str, str], list[float]] = {(f, r): [] for f, r, _ in artifacts}
            backends: dict[str, str] = {}
            for _ in range(rounds):  # every artifact once per round, in the same order
                for fmt, recipe, path in artifacts:
                    value, backends[fmt] = p50_ms(path, threads, runs, seconds)
                    timings[(fmt, recipe)].append(value)
            for fmt, recipe, _ in artifacts:
                base, mine = timings[(fmt, "fp32")], timings[(fmt, recipe)]
                rows.append({
                    "format": fmt, "recipe": recipe, "threads": threads, "backend": backends[fmt],
                    "bytes": sizes[(fmt, recipe)], "p50_ms": statistics.median(mine),
                    "speedup_vs_fp32": statistics.median(b / m for b, m in zip(base, mine, strict=True)),
                    "rounds_p50_ms": mine,
                })
    document = {"benchmark": "quantization_latency", "quick": quick, "machine": machine(),
                "model": f"keras.applications.MobileNetV2(alpha={alpha}, input {size}x{size}x3, weights=None)",
                "method": "alternating rounds, fresh runner process per measurement; speedup = median over "
                          "rounds of fp32 p50 / recipe p50 of the same format in the same round",
                "results": rows}
    lines = ["# int8 vs fp32 latency: MobileNetV2", "",
             f"{document['model']}. Machine: {document['machine']['cpu']} "
             f"({document['machine']['cpu_count']} cores), load at start "
             f"{document['machine']['load_average_at_start']}, {document['machine']['date_utc']}."
             + (" **Quick smoke run: not a figure.**" if quick else ""), "",
             "| format | recipe | threads | backend | size KB | p50 ms | speedup vs fp32 |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['format']} | {r['recipe']} | {r['threads']} | {r['backend']} | {r['bytes'] / 1024:.0f} | "
              f"{r['p50_ms']:.3f} | {r['speedup_vs_fp32']:.2f}x |" for r in rows]
    json_path, md_path = write_results("quantization_latency", quick, document, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

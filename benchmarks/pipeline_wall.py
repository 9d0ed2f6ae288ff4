"""Toolchain wall time: `edge-toolchain run` as a user runs it, cold and warm.

Three runs into one run directory, each a separate process:
  cold        empty run directory: convert, verify, benchmark, report
  unchanged   the identical command again: served from the run cache
  bench edit  `[bench] min_runs` changed: export and verify come from the cache, only
              the bench stage (and the report) run again
Per-stage seconds come from each run's manifest (`stages[].seconds`, `stages[].cached`).
The cold run's artifacts are the "ours" side of the latency comparison.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TFLITE_RECIPES = ["fp32", "int8"]
ONNX_RECIPES = ["fp32", "int8"]


def write_inputs(bench_model: Any, folder: Path, bench_runs: int) -> Path:
    """model.keras, calibration.npz, eval.npz and pipeline.toml in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model = bench_model.model
    input_name = model.layers[0].name  # the InputLayer's name: what the pipeline keys inputs by
    model.save(folder / "model.keras")
    np.savez(folder / "calibration.npz", **{input_name: bench_model.calibration})
    evaluation = {input_name: bench_model.evaluation}
    if bench_model.labels is not None:
        evaluation["y"] = bench_model.labels
    np.savez(folder / "eval.npz", **evaluation)
    config = folder / "pipeline.toml"
    config.write_text(pipeline_toml(bench_model, bench_runs))
    return config


def pipeline_toml(bench_model: Any, bench_runs: int) -> str:
    samples = len(bench_model.evaluation)
    untrained = bench_model.labels is None
    lines = [
        "[model]", 'path = "model.keras"', f'name = "{bench_model.name}"', "",
        "[data]", 'eval = "eval.npz"', f"samples = {samples}", "",
        "[data.calibration]", 'source = "calibration.npz"', f"samples = {len(bench_model.calibration)}", "",
        "[export]", 'formats = ["tflite", "onnx"]', "batch_size = 1", "",
        "[export.tflite]", f"recipes = {json.dumps(TFLITE_RECIPES)}", "",
        "[export.onnx]", f"recipes = {json.dumps(ONNX_RECIPES)}", "",
        "[verify]", f"samples = {samples}", "",
    ]
    if untrained:
        # random-weight classifiers put out near-uniform scores: top-1 is a near tie, so
        # agreement says nothing about the artifact; cosine similarity still does
        for recipe in ("int8",):
            lines += [f"[verify.tolerances.{recipe}]", "min_top1_agreement = 0.0", ""]
    lines += ["[bench]", 'targets = ["local"]', "threads = [1]", "warmup_runs = 2",
              f"min_runs = {bench_runs}", "min_seconds = 0.2", ""]
    return "\n".join(lines)


def run_cli(config: Path, out: Path) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "toolchain", "run", str(config), "--out", str(out), "--quiet"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"edge-toolchain run {config} failed (exit {done.returncode}): {done.stderr[-3000:]}")
    return seconds, json.loads((out / "manifest.json").read_text())


def stage_times(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"stage": s["name"], "seconds": s.get("seconds"), "cached": bool(s.get("cached")),
             "status": s["status"]} for s in manifest["stages"]]


def measure(bench_model: Any, folder: Path, bench_runs: int = 5) -> dict[str, Any]:
    config = write_inputs(bench_model, folder, bench_runs)
    out = folder / "run"
    cold_s, cold = run_cli(config, out)
    unchanged_s, unchanged = run_cli(config, out)
    config.write_text(pipeline_toml(bench_model, bench_runs + 1))
    edit_s, edited = run_cli(config, out)
    artifacts = {(a["format"], a["recipe"]): out / a["path"] for a in cold["artifacts"]}
    verify = {f"{a['format']} {a['recipe']}": _verify_summary(a.get("verify")) for a in cold["artifacts"]}
    return {
        "cold_seconds": cold_s, "unchanged_seconds": unchanged_s, "bench_edit_seconds": edit_s,
        "stages": {"cold": stage_times(cold), "unchanged": stage_times(unchanged),
                   "bench_edit": stage_times(edited)},
        "verify": verify,
        "artifacts": artifacts,
    }


def _verify_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if not record:
        return None
    keep = ("cosine_min", "top1_agreement", "normalized_max_error", "accuracy", "accuracy_reference")
    outputs = {name: {k: values[k] for k in keep if k in values} for name, values in record["outputs"].items()}
    return {"verdict": record["verdict"], "outputs": outputs}

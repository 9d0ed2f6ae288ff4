"""The performance suite: edge-toolchain against what a user would use instead, side by side.

    python benchmarks/suite.py            # full: 5 models (make bench), ~19 min on 2 cores
    python benchmarks/suite.py --quick    # digits CNN + MobileNetV3Small, fewer repeats, ~2 min

Per model:
 1. toolchain wall time: `edge-toolchain run` cold, unchanged re-run, bench-only edit
    (per stage, from the manifests)                                     pipeline_wall.py
 2. baselines: Keras model.export (litert, onnx), TFLiteConverter fp32 and int8  baselines.py
 3. latency p50/p90 of every file at 1 and all cores, interleaved repeats     latency.py
 4. ratios: ours vs theirs; any file slower than its baseline is examined  explain.py
 5. efficiency: MACs and achieved GMAC/s against the CPU's fp32 peak    machine.py
and once per suite: the runner's overhead against a bare invoke loop    quality.py

Writes benchmarks/results/<date>-<machine>[-quick].json and .md (tables.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402
import explain  # noqa: E402
import latency  # noqa: E402
import machine  # noqa: E402
import models  # noqa: E402
import pipeline_wall  # noqa: E402
import quality  # noqa: E402
import tables  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

SETTINGS = {  # repeats: interleaved rounds; min_runs / min_seconds: per runner process
    "quick": {"repeats": 3, "min_runs": 5, "min_seconds": 0.1, "overhead_rounds": 2, "overhead_seconds": 0.3},
    "full": {"repeats": 5, "min_runs": 5, "min_seconds": 0.1, "overhead_rounds": 3, "overhead_seconds": 1.0},
}


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_model(name: str, settings: dict[str, Any], threads: list[int], peak_per_core: float | None,
              sgemm: dict[int, float], folder: Path) -> dict[str, Any]:
    from toolchain.model_stats import count_macs

    say(f"{name}: building")
    bench_model = models.build(name)
    macs = count_macs(bench_model.model)
    say(f"{name}: edge-toolchain run (cold, unchanged, bench edit)")
    wall = pipeline_wall.measure(bench_model, folder / "pipeline")
    ours = {(fmt, recipe, "ours"): path for (fmt, recipe), path in wall.pop("artifacts").items()}
    say(f"{name}: baselines")
    theirs, export_seconds, baseline_failures = baselines.export_all(
        bench_model.model, bench_model.calibration, folder / "baselines")
    for stage in wall["stages"]["cold"]:
        if stage["stage"].startswith("export "):
            _, fmt, recipe = stage["stage"].split(" ", 2)
            export_seconds[ours[(fmt, recipe, "ours")].name] = stage["seconds"]
    say(f"{name}: latency, {len(ours) + len(theirs)} files x {threads} threads x {settings['repeats']} repeats")
    rows = latency.measure({**ours, **theirs}, threads, settings["repeats"], settings["min_runs"],
                           settings["min_seconds"])
    for row in rows:
        seconds = row["p50_ms"] / 1000
        row["gmacs_per_s"] = macs / seconds / 1e9 if seconds else None
        peak = peak_per_core * row["threads"] if peak_per_core else None
        row["fraction_of_peak"] = row["gmacs_per_s"] / peak if peak and row["recipe"] == "fp32" else None
        measured = sgemm.get(row["threads"])
        row["fraction_of_sgemm"] = row["gmacs_per_s"] / measured if measured and row["recipe"] == "fp32" else None
        row["export_seconds"] = export_seconds.get(row["file"])
    comparisons = latency.ratios(rows)
    files = {path.name: path for path in (ours | theirs).values()}
    slower, examined = [], {}
    for comparison in comparisons:
        if comparison["holds"] != "NO":
            continue
        pair = (comparison["ours"], comparison["theirs"])
        if pair not in examined:  # the same pair fails at several thread counts: look once
            say(f"{name}: examining {pair[0]} vs {pair[1]}")
            p50_ms = next(r["p50_ms"] for r in rows if r["file"] == pair[0])
            examined[pair] = explain.explain(files[pair[0]], files[pair[1]], p50_ms)
        slower.append({**comparison, "findings": examined[pair], "summary": explain.summary(examined[pair])})
    return {"model": name, "note": bench_model.note, "macs": macs, "params": int(bench_model.model.count_params()),
            "pipeline": wall, "export_seconds": export_seconds, "baseline_failures": baseline_failures,
            "latency": rows, "comparisons": comparisons,
            "slower_than_baseline": slower}


def measurement_quality(first: dict[str, Any], settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Runner overhead on the first (smallest) model's fp32 files, where it weighs most."""
    say("runner overhead vs bare invoke loop")
    rows = []
    for fmt in ("tflite", "onnx"):
        row = next(r for r in first["latency"] if r["format"] == fmt and r["recipe"] == "fp32"
                   and r["producer"] == "ours" and r["threads"] == 1)
        path = folder / first["model"] / "pipeline" / "run" / "artifacts" / row["file"]
        rows.append(quality.runner_overhead(path, row["p50_ms"], settings["overhead_rounds"],
                                            settings["overhead_seconds"]))
    return {"model": first["model"], "runner_overhead": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 small models, 3 repeats (a check, ~3 min)")
    parser.add_argument("--models", nargs="+", choices=models.FULL, help="override the model list")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default: 5 full, 3 quick)")
    parser.add_argument("--min-seconds", type=float,
                        help="seconds of inferences per measurement (default 0.1): longer = less spread, slower suite")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    settings = dict(SETTINGS[mode])
    if args.repeats:
        settings["repeats"] = args.repeats
    if args.min_seconds is not None:
        settings["min_seconds"] = args.min_seconds
    names = args.models or (models.QUICK if args.quick else models.FULL)
    threads = sorted({1, os.cpu_count() or 1})
    started = time.perf_counter()
    described = machine.describe()
    say(f"{mode} suite on {described['cpu_model']} ({described['cores']} cores): {', '.join(names)}")
    sgemm = {count: machine.measured_sgemm_gmacs(count) for count in threads}
    result: dict[str, Any] = {"suite_version": 1, "date": described["date_utc"][:10], "mode": mode,
                              "machine": described, "threads": threads, "settings": settings,
                              "sgemm_gmacs": {str(k): v for k, v in sgemm.items()}, "models": []}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{result['date']}-{machine.slug(described)}" + ("-quick" if args.quick else "")
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    failed = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        for name in names:
            try:
                result["models"].append(run_model(name, settings, threads, described["peak_fp32_gmacs_per_core"],
                                                  sgemm, Path(tmp) / name))
            except Exception as e:  # one model's failure is a finding; the others still run
                say(f"{name}: FAILED: {e}")
                failed.append(name)
                result["models"].append({"model": name, "error": f"{type(e).__name__}: {e}"})
            _write_json(json_path, result)  # a partial result survives a later crash
        measured = [m for m in result["models"] if "error" not in m]
        result["quality"] = measurement_quality(measured[0], settings, Path(tmp)) if measured else None
    result["wall_seconds"] = time.perf_counter() - started
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _write_json(json_path, result)
    md_path.write_text(tables.markdown(result))
    print(md_path.read_text())
    say(f"wrote {json_path} and {md_path} in {result['wall_seconds'] / 60:.1f} min")
    if failed:
        say(f"failed: {', '.join(failed)} (see 'error' in the JSON)")
    return 1 if failed else 0


def _write_json(path: Path, result: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(result, indent=2, default=str) + "\n")
    temporary.replace(path)


if __name__ == "__main__":
    sys.exit(main())

"""Artifact latency, measured by the device runner, interleaved across the files compared.

Each measurement is one fresh process of toolchain/device/runner.py (the file the local
target runs, and the one copied to devices), under `/usr/bin/time -v` when it exists so
the runner's own peak-RSS figure can be checked against the kernel's. One repeat runs
every (artifact, threads) pair once, in the same order; the suite does `repeats` of them,
so ours and the baselines see the same machine state. A row's p50 is the median of its
repeats' p50s; its spread is (max - min) / median of those p50s.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from toolchain.targets.local import RUNNER_PATH

GNU_TIME = Path("/usr/bin/time")


def run_runner(path: Path, threads: int, min_runs: int, min_seconds: float, warmup_runs: int = 2,
               warmup_seconds: float = 0.05) -> dict[str, Any]:
    request = {"model": str(path), "threads": threads, "min_runs": min_runs, "min_seconds": min_seconds,
               "max_seconds": 120, "warmup_runs": warmup_runs, "warmup_seconds": warmup_seconds}
    if path.suffix == ".tflite":
        request["backend"] = "ai_edge_litert"
    command = [sys.executable, str(RUNNER_PATH), json.dumps(request)]
    timed = GNU_TIME.exists()
    done = subprocess.run(([str(GNU_TIME), "-v"] if timed else []) + command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    answer = json.loads(lines[-1]) if lines else {"ok": False}
    if done.returncode != 0 or not answer.get("ok"):
        raise RuntimeError(f"runner failed on {path.name} (exit {done.returncode}): "
                           f"{answer.get('error') or done.stderr[-1500:]}")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr) if timed else None
    answer["time_max_rss_kib"] = int(found.group(1)) if found else None
    return answer


def measure(paths: dict[tuple[str, str, str], Path], threads: list[int], repeats: int,
            min_runs: int, min_seconds: float) -> list[dict[str, Any]]:
    """One row per (format, recipe, producer, threads)."""
    answers: dict[tuple, list[dict[str, Any]]] = {}
    for _ in range(repeats):
        for key, path in paths.items():
            for count in threads:
                answers.setdefault((*key, count), []).append(run_runner(path, count, min_runs, min_seconds))
    rows = []
    for (fmt, recipe, producer, count), runs in answers.items():
        path = paths[(fmt, recipe, producer)]
        p50s = [a["latency_ms"]["p50"] for a in runs]
        median = statistics.median(p50s)
        runner_rss = [a["memory"]["peak_rss_after_runs_kib"] for a in runs]
        time_rss = [a["time_max_rss_kib"] for a in runs if a["time_max_rss_kib"]]
        env = runs[-1]["environment"]
        rows.append({
            "format": fmt, "recipe": recipe, "producer": producer, "threads": count,
            "file": path.name, "bytes": path.stat().st_size,
            "p50_ms": median,
            "p90_ms": statistics.median(a["latency_ms"]["p90"] for a in runs),
            "p50_repeats_ms": p50s,
            "p50_spread": (max(p50s) - min(p50s)) / median if median else None,
            "runs_per_repeat": [a["latency_ms"].get("count") or a.get("runs") for a in runs],
            "peak_rss_kib": statistics.median(runner_rss),
            "time_max_rss_kib": statistics.median(time_rss) if time_rss else None,
            "backend": f"{env['backend']} {env['backend_version']}",
        })
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparisons the suite promises, as ours / theirs latency (< 1: ours is faster)."""
    by_key = {(r["format"], r["recipe"], r["producer"], r["threads"]): r for r in rows}
    out = []
    for threads in sorted({r["threads"] for r in rows}):
        for fmt in ("tflite", "onnx"):
            ours_fp32 = by_key.get((fmt, "fp32", "ours", threads))
            for producer in ("keras.export", "TFLiteConverter"):
                theirs = by_key.get((fmt, "fp32", producer, threads))
                if ours_fp32 and theirs:
                    out.append(_ratio(f"{fmt} fp32: ours vs {producer}", threads, ours_fp32, theirs,
                                      "fp32 no slower than baseline", 1.0))
            ours_q = [r for r in rows if r["format"] == fmt and r["producer"] == "ours"
                      and r["recipe"] != "fp32" and r["threads"] == threads]
            theirs_all = [r for r in rows if r["format"] == fmt and r["producer"] != "ours"
                          and r["threads"] == threads]
            if ours_q and theirs_all:
                best_ours = min(ours_q, key=lambda r: r["p50_ms"])
                best_theirs = min(theirs_all, key=lambda r: r["p50_ms"])
                out.append(_ratio(f"{fmt} best quantized: ours {best_ours['recipe']} vs "
                                  f"{best_theirs['producer']} {best_theirs['recipe']}", threads,
                                  best_ours, best_theirs, "best int8 faster than their best", 1.0, strict=True))
            ours_int8 = by_key.get((fmt, "int8", "ours", threads))
            if ours_int8 and ours_fp32:
                out.append(_ratio(f"{fmt} int8 vs fp32 (ours)", threads, ours_int8, ours_fp32, None, None))
    return out


def _ratio(label: str, threads: int, ours: dict, theirs: dict, claim: str | None, limit: float | None,
           strict: bool = False) -> dict[str, Any]:
    ratio = ours["p50_ms"] / theirs["p50_ms"]
    # the claim holds unless the difference exceeds the noise both rows showed
    noise = max(ours["p50_spread"] or 0, theirs["p50_spread"] or 0)
    if limit is None:
        verdict = None
    elif strict:
        verdict = "yes" if ratio < limit else ("within noise" if ratio < limit + noise else "NO")
    else:
        verdict = "yes" if ratio <= limit else ("within noise" if ratio <= limit + noise else "NO")
    return {"comparison": label, "threads": threads, "ours": ours["file"], "theirs": theirs["file"],
            "latency_ratio": ratio, "noise": noise, "claim": claim, "holds": verdict}

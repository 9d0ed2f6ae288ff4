"""The markdown page generated from a suite result (benchmarks/results/*.md)."""

from __future__ import annotations

from typing import Any


def _f(value: float | None, fmt: str = ".3f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    v = m["versions"]
    peak = m["peak_fp32_gmacs_per_core"]
    sgemm = ", ".join(f"{k} thread(s) {v:.1f}" for k, v in result["sgemm_gmacs"].items())
    return (f"{m['cpu_model']} (family {m['cpu_family']}, {', '.join(m['cpu_flags_simd'])}), {m['cores']} cores, "
            f"{m['arch']}{', virtual machine' if m['virtualised'] else ''}, governor {m['governor']}, "
            f"Linux {m['kernel']}, Python {m['python']}; TensorFlow {v.get('tensorflow')}, Keras {v.get('keras')}, "
            f"tf2onnx {v.get('tf2onnx')}, onnxruntime {v.get('onnxruntime')}, ai-edge-litert "
            f"{v.get('ai_edge_litert')}. Load average at start {m['load_average_at_start']}, at end "
            f"{m.get('load_average_at_end')}.\n\nfp32 peak: "
            + (f"{peak:.1f} GMAC/s per core ({m['peak_source']})" if peak else m["peak_source"])
            + f"; numpy sgemm 1024³ achieved {sgemm} GMAC/s.")


def _pick(comparisons: list[dict[str, Any]], prefix: str) -> str:
    found = [c for c in comparisons if c["comparison"].startswith(prefix)]
    return " ".join(f"{c['latency_ratio']:.2f}×" + ("" if c["holds"] in (None, "yes") else f" ({c['holds']})")
                    for c in found) or "-"


def summary_table(result: dict[str, Any]) -> list[str]:
    """One line per model and thread count: the claims the suite checks."""
    lines = ["| model | threads | ours fp32 vs keras.export (tflite / onnx) | ours fp32 vs TFLiteConverter | "
             "best quantized: ours vs theirs (tflite / onnx) | ours int8 vs fp32 (tflite / onnx) |",
             "|---|---|---|---|---|---|"]
    for model in result["models"]:
        if "error" in model:
            lines.append(f"| {model['model']} | - | failed: see below | | | |")
            continue
        for threads in result["threads"]:
            found = [c for c in model["comparisons"] if c["threads"] == threads]
            lines.append(
                f"| {model['model']} | {threads} | {_pick(found, 'tflite fp32: ours vs keras.export')} / "
                f"{_pick(found, 'onnx fp32: ours vs keras.export')} | "
                f"{_pick(found, 'tflite fp32: ours vs TFLiteConverter')} | "
                f"{_pick(found, 'tflite best quantized')} / {_pick(found, 'onnx best quantized')} | "
                f"{_pick(found, 'tflite int8 vs fp32')} / {_pick(found, 'onnx int8 vs fp32')} |")
    return lines


def model_section(model: dict[str, Any]) -> list[str]:
    if "error" in model:
        return [f"## {model['model']}", "", f"**Failed**: {model['error']}", ""]
    w = model["pipeline"]
    lines = [f"## {model['model']}", "",
             f"{model['note']}: {model['macs'] / 1e6:,.1f} M MACs, {model['params']:,} parameters.", "",
             "### Toolchain wall time (s)", "",
             f"`edge-toolchain run` (tflite fp32+int8, onnx fp32+int8, verify, bench, report): cold "
             f"**{w['cold_seconds']:.1f}**, unchanged re-run **{w['unchanged_seconds']:.2f}** "
             f"({100 * w['unchanged_seconds'] / w['cold_seconds']:.1f}%), after a `[bench]` edit "
             f"**{w['bench_edit_seconds']:.1f}**.", "",
             "| stage | cold | after bench edit |", "|---|---|---|"]
    edited = {s["stage"]: s for s in w["stages"]["bench_edit"]}
    for stage in w["stages"]["cold"]:
        again = edited.get(stage["stage"])
        again_text = "-" if again is None else ("cached" if again["cached"] else _f(again["seconds"], ".2f"))
        lines.append(f"| {stage['stage']} | {_f(stage['seconds'], '.2f')} | {again_text} |")
    lines += ["", "Export seconds of every file: " + ", ".join(
        f"{name} {seconds:.1f}" for name, seconds in model["export_seconds"].items() if seconds is not None) + ".", ""]
    lines += ["### Latency (median of the repeats' p50; spread = (max - min) / median of the repeats' p50s)", "",
              "| file | producer | threads | p50 ms | p90 ms | spread | size KB | GMAC/s | % of peak | % of sgemm "
              "| peak RSS MiB (runner / time -v) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(model["latency"], key=lambda r: (r["threads"], r["format"], r["p50_ms"])):
        time_rss = "-" if r["time_max_rss_kib"] is None else f"{r['time_max_rss_kib'] / 1024:.1f}"
        lines.append(
            f"| {r['file']} | {r['producer']} | {r['threads']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{100 * r['p50_spread']:.1f}% | {r['bytes'] / 1024:,.0f} | {_f(r['gmacs_per_s'], '.2f')} | "
            f"{_f(None if r['fraction_of_peak'] is None else 100 * r['fraction_of_peak'], '.0f', '%')} | "
            f"{_f(None if r['fraction_of_sgemm'] is None else 100 * r['fraction_of_sgemm'], '.0f', '%')} | "
            f"{r['peak_rss_kib'] / 1024:.1f} / {time_rss} |")
    lines += ["", "### Ours vs theirs (latency ratio: < 1 is faster)", "",
              "| comparison | threads | ratio | noise | claim | holds |", "|---|---|---|---|---|---|"]
    for c in model["comparisons"]:
        lines.append(f"| {c['comparison']} | {c['threads']} | {c['latency_ratio']:.3f} | ±{100 * c['noise']:.1f}% | "
                     f"{c['claim'] or '-'} | {c['holds'] or '-'} |")
    if model["slower_than_baseline"]:
        lines += ["", "### Slower than the baseline, and what the files show", ""]
        for s in model["slower_than_baseline"]:
            lines.append(f"- **{s['ours']}** vs {s['theirs']} ({s['threads']} thread(s), ratio "
                         f"{s['latency_ratio']:.3f}): {s['summary']}.")
    for name, problem in model.get("baseline_failures", {}).items():
        lines += ["", f"Baseline **{name}**: {problem}"]
    verify = ", ".join(f"{k} {v['verdict']}" for k, v in w["verify"].items() if v)
    lines += ["", f"Verification in the cold run: {verify}.", ""]
    return lines


def quality_section(result: dict[str, Any]) -> list[str]:
    q = result["quality"]
    if q is None:
        return ["## Measurement quality", "", "No model was measured.", ""]
    lines = ["## Measurement quality", "",
             f"Runner overhead per inference on {q['model']} (1 thread; bare = load, set input once, time N calls "
             "as one block; runner = toolchain/device/runner.py with a timer per call; alternating fresh "
             "processes, median over rounds):", "",
             "| file | runs × rounds | bare mean ms | runner mean ms | overhead µs/inference | overhead % |",
             "|---|---|---|---|---|---|"]
    for r in q["runner_overhead"]:
        lines.append(f"| {r['file']} | {r['runs_per_round']} × {r['rounds']} | {r['bare_mean_ms']:.4f} | "
                     f"{r['runner_mean_ms']:.4f} | {r['overhead_us_per_inference']:.2f} | "
                     f"{100 * r['overhead_fraction']:.1f}% |")
    measured = [m for m in result["models"] if "error" not in m]
    rows = [r for m in measured for r in m["latency"] if r["time_max_rss_kib"]]
    if rows:
        diffs = [(r["peak_rss_kib"] - r["time_max_rss_kib"]) / r["time_max_rss_kib"] for r in rows]
        worst = max(diffs, key=abs)
        lines += ["", f"Peak RSS: the runner's own figure (VmHWM) against `/usr/bin/time -v` maximum resident set "
                  f"size, same process, {len(rows)} rows: worst difference {100 * worst:+.2f}%, median "
                  f"{100 * sorted(diffs)[len(diffs) // 2]:+.2f}%."]
    spreads = sorted(r["p50_spread"] for m in measured for r in m["latency"])
    lines += ["", f"p50 spread across {result['settings']['repeats']} interleaved repeats: median "
              f"{100 * spreads[len(spreads) // 2]:.1f}%, worst {100 * spreads[-1]:.1f}% over {len(spreads)} rows.", ""]
    return lines


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# edge-toolchain benchmarks, {result['date']} ({result['mode']} suite)", "",
             machine_line(result), "",
             f"Suite wall time {result['wall_seconds'] / 60:.1f} min. Generated by `python benchmarks/suite.py"
             f"{' --quick' if result['mode'] == 'quick' else ''}` from the JSON beside this file.", "",
             "## Summary: latency ratios, ours / theirs (< 1: ours is faster)", ""]
    lines += summary_table(result)
    lines.append("")
    for model in result["models"]:
        lines += model_section(model)
    lines += quality_section(result)
    return "\n".join(lines) + "\n"

"""report.md: what was built, whether it is correct, and how fast it runs.

The report is rebuilt from the run's JSON files only (manifest.json, bench.json,
budgets.json, estimates.json), so `edge-toolchain report RUN_DIR` gives the same
report as the run did. report_html.py renders the same data as one offline HTML file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import atomic_write_text


def _fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _quality(verify: dict[str, Any] | None) -> str:
    if not verify:
        return "not verified"
    first = next(iter(verify.get("outputs", {}).values()), {})
    if "accuracy" in first:
        return f"{first['accuracy'] * 100:.2f}% ({first['accuracy_delta'] * 100:+.2f} pt)"
    if "top1_agreement" in first:
        return f"{first['top1_agreement'] * 100:.2f}% agree"
    if "cosine_min" in first:
        return f"cos {first['cosine_min']:.6f}"
    return "—"


def _fp32_p50(manifest: dict[str, Any]) -> dict[tuple[str, str, int], float]:
    """p50 of each format's fp32 artifact, by (format, target, threads): the speedup baseline."""
    baseline = {}
    for a in manifest["artifacts"]:
        if a["recipe"] != "fp32":
            continue
        for target, summaries in (a.get("bench") or {}).items():
            for s in summaries:
                if s.get("p50_ms"):
                    baseline[(a["format"], target, s["threads"])] = s["p50_ms"]
    return baseline


def _budget_verdicts(budgets: dict[str, Any] | None) -> dict[tuple[str, str], str]:
    """pass / FAIL per (artifact, target); "—" where no limit was checked (nothing passed)."""
    return {(r["artifact"], r["target"]): ("pass" if r["passed"] else "FAIL") if r["checks"] else "—"
            for r in (budgets or {}).get("results", [])}


def summary_rows(manifest: dict[str, Any], budgets: dict[str, Any] | None = None) -> list[dict[str, str]]:
    rows = []
    baseline = _fp32_p50(manifest)
    verdicts = _budget_verdicts(budgets)
    for a in manifest["artifacts"]:
        base = {
            "artifact": a["name"],
            "format": a["format"],
            "recipe": a["recipe"],
            "size_kb": f"{a['bytes'] / 1024:.1f}",
            "verify": (a.get("verify") or {}).get("verdict", "—"),
            "quality": _quality(a.get("verify")),
        }
        benches = [(t, s) for t, summaries in a.get("bench", {}).items() for s in summaries]
        if not benches:
            rows.append({**base, "target": "—", "threads": "—", "p50_ms": "—", "p90_ms": "—",
                         "peak_mb": "—", "speedup": "—", "budget": "—"})
        for target, s in benches:
            peak = s.get("peak_rss_kib")
            fp32 = baseline.get((a["format"], target, s["threads"]))
            rows.append({
                **base,
                "target": target + (" (throttled)" if s.get("throttled") else ""),
                "threads": str(s["threads"]),
                "p50_ms": _fmt_ms(s["p50_ms"]),
                "p90_ms": _fmt_ms(s["p90_ms"]),
                "peak_mb": "—" if peak is None else f"{peak / 1024:.1f}",
                "speedup": "—" if not fp32 or not s.get("p50_ms") else f"{fp32 / s['p50_ms']:.2f}×",
                "budget": verdicts.get((a["name"], target), "—"),
            })
    return rows


COLUMNS = [
    ("artifact", "Artifact"), ("format", "Format"), ("recipe", "Recipe"), ("size_kb", "Size (KB)"),
    ("verify", "Verify"), ("quality", "Accuracy / agreement"), ("target", "Target"),
    ("threads", "Threads"), ("p50_ms", "p50 (ms)"), ("p90_ms", "p90 (ms)"),
    ("peak_mb", "Peak RSS (MB)"), ("speedup", "Speedup vs fp32"), ("budget", "Budgets"),
]


def markdown_table(rows: list[dict[str, str]]) -> str:
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(row[key] for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join([header, rule, *body])


@dataclass
class RunDocuments:
    """The JSON files a report is built from (None when the run did not produce one)."""

    run_dir: Path
    manifest: dict[str, Any]
    bench: dict[str, Any] | None = None
    budgets: dict[str, Any] | None = None
    estimates: dict[str, Any] | None = None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); re-run the pipeline to rewrite it") from e


def load_run(run_dir: Path) -> RunDocuments:
    """Read a run directory's JSON files, as written by `edge-toolchain run`."""
    run_dir = Path(run_dir)
    manifest = _read_json(run_dir / "manifest.json")
    if manifest is None:
        raise InputError(f"{run_dir} has no manifest.json: give the directory of a completed run")
    if manifest.get("status") != "complete":
        raise InputError(f"{run_dir}: the run did not complete ({manifest.get('error')}); "
                         "re-run it before reporting")
    return RunDocuments(run_dir, manifest, _read_json(run_dir / "bench.json"),
                        _read_json(run_dir / "budgets.json"), _read_json(run_dir / "estimates.json"))


def quality_value(verify: dict[str, Any] | None) -> tuple[float | None, str]:
    """(accuracy, "accuracy") if labelled, else (top-1 agreement, "agreement"), for charts."""
    first = next(iter((verify or {}).get("outputs", {}).values()), {})
    if first.get("accuracy") is not None:
        return first["accuracy"], "accuracy"
    if first.get("top1_agreement") is not None:
        return first["top1_agreement"], "agreement"
    return None, ""


def latency_rows(bench: dict[str, Any] | None) -> list[dict[str, str]]:
    """The latency distribution of every benchmark, as percentiles."""
    rows = []
    for r in (bench or {}).get("results", []):
        stats = r["latency_ms"]
        rows.append({
            "artifact": r["artifact"], "target": r["target"], "threads": str(r["threads"]),
            "count": str(stats["count"]),
            **{k: _fmt_ms(stats.get(k)) for k in ("min", "p50", "p90", "p95", "p99", "max", "std")},
        })
    return rows


def size_rows(manifest: dict[str, Any]) -> list[dict[str, str]]:
    fp32 = {a["format"]: a["bytes"] for a in manifest["artifacts"] if a["recipe"] == "fp32"}
    return [{
        "artifact": a["name"], "bytes": f"{a['bytes']:,}", "kb": f"{a['bytes'] / 1024:.1f}",
        "vs_fp32": f"{a['bytes'] / fp32[a['format']] * 100:.0f}%" if a["format"] in fp32 else "—",
    } for a in manifest["artifacts"]]


def environment_rows(bench: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per target x threads, with warnings that explain slow or noisy numbers."""
    rows, seen = [], {}
    for r in (bench or {}).get("results", []):
        env = r["environment"]
        key = (r["target"], r["threads"], env.get("backend"))
        reasons = [f"THROTTLED ({r['artifact']}): {why}" for why in r.get("throttling") or []]
        if key in seen:  # same environment: only add this benchmark's throttling
            seen[key]["warnings"] += [w for w in reasons if w not in seen[key]["warnings"]]
            continue
        warnings = _environment_warnings(r, reasons)
        temps = ", ".join(f"{k} {v:.0f}°C" for k, v in (env.get("temperatures_c") or {}).items())
        rows.append({
            "target": r["target"], "threads": r["threads"], "cpu": env.get("cpu_model") or "unknown",
            "cores": env.get("cpu_count"), "machine": env.get("machine"),
            "governor": env.get("governor") or "unknown", "temperatures": temps or "unknown",
            "software": f"Python {env.get('python')}, numpy {env.get('numpy')}, "
                        f"{env.get('backend')} {env.get('backend_version')}",
            "warnings": warnings,
        })
        seen[key] = rows[-1]
    return rows


def _environment_warnings(result: dict[str, Any], reasons: list[str]) -> list[str]:
    """Throttling, under-voltage and a power-saving governor: what makes a figure slow or noisy."""
    env = result["environment"]
    flags = env.get("throttled") or {}
    warnings = list(reasons)
    if result.get("throttled") and not reasons:
        warnings.append("THROTTLED during the benchmark")
    elif flags.get("throttled_since_boot"):
        warnings.append("throttled since boot")
    if flags.get("under_voltage_now"):
        warnings.append("under-voltage")
    if env.get("governor") and env["governor"] not in ("performance", "schedutil", "ondemand"):
        warnings.append(f"'{env['governor']}' CPU governor: latency may be inflated")
    return warnings


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def budget_lines(budgets: dict[str, Any] | None) -> list[str]:
    if not budgets or not budgets.get("results"):
        return []
    if not any(r["checks"] for r in budgets["results"]):
        return ["## Budgets", "", "No budgets set ([budgets] in the pipeline or a target profile)."]
    candidate = budgets.get("release_candidate")
    lines = ["## Budgets", ""]
    if candidate:
        verdict = "passes" if budgets.get("release_candidate_passed") else "**FAILS**"
        lines += [f"Release candidate `{candidate}` {verdict} its budgets.", ""]
    rows = []
    for r in budgets["results"]:
        reasons = "; ".join(r["failures"]) or ("; ".join(c["reason"] for c in r["checks"]) or "no limits set")
        rows.append([r["artifact"], r["target"], "pass" if r["passed"] else "**FAIL**", reasons])
    return lines + _md_table(["Artifact", "Target", "Verdict", "Reasons"], rows)


def estimate_lines(estimates: dict[str, Any] | None) -> list[str]:
    if not estimates or not (estimates.get("estimates") or estimates.get("skipped")):
        return []
    lines = ["## Estimates for targets not measured (ESTIMATE, not a measurement)", "",
             f"Method: {estimates['method']}. MACs per sample: "
             + (f"{estimates['macs_per_sample']:,}" if estimates.get("macs_per_sample") else "unknown")
             + f", batch {estimates['batch_size']}.", ""]
    if estimates.get("estimates"):
        lines += _md_table(ESTIMATE_HEADERS, [[e["artifact"], e["target"], f"≥ {e['lower_bound_ms']:.4f} (estimate)",
                                               e["bound"], compute_peak(e), f"{e['memory_bandwidth_gbs']:g}"]
                                              for e in estimates["estimates"]])
    notes = estimate_notes(estimates)
    return lines + ([""] if notes and estimates.get("estimates") else []) + [f"- {note}" for note in notes]


ESTIMATE_HEADERS = ["Artifact", "Target", "Estimated lower bound (ms)", "Bound by", "Compute peak", "Bandwidth GB/s"]


def compute_peak(row: dict[str, Any]) -> str:
    """'614.4 GOP/s int8' or '57.6 GFLOP/s fp32': which peak the compute term used (older files: fp32)."""
    peak = row.get("compute_peak_gops", row["peak_gflops"])
    return f"{peak:g} GOP/s int8" if row.get("compute_precision") == "int8" else f"{peak:g} GFLOP/s fp32"


def estimate_notes(estimates: dict[str, Any]) -> list[str]:
    """One line per target whose int8 rows could not use an int8 peak, then the skipped targets."""
    notes = {}
    for e in estimates.get("estimates", []):
        if e.get("note"):
            notes.setdefault(e["target"], f"int8 artifacts on {e['target']}: {e['note']}")
    return [*notes.values(), *(f"no estimate for {s['target']}: {s['reason']}" for s in estimates.get("skipped", []))]


def _calibration_lines(manifest: dict[str, Any]) -> list[str]:
    """Where quantization ranges came from; random calibration data is shouted."""
    data = manifest.get("data") or {}
    calibration = data.get("calibration")
    lines = []
    if data.get("warning"):
        lines += ["", f"> **WARNING: {data['warning']}**"]
    if calibration:
        split = data.get("split")
        lines.append(f"- Calibration data: `{calibration['source']}`, {calibration['samples']} samples"
                     + (f" (seeded split {split['seed']} of one source, disjoint from evaluation)"
                        if split else ""))
    return lines


def render_markdown(
    manifest: dict[str, Any],
    bench: dict[str, Any] | None,
    budgets: dict[str, Any] | None = None,
    estimates: dict[str, Any] | None = None,
    plots: dict[str, str] | None = None,
) -> str:
    lines = [*_md_head(manifest), "", "## Summary", "", markdown_table(summary_rows(manifest, budgets)), "",
             "Accuracy is top-1 on the labelled evaluation data, with its change against the Keras "
             "model; without labels, top-1 agreement with the Keras model. Speedup is the p50 of the "
             "same format's fp32 artifact on the same target and threads divided by this p50."]
    verify_notes = [
        f"- **{a['name']}**: " + "; ".join(a["verify"]["failures"])
        for a in manifest["artifacts"]
        if a.get("verify") and a["verify"].get("failures")
    ]
    if verify_notes:
        lines += ["", "## Verification failures", "", *verify_notes]
    if budgets and budgets.get("results"):
        lines += ["", *budget_lines(budgets)]
    lines += ["", "## Sizes", "", *_md_table(
        ["Artifact", "Bytes", "KB", "vs fp32 of its format"],
        [[r["artifact"], r["bytes"], r["kb"], r["vs_fp32"]] for r in size_rows(manifest)])]
    if bench and bench.get("results"):
        lines += _md_latency(bench)
    est = estimate_lines(estimates)
    if est:
        lines += ["", *est]
    if plots:
        lines += ["", "## Charts", ""]
        lines += [f"![{title}]({path})" for title, path in plots.items()]
    return "\n".join(lines) + "\n"


def _md_head(manifest: dict[str, Any]) -> list[str]:
    source = manifest["source_model"]
    return [
        f"# edge-toolchain report: {source.get('name', Path(source['path']).stem)}",
        "",
        f"- Run: {manifest['created_utc']}, edge-toolchain {manifest['toolchain_version']}",
        f"- Source model: `{source['path']}` (sha256 `{source['sha256'][:12]}…`, "
        f"{source['bytes'] / 1024:.1f} KB)",
        "- Tools: " + ", ".join(f"{k} {v}" for k, v in manifest["tool_versions"].items() if v),
        "- The same report with charts: [report.html](report.html) (self-contained, opens offline)",
        *_calibration_lines(manifest),
    ]


def _md_latency(bench: dict[str, Any]) -> list[str]:
    """Latency distributions and the environments they were measured in."""
    lines = ["", "## Latency distributions (ms)", "", *_md_table(
        ["Artifact", "Target", "Threads", "Runs", "min", "p50", "p90", "p95", "p99", "max", "std"],
        [[r[k] for k in ("artifact", "target", "threads", "count", "min", "p50", "p90", "p95", "p99",
                         "max", "std")] for r in latency_rows(bench)])]
    lines += ["", "## Benchmark environments", ""]
    for env in environment_rows(bench):
        lines.append(
            f"- **{env['target']}** ({env['threads']} thread(s)): {env['cpu']}, {env['cores']} cores, "
            f"{env['machine']}, governor {env['governor']}, temperatures {env['temperatures']}; "
            f"{env['software']}" + "".join(f"; **{w}**" for w in env["warnings"])
        )
    return lines + [
        "",
        "Latency: per-inference wall time after warm-up, in a fresh process per benchmark, "
        "random inputs unless stated. Peak RSS is the process's VmHWM after all runs.",
    ]


def write_report(
    run_dir: Path,
    manifest: dict[str, Any],
    bench: dict[str, Any] | None,
    budgets: dict[str, Any] | None = None,
    estimates: dict[str, Any] | None = None,
    plots: dict[str, str] | None = None,
) -> Path:
    path = run_dir / "report" / "report.md"
    atomic_write_text(path, render_markdown(manifest, bench, budgets, estimates, plots))
    return path

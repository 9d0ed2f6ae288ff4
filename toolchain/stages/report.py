"""report.md: what was built, whether it is correct, and how fast it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def summary_rows(manifest: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
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
                         "peak_mb": "—"})
        for target, s in benches:
            peak = s.get("peak_rss_kib")
            rows.append({
                **base,
                "target": target + (" (throttled)" if s.get("throttled") else ""),
                "threads": str(s["threads"]),
                "p50_ms": _fmt_ms(s["p50_ms"]),
                "p90_ms": _fmt_ms(s["p90_ms"]),
                "peak_mb": "—" if peak is None else f"{peak / 1024:.1f}",
            })
    return rows


COLUMNS = [
    ("artifact", "Artifact"), ("format", "Format"), ("recipe", "Recipe"), ("size_kb", "Size (KB)"),
    ("verify", "Verify"), ("quality", "Accuracy / agreement"), ("target", "Target"),
    ("threads", "Threads"), ("p50_ms", "p50 (ms)"), ("p90_ms", "p90 (ms)"),
    ("peak_mb", "Peak RSS (MB)"),
]


def markdown_table(rows: list[dict[str, str]]) -> str:
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(row[key] for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def render_markdown(manifest: dict[str, Any], bench: dict[str, Any] | None) -> str:
    source = manifest["source_model"]
    lines = [
        f"# edge-toolchain report: {source.get('name', Path(source['path']).stem)}",
        "",
        f"- Run: {manifest['created_utc']}, edge-toolchain {manifest['toolchain_version']}",
        f"- Source model: `{source['path']}` (sha256 `{source['sha256'][:12]}…`, "
        f"{source['bytes'] / 1024:.1f} KB)",
        "- Tools: " + ", ".join(f"{k} {v}" for k, v in manifest["tool_versions"].items() if v),
        "",
        "## Summary",
        "",
        markdown_table(summary_rows(manifest)),
        "",
        "Accuracy is top-1 on the labelled evaluation data, with its change against the Keras "
        "model; without labels, top-1 agreement with the Keras model.",
    ]
    verify_notes = [
        f"- **{a['name']}**: " + "; ".join(a["verify"]["failures"])
        for a in manifest["artifacts"]
        if a.get("verify") and a["verify"].get("failures")
    ]
    if verify_notes:
        lines += ["", "## Verification failures", "", *verify_notes]
    if bench and bench.get("results"):
        lines += ["", "## Benchmark environments", ""]
        seen = set()
        for r in bench["results"]:
            env = r["environment"]
            key = (r["target"], r["threads"])
            if key in seen:
                continue
            seen.add(key)
            temps = ", ".join(f"{k} {v:.0f}°C" for k, v in (env.get("temperatures_c") or {}).items())
            lines.append(
                f"- **{r['target']}** ({r['threads']} thread(s)): {env.get('cpu_model')}, "
                f"{env.get('cpu_count')} cores, {env.get('machine')}, governor "
                f"{env.get('governor') or 'unknown'}, {temps or 'temperature unknown'}; "
                f"Python {env.get('python')}, numpy {env.get('numpy')}, "
                f"{env.get('backend')} {env.get('backend_version')}"
                + ("; **throttled**" if r.get("throttled") else "")
            )
        lines += [
            "",
            "Latency: per-inference wall time after warm-up, in a fresh process per benchmark, "
            "random inputs unless stated. Peak RSS is the process's VmHWM after all runs.",
        ]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, manifest: dict[str, Any], bench: dict[str, Any] | None) -> Path:
    path = run_dir / "report" / "report.md"
    atomic_write_text(path, render_markdown(manifest, bench))
    return path

"""report.html: the report as one self-contained page (charts as base64 PNG, inline CSS).

Part of the report stage: it renders the same rows as report.py (imported from there)
plus the charts, which are also written as report/plots/*.png for report.md. Nothing
is fetched when the page opens: no scripts, fonts or images from elsewhere.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes, atomic_write_text
from .report import (
    COLUMNS,
    ESTIMATE_HEADERS,
    RunDocuments,
    compute_peak,
    environment_rows,
    estimate_notes,
    latency_rows,
    quality_value,
    size_rows,
    summary_rows,
    write_report,
)

PLOT_DPI = 96


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The (latency, quality, name) points no other point beats on both; fastest first."""
    front: list[tuple[float, float, str]] = []
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or point[1] > front[-1][1]:
            front.append(point)
    return front


def _fastest(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    measured = [s for s in summaries if s.get("p90_ms") is not None]
    return min(measured, key=lambda s: s["p90_ms"]) if measured else None


def tradeoff_points(manifest: dict[str, Any]) -> tuple[dict[str, list[tuple[float, float, str]]], str]:
    """Per target: (p90 ms at the fastest threads, accuracy or agreement, artifact) points."""
    points: dict[str, list[tuple[float, float, str]]] = {}
    kind = ""
    for a in manifest["artifacts"]:
        quality, kind_here = quality_value(a.get("verify"))
        if quality is None:
            continue
        kind = kind or kind_here
        for target, summaries in (a.get("bench") or {}).items():
            fastest = _fastest(summaries)
            if fastest:
                points.setdefault(target, []).append((fastest["p90_ms"], quality, a["name"]))
    return points, kind


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PLOT_DPI, metadata={"Software": None})
    return buffer.getvalue()


def _latency_plot(bench: dict[str, Any]) -> bytes:
    return _png(latency_figure(bench))


# labelled ticks per decade by how many decades the axis spans: 1..9, then 1-2-5, 1-3, powers of ten
LOG_TICK_SUBS = ((1.2, tuple(range(1, 10))), (2.5, (1, 2, 5)), (4.5, (1, 3)), (float("inf"), (1,)))


def readable_log_axis(ax: Any, low: float, high: float) -> None:
    """Plain-number tick labels on a log x axis: several per decade when the range is narrow.

    Matplotlib labels only powers of ten, so a range inside one decade showed one or two labels.
    """
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    high = high if high > 0 else 1.0
    low = low if 0 < low < high else high / 2
    decades = math.log10(high / low)
    ax.set_xlim(low / 1.15, high * 1.15)
    if decades < 0.6:  # less than 4x: evenly spaced round numbers read best
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    else:
        subs = next(subs for most, subs in LOG_TICK_SUBS if decades < most)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10)), numticks=30))
    ax.xaxis.set_minor_formatter(NullFormatter())


def latency_figure(bench: dict[str, Any]) -> Any:
    """Per target: each benchmark's spread (min..p99 line, p50..p90 box, max marker)."""
    from matplotlib.figure import Figure

    by_target: dict[str, list[dict[str, Any]]] = {}
    for r in bench["results"]:
        by_target.setdefault(r["target"], []).append(r)
    import numpy as np

    rows = sum(len(v) for v in by_target.values())
    fig = Figure(figsize=(8, 1.2 + 0.55 * rows + 0.6 * len(by_target)), layout="constrained")
    axes = fig.subplots(len(by_target), 1, squeeze=False)[:, 0]
    for ax, (target, results) in zip(axes, sorted(by_target.items()), strict=True):
        labels = []
        for y, r in enumerate(results):
            s = r["latency_ms"]
            samples = [v for v in (r.get("latency_samples_ms") or []) if v > 0]
            if len(samples) > 1 and max(samples) > min(samples):
                # histogram of the runner's sampled runs on log-spaced bins, mirrored like a violin
                edges = np.geomspace(min(samples), max(samples), 40)
                counts, _ = np.histogram(samples, bins=edges)
                half = 0.42 * counts / counts.max()
                centers = np.sqrt(edges[:-1] * edges[1:])
                ax.fill_between(centers, y - half, y + half, color="#9ecae9", alpha=0.7, linewidth=0)
            ax.hlines(y, s["min"], s["p99"], color="#555", linewidth=1)
            ax.barh(y, s["p90"] - s["p50"], left=s["p50"], height=0.4, color="#4c78a8", alpha=0.8)
            ax.plot([s["p50"]], [y], "|", color="black", markersize=14)
            ax.plot([s["max"]], [y], "x", color="#e45756")
            labels.append(f"{r['artifact']} ({r['threads']}t)")
        ax.set_yticks(range(len(results)), labels)
        ax.set_title(f"target {target}" + (" (THROTTLED)" if any(r.get("throttled") for r in results) else ""))
        ax.set_xscale("log")
        readable_log_axis(ax, min(r["latency_ms"]["min"] for r in results),
                          max(r["latency_ms"]["max"] for r in results))
        ax.set_xlabel("latency per inference (ms, log scale)\nshaded: histogram of runs; line: min to p99; "
                      "box: p50 to p90; |: p50; x: max", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    return fig


def _tradeoff_plot(points: dict[str, list[tuple[float, float, str]]], kind: str,
                   budgets: dict[str, Any] | None) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    markers = "osD^v<>"
    for i, (target, pts) in enumerate(sorted(points.items())):
        xs, ys = [p[0] for p in pts], [p[1] * 100 for p in pts]
        ax.scatter(xs, ys, marker=markers[i % len(markers)], s=50, label=f"{target}", zorder=3)
        front = pareto_front(pts)
        line = ax.step([p[0] for p in front], [p[1] * 100 for p in front], where="post", linestyle="--",
                       linewidth=1.2, label=f"Pareto front ({target})", zorder=2)[0]
        ax.scatter([p[0] for p in front], [p[1] * 100 for p in front], s=160, facecolors="none",
                   edgecolors=line.get_color(), linewidths=1.5, zorder=4)
        for n, (x, y, name) in enumerate(front):  # the rest are in the tables; labels would pile up
            ax.annotate(name, (x, y * 100), textcoords="offset points", xytext=(8, 6 - 12 * (n % 2)),
                        fontsize=8)
    limits = ((budgets or {}).get("limits") or {}).get("pipeline") or {}
    if limits.get("max_p90_ms"):
        ax.axvline(limits["max_p90_ms"], color="#e45756", linestyle=":", label="p90 budget")
    if limits.get("min_accuracy") and kind == "accuracy":
        ax.axhline(limits["min_accuracy"] * 100, color="#e45756", linestyle="-.", label="accuracy budget")
    ax.set_xlabel("p90 latency (ms), fastest thread count")
    ax.set_ylabel(f"{kind} (%)")
    ax.set_title(f"{kind} vs latency; circled and labelled: the Pareto front (nothing is both faster and better)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _size_plot(manifest: dict[str, Any]) -> bytes:
    from matplotlib.figure import Figure

    artifacts = manifest["artifacts"]
    fig = Figure(figsize=(8, 1.0 + 0.45 * len(artifacts)), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(artifacts)), [a["bytes"] / 1024 for a in artifacts], color="#72b7b2")
    ax.set_yticks(range(len(artifacts)), [a["name"] for a in artifacts])
    for y, a in enumerate(artifacts):
        ax.annotate(f"{a['bytes'] / 1024:.1f} KB", (a["bytes"] / 1024, y), textcoords="offset points",
                    xytext=(4, -3), fontsize=8)
    ax.set_xlabel("file size (KB)")
    ax.set_title("artifact sizes")
    ax.invert_yaxis()
    return _png(fig)


def make_plots(docs: RunDocuments) -> dict[str, tuple[str, bytes]]:
    """Chart key -> (title, PNG bytes), for the charts the run's data allows."""
    plots: dict[str, tuple[str, bytes]] = {}
    if docs.bench and docs.bench.get("results"):
        plots["latency"] = ("Latency distributions", _latency_plot(docs.bench))
    points, kind = tradeoff_points(docs.manifest)
    if points:
        plots["tradeoff"] = (f"{kind.capitalize()} vs latency, with the Pareto front",
                             _tradeoff_plot(points, kind, docs.budgets))
    if docs.manifest["artifacts"]:
        plots["sizes"] = ("Artifact sizes", _size_plot(docs.manifest))
    return plots


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#17663a;font-weight:600} .fail{color:#b00020;font-weight:700}
.warn{background:#fff3cd;color:#7a4b00;padding:0 .3rem;border-radius:3px;font-weight:600}
.estimate{background:#e8eefc;color:#1f3d7a;padding:0 .3rem;border-radius:3px;font-weight:600}
figure{margin:1rem 0} figure img{max-width:100%;border:1px solid #eee}
code{background:#f5f5f5;padding:0 .2rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[str]], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _verdict(text: str) -> str:
    css = "pass" if text == "pass" else "fail" if text in ("FAIL", "fail") else ""
    return f'<span class="{css}">{_e(text)}</span>' if css else _e(text)


def render_html(docs: RunDocuments, plots: dict[str, tuple[str, bytes]]) -> str:
    parts = [*_html_head(docs.manifest), *_html_summary(docs), *_html_budgets(docs.budgets), *_html_charts(plots),
             *_html_measurements(docs), *_html_estimates(docs.estimates), "</body></html>"]
    return "\n".join(parts) + "\n"


def _html_head(m: dict[str, Any]) -> list[str]:
    source = m["source_model"]
    name = source.get("name") or Path(source["path"]).stem
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edge-toolchain report: {_e(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>edge-toolchain report: {_e(name)}</h1>",
        "<ul>",
        f"<li>Run {_e(m['created_utc'])}, edge-toolchain {_e(m['toolchain_version'])}</li>",
        f"<li>Source model <code>{_e(source['path'])}</code>, sha256 <code>{_e(source['sha256'][:12])}…</code>, "
        f"{source['bytes'] / 1024:.1f} KB</li>",
        "<li>Tools: " + _e(", ".join(f"{k} {v}" for k, v in m["tool_versions"].items() if v)) + "</li>",
        "</ul>",
    ]
    data = m.get("data") or {}
    if data.get("warning"):  # e.g. random calibration data: shout it
        parts.append(f'<p class="warn" id="data-warning">WARNING: {_e(data["warning"])}</p>')
    return parts


def _html_summary(docs: RunDocuments) -> list[str]:
    rows = summary_rows(docs.manifest, docs.budgets)
    return [
        '<h2 id="summary">Summary</h2>',
        _table([t for _, t in COLUMNS], [
            [_verdict(r[k]) if k in ("verify", "budget") else _e(r[k]) for k, _ in COLUMNS] for r in rows
        ], raw=True),
        "<p>Accuracy is top-1 on the labelled evaluation data with its change against the Keras "
        "model; without labels, top-1 agreement with the Keras model. Speedup: p50 of the same "
        "format's fp32 artifact on the same target and threads divided by this p50.</p>",
    ]


def _html_budgets(budgets: dict[str, Any] | None) -> list[str]:
    if not budgets or not budgets.get("results"):
        return []
    if not any(r["checks"] for r in budgets["results"]):
        return ['<h2 id="budgets">Budgets</h2><p>No budgets set ([budgets] in the pipeline or a '
                "target profile).</p>"]
    parts = ['<h2 id="budgets">Budgets</h2>']
    if budgets.get("release_candidate"):
        ok = budgets.get("release_candidate_passed")
        parts.append(f"<p>Release candidate <code>{_e(budgets['release_candidate'])}</code> "
                     + ('<span class="pass">passes</span>' if ok else '<span class="fail">FAILS</span>')
                     + " its budgets.</p>")
    parts.append(_table(["Artifact", "Target", "Verdict", "Checks"], [[
        _e(r["artifact"]), _e(r["target"]), _verdict("pass" if r["passed"] else "FAIL"),
        "<br>".join(("" if c["passed"] else '<span class="fail">✗</span> ') + _e(c["reason"])
                    for c in r["checks"]) or "no limits set",
    ] for r in budgets["results"]], raw=True))
    return parts


def _html_charts(plots: dict[str, tuple[str, bytes]]) -> list[str]:
    if not plots:
        return []
    parts = ['<h2 id="charts">Charts</h2>']
    for key, (title, png) in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure id="plot-{_e(key)}"><img alt="{_e(title)}" '
                     f'src="data:image/png;base64,{data}"><figcaption>{_e(title)}</figcaption></figure>')
    return parts


def _html_measurements(docs: RunDocuments) -> list[str]:
    """Latency distributions, sizes and the benchmark environments."""
    benched = bool(docs.bench and docs.bench.get("results"))
    parts = []
    if benched:
        keys = ("artifact", "target", "threads", "count", "min", "p50", "p90", "p95", "p99", "max", "std")
        parts += ['<h2 id="latency">Latency distributions (ms)</h2>',
                  _table(["Artifact", "Target", "Threads", "Runs", "min", "p50", "p90", "p95", "p99", "max", "std"],
                         [[r[k] for k in keys] for r in latency_rows(docs.bench)])]
    parts += ['<h2 id="sizes">Sizes</h2>',
              _table(["Artifact", "Bytes", "KB", "vs fp32 of its format"],
                     [[r["artifact"], r["bytes"], r["kb"], r["vs_fp32"]] for r in size_rows(docs.manifest)])]
    if benched:
        parts += ['<h2 id="environments">Benchmark environments</h2>', _table(
            ["Target", "Threads", "CPU", "Cores", "Machine", "Governor", "Temperatures", "Software", "Warnings"],
            [[_e(r["target"]), _e(r["threads"]), _e(r["cpu"]), _e(r["cores"]), _e(r["machine"]),
              _e(r["governor"]), _e(r["temperatures"]), _e(r["software"]),
              " ".join(f'<span class="warn">{_e(w)}</span>' for w in r["warnings"]) or "none"]
             for r in environment_rows(docs.bench)], raw=True),
            "<p>Latency: per-inference wall time after warm-up, in a fresh process per benchmark, "
            "random inputs unless stated. Peak RSS is the process's VmHWM after all runs.</p>"]
    return parts


def _html_estimates(est: dict[str, Any] | None) -> list[str]:
    if not est or not (est.get("estimates") or est.get("skipped")):
        return []
    macs = est.get("macs_per_sample")
    parts = ['<h2 id="estimates">Estimates for targets not measured <span class="estimate">ESTIMATE</span></h2>',
             f"<p>Not measurements. {_e(est['method'])}. MACs per sample: "
             f"{_e(f'{macs:,}' if macs else 'unknown')}, batch {_e(est['batch_size'])}.</p>"]
    if est.get("estimates"):
        parts.append(_table(ESTIMATE_HEADERS, [
            [_e(e["artifact"]), _e(e["target"]),
             f'≥ {e["lower_bound_ms"]:.4f} <span class="estimate">estimate</span>', _e(e["bound"]),
             _e(compute_peak(e)), _e(f"{e['memory_bandwidth_gbs']:g}")]
            for e in est["estimates"]], raw=True))
    return parts + [f"<p>{_e(note[0].upper() + note[1:])}</p>" for note in estimate_notes(est)]


def write_reports(docs: RunDocuments) -> tuple[Path, Path]:
    """report/report.md, report/report.html and report/plots/*.png from the run's documents."""
    folder = docs.run_dir / "report"
    from ..optimize.report import optimize_plots

    plots = {**make_plots(docs), **optimize_plots(docs.run_dir, docs.manifest)}
    for key, (_, png) in plots.items():
        atomic_write_bytes(folder / "plots" / f"{key}.png", png)
    md = write_report(docs.run_dir, docs.manifest, docs.bench, docs.budgets, docs.estimates,
                      {title: f"plots/{key}.png" for key, (title, _) in plots.items()})
    page = folder / "report.html"
    atomic_write_text(page, render_html(docs, plots))
    return md, page

"""The optimize search in the run report: one latency-accuracy chart per target, the front marked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def optimize_plots(run_dir: Path, manifest: dict[str, Any]) -> dict[str, tuple[str, bytes]]:
    """{plot key: (title, png)} for each measured target of the run's optimize.json; {} without one."""
    relative = (manifest.get("files") or {}).get("optimize")
    if not relative:
        return {}
    try:
        document = json.loads((Path(run_dir) / relative).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    plots = {}
    for target, found in document.get("targets", {}).items():
        points = _points(document, found)
        if found.get("measured") and points:
            chosen = (found.get("recommended") or {}).get("candidate")
            title = f"optimize on {target}: latency vs accuracy (recommended: {chosen or 'none'})"
            plots[f"optimize-{target}"] = (title, _plot(target, points, found, document))
    return plots


def _points(document: dict[str, Any], found: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(candidate, p50 ms, accuracy or agreement, full measurement?) of every timed candidate."""
    points = []
    for record in document["candidates"]:
        result = found["results"].get(record["name"], {})
        p50 = result.get("p50_ms", (result.get("probe") or {}).get("p50_ms"))
        accuracy = record.get("accuracy") or {}
        score = accuracy.get("accuracy", accuracy.get("top1_agreement"))
        if p50 is not None and score is not None:
            points.append((record["name"], p50, score, "p50_ms" in result))
    return points


def _plot(target: str, points: list[tuple[str, float, float, bool]], found: dict[str, Any],
          document: dict[str, Any]) -> bytes:
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    front = set(found.get("front", []))
    chosen = (found.get("recommended") or {}).get("candidate")
    for name, p50, score, full in points:
        style = {"marker": "o" if full else "x", "color": "#4c78a8" if full else "#9d9d9d", "zorder": 3}
        ax.scatter([p50], [score * 100], s=50, **style)
        if name in front:
            ax.scatter([p50], [score * 100], s=170, facecolors="none", edgecolors="#f58518", linewidths=1.5, zorder=4)
        if name == chosen:
            ax.scatter([p50], [score * 100], s=260, marker="*", color="#e45756", zorder=5)
        ax.annotate(name, (p50, score * 100), textcoords="offset points", xytext=(6, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms, log scale); x: probe only (pruned); circled: the front; star: recommended")
    metric = "accuracy" if document["data"]["labelled"] else "top-1 agreement with Keras"
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{target}: {(found.get('recommended') or {}).get('note', 'no recommendation')}", fontsize=8)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()

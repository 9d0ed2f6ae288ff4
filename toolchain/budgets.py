"""Budgets: does each artifact fit each target? Pass/fail per artifact x target, with reasons.

Limits come from the pipeline's `[budgets]` (every target) and from each target
profile's budgets (that target only); when both set a limit, both are checked and
each check names where its limit came from. A limit on something that was not
measured (no benchmark on that target, no labelled data) fails: CI must not pass a
gate it could not check.

Latency and memory are judged at the artifact's fastest thread count on the target
(lowest p90), since that is the setting a deployment would pick.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .config import BudgetLimits, BudgetsSection, _did_you_mean, format_validation_error
from .errors import BudgetError, ConfigError
from .records import BUDGETS_SCHEMA_VERSION

# metric name, limit key, comparison, unit
METRICS = (
    ("p90_latency_ms", "max_p90_ms", "<=", "ms"),
    ("peak_memory_mb", "max_peak_memory_mb", "<=", "MB"),
    ("file_size_mb", "max_file_mb", "<=", "MB"),
    ("accuracy", "min_accuracy", ">=", ""),
    ("accuracy_drop", "max_accuracy_drop", "<=", ""),
)
MB = 1024 * 1024


class ReleaseCandidateFailed(BudgetError):
    """The artifact marked `release_candidate` failed a budget; carries the evaluation."""

    def __init__(self, message: str, evaluation: dict[str, Any]):
        super().__init__(message)
        self.evaluation = evaluation


def budgets_from_manifest(manifest: dict[str, Any]) -> BudgetsSection:
    """The pipeline budgets a run was made with (from the config recorded in its manifest)."""
    raw = (manifest.get("config") or {}).get("budgets", {})
    try:
        return BudgetsSection.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"the run's recorded [budgets]: {format_validation_error(e, BudgetsSection)}") from e


def profile_limits(profile: Any) -> BudgetLimits | None:
    """A target profile's budgets, if the profile declares any."""
    budgets = getattr(profile, "budgets", None)
    if budgets is None:
        return None
    values = budgets.model_dump() if hasattr(budgets, "model_dump") else dict(budgets)
    values = {k: v for k, v in values.items() if k in BudgetLimits.model_fields and v is not None}
    return BudgetLimits.model_validate(values) if values else None


def check_release_candidate(budgets: BudgetsSection, artifact_names: list[str]) -> None:
    """Fail early when `release_candidate` names no artifact of the run."""
    name = budgets.release_candidate
    if name is not None and name not in artifact_names:
        raise ConfigError(
            f"'budgets.release_candidate' is {name!r}, which is not an artifact of this run"
            f"{_did_you_mean(name, artifact_names)}; artifacts: {', '.join(artifact_names)}"
        )


def _fastest(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    measured = [s for s in summaries if s.get("p90_ms") is not None]
    return min(measured, key=lambda s: (s["p90_ms"], s["threads"])) if measured else None


def _accuracies(verify: dict[str, Any] | None) -> list[tuple[str, float, float | None]]:
    """(output name, accuracy, delta vs Keras) for every output that has labels."""
    outputs = (verify or {}).get("outputs") or {}
    return [(name, o["accuracy"], o.get("accuracy_delta")) for name, o in outputs.items()
            if o.get("accuracy") is not None]


def measure(artifact: dict[str, Any], target: str) -> dict[str, Any]:
    """The values the budgets look at, for one artifact on one target (None = not measured)."""
    fastest = _fastest((artifact.get("bench") or {}).get(target, []))
    accuracies = _accuracies(artifact.get("verify"))
    peak = fastest.get("peak_rss_kib") if fastest else None
    drops = [-delta for _, _, delta in accuracies if delta is not None]
    return {
        "threads": fastest["threads"] if fastest else None,
        "throttled": bool(fastest and fastest.get("throttled")),
        "p90_latency_ms": fastest["p90_ms"] if fastest else None,
        "peak_memory_mb": None if peak is None else peak / 1024,
        "file_size_mb": artifact["bytes"] / MB,
        "accuracy": min(a for _, a, _ in accuracies) if accuracies else None,
        "accuracy_drop": max(drops) if drops else None,
    }


def _why_unmeasured(metric: str, target: str) -> str:
    if metric in ("p90_latency_ms", "peak_memory_mb"):
        return f"not benchmarked on target '{target}'"
    return "no accuracy measured (the evaluation data has no labels, or verify was disabled)"


def _fmt(metric: str, value: float) -> str:
    if metric in ("accuracy", "accuracy_drop"):
        return f"{value * 100:.2f}%" if metric == "accuracy" else f"{value * 100:.2f} pt"
    unit = dict((m, u) for m, _, _, u in METRICS)[metric]
    return f"{value:.3f} {unit}"


def check_artifact(
    artifact: dict[str, Any], target: str, limits: list[tuple[str, BudgetLimits]]
) -> dict[str, Any]:
    """One artifact on one target against every (source, limits) pair."""
    values = measure(artifact, target)
    checks = []
    for source, section in limits:
        for metric, key, comparison, _unit in METRICS:
            limit = getattr(section, key)
            if limit is None:
                continue
            value = values[metric]
            if value is None:
                passed = False
                reason = f"{metric}: {_why_unmeasured(metric, target)} (limit {_fmt(metric, limit)}, {source})"
            else:
                passed = value <= limit if comparison == "<=" else value >= limit
                word = "within" if passed else "exceeds" if comparison == "<=" else "below"
                reason = f"{metric} {_fmt(metric, value)} {word} {key} {_fmt(metric, limit)} ({source})"
            checks.append({"metric": metric, "value": value, "limit": limit, "comparison": comparison,
                           "source": source, "passed": passed, "reason": reason})
    return {
        "artifact": artifact["name"],
        "format": artifact["format"],
        "recipe": artifact["recipe"],
        "target": target,
        "threads": values["threads"],
        "throttled": values["throttled"],
        "values": values,
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "failures": [c["reason"] for c in checks if not c["passed"]],
    }


def evaluate_budgets(
    manifest: dict[str, Any],
    budgets: BudgetsSection,
    targets: dict[str, BudgetLimits | None],
) -> dict[str, Any]:
    """Every artifact x target of a run. `targets` maps target name -> its profile's budgets."""
    results = []
    for artifact in manifest["artifacts"]:
        for target, profile_budgets in targets.items():
            limits: list[tuple[str, BudgetLimits]] = [("pipeline budget", budgets)]
            if profile_budgets is not None:
                limits.append((f"target '{target}' budget", profile_budgets))
            results.append(check_artifact(artifact, target, limits))
    candidate = budgets.release_candidate
    candidate_results = [r for r in results if r["artifact"] == candidate]
    return {
        "schema_version": BUDGETS_SCHEMA_VERSION,
        "limits": {
            "pipeline": budgets.model_dump(exclude={"release_candidate"}),
            "targets": {t: (b.model_dump() if b is not None else None) for t, b in targets.items()},
        },
        "release_candidate": candidate,
        "release_candidate_passed": None if candidate is None else all(r["passed"] for r in candidate_results),
        "results": results,
    }


def raise_if_release_candidate_fails(evaluation: dict[str, Any] | None) -> None:
    if not evaluation or evaluation.get("release_candidate_passed") is not False:
        return
    name = evaluation["release_candidate"]
    failures = [f"{r['target']}: {reason}" for r in evaluation["results"]
                if r["artifact"] == name for reason in r["failures"]]
    raise ReleaseCandidateFailed(
        f"release candidate {name} fails its budgets: " + "; ".join(failures)
        + " (see budgets.json; relax [budgets] or pick another release_candidate)",
        evaluation,
    )

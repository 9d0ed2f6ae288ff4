"""The search: build each candidate, verify it against the Keras model, benchmark it on each target.

Order and pruning (deterministic; only the timings vary):
1. every candidate is built and verified once (target-independent), fp32 baselines first;
   one that fails the accuracy budget or the size limit is never benchmarked;
2. per measured target (local, SSH), each passing candidate gets a short probe run; a probe
   already `probe_margin` times slower than the best full measurement so far stops there;
   the others get the full benchmark;
3. the recommendation is the fastest full measurement; a candidate slower than its format's
   fp32 on that target is rejected, so the recommendation never is.
Unmeasured targets (emulated) are ranked by correctness and file size, labelled as an estimate.
4. with `explain`, an int8 candidate that lost to fp32 on speed gets one follow-up per format
   from its profile (derive.py), built, verified and measured the same way (one round).
Builds, verdicts, benchmarks and explanations are cached in OUT/.cache/ by the content hash of
their inputs: an unchanged re-run is instant, a new target re-measures only. A candidate that
differs from another in onnxruntime session options only runs the other's file (one build).
`force` (--force) reads nothing from that cache: every candidate is rebuilt and re-measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import StageCache, file_digest
from ..compare import Tolerance, tolerance_for
from ..config import TargetProfile
from ..data import Dataset
from ..errors import ConfigError, StageError, TargetError
from ..records import OPTIMIZE_SCHEMA_VERSION, OptimizeDocument
from ..remote_units import Placement
from ..steps.base import Unit
from .candidates import Candidate, build_candidate
from .derive import derive_candidates

MEASURED_KINDS = ("local", "ssh")
CONFIRM_MARGIN = 0.15  # candidates this close to the best are measured again (_confirm_close_ones)
PROBE_SETTINGS = {"warmup_runs": 2, "warmup_seconds": 0.0, "min_runs": 5, "min_seconds": 0.0, "max_seconds": 2.0}


@dataclass(frozen=True)
class Budget:
    max_accuracy_drop: float = 0.01  # vs the Keras model on labelled data (0.01 = 1 pt); else 1 - top-1 agreement
    max_size_mb: float | None = None

    def check(self) -> None:
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ConfigError(f"--max-accuracy-drop must be in [0, 1] (0.01 = 1 pt), got {self.max_accuracy_drop}")
        if self.max_size_mb is not None and self.max_size_mb <= 0:
            raise ConfigError(f"--max-size-mb must be positive, got {self.max_size_mb}")

    def tolerance(self, fmt: str, recipe: str, labelled: bool) -> Tolerance:
        """The recipe's own sanity limits (cosine, agreement: a broken layer fails them even when
        accuracy on the data happens to hold), with the user's budget as the accuracy drop, or,
        without labels, as the top-1 disagreement allowed."""
        tolerance = tolerance_for(recipe, fmt=fmt)
        if labelled:
            tolerance.max_accuracy_drop = self.max_accuracy_drop
        else:
            tolerance.max_accuracy_drop = None
            tolerance.min_top1_agreement = max(tolerance.min_top1_agreement or 0.0, 1 - self.max_accuracy_drop)
        return tolerance


@dataclass
class SearchSettings:
    threads: int = 1
    time_budget_s: float | None = None  # stop trying new candidates after this long
    bench: dict[str, Any] = field(default_factory=dict)  # overrides of the full benchmark (min_seconds...)
    probe_margin: float = 1.5  # a probe this many times slower than the best so far cannot win
    explain: bool = True  # profile each fully measured candidate (XNNPACK partitions, ORT per-op time)
    force: bool = False  # ignore the search's cache: rebuild and re-measure everything
    confirm_rounds: int = 2  # extra interleaved measurements of the candidates close to the best


@dataclass
class SearchInputs:
    """What every candidate shares: the model, its file's hash, the data split, the Keras outputs."""

    model: Any
    model_sha256: str
    calibration: Dataset
    evaluation: Dataset
    reference: dict[str, Any]
    model_name: str


class Clock:
    """The --time-budget: how long the search has run, and whether it may start more work."""

    def __init__(self, budget_s: float | None):
        self.start = time.monotonic()
        self.budget_s = budget_s

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def spent(self) -> bool:
        return self.budget_s is not None and self.elapsed >= self.budget_s


def search(inputs: SearchInputs, candidates: list[Candidate], profiles: list[TargetProfile], out_dir: Path,
           budget: Budget, settings: SearchSettings,
           progress: Callable[[str], None] = lambda message: None,
           placement: Placement | None = None) -> dict[str, Any]:
    """The optimize.json document (also written to OUT/optimize.json).

    `placement` says where candidate builds run (default: here, one after the other)."""
    from ..fileio import atomic_write_json

    budget.check()
    clock = Clock(settings.time_budget_s)
    cache = StageCache(out_dir, force=settings.force)
    built = [c for c in candidates if c.shares_file is None]
    records = _build_all(inputs, built, out_dir, cache, budget, clock, progress, placement)
    records += _shared_records(candidates, records)
    measured: dict[str, dict[str, dict[str, Any]]] = {profile.name: {} for profile in profiles}
    per_target = _search_targets(records, profiles, measured, out_dir, cache, settings, clock, progress)
    derived: list[dict[str, Any]] = []
    if settings.explain:
        _explain_measured(records, per_target, out_dir, cache, progress)
        follow_ups, derived = derive_candidates(inputs.model, candidates, records, per_target, out_dir)
        if follow_ups:
            records += _build_all(inputs, follow_ups, out_dir, cache, budget, clock, progress, placement)
            per_target = _search_targets(records, profiles, measured, out_dir, cache, settings, clock, progress)
            _explain_measured(records, per_target, out_dir, cache, progress)
    document = {
        "schema_version": OPTIMIZE_SCHEMA_VERSION,
        "model": {"name": inputs.model_name, "sha256": inputs.model_sha256},
        "data": {"calibration_samples": len(inputs.calibration), "evaluation_samples": len(inputs.evaluation),
                 "labelled": inputs.evaluation.labels is not None, "source": inputs.evaluation.source},
        "budget": {"max_accuracy_drop": budget.max_accuracy_drop, "max_size_mb": budget.max_size_mb,
                   "metric": "accuracy drop vs Keras" if inputs.evaluation.labels is not None
                   else "1 - top-1 agreement with Keras"},
        "settings": {"threads": settings.threads, "time_budget_s": settings.time_budget_s,
                     "probe_margin": settings.probe_margin, "bench": settings.bench, "force": settings.force},
        "candidates": records,
        "derived": derived,
        "targets": per_target,
        "recommended": {name: t["recommended"] for name, t in per_target.items()},
        "candidate_count": len(records),
        "wall_seconds": round(clock.elapsed, 3),
    }
    document = OptimizeDocument.model_validate(document).to_json()  # typed: a wrong shape fails here
    atomic_write_json(out_dir / "optimize.json", document)
    return document


# ---- build and verify (once per candidate) -----------------------------------------------

def _build_all(inputs: SearchInputs, candidates: list[Candidate], out_dir: Path, cache: StageCache,
               budget: Budget, clock: Clock, progress: Callable[[str], None],
               placement: Placement | None) -> list[dict[str, Any]]:
    """Every candidate's record: cached, or built and verified through the executor (on Ray: a unit
    per candidate on the cluster), cached under the same key wherever it was built."""
    from ..executor import InProcessExecutor
    from .build_units import CandidateBuild, CandidateWork

    records: list[dict[str, Any]] = []
    builds = []
    for candidate in candidates:
        record, path, key = _planned(inputs, candidate, out_dir, cache, budget)
        hit = cache.get("optimize", key)
        if hit is not None:
            progress(f"{candidate.name}: cached")
            record = {**record, **hit.result, "cached": {"build": True}}
        else:
            builds.append(CandidateBuild(Unit(candidate.name, key, candidate, [path]), len(records), record))
        records.append(record)
    work = CandidateWork(inputs, out_dir, budget, clock, progress, placement)

    def built(build: CandidateBuild, result: dict[str, Any]) -> None:
        work.settle(build, result)
        if result["verdict"] == "not-tried":
            records[build.index] = {**build.record, **result}
            return
        if result["verdict"] != "build-failed":
            cache.put("optimize", build.unit.key, build.unit.outputs, result)
        records[build.index] = {**build.record, **result, "cached": {"build": False}}

    executor = placement.executor if placement is not None else InProcessExecutor()
    try:
        executor.run(builds, work, built)
    finally:
        work.cleanup()
    return records


def _planned(inputs: SearchInputs, candidate: Candidate, out_dir: Path, cache: StageCache,
             budget: Budget) -> tuple[dict[str, Any], Path, str]:
    """A candidate's record before it is built, its file and its build cache key."""
    suffix = ".tflite" if candidate.format == "tflite" else ".onnx"
    path = out_dir / "candidates" / f"{inputs.model_name}.{candidate.name}{suffix}"
    record: dict[str, Any] = {"name": candidate.name, **candidate.settings(), "why_tried": candidate.why,
                              "path": str(path.relative_to(out_dir)), "int8_class": candidate.int8_class}
    if candidate.derived_from:
        record["derived_from"] = candidate.derived_from
    key = cache.key("optimize-build", model=inputs.model_sha256, candidate=candidate.file_settings(),
                    calibration=_digest(inputs.calibration), evaluation=_digest(inputs.evaluation),
                    budget=[budget.max_accuracy_drop, budget.max_size_mb])
    return record, path, key


def _shared_records(candidates: list[Candidate], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidates that run another's file with other session options: its build and verdict, not rebuilt."""
    built = {r["name"]: r for r in records}
    shared = []
    for candidate in candidates:
        base = built.get(candidate.shares_file or "")
        if base is not None:
            shared.append({**base, "name": candidate.name, **candidate.settings(), "why_tried": candidate.why,
                           "shares_file": base["name"]})
    return shared


def _build_result(inputs: SearchInputs, candidate: Candidate, path: Path, budget: Budget) -> dict[str, Any]:
    from ..fileio import sha256_file
    from ..stages.verify import verify_artifact

    float_onnx = path.parent / f".{inputs.model_name}.float.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        build_candidate(inputs.model, candidate, path, inputs.calibration, float_onnx)
    except (StageError, ConfigError) as e:
        return {"verdict": "build-failed", "why": str(e)}
    tolerance = budget.tolerance(candidate.format, candidate.recipe, inputs.evaluation.labels is not None)
    checked = verify_artifact(path, inputs.reference, inputs.evaluation, tolerance)
    result = {"bytes": path.stat().st_size, "sha256": sha256_file(path), "accuracy": _accuracy(checked)}
    size_mb = result["bytes"] / 1e6
    if checked["verdict"] != "pass":
        return {**result, "verdict": "rejected-accuracy", "why": "; ".join(checked["failures"]),
                "tolerance": tolerance.as_dict()}
    if budget.max_size_mb is not None and size_mb > budget.max_size_mb:
        return {**result, "verdict": "rejected-size",
                "why": f"{size_mb:.3f} MB is over --max-size-mb {budget.max_size_mb:g}"}
    return {**result, "verdict": "pass", "why": "meets the accuracy budget", "tolerance": tolerance.as_dict()}


def _accuracy(checked: dict[str, Any]) -> dict[str, Any]:
    """The first output's metrics that the budget reads."""
    first = next(iter(checked.get("outputs", {}).values()), {})
    keys = ("samples", "accuracy", "accuracy_reference", "accuracy_delta", "top1_agreement", "cosine_mean",
            "cosine_min")
    return {k: first[k] for k in keys if k in first}


def _digest(dataset: Dataset) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(dataset.inputs):
        digest.update(name.encode())
        digest.update(dataset.inputs[name].tobytes())
    if dataset.labels is not None:
        digest.update(dataset.labels.tobytes())
    return digest.hexdigest()


# ---- per target ---------------------------------------------------------------------------

def _search_targets(records: list[dict[str, Any]], profiles: list[TargetProfile],
                    measured: dict[str, dict[str, dict[str, Any]]], out_dir: Path, cache: StageCache,
                    settings: SearchSettings, clock: Clock, progress: Callable[[str], None]) -> dict[str, Any]:
    """Each target's summary; `measured` (target -> candidate -> raw result) keeps what this run has
    measured, so a second round (derived candidates) measures the new candidates only."""
    return {profile.name: _search_target(records, profile, measured[profile.name], out_dir, cache, settings,
                                         clock, progress) for profile in profiles}


def _search_target(records: list[dict[str, Any]], profile: TargetProfile, results: dict[str, dict[str, Any]],
                   out_dir: Path, cache: StageCache, settings: SearchSettings, clock: Clock,
                   progress: Callable[[str], None]) -> dict[str, Any]:
    import copy

    passing = [r for r in records if r["verdict"] == "pass"]
    if profile.connection.kind not in MEASURED_KINDS:
        return _rank_unmeasured(records, passing, profile)
    for record in records:
        if record["name"] in results:
            continue
        if record["verdict"] != "pass":
            results[record["name"]] = {"verdict": "rejected", "why": record["why"]}
            continue
        if clock.spent():
            results[record["name"]] = {"verdict": "not-tried", "why": f"--time-budget of {clock.budget_s:g} s spent"}
            continue
        best = _best_full(results)
        results[record["name"]] = _measure(record, profile, out_dir, cache, settings, best, progress)
    if not clock.spent():
        _confirm_close_ones(records, profile, results, out_dir, cache, settings, progress)
    judged = copy.deepcopy(results)
    _judge_speed(records, judged)
    return _target_summary(records, judged, profile)


def _measure(record: dict[str, Any], profile: TargetProfile, out_dir: Path, cache: StageCache,
             settings: SearchSettings, best: tuple[str, float] | None,
             progress: Callable[[str], None]) -> dict[str, Any]:
    """Probe, then (unless the probe cannot win) the full benchmark."""
    try:
        probe = _bench(record, profile, out_dir, cache, settings.threads, PROBE_SETTINGS, "probe")
        if best is not None and probe["p50_ms"] > settings.probe_margin * best[1]:
            progress(f"{record['name']} on {profile.name}: pruned after the probe")
            return {"verdict": "rejected", "probe": probe, "pruned": True,
                    "why": f"pruned: probe p50 {probe['p50_ms']:.3f} ms is over {settings.probe_margin:g}x the best "
                           f"so far ({best[0]}, {best[1]:.3f} ms)"}
        full = _bench(record, profile, out_dir, cache, settings.threads, settings.bench, "full")
    except TargetError as e:
        return {"verdict": "rejected", "why": f"failed on the target: {e}"}
    progress(f"{record['name']} on {profile.name}: p50 {full['p50_ms']:.3f} ms")
    return {"verdict": "measured", "probe": probe, **full}


def _bench(record: dict[str, Any], profile: TargetProfile, out_dir: Path, cache: StageCache, threads: int,
           overrides: dict[str, Any], phase: str) -> dict[str, Any]:
    from ..stages.bench import run_benchmarks

    options = record["session_options"] if record["format"] == "onnx" else {}
    key = cache.key("optimize-bench", artifact=record["sha256"], target=profile.model_dump(mode="json"),
                    threads=threads, settings=overrides, phase=phase, session_options=options)
    hit = cache.get("optimize", key)
    if hit is not None:
        return {**hit.result, "cached": True}
    answer = run_benchmarks([out_dir / record["path"]], [profile], [threads], overrides=overrides,
                            session_options=options or None)[0]
    latency = answer["latency_ms"]
    result = {"p50_ms": latency["p50"], "p90_ms": latency["p90"], "runs": latency["count"],
              "backend": answer["environment"].get("backend")}
    if options:
        result["session_options"] = answer.get("session_options")  # what the runner applied
    cache.put("optimize", key, [], result)
    return {**result, "cached": False}


def _confirm_close_ones(records: list[dict[str, Any]], profile: TargetProfile, results: dict[str, dict[str, Any]],
                        out_dir: Path, cache: StageCache, settings: SearchSettings,
                        progress: Callable[[str], None]) -> None:
    """One measurement each cannot rank files a few percent apart (measured: a 4 us model at 2 threads
    ranked fp32 first, 1.23x an int8 file in an interleaved re-measurement). The candidates within
    CONFIRM_MARGIN of the best, and the fp32 baselines they are judged against, are measured
    CONFIRM_ROUNDS more times, interleaved in rotating order; their p50 becomes the median of all
    their measurements. Each round is cached, so an unchanged re-run measures nothing."""
    best = _best_full(results)
    if best is None or settings.confirm_rounds < 1:
        return
    measured = [r for r in records if results.get(r["name"], {}).get("verdict") == "measured"]
    close = [r for r in measured if _baseline(r) or results[r["name"]]["p50_ms"] <= best[1] * (1 + CONFIRM_MARGIN)]
    if len(close) < 2:
        return
    samples = {r["name"]: [results[r["name"]].get("p50_first_ms", results[r["name"]]["p50_ms"])] for r in close}
    progress(f"confirming {len(close)} close candidates on {profile.name} ({settings.confirm_rounds} rounds)")
    for round_index in range(settings.confirm_rounds):
        shift = round_index % len(close)
        for record in close[shift:] + close[:shift]:
            try:
                timing = _bench(record, profile, out_dir, cache, settings.threads, settings.bench,
                                f"confirm-{round_index}")
            except TargetError:
                continue  # the first measurement stands for this round
            samples[record["name"]].append(timing["p50_ms"])
    for name, values in samples.items():
        result = results[name]
        result["p50_first_ms"] = values[0]
        result["confirm_p50s_ms"] = values
        result["p50_ms"] = float(statistics.median(values))


def _best_full(results: dict[str, dict[str, Any]]) -> tuple[str, float] | None:
    measured = [(name, r["p50_ms"]) for name, r in results.items() if r["verdict"] == "measured"]
    return min(measured, key=lambda item: item[1]) if measured else None


def _judge_speed(records: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> None:
    """A candidate slower than its format's fp32 on this target is rejected (it is never the answer)."""
    fp32 = {r["format"]: results[r["name"]] for r in records if _baseline(r)}
    for record in records:
        result = results[record["name"]]
        base = fp32.get(record["format"])
        if result["verdict"] != "measured" or _baseline(record):
            continue
        if base is not None and base["verdict"] == "measured" and result["p50_ms"] > base["p50_ms"]:
            result["verdict"] = "rejected"
            result["why"] = (f"slower than {record['format']} fp32 on this target: p50 {result['p50_ms']:.3f} ms vs "
                             f"{base['p50_ms']:.3f} ms ({result['p50_ms'] / base['p50_ms']:.2f}x)")


def _baseline(record: dict[str, Any]) -> bool:
    """A format's plain fp32 (candidates.Candidate.baseline)."""
    return record["recipe"] == "fp32" and not record["session_options"] and record["rewrite"] is None


def _target_summary(records: list[dict[str, Any]], results: dict[str, dict[str, Any]],
                    profile: TargetProfile) -> dict[str, Any]:
    best = _best_full(results)
    for name, result in results.items():
        if result["verdict"] == "measured":
            result["verdict"] = "recommended" if best and name == best[0] else "accepted"
            if result["verdict"] == "accepted":
                result["why"] = f"meets the budgets; {result['p50_ms'] / best[1]:.2f}x the recommended p50"
            else:
                result["why"] = "meets the budgets with the lowest p50"
    recommended = None
    if best is not None:
        record = next(r for r in records if r["name"] == best[0])
        recommended = {"candidate": best[0], "path": record["path"], "format": record["format"],
                       "session_options": record["session_options"], "p50_ms": best[1], "measured": True,
                       "note": _quantization_note(records, results, best)}
    return {"target": profile.name, "connection": profile.connection.kind, "measured": True,
            "results": results, "recommended": recommended, "front": pareto_front(records, results)}


def _quantization_note(records: list[dict[str, Any]], results: dict[str, dict[str, Any]],
                       best: tuple[str, float]) -> str:
    """What quantization buys on this target, or by how much it loses (probe figures of pruned ones)."""
    by_name = {r["name"]: r for r in records}
    timed = [(n, _p50(r)) for n, r in results.items() if _p50(r) is not None]
    int8 = [(n, p) for n, p in timed if by_name[n]["int8_class"]]
    fp32 = [(n, p) for n, p in timed if by_name[n]["recipe"] == "fp32"]
    if not int8 or not fp32:
        return "no int8-class candidate reached the target (rejected for accuracy or size, or failed)"
    fastest_int8 = min(int8, key=lambda item: item[1])
    fastest_fp32 = min(fp32, key=lambda item: item[1])
    ratio = fastest_int8[1] / fastest_fp32[1]
    probe = "" if "p50_ms" in results[fastest_int8[0]] else " (its probe run)"
    if ratio >= 1:
        return (f"quantization buys nothing here: the fastest int8-class candidate ({fastest_int8[0]}{probe}) "
                f"is {ratio:.2f}x the p50 of {fastest_fp32[0]}")
    return f"quantization pays: {fastest_int8[0]}{probe} runs at {ratio:.2f}x the p50 of {fastest_fp32[0]}"


def pareto_front(records: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> list[str]:
    """Candidates no other beats on both p50 and accuracy (the latency-accuracy front)."""
    points = []
    for record in records:
        result = results.get(record["name"], {})
        if result.get("verdict") in ("recommended", "accepted", "measured"):
            score = record["accuracy"].get("accuracy", record["accuracy"].get("top1_agreement", 0.0))
            points.append((record["name"], result["p50_ms"], score))
    return [name for name, p50, score in points
            if not any(p <= p50 and s >= score and (p < p50 or s > score) for _, p, s in points)]


def _rank_unmeasured(records: list[dict[str, Any]], passing: list[dict[str, Any]],
                     profile: TargetProfile) -> dict[str, Any]:
    """No timing here (an emulated target's figures are not a device's): the smallest passing file."""
    results = {r["name"]: {"verdict": "rejected", "why": r["why"]} for r in records if r["verdict"] != "pass"}
    ordered = sorted(passing, key=lambda r: (r["bytes"], r["name"]))
    for index, record in enumerate(ordered):
        results[record["name"]] = {"verdict": "recommended" if index == 0 else "accepted",
                                   "why": f"ESTIMATE, not measured on {profile.name}: ranked by file size"}
    recommended = None
    if ordered:
        recommended = {"candidate": ordered[0]["name"], "path": ordered[0]["path"], "format": ordered[0]["format"],
                       "session_options": ordered[0]["session_options"], "p50_ms": None, "measured": False,
                       "note": f"ESTIMATE: {profile.name} ({profile.connection.kind}) is not measured; the "
                               "smallest file that meets the accuracy budget"}
    return {"target": profile.name, "connection": profile.connection.kind, "measured": False,
            "results": results, "recommended": recommended, "front": []}


# ---- why a measured candidate is slow ------------------------------------------------------

def _explain_measured(records: list[dict[str, Any]], per_target: dict[str, dict[str, Any]], out_dir: Path,
                      cache: StageCache, progress: Callable[[str], None]) -> None:
    from .explain import explain_artifact

    profiled: dict[str, Any] = {}  # one profile per file (session-option variants share theirs)
    for record in records:
        timings = [_p50(t["results"].get(record["name"], {})) for t in per_target.values()]
        timings = [p for p in timings if p is not None]
        if not timings or "sha256" not in record or "explain" in record:
            continue
        key = cache.key("optimize-explain", artifact=record["sha256"], version=2)
        hit = cache.get("optimize", key) if key not in profiled else profiled[key]
        if hit is None:
            progress(f"{record['name']}: profiling")
            found = explain_artifact(out_dir / record["path"], min(timings))
            hit = cache.put("optimize", key, [], found)
        profiled[key] = hit
        record["explain"] = hit.result


def _p50(result: dict[str, Any]) -> float | None:
    """The full p50, else the probe's (a pruned candidate is explained too: why it lost)."""
    return result.get("p50_ms", (result.get("probe") or {}).get("p50_ms"))


def load_inputs(model_path: Path, data_path: Path, *, trust: bool = False,
                calibration_samples: int = 100) -> SearchInputs:
    """The model and the data split: the first samples calibrate, the rest evaluate (disjoint)."""
    from ..data import load_npz
    from ..errors import DataError
    from ..keras_io import input_signature, load_model, run_keras

    model = load_model(model_path, trust=trust)
    data = load_npz(data_path, input_signature(model))
    if len(data) < 4:
        raise DataError(f"{data_path}: {len(data)} samples; the search needs at least 4 (calibration and "
                        "evaluation are disjoint)")
    count = min(calibration_samples, len(data) // 3)
    import numpy as np

    calibration = data.take(np.arange(count))
    evaluation = data.take(np.arange(count, len(data)))
    return SearchInputs(model, file_digest(model_path) or "", calibration, evaluation,
                        run_keras(model, evaluation.inputs), _safe_name(model.name))


def _safe_name(name: str) -> str:
    import re

    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "model"
    return cleaned[:64]


def optimize_file(model_path: Path, data_path: Path, profiles: list[TargetProfile], out_dir: Path, budget: Budget,
                  settings: SearchSettings, *, formats: list[str], only: list[str] | None = None,
                  trust: bool = False, progress: Callable[[str], None] = lambda message: None,
                  executor: Any = None) -> dict[str, Any]:
    """`edge-toolchain optimize`: load, list the candidates, search, write OUT/optimize.json.

    `executor` builds the candidates (default: in this process; `RayExecutor`: on the cluster)."""
    from .candidates import candidates_for

    budget.check()
    if settings.time_budget_s is not None and settings.time_budget_s <= 0:
        raise ConfigError(f"--time-budget must be positive seconds, got {settings.time_budget_s:g}")
    inputs = load_inputs(model_path, data_path, trust=trust)
    candidates = candidates_for(inputs.model, formats, only, threads=settings.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    placement = Placement(executor, model_path, trust) if executor is not None else None
    return search(inputs, candidates, profiles, out_dir, budget, settings, progress, placement)

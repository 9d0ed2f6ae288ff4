"""Optimize stage ([optimize]): search the fastest artifact within the accuracy budget on each [bench] target.

One unit: the search caches each candidate's build, verdict and benchmark itself (RUN/optimize/.cache),
so an unchanged re-run is instant and a new target re-measures only. With [execution] backend = "ray"
the search builds and verifies its candidates on the cluster, one unit each (optimize/build_units.py).
The recommended artifacts join the manifest's artifacts (so `package --recommended` can ship them),
each with the targets it is recommended on.
"""

from __future__ import annotations

from typing import Any

from .base import Done, RunState, Stage, Unit


class OptimizeStage(Stage):
    name = "optimize"
    only = "optimize"

    def enabled(self, run: RunState) -> bool:
        return run.config.optimize is not None and run.config.optimize.enabled

    def label(self, run: RunState) -> str:
        return f"on {', '.join(run.config.bench.targets)}"

    def prepare(self, run: RunState) -> None:
        """Without evaluation data there is no accuracy to budget: refuse before anything is written."""
        from ..errors import DataError

        if run.data is None or run.run_data.calibration is None:
            raise DataError("[optimize] needs evaluation data to judge accuracy against the Keras model: set "
                            "[data] eval = \"EVAL.npz\" (with labels for an accuracy budget) and "
                            "[data.calibration] source")

    def units(self, run: RunState) -> list[Unit]:
        return [Unit(self.label(run), what="the optimize search")]

    def run_unit(self, run: RunState, unit: Unit) -> dict[str, Any]:
        from ..keras_io import run_keras
        from ..optimize.candidates import candidates_for
        from ..optimize.search import Budget, SearchInputs, SearchSettings, search
        from ..remote_units import placement_for

        section = run.config.optimize
        calibration, evaluation = run.run_data.calibration, run.data
        inputs = SearchInputs(run.model, run.source_key, calibration, evaluation,
                              run_keras(run.model, evaluation.inputs), run.config.model_name)
        settings = SearchSettings(threads=section.threads, time_budget_s=section.time_budget_s,
                                  bench={"min_seconds": section.min_seconds} if section.min_seconds is not None else {},
                                  probe_margin=section.probe_margin, explain=section.explain,
                                  force=run.context.cache.force and run.context.mode(self.only) == "run")
        folder = run.run_dir / "optimize"
        folder.mkdir(exist_ok=True)
        chosen = candidates_for(run.model, list(section.formats), section.candidates, threads=section.threads)
        return search(inputs, chosen,
                      list(run.context.profiles), folder, Budget(section.max_accuracy_drop, section.max_size_mb),
                      settings, placement=placement_for(run))

    def finish(self, run: RunState, done: list[Done]) -> None:
        document = done[0].result
        run.documents["optimize"] = document
        run.manifest["files"]["optimize"] = "optimize/optimize.json"
        for record in recommended_records(run, document):
            run.manifest["artifacts"].append(record)
            run.records[record["name"]] = record


def recommended_records(run: RunState, document: dict[str, Any]) -> list[dict[str, Any]]:
    """One manifest artifact record per recommended candidate, with the targets it won."""
    from ..artifact_info import describe

    by_candidate: dict[str, list[str]] = {}
    for target, chosen in document["recommended"].items():
        if chosen is not None:
            by_candidate.setdefault(chosen["candidate"], []).append(target)
    candidates = {c["name"]: c for c in document["candidates"]}
    parent = run.manifest["models"][-1]["sha256"] if run.manifest.get("models") else \
        run.manifest["source_model"]["sha256"]
    records = []
    for name, targets in by_candidate.items():
        candidate = candidates[name]
        path = run.run_dir / "optimize" / candidate["path"]
        info = describe(path)
        records.append({
            "name": f"{document['model']['name']}.{name}{path.suffix}",  # unique even where candidates share a file
            "path": str(path.relative_to(run.run_dir)), "format": candidate["format"],
            "recipe": candidate["recipe"], "bytes": info["bytes"], "sha256": info["sha256"], "parent": parent,
            "inputs": info["inputs"], "outputs": info["outputs"], "ops": info["ops"],
            "verify": {"verdict": "pass", "failures": [], "outputs": {}, "accuracy": candidate["accuracy"]},
            "bench": {},
            "optimize": {"candidate": name, "recommended_on": targets, "settings": {
                k: candidate[k] for k in ("keep_float", "knobs", "rewrite", "session_options")},
                "p50_ms": {t: document["recommended"][t]["p50_ms"] for t in targets},
                "notes": {t: document["recommended"][t]["note"] for t in targets}},
            **({"opset": info["opset"]} if candidate["format"] == "onnx" else {}),
        })
    return records

"""Sweep cut points: what each costs (params, MACs, size, fp32 TFLite latency) and keeps (accuracy).

For every candidate cut point the model is truncated there, a new head is trained on
the training data (base frozen, seeded) and scored on held-out data; the artifact is
exported to fp32 TFLite and benchmarked on a target. Every droppable residual block is
also dropped alone, keeping the original head, to price it in accuracy. Without labels
the "accuracy" is agreement with the original model's top-1 (the heads learn to mimic
it). Outputs: sweep.json, sweep.md and sweep.png (accuracy vs latency, Pareto front).
Each point (head training, export, scoring) is a unit of work: on the Ray executor it runs on
the cluster from the model's and the data's bytes; the benchmarks run here, after them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import __version__
from .data import Dataset
from .errors import BudgetError, InputError
from .remote_units import Placement, dataset_arrays, dataset_from, load_model_bytes, read_arrays, write_arrays
from .steps.base import RemoteUnit, Unit

SWEEP_SCHEMA_VERSION = "1.0"
BENCH_OVERRIDES = {"warmup_runs": 3, "warmup_seconds": 0.05, "min_runs": 30, "min_seconds": 0.3,
                   "max_seconds": 10.0}
WEIGHTED = ("Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
            "SeparableConv2D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")


@dataclass
class Budget:
    max_latency_ms: float | None = None
    min_accuracy: float | None = None

    def met_by(self, point: dict[str, Any]) -> bool:
        if self.max_latency_ms is not None and point["latency_ms"]["p50"] > self.max_latency_ms:
            return False
        return not (self.min_accuracy is not None and point["accuracy"] < self.min_accuracy)

    @property
    def given(self) -> bool:
        return self.max_latency_ms is not None or self.min_accuracy is not None


def block_boundaries(model: Any) -> list[str]:
    """Default cut points: the input of each stage.

    A boundary is a layer whose output every path from the inputs to the outputs goes
    through (so cutting there keeps a whole prefix of blocks, never half a residual
    block), that comes after a layer with weights (a cut after input scaling keeps nothing
    learned) and that feeds a layer with weights (Conv/Dense), looking through zero
    padding. The last layer is left out:
    cutting there is the full model. Sub-models are searched as `outer/inner`.
    """
    from .stages.truncate import _analyse, _is_submodel

    def feeds_weights(node: Any, graph: Any) -> bool:
        layer = node.operation
        if type(layer).__name__ in WEIGHTED or _is_submodel(layer):
            return True
        if type(layer).__name__.startswith("ZeroPadding"):  # look through padding
            return any(feeds_weights(c, graph) for t in node.outputs for c in graph.consumers.get(id(t), []))
        return False

    def has_weights(layer: Any) -> bool:
        return type(layer).__name__ in WEIGHTED or (_is_submodel(layer) and layer.count_params() > 0)

    def is_boundary(node: Any, graph: Any, order: list[Any], position: dict[int, int]) -> bool:
        consumers = [c for t in node.outputs for c in graph.consumers.get(id(t), [])]
        if not consumers or type(node.operation).__name__.startswith("ZeroPadding"):
            return False  # the last layer is the full model; a cut before padding is the same stage
        # an articulation point: no edge jumps over this node in topological order
        here = position[id(node)]
        jumps = any(
            position.get(id(graph.producer.get(id(t))), -1) < here < position[id(other)]
            for other in order[here + 1:] for t in other.input_tensors
        )
        return not jumps and any(feeds_weights(c, graph) for c in consumers)

    def visit(model: Any, prefix: str, weighted_before: bool) -> tuple[list[str], bool]:
        graph = _analyse(model, prefix)
        order = [n for n in graph.nodes if not n.is_input and n.operation is not None]
        position = {id(n): i for i, n in enumerate(order)}
        position.update({id(n): -1 for n in graph.nodes if n.is_input})  # inputs come first
        found: list[str] = []
        for node in order:
            layer = node.operation
            if _is_submodel(layer):
                inner, _ = visit(layer, prefix + layer.name + "/", weighted_before)
                found.extend(inner)
            weighted_before = weighted_before or has_weights(layer)
            # a cut before any weights (input scaling, padding) keeps nothing learned
            if weighted_before and is_boundary(node, graph, order, position):
                found.append(prefix + layer.name)
        return found, weighted_before

    return visit(model, "", False)[0]


def default_head(feature_rank: int, classes: int) -> str:
    return ("gap," if feature_rank > 2 else "") + f"classes:{classes}"


def pareto_front(points: list[dict[str, Any]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher)."""
    front = []
    for i, p in enumerate(points):
        dominated = any(
            q["latency_ms"]["p50"] <= p["latency_ms"]["p50"] and q["accuracy"] >= p["accuracy"]
            and (q["latency_ms"]["p50"] < p["latency_ms"]["p50"] or q["accuracy"] > p["accuracy"])
            for j, q in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def recommend(points: list[dict[str, Any]], budget: Budget) -> dict[str, Any] | None:
    """Within the budget: the most accurate point under a latency cap, else the fastest
    point over an accuracy floor. None when no budget is given or nothing meets it."""
    if not budget.given:
        return None
    ok = [p for p in points if budget.met_by(p)]
    if not ok:
        return None
    if budget.max_latency_ms is not None:
        return max(ok, key=lambda p: (p["accuracy"], -p["latency_ms"]["p50"]))
    return min(ok, key=lambda p: (p["latency_ms"]["p50"], -p["accuracy"]))


def _predict(model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The first output; inputs by position (a truncated model keeps the original's inputs, in order)."""
    from .stages.truncate import predict_arrays

    return predict_arrays(model, list(inputs.values()))[0]


def _head_class_count(model: Any, given: int | None, use_labels: bool, *labels: np.ndarray) -> int:
    """The heads' outputs: --classes, else the labels' 0..max, else the model's own classes."""
    needed = max(int(y.max()) for y in labels) + 1
    if given is not None and given < needed:
        raise InputError(f"--classes {given} is too few: the {'labels' if use_labels else 'model top-1 classes'} "
                         f"go up to {needed - 1}; give --classes {needed} or more")
    if given is not None:
        return given
    return needed if use_labels else int(model.outputs[0].shape[-1])


def _labels_for(model: Any, data: Dataset, use_labels: bool) -> np.ndarray:
    return data.labels if use_labels else _predict(model, data.inputs).argmax(axis=1)


def run_sweep(
    model: Any,
    train: Dataset,
    evaluation: Dataset,
    out_dir: str | Path,
    *,
    points: list[str | int] | None = None,
    head: str | None = None,
    epochs: int = 10,
    seed: int = 0,
    target: str = "local",
    threads: int = 1,
    bench_overrides: dict[str, Any] | None = None,
    budget: Budget | None = None,
    drops: bool = True,
    trust: bool = False,
    source: dict[str, Any] | None = None,
    classes: int | None = None,
    progress: Any = None,
    head_progress: Any = None,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Sweep, write sweep.json / sweep.md / sweep.png into `out_dir`, return the document.

    `placement` says where the points are swept (default: here, one after the other; with the
    Ray executor each point's head training, export and scoring is a unit on the cluster).

    The heads get `classes` outputs: by default the labels' count (0..max), or without labels
    the model's own classes. `progress` gets one line per step, `head_progress` the
    truncate.HeadProgress events of each head's training.

    Raises BudgetError (after writing the outputs) when a budget is given and no point meets it.
    """
    budget = budget or Budget()
    out_dir = Path(out_dir)
    use_labels = train.labels is not None and evaluation.labels is not None
    is_classifier = _check_sweepable(model, head, use_labels)
    train_labels = _labels_for(model, train, use_labels)
    eval_labels = _labels_for(model, evaluation, use_labels)
    run = _SweepRun(model, evaluation, eval_labels, use_labels, is_classifier, trust,
                    progress or (lambda message: None))
    heads = _HeadTraining(head, _head_class_count(model, classes, use_labels, train_labels, eval_labels),
                          Dataset(train.inputs, train_labels, train.source), epochs, seed, head_progress)
    plans = _plan_points(run, heads, _cut_points(model, points))
    records, results = _measure_points(run, heads, plans, out_dir, target, threads,
                                       {**BENCH_OVERRIDES, **(bench_overrides or {})}, placement)
    drop_records = _drop_records(run, records[0]) if drops and is_classifier else []
    chosen = recommend(records, budget)
    document = {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "toolchain_version": __version__,
        "model": {**(source or {}), "name": model.name},
        "metric": "accuracy" if use_labels else "agreement",
        "data": {"train": train.source, "train_samples": len(train), "eval": evaluation.source,
                 "eval_samples": len(evaluation)},
        "head_epochs": epochs,
        "seed": seed,
        "target": target,
        "threads": threads,
        "environment": _environment(results),
        "budget": {"max_latency_ms": budget.max_latency_ms, "min_accuracy": budget.min_accuracy},
        "recommended": None if chosen is None else {"at": chosen["at"], "kind": chosen["kind"]},
        "points": records,
        "drops": drop_records,
        "notes": _notes(run, drops),
        "files": {"table": "sweep.md", "plot": "sweep.png"},
    }
    _write_outputs(out_dir, document)
    if budget.given and chosen is None:
        raise _over_budget(records, budget, out_dir)
    return document


@dataclass
class _SweepRun:
    """What every step of one sweep reads: the model, the scoring data and how to report."""

    model: Any
    evaluation: Dataset
    eval_labels: np.ndarray
    use_labels: bool
    is_classifier: bool
    trust: bool
    note: Any

    def accuracy(self, candidate: Any) -> float:
        """Top-1 accuracy (or agreement) of `candidate` on the eval data."""
        predictions = _predict(candidate, self.evaluation.inputs).argmax(axis=1)
        return float(np.mean(predictions == self.eval_labels))


@dataclass
class _HeadTraining:
    """How each cut point's head is trained: the --head spec (or the default), on what, how long."""

    head: str | None
    classes: int
    train_set: Dataset
    epochs: int
    seed: int
    progress: Any

    def spec_for(self, base: Any) -> str:
        return self.head or default_head(len(base.outputs[0].shape), self.classes)


def _check_sweepable(model: Any, head: str | None, use_labels: bool) -> bool:
    """Whether the model is a classifier (one (N, classes) output); rejects what cannot be swept."""
    from .stages.truncate import head_classes, parse_head

    is_classifier = len(model.outputs) == 1 and len(model.outputs[0].shape) == 2
    if not is_classifier and not use_labels:
        raise InputError(
            "without labels the sweep scores agreement with the model's own top-1, so the model needs one "
            f"(N, classes) output; '{model.name}' has outputs {[tuple(t.shape) for t in model.outputs]}"
        )
    if head is not None and head_classes(parse_head(head)) is None:
        raise InputError(f"the sweep trains a head per cut point: end --head with classes:N (got {head!r})")
    return is_classifier


def _cut_points(model: Any, points: list[str | int] | None) -> list[str]:
    """The cut points given, else the model's block boundaries."""
    cut_points = [str(p) for p in points] if points else block_boundaries(model)
    if not cut_points:
        raise InputError(f"model '{model.name}' has no block boundaries to cut at; give cut points with --at")
    return cut_points


PointPlan = tuple[str | None, str | None]  # (cut point, None: the full model; head spec, None: the original head)


def _plan_points(run: _SweepRun, heads: _HeadTraining, cut_points: list[str]) -> list[PointPlan]:
    """The full model first, then each cut point, with the head each one gets (an unknown cut point
    fails here, before any head is trained)."""
    from .stages.truncate import truncate

    # a feature extractor: the full model gets a trained head like every cut
    plans: list[PointPlan] = [(None, None if run.is_classifier else heads.spec_for(run.model))]
    for point in cut_points:
        plans.append((point, heads.spec_for(truncate(run.model, at=point, trust=run.trust))))
    return plans


@dataclass
class _PointItem:
    """One point of the sweep as a unit: its head trained, exported to `artifact`, scored."""

    unit: Unit
    index: int
    point: str | None
    head: str | None
    artifact: Path
    lane: str | None = None


@dataclass
class _PointWork:
    """How an executor sweeps one point: here (`__call__`), or on a worker from plain specs (`remote`)."""

    run: _SweepRun
    heads: _HeadTraining
    placement: Placement | None
    scratch: Path
    stage: Any = field(default_factory=lambda: SimpleNamespace(name="sweep"))  # names the executor's events

    def __call__(self, item: _PointItem) -> dict[str, Any]:
        self._note_training(item, "")
        return _sweep_point(self.run, self.heads, item.point, item.head, item.artifact)

    def remote(self, item: _PointItem) -> RemoteUnit | None:
        if self.placement is None:
            return None
        self._note_training(item, " on the cluster")
        run = self.run
        spec = {"point": item.point, "head": item.head, "epochs": self.heads.epochs, "seed": self.heads.seed,
                "use_labels": run.use_labels, "is_classifier": run.is_classifier, "trust": self.placement.trust,
                "model_suffix": self.placement.model.suffix, "file": item.artifact.name,
                "names": list(run.evaluation.inputs),
                "sources": {"train": self.heads.train_set.source, "evaluation": run.evaluation.source}}
        return RemoteUnit(sweep_point_unit, spec, inputs={"model": self.placement.model, "data": self._data_blob()},
                          outputs={"artifact": item.artifact}, cpus=self.placement.cpus,
                          memory_bytes=self.placement.memory_bytes)

    def _note_training(self, item: _PointItem, where: str) -> None:
        if item.head is None:
            return
        if item.point is None:
            self.run.note(f"full model: training the head{where}")
        else:
            self.run.note(f"cut at {item.point}: training the head {item.head}{where}")

    def _data_blob(self) -> Path:
        """The training data (with the labels the heads learn) and the scoring data, written once."""
        blob = self.scratch / "sweep-data.npz"
        if not blob.exists():
            evaluation = Dataset(self.run.evaluation.inputs, self.run.eval_labels)
            write_arrays(blob, {**dataset_arrays("train", self.heads.train_set),
                                **dataset_arrays("evaluation", evaluation)})
        return blob


def _sweep_point(run: _SweepRun, heads: _HeadTraining, point: str | None, head: str | None,
                 artifact: Path) -> dict[str, Any]:
    """Truncate at `point` and train `head` on it (None: keep the original), export, score."""
    from .stages.truncate import truncate

    candidate = run.model if head is None else truncate(
        run.model, at=point, head=head, train_data=heads.train_set, epochs=heads.epochs, seed=heads.seed,
        trust=run.trust, progress=heads.progress)
    _export_candidate(run, point, candidate, artifact)
    return _point_record(run, point, candidate, head, artifact)


def sweep_point_unit(spec: dict[str, Any], inputs: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """On a worker: one point of the sweep from the model's and the data's bytes; its record and artifact."""
    arrays = read_arrays(inputs["data"])
    with tempfile.TemporaryDirectory(prefix="edge-toolchain-unit-") as work:
        folder = Path(work)
        model = load_model_bytes(inputs["model"], folder / f"model{spec['model_suffix']}", spec["trust"])
        train = dataset_from(arrays, "train", spec["names"], spec["sources"]["train"])
        evaluation = dataset_from(arrays, "evaluation", spec["names"], spec["sources"]["evaluation"])
        run = _SweepRun(model, evaluation, evaluation.labels, spec["use_labels"], spec["is_classifier"],
                        spec["trust"], lambda message: None)
        heads = _HeadTraining(spec["head"], 0, train, spec["epochs"], spec["seed"], None)
        artifact = folder / spec["file"]
        record = _sweep_point(run, heads, spec["point"], spec["head"], artifact)
        return record, {"artifact": artifact.read_bytes()}


def _measure_points(run: _SweepRun, heads: _HeadTraining, plans: list[PointPlan], out_dir: Path, target: str,
                    threads: int, overrides: dict[str, Any],
                    placement: Placement | None) -> tuple[list[dict[str, Any]], list[Any]]:
    """Sweep every point (through the executor: on Ray a unit per point), then benchmark them all here:
    (point records with Pareto marks, benchmark results)."""
    from .config import find_profile
    from .stages.bench import run_benchmarks

    with tempfile.TemporaryDirectory(prefix=".sweep-", dir=out_dir if out_dir.is_dir() else None) as tmp:
        items = [_PointItem(Unit(point or "full model"), index, point, head, Path(tmp) / f"point{index}.fp32.tflite")
                 for index, (point, head) in enumerate(plans)]
        records = _sweep_points(run, _PointWork(run, heads, placement, Path(tmp)), items, placement)
        artifacts = [item.artifact for item in items]
        run.note(f"benchmark {len(artifacts)} artifact(s) on {target}")
        results = run_benchmarks(artifacts, [find_profile(target)], [threads], overrides=overrides)
    by_name = {r["artifact"]: r for r in results}
    for record, artifact in zip(records, artifacts, strict=True):
        latency = by_name[artifact.name]["latency_ms"]
        record["latency_ms"] = {k: latency[k] for k in ("p50", "p90", "mean", "min")}
    front = set(pareto_front(records))
    for i, record in enumerate(records):
        record["pareto"] = i in front
    return records, results


def _sweep_points(run: _SweepRun, work: _PointWork, items: list[_PointItem],
                  placement: Placement | None) -> list[dict[str, Any]]:
    from .executor import InProcessExecutor

    records: list[dict[str, Any]] = [{} for _ in items]

    def swept(item: _PointItem, record: dict[str, Any]) -> None:
        run.note(f"{item.point or 'full model'}: {'accuracy' if run.use_labels else 'agreement'} "
                 f"{record['accuracy']:.4f} on the eval data")
        records[item.index] = record

    (placement.executor if placement is not None else InProcessExecutor()).run(items, work, swept)
    return records


def _export_candidate(run: _SweepRun, point: str | None, candidate: Any, path: Path) -> Path:
    from .stages.export_tflite import export_tflite

    run.note(f"export {point or 'full model'} to fp32 TFLite")
    return export_tflite(candidate, path)


def _point_record(run: _SweepRun, point: str | None, candidate: Any, spec: str | None,
                  artifact: Path) -> dict[str, Any]:
    """One cut point's costs and accuracy (its latency comes later, from the benchmark)."""
    from .model_stats import model_stats

    stats = model_stats(candidate)
    accuracy = run.accuracy(candidate)
    return {
        "at": point,
        "kind": "full" if point is None else "cut",
        "head": spec,
        "params": stats.params,
        "macs": stats.macs,
        "weight_bytes": stats.weight_bytes,
        "tflite_bytes": artifact.stat().st_size,
        "accuracy": accuracy,
    }


def _droppable(model: Any) -> list[str]:
    from .stages.truncate import droppable_blocks

    return droppable_blocks(model)


def _drop_records(run: _SweepRun, full: dict[str, Any]) -> list[dict[str, Any]]:
    """Each residual block dropped alone, scored with the original head (only a classifier has one)."""
    from .model_stats import model_stats
    from .stages.truncate import truncate

    drop_records = []
    for block in _droppable(run.model):
        run.note(f"drop {block}")
        dropped = truncate(run.model, drop=block, trust=run.trust)
        stats = model_stats(dropped)
        accuracy = run.accuracy(dropped)
        drop_records.append({
            "block": block, "params": stats.params, "macs": stats.macs,
            "macs_saved": full["macs"] - stats.macs, "accuracy": accuracy,
            "accuracy_cost": full["accuracy"] - accuracy,
        })
    return drop_records


def _notes(run: _SweepRun, drops: bool) -> list[str]:
    if drops and not run.is_classifier and _droppable(run.model):
        return ["residual blocks were not priced: the model has no (N, classes) output to score a drop with"]
    return []


def _environment(results: list[dict[str, Any]]) -> dict[str, Any]:
    environment = results[0]["environment"] if results else {}
    return {k: environment.get(k) for k in ("machine", "cpu_model", "cpu_count", "backend", "backend_version",
                                             "python")}


def _write_outputs(out_dir: Path, document: dict[str, Any]) -> None:
    from .fileio import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    write_plot(out_dir / "sweep.png", document)
    atomic_write_text(out_dir / "sweep.md", markdown(document))
    atomic_write_json(out_dir / "sweep.json", document)


def _over_budget(records: list[dict[str, Any]], budget: Budget, out_dir: Path) -> BudgetError:
    best = max(records, key=lambda p: p["accuracy"])
    fastest = min(records, key=lambda p: p["latency_ms"]["p50"])
    return BudgetError(
        f"no cut point meets the budget ({_budget_text(budget)}): the most accurate reaches "
        f"{best['accuracy']:.3f} at {best['latency_ms']['p50']:.3f} ms, the fastest runs "
        f"{fastest['latency_ms']['p50']:.3f} ms at {fastest['accuracy']:.3f}; see {out_dir / 'sweep.md'}"
    )


def _budget_text(budget: Budget) -> str:
    parts = []
    if budget.max_latency_ms is not None:
        parts.append(f"p50 latency <= {budget.max_latency_ms:g} ms")
    if budget.min_accuracy is not None:
        parts.append(f"accuracy >= {budget.min_accuracy:g}")
    return " and ".join(parts)


def _label(point: dict[str, Any]) -> str:
    return "full model" if point["at"] is None else str(point["at"])


def markdown(document: dict[str, Any]) -> str:
    metric = document["metric"]
    chosen = document["recommended"]
    lines = [
        f"# Cut-point sweep: {document['model']['name']}",
        "",
        f"{metric.capitalize()} on {document['data']['eval_samples']} held-out samples"
        + (" (top-1 agreement with the full model: no labels)" if metric == "agreement" else "")
        + f"; heads trained {document['head_epochs']} epochs, seed {document['seed']}, base frozen. "
        f"Latency: fp32 TFLite p50 on '{document['target']}', {document['threads']} thread(s). "
        "★ marks the Pareto front (nothing is both faster and more accurate).",
        "",
        f"| Cut at | Head | Params | MACs | TFLite (KB) | p50 (ms) | {metric.capitalize()} | Pareto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in document["points"]:
        mark = " **(recommended)**" if chosen and chosen["at"] == p["at"] else ""
        lines.append(
            f"| {_label(p)}{mark} | {p['head'] or 'original'} | {p['params']:,} | {p['macs']:,} | "
            f"{p['tflite_bytes'] / 1024:.1f} | {p['latency_ms']['p50']:.3f} | {p['accuracy']:.4f} | "
            f"{'★' if p['pareto'] else ''} |"
        )
    budget = document["budget"]
    if budget["max_latency_ms"] is not None or budget["min_accuracy"] is not None:
        given = _budget_text(Budget(**budget))
        lines += ["", f"Budget: {given}. Recommended: "
                  + (f"**{_label(chosen)}**." if chosen else "none: no point meets it.")]
    lines += [f"\nNote: {n}" for n in document["notes"]]
    if document["drops"]:
        lines += ["", "## Dropping one residual block (original head kept)", "",
                  f"| Block | Params | MACs saved | {metric.capitalize()} | Cost |", "|---|---|---|---|---|"]
        for d in document["drops"]:
            lines.append(f"| {d['block']} | {d['params']:,} | {d['macs_saved']:,} | {d['accuracy']:.4f} | "
                         f"{d['accuracy_cost']:+.4f} |")
    return "\n".join(lines) + "\n"


def write_plot(path: Path, document: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    from .fileio import atomic_output

    figure = plot_figure(document)
    try:
        with atomic_output(path, suffix=".png") as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)
    return path


def plot_figure(document: dict[str, Any]) -> Any:
    """Accuracy vs latency: the legend sits outside the axes (it hid points), labels never overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = document["points"]
    figure, axes = plt.subplots(figsize=(9, 4.8), dpi=110)
    _draw_points(axes, points, document["recommended"])
    _draw_budget(axes, document["budget"], max(p["latency_ms"]["p50"] for p in points))
    axes.set_xlabel(f"fp32 TFLite p50 latency (ms) on {document['target']}")
    axes.set_ylabel(document["metric"])
    axes.set_title(f"{document['model']['name']}: {document['metric']} vs latency")
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.12, y=0.12)  # room for the labels of the outermost points
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    figure.tight_layout()
    _place_labels(figure, axes, points)
    return figure


def _draw_points(axes: Any, points: list[dict[str, Any]], chosen: dict[str, Any] | None) -> None:
    cuts = [p for p in points if p["kind"] != "full"]
    full = [p for p in points if p["kind"] == "full"]
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["latency_ms"]["p50"])
    axes.scatter(*_xy(cuts), color="#8899aa", label="cut points", zorder=2)
    axes.scatter(*_xy(full), marker="*", s=160, color="#1f3b73", label="full model", zorder=5)
    axes.plot(*_xy(front), "o-", color="#d62728", label="Pareto front", zorder=3)
    if chosen:
        axes.scatter(*_xy([p for p in points if p["at"] == chosen["at"]]), s=180, facecolors="none",
                     edgecolors="#2ca02c", linewidths=2, label="recommended", zorder=4)


def _xy(points: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    return [p["latency_ms"]["p50"] for p in points], [p["accuracy"] for p in points]


def _draw_budget(axes: Any, budget: dict[str, Any], slowest: float) -> None:
    limit = budget["max_latency_ms"]
    if limit is not None and limit <= 1.5 * slowest:
        axes.axvline(limit, color="#2ca02c", linestyle="--", linewidth=1, label=f"latency budget {limit:g} ms")
    else:  # a far-away budget line would squash every point against the axis
        axes.set_xlim(0, slowest * 1.15 or 1.0)
        if limit is not None:
            axes.plot([], [], " ", label=f"latency budget {limit:g} ms (off the chart)")
    if budget["min_accuracy"] is not None:
        axes.axhline(budget["min_accuracy"], color="#2ca02c", linestyle="--", linewidth=1)


# where a point's label may go, in points from the marker, tried in this order
LABEL_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3, 4) for dx, dy in
                 ((5, 4), (5, -10), (-5, 4), (-5, -10), (0, 10), (0, -16))]


def _place_labels(figure: Any, axes: Any, points: list[dict[str, Any]]) -> None:
    """Each label at the first offset where it overlaps no other label or marker, inside the axes."""
    renderer = figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    markers = [axes.transData.transform((p["latency_ms"]["p50"], p["accuracy"])) for p in points]
    taken: list[Any] = []
    for index in sorted(range(len(points)), key=lambda i: markers[i][0]):
        point = points[index]
        for attempt, (dx, dy) in enumerate([*LABEL_OFFSETS, LABEL_OFFSETS[0]]):
            label = axes.annotate(_label(point), (point["latency_ms"]["p50"], point["accuracy"]), fontsize=7,
                                  xytext=(dx, dy), textcoords="offset points", ha="left" if dx >= 0 else "right")
            box = label.get_window_extent(renderer)
            others = [xy for i, xy in enumerate(markers) if i != index]
            free = (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
                    and not any(box.overlaps(other) for other in taken)
                    and not any(box.expanded(1.2, 1.4).contains(x, y) for x, y in others))
            if free or attempt == len(LABEL_OFFSETS):  # nowhere free: the first spot, as before
                taken.append(box)
                break
            label.remove()


def sweep_file(
    model_path: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    eval_data: str | Path | None = None,
    labels_key: str = "y",
    samples: int | None = None,
    eval_fraction: float = 0.2,
    executor: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """The CLI's entry: load the model and data (split DATA when no EVAL is given), then sweep.

    `executor` sweeps the points (default: in this process; `RayExecutor`: on the cluster)."""
    from .data import load_npz
    from .fileio import sha256_file
    from .keras_io import input_signature, load_model

    model = load_model(model_path, trust=options.get("trust", False))
    specs = input_signature(model)
    train = load_npz(data, specs, labels_key=labels_key)
    if eval_data is not None:
        evaluation = load_npz(eval_data, specs, labels_key=labels_key)
    else:
        if not 0 < eval_fraction < 1:
            raise InputError(f"eval fraction must be in (0, 1), got {eval_fraction}")
        order = np.random.default_rng(options.get("seed", 0)).permutation(len(train))
        cut = max(1, int(round(len(train) * eval_fraction)))
        if cut >= len(train):
            raise InputError(f"{data}: {len(train)} sample(s) are too few to hold some out; give --eval")
        evaluation = _take(train, order[:cut], f"{data} (held-out {eval_fraction:.0%})")
        train = _take(train, order[cut:], f"{data} (the other {1 - eval_fraction:.0%})")
    if samples is not None:
        train, evaluation = train.head(samples), evaluation.head(samples)
    if (train.labels is None) != (evaluation.labels is None):
        raise InputError(f"labels under '{labels_key}' are in only one of the training and evaluation files")
    source = {"path": str(model_path), "sha256": sha256_file(model_path)}
    placement = Placement(executor, Path(model_path), options.get("trust", False)) if executor is not None else None
    return run_sweep(model, train, evaluation, out_dir, source=source, placement=placement, **options)


def _take(data: Dataset, index: np.ndarray, source: str) -> Dataset:
    return Dataset({k: v[index] for k, v in data.inputs.items()},
                   None if data.labels is None else data.labels[index], source, list(data.notes))

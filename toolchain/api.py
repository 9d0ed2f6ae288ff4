"""The public Python API: what the CLI does, from a notebook or a script.

Every function takes plain values (paths, numpy arrays, dicts of arrays keyed by model
input name, or an in-memory keras.Model) and returns plain values (the JSON documents
the CLI prints, a keras.Model, or a `Run`). Errors are the CLI's: a `ToolchainError`
subclass whose `exit_code` says what kind of failure it is.

These functions stay thin: each turns its arguments into what one existing entry point
takes (standalone.py, stages/bench.py, artifact_info.py, stages/truncate.py, sweep.py,
pipeline.py) and calls it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

PathLike = str | os.PathLike
# a model: a .keras/.h5 path or a keras.Model; data: an .npz path or {input name (and labels key): array}
ModelLike = Any
DataLike = PathLike | Mapping[str, Any]


@dataclass(frozen=True)
class Run:
    """A run directory's results, as plain JSON documents (None where the run wrote none)."""

    run_dir: Path
    manifest: dict[str, Any]
    verify: dict[str, Any] | None
    bench: dict[str, Any] | None
    budgets: dict[str, Any] | None
    report: Path | None

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        """The manifest's artifact records by name: path, format, recipe, sha256, verdicts, benchmarks."""
        return {record["name"]: record for record in self.manifest.get("artifacts", [])}


def export(
    model: ModelLike,
    output: PathLike,
    *,
    format: str | None = None,
    recipe: str = "fp32",
    batch: int | str | None = 1,
    opset: int | None = None,
    nchw: bool = False,
    allow_flex: bool = False,
    targets: Sequence[str] | None = None,
    data: DataLike | None = None,
    trust: bool = False,
) -> dict[str, Any]:
    """Export a Keras model to TFLite or ONNX with any recipe; like `edge-toolchain export --json`.

    `format` defaults to the output's suffix; `batch` is a size, or None / "dynamic" for an
    open batch dimension; `data` calibrates int8 recipes; `targets` (profile names) must each
    load and run the artifact, else nothing is written.
    """
    from .config import DEFAULT_ONNX_OPSET
    from .standalone import export_artifact, parse_batch

    output = Path(output)
    fmt = format or output.suffix.lstrip(".")
    batch_size = parse_batch(str(batch)) if batch is not None else None
    with _staged() as work:
        return export_artifact(
            _model_path(model, work), output, fmt=fmt, recipe=recipe, batch_size=batch_size,
            opset=DEFAULT_ONNX_OPSET if opset is None else opset, nchw=nchw, allow_flex=allow_flex,
            targets=list(targets or []), data=_data_path(data, work, "data"), trust=trust,
        )


def verify(
    artifact: PathLike,
    reference: ModelLike,
    data: DataLike,
    *,
    samples: int | None = None,
    recipe: str | None = None,
    labels_key: str = "y",
    trust: bool = False,
    check: bool = True,
) -> dict[str, Any]:
    """Compare an artifact's outputs with its Keras model on `data`; like `edge-toolchain verify --json`.

    With `check` (the default) a mismatch raises ParityError (its `.result` holds the metrics);
    with `check=False` the result is returned either way: read its "verdict".
    """
    from .errors import ParityError
    from .standalone import verify_file

    with _staged() as work:
        try:
            return verify_file(Path(artifact), _model_path(reference, work), _data_path(data, work, "data"),
                               samples=samples, recipe=recipe, labels_key=labels_key, trust=trust)
        except ParityError as e:
            if check or getattr(e, "result", None) is None:
                raise
            return e.result


def bench(
    artifacts: PathLike | Sequence[PathLike],
    targets: str | Sequence[str] = "local",
    *,
    threads: int | Sequence[int] | None = None,
    inputs: DataLike | None = None,
    targets_dir: PathLike | None = None,
    min_runs: int | None = None,
    min_seconds: float | None = None,
    max_seconds: float | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Benchmark artifacts on target profiles; returns the bench.json document (one record per
    artifact x target x threads). Thread counts default to each profile's."""
    from .config import find_profile
    from .stages.bench import bench_document, run_benchmarks

    paths = [Path(a) for a in _as_list(artifacts)]
    extra = [Path(targets_dir)] if targets_dir is not None else None
    profiles = [find_profile(name, extra) for name in _as_list(targets)]
    counts = [int(t) for t in _as_list(threads)] if threads is not None else None
    if counts is not None and (not counts or any(c < 1 for c in counts)):
        raise InputError(f"threads must be positive integers, got {threads!r}")
    overrides = {"min_runs": min_runs, "min_seconds": min_seconds, "max_seconds": max_seconds,
                 "timeout_seconds": timeout}
    with _staged() as work:
        results = run_benchmarks(paths, profiles, counts, None, None, overrides=overrides,
                                 inputs=_data_path(inputs, work, "inputs"))
    return bench_document(results)


def inspect(path: PathLike, *, trust: bool = False) -> dict[str, Any]:
    """A model file's inputs, outputs (with quantization), ops, size and provenance metadata.

    Works on .keras/.h5 (layer names are in "layers"), .tflite and .onnx; like `edge-toolchain inspect --json`.
    """
    from .artifact_info import describe

    return describe(Path(path), trust=trust)


def truncate(
    model: ModelLike,
    output: PathLike | None = None,
    *,
    at: str | int | Sequence[str | int] | None = None,
    drop: str | Sequence[str] | None = None,
    head: str | Sequence[str] | None = None,
    train_data: DataLike | tuple[Any, Any] | None = None,
    labels_key: str = "y",
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 1e-2,
    name: str | None = None,
    trust: bool = False,
) -> Any:
    """Cut a model at layers, drop layers or residual blocks, attach (and train) a new head.

    Returns the new keras.Model (kept layers share the original's weights); with `output`
    (.keras) it is also saved there, atomically. `train_data`: (x, y), an .npz path or a dict
    of arrays with labels under `labels_key`.
    """
    from .stages.truncate import truncate as truncate_model

    if output is not None and Path(output).suffix != ".keras":
        raise InputError(f"the truncated model is saved as a Keras 3 file: give an output path ending in .keras, "
                         f"got {output}")
    keras_model = _load(model, trust)
    result = truncate_model(
        keras_model, at=at, drop=drop, head=head, train_data=_training_data(train_data, keras_model, labels_key),
        epochs=epochs, seed=seed, batch_size=batch_size, learning_rate=learning_rate, trust=trust, name=name)
    if output is not None:
        from .fileio import atomic_output

        with atomic_output(Path(output), suffix=".keras") as tmp:
            result.save(tmp)
    return result


def sweep(
    model: ModelLike,
    data: DataLike,
    out_dir: PathLike = "sweep",
    *,
    eval_data: DataLike | None = None,
    at: Sequence[str | int] | None = None,
    head: str | None = None,
    epochs: int = 10,
    seed: int = 0,
    labels_key: str = "y",
    samples: int | None = None,
    target: str = "local",
    threads: int = 1,
    min_seconds: float = 0.3,
    max_latency_ms: float | None = None,
    min_accuracy: float | None = None,
    drops: bool = True,
    trust: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Try cut points (params, MACs, latency, accuracy with a retrained head); returns sweep.json.

    Also writes sweep.json, sweep.md and sweep.png into `out_dir`. `progress` gets one line per step.
    """
    from .sweep import Budget, sweep_file

    with _staged() as work:
        return sweep_file(
            _model_path(model, work), _data_path(data, work, "data"), Path(out_dir),
            eval_data=_data_path(eval_data, work, "eval"), labels_key=labels_key, samples=samples,
            points=list(at) if at else None, head=head, epochs=epochs, seed=seed, target=target,
            threads=threads, bench_overrides={"min_seconds": min_seconds},
            budget=Budget(max_latency_ms, min_accuracy), drops=drops, trust=trust, progress=progress,
        )


def run(
    pipeline: PathLike | Mapping[str, Any],
    out: PathLike | None = None,
    *,
    force: bool = False,
    only: str | None = None,
    progress: bool = False,
) -> Run:
    """Run a pipeline (a pipeline.toml path, or the same content as a dict) and return its results.

    A dict's relative paths are relative to the current directory. `out` overrides [output] dir;
    `progress` prints the stage lines on stderr as the CLI does.
    """
    from .pipeline import run_pipeline

    config, raw = _pipeline_config(pipeline)
    result = run_pipeline(config, raw, Path(out) if out is not None else None, quiet=not progress,
                          force=force, only=only)
    return load_run(result.run_dir)


def load_run(run_dir: PathLike) -> Run:
    """Read a completed run directory (from `run`, `edge-toolchain run` or `demo`)."""
    from .stages.report import _read_json
    from .stages.report import load_run as load_documents

    documents = load_documents(Path(run_dir))
    run_dir = documents.run_dir.resolve()
    report = run_dir / "report" / "report.md"
    return Run(run_dir, documents.manifest, _read_json(run_dir / "verify.json"), documents.bench,
               documents.budgets, report if report.is_file() else None)


# ---- plain values -> what the entry points take ---------------------------------------


@contextlib.contextmanager
def _staged() -> Iterator[Path]:
    """A private folder for in-memory models and arrays written as files, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="edge-toolchain-api-") as folder:
        yield Path(folder)


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, (str, os.PathLike, int)) else list(value)


def _is_keras_model(value: Any) -> bool:
    return type(value).__module__.startswith("keras") and hasattr(value, "save") and hasattr(value, "inputs")


def _model_path(model: ModelLike, work: Path) -> Path:
    """A model file path: as given, or an in-memory keras.Model saved into `work`."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    if _is_keras_model(model):
        path = work / f"{model.name or 'model'}.keras"
        model.save(path)
        return path
    raise InputError(f"model must be a path to a .keras/.h5 file or a keras.Model, got {type(model).__name__}")


def _load(model: ModelLike, trust: bool) -> Any:
    if _is_keras_model(model):
        return model
    from .keras_io import load_model

    with _staged() as work:
        return load_model(_model_path(model, work), trust=trust)


def _data_path(data: DataLike | None, work: Path, what: str) -> Path | None:
    """An .npz path: as given, or a dict {input name: array} written into `work`."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return None if data is None else Path(data)
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise InputError(f"{what} must be a path to an .npz file or a dict {{input name: array}}, "
                         f"got {type(data).__name__}")
    import numpy as np

    path = work / f"{what}.npz"
    np.savez(path, **{name: np.asarray(array) for name, array in data.items()})
    return path


def _training_data(train_data: Any, model: Any, labels_key: str) -> Any:
    """(x, y) passes through; an .npz path or a dict becomes a labelled Dataset."""
    if train_data is None or isinstance(train_data, tuple):
        return train_data
    from .data import load_npz
    from .keras_io import input_signature

    with _staged() as work:
        return load_npz(_data_path(train_data, work, "train_data"), input_signature(model), labels_key=labels_key)


def _pipeline_config(pipeline: PathLike | Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    from .config import load_config, parse_config, resolve_paths

    if isinstance(pipeline, (str, os.PathLike)):
        return load_config(Path(pipeline))
    if not isinstance(pipeline, Mapping):
        raise InputError(f"pipeline must be a path to a pipeline.toml or a dict of its content, "
                         f"got {type(pipeline).__name__}")
    raw = json.loads(json.dumps(pipeline, default=str))  # Path values become strings, as TOML has them
    return resolve_paths(parse_config(raw, source="pipeline dict"), Path.cwd()), raw

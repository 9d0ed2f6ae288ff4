"""Export and verify units as a worker on another machine runs them: plain specs, files by content.

The driver builds a `RemoteUnit` (steps.base) from a unit: the spec holds only plain,
picklable values (export options, calibration or reference arrays, tolerances); the model or
artifact travels as bytes with its sha256. The worker functions here write those bytes to a
private temp folder, run the same code the in-process executor runs, and return the result
and the output file's bytes. They never see the driver's run directory, so workers need no
shared filesystem, and the driver alone writes the run's files.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .steps.base import ArtifactPlan, RemoteUnit, RunState, Unit

MIB = 1024 * 1024
# A conversion holds the Keras model, the TF graph and the converter's copies: about this many
# times the .keras file (ImageNet-size models: 1-6 GB), plus TensorFlow's own baseline.
MEMORY_PER_MODEL_BYTE = 24
BASE_MEMORY = 768 * MIB


def model_file(run: RunState) -> Path:
    """The Keras file the run's (possibly truncated) model was loaded from."""
    if run.truncation is not None:
        return run.run_dir / run.manifest["models"][-1]["path"]
    return Path(run.config.model.path)


def unit_memory(run: RunState, model: Path) -> int:
    execution = getattr(run.config, "execution", None)
    return model_memory(model, execution.memory_mb_per_unit if execution is not None else None)


def model_memory(model: Path, memory_mb: int | None = None) -> int:
    """What a unit that converts `model` asks of a node: `memory_mb` when given, else sized from the file."""
    if memory_mb:
        return memory_mb * MIB
    return BASE_MEMORY + MEMORY_PER_MODEL_BYTE * model.stat().st_size


@dataclass
class Placement:
    """Where the units of a search or a sweep run: the executor (in process, or Ray), the Keras file a
    worker loads (sent by content) and what each unit asks of a node."""

    executor: Any
    model: Path
    trust: bool = False
    cpus: float = 1.0
    memory_mb: int | None = None  # None: sized from the model file

    @property
    def memory_bytes(self) -> int:
        return model_memory(self.model, self.memory_mb)


def placement_for(run: RunState) -> Placement:
    """A pipeline stage's placement: the run's executor and [execution] sizes, the run's model file."""
    execution = getattr(run.config, "execution", None)
    return Placement(run.context.executor, model_file(run), run.config.model.trust, cpus(run),
                     execution.memory_mb_per_unit if execution is not None else None)


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Arrays a unit needs (data, reference outputs) as one .npz blob: sent once, checked by sha256."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def read_arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def dataset_arrays(prefix: str, dataset: Any) -> dict[str, np.ndarray]:
    """A Dataset's arrays keyed by position (input names travel in the unit's spec, in this order)."""
    arrays = {f"{prefix}.x{i}": dataset.inputs[name] for i, name in enumerate(dataset.inputs)}
    if dataset.labels is not None:
        arrays[f"{prefix}.y"] = dataset.labels
    return arrays


def dataset_from(arrays: dict[str, np.ndarray], prefix: str, names: list[str], source: str) -> Any:
    from .data import Dataset

    inputs = {name: arrays[f"{prefix}.x{i}"] for i, name in enumerate(names)}
    return Dataset(inputs, arrays.get(f"{prefix}.y"), source)


def cpus(run: RunState) -> float:
    execution = getattr(run.config, "execution", None)
    return execution.cpus_per_unit if execution is not None else 1.0


def export_remote(run: RunState, unit: Unit) -> RemoteUnit:
    from .export import ExportOptions
    from .steps.export import provenance

    plan: ArtifactPlan = unit.spec
    model = model_file(run)
    spec = {
        "name": plan.path.name,
        "trust": run.config.model.trust,
        "options": ExportOptions.from_config(run.config, plan.format, plan.recipe),
        "calibration": run.run_data.calibration if run.run_data is not None else None,
        "metadata": provenance(run.manifest, plan.recipe),
    }
    return RemoteUnit(export_unit, spec, inputs={"model": model}, outputs={"artifact": plan.path},
                      cpus=cpus(run), memory_bytes=unit_memory(run, model))


def export_unit(spec: dict[str, Any], inputs: dict[str, bytes]) -> tuple[None, dict[str, bytes]]:
    """On a worker: load the model from its bytes, export one artifact, return the artifact's bytes."""
    from .export import export_model
    from .keras_io import load_model

    with tempfile.TemporaryDirectory(prefix="edge-toolchain-unit-") as work:
        folder = Path(work)
        model_path = folder / "model.keras"
        model_path.write_bytes(inputs["model"])
        model = load_model(model_path, trust=spec["trust"])
        options = spec["options"]
        artifact = folder / spec["name"]
        float_onnx = folder / "float.onnx" if options.format == "onnx" and options.recipe != "fp32" else None
        export_model(model, artifact, options, calibration=spec["calibration"], metadata=spec["metadata"],
                     float_onnx=float_onnx)
        return None, {"artifact": artifact.read_bytes()}


def verify_remote(run: RunState, unit: Unit, reference: dict[str, Any], sample: Any, tolerance: Any) -> RemoteUnit:
    plan: ArtifactPlan = unit.spec
    spec = {"name": plan.path.name, "reference": reference, "sample": sample, "tolerance": tolerance}
    return RemoteUnit(verify_unit, spec, inputs={"artifact": plan.path}, cpus=cpus(run),
                      memory_bytes=BASE_MEMORY + 4 * plan.path.stat().st_size)


def verify_unit(spec: dict[str, Any], inputs: dict[str, bytes]) -> tuple[Any, dict[str, bytes]]:
    """On a worker: run the artifact on the sample and compare with the driver's Keras reference."""
    from .records import VerifyResult
    from .stages.verify import verify_artifact

    with tempfile.TemporaryDirectory(prefix="edge-toolchain-unit-") as work:
        artifact = Path(work) / spec["name"]
        artifact.write_bytes(inputs["artifact"])
        result = verify_artifact(artifact, spec["reference"], spec["sample"], spec["tolerance"])
        return VerifyResult.model_validate(result), {}


def load_model_bytes(blob: bytes, path: Path, trust: bool) -> Any:
    """On a worker: the Keras model from the bytes the driver sent (`path` keeps the file's suffix)."""
    from .keras_io import load_model

    path.write_bytes(blob)
    return load_model(path, trust=trust)

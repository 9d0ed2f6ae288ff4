"""One artifact outside a pipeline: the `export` and `verify` commands.

Like pipeline.py, this module knows several stages (export, compat, verify) and wires them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .config import DEFAULT_ONNX_OPSET, profile_by_name_or_path
from .data import Dataset, load_npz
from .errors import ConfigError, DataError, ModelLoadError, ParityError
from .fileio import sha256_file
from .keras_io import input_signature, load_model, run_keras
from .recipes import all_recipe_names


def parse_batch(value: str) -> int | None:
    """'--batch' text: a positive integer, or 'dynamic' for an open batch dimension."""
    if value.strip().lower() == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        batch = 0
    if batch < 1:
        raise ConfigError(f"--batch must be a positive integer or 'dynamic', got {value!r}")
    return batch


def export_artifact(
    model_path: Path,
    output: Path,
    *,
    fmt: str,
    recipe: str = "fp32",
    batch_size: int | None = 1,
    opset: int = DEFAULT_ONNX_OPSET,
    nchw: bool = False,
    allow_flex: bool = False,
    keep_float: list[str] | None = None,
    per_channel: bool = True,
    calibration_method: str = "minmax",
    targets: list[str] | None = None,
    data: Path | None = None,
    trust: bool = False,
) -> dict[str, Any]:
    """Export (the pipeline's export path, toolchain.export), then check it in each target's runtime.

    The artifact is written beside `output` under a temporary name and renamed into place
    only when every target accepted it: a rejected artifact leaves no file behind.
    """
    from .artifact_info import describe
    from .export import ExportOptions, export_model

    options = ExportOptions(fmt, recipe, batch_size, opset=opset, nchw=nchw, allow_flex=allow_flex,
                            keep_float=tuple(keep_float or ()), per_channel=per_channel,
                            calibration_method=calibration_method)
    options.check()
    if output.suffix != f".{fmt}":
        raise ConfigError(f"output path must end with .{fmt} for --format {fmt}, got {output}")
    profiles = [profile_by_name_or_path(name) for name in targets or []]
    model = load_model(model_path, trust=trust)
    dataset = load_npz(data, input_signature(model)) if data else None
    if options.calibrated and dataset is None:
        raise DataError(f"recipe {recipe!r} needs calibration data: pass --data DATA.npz")
    metadata = {"edge_toolchain_version": __version__, "source_model_sha256": sha256_file(model_path),
                "recipe": recipe}
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=output.suffix, dir=output.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        export_model(model, tmp, options, calibration=dataset, metadata=metadata)
        compat = _check_targets(tmp, output, profiles, dataset, model, recipe)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"path": str(output), "format": fmt, "recipe": recipe, "info": describe(output), "compat": compat}


def _check_targets(tmp: Path, output: Path, profiles: list[Any], dataset: Dataset | None, model: Any,
                   recipe: str) -> dict[str, Any]:
    """Each target's own runtime loads and runs the artifact (stages/compat.py); rejections raise."""
    from .stages.compat import SAMPLES, check_compat, raise_on_incompatible
    from .stages.verify import run_artifact

    if not profiles:
        return {}
    sample = dataset.head(SAMPLES) if dataset else _random_inputs(model, SAMPLES)
    host = run_artifact(tmp, sample.inputs)
    compat = {p.name: check_compat(tmp, p, sample.inputs, host, recipe=recipe) for p in profiles}
    for record in compat.values():
        record["summary"] = record["summary"].replace(str(tmp), str(output))
    raise_on_incompatible(output.name, compat)
    return compat


def verify_file(
    artifact: Path,
    reference: Path,
    data: Path,
    *,
    samples: int | None = None,
    recipe: str | None = None,
    labels_key: str = "y",
    trust: bool = False,
) -> dict[str, Any]:
    """Verify one artifact against its Keras model on `data`; ParityError (exit 5) on failure.

    The tolerance follows the recipe recorded in the artifact's provenance (fp32 if none).
    """
    from .artifact_info import describe
    from .stages.verify import raise_on_failures, tolerance_for, verify_artifact

    if samples is not None and samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    if artifact.suffix not in (".tflite", ".onnx"):
        raise ModelLoadError(f"cannot verify {artifact}: expected a .tflite or .onnx file")
    info = describe(artifact)
    recipe = recipe or info.get("metadata", {}).get("recipe") or "fp32"
    if recipe not in all_recipe_names():
        raise ConfigError(f"unknown recipe {recipe!r} for the tolerance of {artifact.name}")
    model = load_model(reference, trust=trust)
    dataset = load_npz(data, input_signature(model), labels_key=labels_key, limit=samples)
    reference_outputs = run_keras(model, dataset.inputs)
    tolerance = tolerance_for(recipe, fmt=info["format"])
    result = verify_artifact(artifact, reference_outputs, dataset, tolerance)
    result = {"artifact": str(artifact), "reference": str(reference), "data": str(data),
              "recipe": recipe} | result
    try:
        raise_on_failures({artifact.name: result})
    except ParityError as e:
        e.result = result  # the CLI prints the metrics before the error
        raise
    return result


def _random_inputs(model: Any, count: int) -> Dataset:
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = {spec.name: rng.uniform(0, 1, size=(count, *[d or 1 for d in spec.shape])).astype(spec.dtype)
              for spec in input_signature(model)}
    return Dataset(inputs, None, "random")

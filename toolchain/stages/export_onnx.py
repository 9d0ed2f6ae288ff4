"""Keras -> ONNX through tf2onnx, with an explicit input signature (needed by Keras 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import DEFAULT_ONNX_OPSET, ONNX_RECIPES
from ..errors import ConfigError, StageError
from ..fileio import atomic_output
from ..keras_io import serving_function

COMMON_CAUSES = (
    "common causes: an op tf2onnx cannot map at this opset (try a higher --opset), "
    "or a custom layer"
)


def export_onnx(
    model: Any,
    filepath: str | Path,
    *,
    recipe: str = "fp32",
    batch_size: int | None = 1,
    opset: int = DEFAULT_ONNX_OPSET,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Convert `model` to ONNX at `filepath`; the file passes onnx.checker's full check."""
    filepath = Path(filepath)
    if filepath.suffix != ".onnx":
        raise ConfigError(f"ONNX output path must end with .onnx, got {filepath}")
    if recipe not in ONNX_RECIPES:
        raise ConfigError(f"unknown ONNX recipe {recipe!r}; choose one of {', '.join(ONNX_RECIPES)}")
    import onnx
    import tf2onnx

    try:
        function, specs = serving_function(model, batch_size)
        model_proto, _ = tf2onnx.convert.from_function(
            function, input_signature=specs, opset=opset
        )
    except Exception as e:
        raise StageError(
            f"ONNX conversion of '{model.name}' ({recipe}, opset {opset}) failed: "
            f"{str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__}; "
            f"{COMMON_CAUSES}"
        ) from e
    for key, value in (metadata or {}).items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    try:
        model_proto = onnx.shape_inference.infer_shapes(model_proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(model_proto, full_check=True)
    except Exception as e:
        raise StageError(f"ONNX export of '{model.name}' produced an invalid model: {e}") from e
    with atomic_output(filepath) as tmp:
        onnx.save(model_proto, str(tmp))
    return filepath

"""Keras -> TFLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import TFLITE_RECIPES
from ..errors import ConfigError, StageError
from ..fileio import atomic_write_bytes
from ..keras_io import serving_function

COMMON_CAUSES = (
    "common causes: an op with no TFLite builtin kernel (allow Flex ops or replace the layer), "
    "dynamic shapes other than the batch dimension, or custom layers without get_config"
)


def export_tflite(
    model: Any,
    filepath: str | Path,
    *,
    recipe: str = "fp32",
    batch_size: int | None = 1,
) -> Path:
    """Convert `model` to a TFLite flatbuffer at `filepath` (written atomically)."""
    filepath = Path(filepath)
    if filepath.suffix != ".tflite":
        raise ConfigError(f"TFLite output path must end with .tflite, got {filepath}")
    if recipe not in TFLITE_RECIPES:
        raise ConfigError(f"unknown TFLite recipe {recipe!r}; choose one of {', '.join(TFLITE_RECIPES)}")
    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [_frozen_named_function(model, batch_size)], model
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    except Exception as e:
        raise StageError(
            f"TFLite conversion of '{model.name}' ({recipe}) failed: "
            f"{_first_line(e)}; {COMMON_CAUSES}"
        ) from e
    atomic_write_bytes(filepath, flatbuffer)
    return filepath


def _frozen_named_function(model: Any, batch_size: int | None) -> Any:
    """The serving function with its variables frozen to constants, outputs still named.

    Converting the unfrozen function with the model as trackable keeps Keras 3's weights
    as resource variables (VAR_HANDLE/READ_VARIABLE) that nothing initializes: the
    artifact loads and outputs NaN. Freezing drops the output names, so a thin wrapper
    restores them for the TFLite signature.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    function, specs = serving_function(model, batch_size)
    concrete = function.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    structure = concrete.structured_outputs

    @tf.function(input_signature=specs)
    def named(*args):
        flat = frozen(*args)
        return tf.nest.pack_sequence_as(structure, tf.nest.flatten(flat))

    return named.get_concrete_function()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if "error" in line.lower():
            return line.strip()[:400]
    return (text.splitlines()[0] if text else type(e).__name__)[:400]

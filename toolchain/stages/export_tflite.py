"""Keras -> TFLite."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import TFLITE_RECIPES
from ..data import CalibrationReader, Dataset
from ..errors import ConfigError, DataError, StageError
from ..fileio import atomic_write_bytes
from ..keras_io import frozen_serving_function
from ..recipes import RECIPES, calibrated_names
from ..tflite_metadata import add_metadata

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
    calibration: Dataset | None = None,
    keep_float: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    allow_flex: bool = False,
) -> Path:
    """Convert `model` to a TFLite flatbuffer at `filepath` (written atomically).

    `calibration` feeds the representative dataset of the calibrated recipes (see
    RECIPE_NOTES); `keep_float` names Keras layers that stay in float (int8-float-io).
    `metadata` is embedded as JSON (toolchain.tflite_metadata); `allow_flex` lets the
    converter fall back to TF (Flex) kernels, which tflite-runtime on a device cannot run.
    """
    filepath = Path(filepath)
    if filepath.suffix != ".tflite":
        raise ConfigError(f"TFLite output path must end with .tflite, got {filepath}")
    if recipe not in TFLITE_RECIPES:
        raise ConfigError(f"unknown TFLite recipe {recipe!r}; choose one of {', '.join(TFLITE_RECIPES)}")
    check_batch_size(batch_size)
    if recipe in CALIBRATED and calibration is None:
        raise DataError(f"TFLite recipe {recipe!r} needs calibration data; set [data.calibration] source")
    if keep_float and recipe in KEEP_FLOAT_REFUSED:
        raise ConfigError(
            f"keep_float cannot be applied to TFLite recipe {recipe!r}: {KEEP_FLOAT_REFUSED[recipe]}"
        )
    flatbuffer = _convert(model, recipe, batch_size, calibration, keep_float, allow_flex)
    check_op_inventory(flatbuffer, allow_flex, what=f"'{model.name}' ({recipe})")
    if recipe != "fp32" and not allow_flex:
        check_prepares(flatbuffer, f"'{model.name}' ({recipe})")
    if metadata:
        flatbuffer = add_metadata(flatbuffer, metadata)
    atomic_write_bytes(filepath, flatbuffer)
    return filepath


def _convert(model: Any, recipe: str, batch_size: int | None, calibration: Dataset | None,
             keep_float: list[str] | None, allow_flex: bool) -> bytes:
    import tensorflow as tf

    try:
        with tflite_converter(model, batch_size) as (converter, function):
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if allow_flex:
                converter.target_spec.supported_ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
            _apply_recipe(converter, recipe, calibration, batch_size)
            if keep_float and recipe in CALIBRATED:
                return _selective_quantize(converter, function, model, calibration, batch_size, keep_float)
            return converter.convert()
    except (ConfigError, DataError):
        raise
    except Exception as e:
        flex = _select_ops(e)
        if flex:
            raise StageError(
                f"TFLite conversion of '{model.name}' ({recipe}) failed: ops with no TFLite builtin "
                f"kernel: {flex}; replace the layers that use them, or set export.tflite.allow_flex "
                "= true (--allow-flex) if the device's interpreter links the Flex delegate "
                "(tflite-runtime does not)"
            ) from e
        raise StageError(
            f"TFLite conversion of '{model.name}' ({recipe}) failed: "
            f"{_first_line(e)}; {COMMON_CAUSES}"
        ) from e


@contextmanager
def tflite_converter(model: Any, batch_size: int | None) -> Iterator[tuple[Any, Any]]:
    """(TFLiteConverter, frozen concrete function) for the model's serving function, through
    a SavedModel we write into a temporary folder that lives as long as the converter.

    `from_concrete_functions(..., trackable)` writes the same SavedModel internally, but
    when saving fails it silently falls back to a route without signatures: outputs then
    come out named 'Identity'. Saving fails for models whose activations carry custom
    gradients with captured tensors (Keras' swish in EfficientNet), which inference does
    not need, so they are not saved here.
    """
    import tempfile

    import tensorflow as tf

    function = frozen_serving_function(model, batch_size)[0].get_concrete_function()
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    with tempfile.TemporaryDirectory(prefix="edge-toolchain-savedmodel-") as saved_model_dir:
        tf.saved_model.save(tf.Module(), saved_model_dir, signatures={"serving_default": function},
                            options=options)
        yield tf.lite.TFLiteConverter.from_saved_model(saved_model_dir), function


def check_batch_size(batch_size: Any) -> None:
    """1 (default), a fixed batch N >= 1, or None for a dynamic batch dimension."""
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"batch size must be a positive integer or None (dynamic), got {batch_size!r} "
            f"({type(batch_size).__name__})"
        )


def check_op_inventory(flatbuffer: bytes, allow_flex: bool, what: str = "model") -> list[dict[str, Any]]:
    """The file's ops; Flex (SELECT_TF_OPS) ops are an error unless allowed."""
    from ..artifact_info import tflite_ops

    ops = tflite_ops(flatbuffer)
    flex = sorted(op["name"] for op in ops if op["kind"] == "flex")
    if flex and not allow_flex:
        raise StageError(
            f"TFLite artifact of {what} needs Flex (TF Select) ops {', '.join(flex)}, which "
            "tflite-runtime on a device cannot run; set export.tflite.allow_flex = true only if "
            "the device's interpreter links the Flex delegate"
        )
    return ops


def _select_ops(e: Exception) -> str:
    """The op list of the converter's 'TF Select ops: A, B' line, if it has one."""
    for line in str(e).splitlines():
        if line.strip().startswith("TF Select ops:"):
            return line.split(":", 1)[1].strip()[:300]
    return ""


def check_prepares(flatbuffer: bytes, what: str) -> None:
    """The converter can emit quantized files the runtime refuses to prepare.

    Seen with int16x8: a DEPTHWISE_CONV_2D whose calibrated output range is (nearly)
    zero, e.g. a dead ReLU6 channel, gets a rescale factor the int16 kernel rejects
    (no_integer_overflow_from_quantization). Refuse the file here, not on the device.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_content=flatbuffer).allocate_tensors()
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise StageError(
            f"TFLite artifact of {what} converts but the LiteRT interpreter cannot prepare it: {reason}; "
            "for int16x8 this means a layer's calibrated range is too narrow for int16 (dead "
            "channels, untrained weights): calibrate on representative data, or use int8-float-io"
        ) from e


# What each recipe does to the converter. All of them convert the frozen function (see
# frozen_serving_function): the representative dataset works on it unchanged, so int8 needs
# no other route.
RECIPE_NOTES = {r.name: r.notes for r in RECIPES.values() if r.format == "tflite"}
CALIBRATED = calibrated_names("tflite")
KEEP_FLOAT_REFUSED = {r.name: r.keep_float_refused for r in RECIPES.values()
                      if r.format == "tflite" and r.keep_float_refused}


def _apply_recipe(converter: Any, recipe: str, calibration: Dataset | None, batch_size: int | None) -> None:
    import tensorflow as tf

    if recipe == "fp32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if recipe not in CALIBRATED:
        return
    converter.representative_dataset = representative_dataset(calibration, batch_size)
    if recipe == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
        return
    # only int8 builtins: conversion fails instead of silently leaving an op in float
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if recipe == "int8":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


def representative_dataset(calibration: Dataset, batch_size: int | None) -> Any:
    """A generator factory yielding lists of arrays in the model's input order."""
    names = list(calibration.inputs)
    reader = CalibrationReader(calibration, batch_size or 1)

    def generate():
        for batch in reader:
            yield [batch[n] for n in names]

    return generate


def _selective_quantize(converter: Any, function: Any, model: Any, calibration: Dataset,
                        batch_size: int | None, keep_float: list[str]) -> bytes:
    """int8 with the named layers' ops denylisted, through TFLite's quantization debugger."""
    import tensorflow as tf

    nodes = keep_float_nodes(function, model, keep_float)
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative_dataset(calibration, batch_size),
        debug_options=options,
    )
    return debugger.get_nondebug_quantized_model()


def keep_float_nodes(function: Any, model: Any, layers: list[str]) -> list[str]:
    """TFLite op output names that belong to the named Keras layers."""
    import tensorflow as tf

    from ..keras_io import did_you_mean

    known = [layer.name for layer in model.layers]
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ConfigError(
            f"keep_float: no layer named {unknown[0]!r} in '{model.name}'{did_you_mean(unknown[0], known)}"
        )
    flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions([function], model).convert()
    names = _op_output_names(flatbuffer)
    nodes = [n for n in names if any(_belongs_to(n, layer) for layer in layers)]
    missing = [layer for layer in layers if not any(_belongs_to(n, layer) for n in names)]
    if missing:
        raise ConfigError(
            f"keep_float: layer {missing[0]!r} has no op of its own in the TFLite graph "
            "(the converter fused it into a neighbour); name the layer it was fused into"
        )
    return nodes


def _op_output_names(flatbuffer: bytes) -> list[str]:
    from ai_edge_litert import schema_py_generated as fb

    graph = fb.Model.GetRootAs(flatbuffer, 0).Subgraphs(0)
    names = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for j in range(op.OutputsLength()):
            names.append(graph.Tensors(op.Outputs(j)).Name().decode())
    return names


def _belongs_to(tensor_name: str, layer: str) -> bool:
    pattern = re.compile(re.escape(layer) + r"(_\d+)?")
    return any(pattern.fullmatch(part) for name in tensor_name.split(";") for part in name.split("/"))


def tflite_layer_errors(model: Any, calibration: Dataset, batch_size: int | None,
                        worst: int = 10) -> list[dict[str, Any]]:
    """Per-layer int8 error from TFLite's quantization debugger, worst first.

    `error_in_steps` is the RMS difference between the float and the quantized layer
    output divided by that tensor's quantization scale: above ~0.5 the layer loses more
    than rounding explains.
    """
    import io
    import math

    import tensorflow as tf

    with tflite_converter(model, batch_size) as (converter, _):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(calibration, batch_size)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative_dataset(calibration, batch_size))
        debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    import csv

    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale = float(row["scale"]) or 1.0
        mse = float(row["mean_squared_error"])
        rows.append({
            "layer": row["tensor_name"],
            "op": row["op_name"],
            "error_in_steps": math.sqrt(max(mse, 0.0)) / scale,
            "max_abs_error": float(row["max_abs_error"]),
            "mean_squared_error": mse,
            "scale": float(row["scale"]),
            "zero_point": int(float(row["zero_point"])),
        })
    rows.sort(key=lambda r: r["error_in_steps"], reverse=True)
    return rows[:worst]


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if "error" in line.lower():
            return line.strip()[:400]
    return (text.splitlines()[0] if text else type(e).__name__)[:400]

"""Keras -> TFLite."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import keras_graph
from ..config import TFLITE_RECIPES
from ..data import CalibrationReader, Dataset
from ..errors import ConfigError, DataError, StageError
from ..fileio import atomic_write_bytes
from ..keras_io import as_functional, check_outputs_kept, frozen_serving_function, output_names
from ..native_chatter import filtered_native_stderr
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
    model = as_functional(model)
    if not allow_flex:
        check_expressible(model, batch_size)
    flatbuffer = _convert(model, recipe, batch_size, calibration, keep_float, allow_flex)
    check_outputs_kept(output_names(model), tflite_output_names(flatbuffer), f"TFLite export of '{model.name}'")
    check_op_inventory(flatbuffer, allow_flex, what=f"'{model.name}' ({recipe})")
    if recipe != "fp32" and not allow_flex:
        check_prepares(flatbuffer, f"'{model.name}' ({recipe})")
    if metadata:
        flatbuffer = add_metadata(flatbuffer, metadata)
    atomic_write_bytes(filepath, flatbuffer)
    return filepath


def _convert(model: Any, recipe: str, batch_size: int | None, calibration: Dataset | None,
             keep_float: list[str] | None, allow_flex: bool) -> bytes:
    args = (model, recipe, batch_size, calibration, keep_float, allow_flex)
    try:
        try:
            return _run_converter(*args, tanh_gelu_as_sigmoid=False)
        except Exception as e:
            if UNFUSED_ERFC not in str(e):
                raise
            return _run_converter(*args, tanh_gelu_as_sigmoid=True)  # see keras_io.sigmoid_tanh_gelu()
    except (ConfigError, DataError):
        raise
    except Exception as e:
        raise _conversion_error(model, recipe, e) from e


# the converter's message when an exact GELU was not fused (its Erfc has no builtin kernel)
UNFUSED_ERFC = "'tf.Erfc' op is neither a custom op nor a flex op"


def _run_converter(model: Any, recipe: str, batch_size: int | None, calibration: Dataset | None,
                   keep_float: list[str] | None, allow_flex: bool, tanh_gelu_as_sigmoid: bool) -> bytes:
    import tensorflow as tf

    with filtered_native_stderr(), tflite_converter(model, batch_size, tanh_gelu_as_sigmoid) as (converter, function):
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if allow_flex:
            converter.target_spec.supported_ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
            # keep a dynamic-batch RNN's TensorList ops whole, as Flex kernels
            converter._experimental_lower_tensor_list_ops = False
        _apply_recipe(converter, recipe, calibration, batch_size)
        if keep_float and recipe in CALIBRATED:
            return _selective_quantize(converter, function, model, calibration, batch_size, keep_float)
        return converter.convert()


def _conversion_error(model: Any, recipe: str, e: Exception) -> StageError:
    flex = _select_ops(e)
    if flex:
        return StageError(
            f"TFLite conversion of '{model.name}' ({recipe}) failed: ops with no TFLite builtin "
            f"kernel: {flex}; replace the layers that use them, or set export.tflite.allow_flex "
            "= true (--allow-flex) if the device's interpreter links the Flex delegate "
            "(tflite-runtime does not)"
        )
    return StageError(f"TFLite conversion of '{model.name}' ({recipe}) failed: {_first_line(e)}; {COMMON_CAUSES}")


# Keras layers whose TF op has no TFLite builtin kernel (only Flex), with the nearest workaround
NO_BUILTIN = {
    "MaxPooling3D": "MaxPool3D",
    "AveragePooling3D": "AvgPool3D",
}
POOL3D_WORKAROUND = (
    "export this model to ONNX (3-D pooling is an ONNX op), or replace the layer by a strided "
    "Conv3D or GlobalMaxPooling3D/GlobalAveragePooling3D"
)


def check_expressible(model: Any, batch_size: int | None) -> None:
    """Refuse, before converting, what TFLite builtins (all tflite-runtime runs) cannot express."""
    looped = [name for name, unrolled in recurrent_layers(model) if not unrolled]
    if batch_size is None and looped:
        raise StageError(
            f"TFLite cannot express recurrent layer(s) {', '.join(looped)} of '{model.name}' with a "
            "dynamic batch: the loop's TensorList ops then need Flex kernels; export with a fixed "
            "batch size (--batch-size N), or set export.tflite.allow_flex = true (--allow-flex) "
            "if the device's interpreter links Flex"
        )
    for layer in keras_graph.sublayers(model):
        op = NO_BUILTIN.get(type(layer).__name__)
        if op:
            raise StageError(
                f"TFLite cannot express layer '{layer.name}' ({type(layer).__name__}) of '{model.name}': "
                f"TFLite has no 3-D pooling kernel ({op} runs only as a Flex op); {POOL3D_WORKAROUND}"
            )


def recurrent_layers(layer: Any) -> list[tuple[str, bool]]:
    """(name, unrolled) of the RNN layers (LSTM, GRU, SimpleRNN, Bidirectional) in `layer`."""
    import keras

    found = []
    for child in keras_graph.sublayers(layer, recursive=False):
        if isinstance(child, keras.layers.Bidirectional):
            found.append((child.name, bool(child.forward_layer.unroll and child.backward_layer.unroll)))
        elif isinstance(child, keras.layers.RNN):
            found.append((child.name, bool(child.unroll)))
        else:
            found.extend(recurrent_layers(child))
    return found


@contextmanager
def tflite_converter(model: Any, batch_size: int | None,
                     tanh_gelu_as_sigmoid: bool = False) -> Iterator[tuple[Any, Any]]:
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

    serving = frozen_serving_function(model, batch_size, tanh_gelu_as_sigmoid=tanh_gelu_as_sigmoid)[0]
    function = serving.get_concrete_function()
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


def tflite_output_names(flatbuffer: bytes) -> list[str]:
    """Output names of the file's serving signature (the names verify and devices use)."""
    from ai_edge_litert import schema_py_generated as fb

    signature = fb.Model.GetRootAs(flatbuffer, 0).SignatureDefs(0)
    return [signature.Outputs(i).Name().decode() for i in range(signature.OutputsLength())]


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
        with filtered_native_stderr():
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
    with filtered_native_stderr():
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

    with filtered_native_stderr(), tflite_converter(model, batch_size) as (converter, _):
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

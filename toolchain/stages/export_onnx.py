"""Keras -> ONNX through tf2onnx, with an explicit input signature (needed by Keras 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact_info import NCHW_INPUTS_KEY
from ..config import DEFAULT_ONNX_OPSET, ONNX_RECIPES
from ..errors import ConfigError, StageError
from ..fileio import atomic_output
from ..keras_io import as_functional, check_outputs_kept, frozen_serving_function, output_names
from .onnx_canonical import canonical_names

MIN_OPSET = 13

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
    nchw: bool = False,
) -> Path:
    """Convert `model` to ONNX at `filepath`; the file passes onnx.checker's full check.

    `batch_size` None makes the batch dimension symbolic ('batch'); `nchw` transposes every
    4-D input to channels-first (tf2onnx `inputs_as_nchw`), outputs keep the Keras layout.
    The names of transposed inputs are recorded in metadata under NCHW_INPUTS_KEY.
    """
    filepath = Path(filepath)
    _check_arguments(filepath, recipe, batch_size, opset)
    import onnx

    model = as_functional(model)
    model_proto, nchw_inputs = _convert(model, recipe, batch_size, opset, nchw)
    check_outputs_kept(output_names(model), [o.name for o in model_proto.graph.output],
                       f"ONNX export of '{model.name}'")
    if batch_size is None:
        _name_batch_dimension(model_proto)
    metadata = dict(metadata or {})
    if nchw_inputs:
        metadata[NCHW_INPUTS_KEY] = ",".join(nchw_inputs)
    for key, value in metadata.items():
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


def _check_arguments(filepath: Path, recipe: str, batch_size: Any, opset: Any) -> None:
    if filepath.suffix != ".onnx":
        raise ConfigError(f"ONNX output path must end with .onnx, got {filepath}")
    if recipe not in ONNX_RECIPES:
        raise ConfigError(f"unknown ONNX recipe {recipe!r}; choose one of {', '.join(ONNX_RECIPES)}")
    check_opset(opset)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ConfigError(
            f"batch size must be a positive integer or None (dynamic), got {batch_size!r} "
            f"({type(batch_size).__name__})"
        )


def _convert(model: Any, recipe: str, batch_size: int | None, opset: int, nchw: bool) -> tuple[Any, list[str]]:
    """(ONNX ModelProto, names of the inputs transposed to NCHW) from tf2onnx."""
    import tf2onnx

    function, specs = frozen_serving_function(model, batch_size, tanh_gelu_as_sigmoid=True)
    nchw_inputs = [spec.name for spec in specs if len(spec.shape) == 4] if nchw else []
    if nchw and not nchw_inputs:
        raise ConfigError(
            f"--nchw: '{model.name}' has no 4-D (image) input to transpose "
            f"(inputs: {', '.join(f'{s.name} {s.shape}' for s in specs)})"
        )
    _reset_name_counter()
    try:
        model_proto, _ = tf2onnx.convert.from_function(
            function, input_signature=specs, opset=opset, inputs_as_nchw=nchw_inputs or None,
            custom_op_handlers=CUSTOM_OP_HANDLERS,
        )
    except Exception as e:
        raise StageError(
            f"ONNX conversion of '{model.name}' ({recipe}, opset {opset}) failed: "
            f"{str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__}; "
            f"{COMMON_CAUSES}"
        ) from e
    # tf2onnx writes "converted from b'__inference_named_980'", a process-wide TF function counter
    model_proto.graph.doc_string = f"converted from Keras model '{model.name}' by tf2onnx"
    canonical_names(model_proto)
    return model_proto, nchw_inputs


def _reset_name_counter() -> None:
    """tf2onnx numbers the nodes it makes (`name__N`) with one process-wide counter; start it
    at the same value for every conversion so the bytes do not depend on what ran before."""
    import tf2onnx.utils
    from tf2onnx.rewriter import loop_rewriter_base  # noqa: F401  (takes a name when first imported)

    tf2onnx.utils.INTERNAL_NAME = 1


def _erfc_as_one_minus_erf(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
    """TF's exact GELU (Keras' default `gelu`) computes 0.5*x*erfc(-x/sqrt(2)); tf2onnx 1.17 has
    no Erfc mapping and writes an invalid node. ONNX has Erf (opset 9+): erfc(x) = 1 - erf(x)."""
    import numpy as np
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


# TF ops tf2onnx cannot map, rewritten into ONNX ops: name -> (handler, args)
CUSTOM_OP_HANDLERS = {"Erfc": (_erfc_as_one_minus_erf, [])}


def supported_opsets() -> range:
    """Opsets tf2onnx can emit: 13 (the oldest with every op our layers need) to its newest."""
    from tf2onnx.constants import OPSET_TO_IR_VERSION

    return range(MIN_OPSET, max(OPSET_TO_IR_VERSION) + 1)


def check_opset(opset: Any) -> None:
    opsets = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in opsets:
        raise ConfigError(
            f"ONNX opset {opset!r} is not supported: tf2onnx here emits opsets "
            f"{opsets.start}-{opsets.stop - 1} (default {DEFAULT_ONNX_OPSET})"
        )


def _name_batch_dimension(model_proto: Any) -> None:
    """tf2onnx names a dynamic batch 'unk__N'; call it 'batch' wherever it appears."""
    graph = model_proto.graph
    batch_params = {
        dims[0].dim_param for value in [*graph.input, *graph.output]
        if (dims := value.type.tensor_type.shape.dim) and not dims[0].HasField("dim_value")
    }
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in batch_params:
                dim.dim_param = "batch"

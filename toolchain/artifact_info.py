"""Describe model files: I/O signature (with quantization), op inventory, size.

TFLite files are read with the flatbuffer schema in pure Python rather than by
loading an interpreter, so a corrupt file raises an error instead of crashing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .fileio import sha256_file
from .tflite_metadata import PROVENANCE_KEY, read_metadata

FORMATS = {".tflite": "tflite", ".onnx": "onnx", ".keras": "keras", ".h5": "keras"}
# ONNX metadata key listing the inputs exported channels-first (export --nchw)
NCHW_INPUTS_KEY = "edge_toolchain.nchw_inputs"


def to_artifact_layout(inputs: dict[str, Any], metadata: dict[str, str]) -> dict[str, Any]:
    """Keras-layout (NHWC) input arrays -> the artifact's layout (NCHW where metadata says so)."""
    nchw = {n for n in metadata.get(NCHW_INPUTS_KEY, "").split(",") if n}
    return {name: array.transpose(0, 3, 1, 2) if name in nchw and array.ndim == 4 else array
            for name, array in inputs.items()}


def describe(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"not a file: {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ModelLoadError(
            f"{path}: unknown model type '{path.suffix}'; expected one of {', '.join(FORMATS)}"
        )
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: file is empty")
    info = {"tflite": describe_tflite, "onnx": describe_onnx, "keras": describe_keras}[kind]
    result = info(path, trust=trust) if kind == "keras" else info(path)
    return {
        "path": str(path),
        "format": kind,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        **result,
    }


# ---- TFLite -----------------------------------------------------------------

def _enum_names(enum_class: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


def describe_tflite(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelLoadError(
            f"{path}: not a TFLite flatbuffer (missing the 'TFL3' identifier); "
            "the file is corrupt or not a .tflite model"
        )
    try:
        return _parse_tflite(data)
    except ModelLoadError as e:
        raise ModelLoadError(f"{path}: corrupt TFLite flatbuffer ({e})") from e
    except Exception as e:  # flatbuffers raise IndexError/struct.error on damage
        raise ModelLoadError(f"{path}: corrupt TFLite flatbuffer ({type(e).__name__}: {e})") from e


def _parse_tflite(data: bytes) -> dict[str, Any]:
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() < 1:
        raise ModelLoadError("TFLite model has no subgraph")
    type_names = _enum_names(fb.TensorType)
    subgraph = model.Subgraphs(0)

    def tensor_info(index: int, name: str | None = None) -> dict[str, Any]:
        if not 0 <= index < subgraph.TensorsLength():
            raise ModelLoadError(f"tensor index {index} out of range")
        tensor = subgraph.Tensors(index)
        signature = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else None
        shape = tensor.ShapeAsNumpy() if tensor.ShapeLength() else []
        dims = signature if signature is not None else shape
        quant = tensor.Quantization()
        quantization = None
        if quant is not None and quant.ScaleLength() > 0:
            scales = [float(quant.Scale(i)) for i in range(quant.ScaleLength())]
            zeros = [int(quant.ZeroPoint(i)) for i in range(quant.ZeroPointLength())]
            quantization = {
                "scale": scales[0] if len(scales) == 1 else scales,
                "zero_point": (zeros[0] if len(zeros) == 1 else zeros) if zeros else 0,
            }
        return {
            "name": name or tensor.Name().decode(),
            "shape": [None if int(d) < 0 else int(d) for d in dims],
            "dtype": type_names.get(tensor.Type(), str(tensor.Type())).lower(),
            "quantization": quantization,
        }

    if model.SignatureDefsLength() > 0:
        sig = model.SignatureDefs(0)
        inputs = [tensor_info(sig.Inputs(i).TensorIndex(), sig.Inputs(i).Name().decode())
                  for i in range(sig.InputsLength())]
        outputs = [tensor_info(sig.Outputs(i).TensorIndex(), sig.Outputs(i).Name().decode())
                   for i in range(sig.OutputsLength())]
        signature_keys = [model.SignatureDefs(i).SignatureKey().decode()
                          for i in range(model.SignatureDefsLength())]
    else:
        inputs = [tensor_info(int(i)) for i in subgraph.InputsAsNumpy()]
        outputs = [tensor_info(int(i)) for i in subgraph.OutputsAsNumpy()]
        signature_keys = []

    metadata = read_metadata(data)
    runtime = metadata.get("min_runtime_version")
    return {
        "inputs": inputs,
        "outputs": outputs,
        "ops": tflite_ops(data),
        "signatures": signature_keys,
        "tflite_schema_version": int(model.Version()),
        "metadata_keys": sorted(metadata),
        # the converter's own estimate of the oldest interpreter that has every op version
        "min_runtime_version": runtime if isinstance(runtime, str) else None,
        # provenance, flat like ONNX metadata_props: same keys for both formats
        "metadata": provenance if isinstance(provenance := metadata.get(PROVENANCE_KEY), dict) else {},
    }


def tflite_ops(data: bytes) -> list[dict[str, Any]]:
    """Operator codes of a flatbuffer: builtin ops with versions, custom and Flex ops."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(data, 0)
    op_names = _enum_names(fb.BuiltinOperator)
    ops = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = (code.CustomCode() or b"").decode()
            kind = "flex" if custom.startswith("Flex") else "custom"
            ops.append({"name": custom, "version": int(code.Version()), "kind": kind})
        else:
            ops.append({"name": name, "version": int(code.Version()), "kind": "builtin"})
    return sorted(ops, key=lambda o: (o["kind"], o["name"]))


# ---- ONNX -------------------------------------------------------------------

def describe_onnx(path: Path) -> dict[str, Any]:
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelLoadError(
            f"{path}: not a valid ONNX model (protobuf decode failed: {type(e).__name__}); "
            "the file is corrupt or truncated"
        ) from e
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: ONNX file holds no graph (corrupt or not an ONNX model)")
    initializers = {init.name for init in model.graph.initializer}

    def value_info(value: Any) -> dict[str, Any]:
        tensor_type = value.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
        ]
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        except Exception:
            dtype = str(tensor_type.elem_type)
        return {"name": value.name, "shape": dims, "dtype": dtype, "quantization": None}

    op_counts: dict[tuple[str, str], int] = {}
    for node in model.graph.node:
        key = (node.domain or "ai.onnx", node.op_type)
        op_counts[key] = op_counts.get(key, 0) + 1
    return {
        "inputs": [value_info(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [value_info(v) for v in model.graph.output],
        "ops": [
            {"name": op, "domain": domain, "count": count}
            for (domain, op), count in sorted(op_counts.items())
        ],
        "opset": {imp.domain or "ai.onnx": int(imp.version) for imp in model.opset_import},
        "ir_version": int(model.ir_version),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


# ---- Keras ------------------------------------------------------------------

def describe_keras(path: Path, *, trust: bool = False) -> dict[str, Any]:
    from .keras_io import input_signature, load_model, output_signature

    model = load_model(path, trust=trust)
    layer_counts: dict[str, int] = {}
    for layer in model.layers:
        name = type(layer).__name__
        layer_counts[name] = layer_counts.get(name, 0) + 1

    def as_dict(info: Any) -> dict[str, Any]:
        return {"name": info.name, "shape": [None, *info.shape], "dtype": info.dtype,
                "quantization": None}

    return {
        "inputs": [as_dict(i) for i in input_signature(model)],
        "outputs": [as_dict(o) for o in output_signature(model)],
        "ops": [{"name": k, "count": v} for k, v in sorted(layer_counts.items())],
        "model_name": model.name,
        "parameters": int(model.count_params()),
        **keras_layers(model),
    }


def keras_layers(model: Any) -> dict[str, Any]:
    """Layers (address, class, output shape, params, MACs) and what `truncate --at/--drop` accept.

    `cut_points` are the clean cuts (block boundaries: every path goes through them); `--at`
    takes any listed layer. `droppable_blocks` are residual blocks by their Add layer,
    `droppable_layers` the single shape-preserving layers.
    """
    from .errors import InputError
    from .model_stats import layer_stats
    from .stages.truncate import droppable_blocks, droppable_layers
    from .sweep import block_boundaries

    try:
        return {
            "layers": [{"name": s.name, "class": s.class_name, "output_shape": [None, *s.output_shape],
                        "params": s.params, "macs": s.macs} for s in layer_stats(model, strict=False)],
            "cut_points": block_boundaries(model),
            "droppable_blocks": droppable_blocks(model),
            "droppable_layers": droppable_layers(model),
        }
    except InputError as e:  # a subclassed model has no graph to list, cut or drop
        return {"layers": [], "layers_note": str(e), "cut_points": [], "droppable_blocks": [],
                "droppable_layers": []}

"""How long an emulated run may take: scaled from the artifact's multiply-accumulates.

QEMU user-mode emulation of the Pi's aarch64 kernels runs far slower than the board: a
ResNet50 cut took 324 s for 8 samples on the 2-core AMD EPYC test machine, about 0.1 GMAC/s.
A fixed 300 s cut that run off as a "failure"; the default now allows half that rate
plus start-up, and never less than the old 300 s. A hang still ends at the timeout.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

EMULATED_MACS_PER_SECOND = 5e7  # half the slowest rate measured (0.1 GMAC/s, see above)
STARTUP_SECONDS = 60.0  # emulated python3.11, numpy and the runtime importing, the model loading
MIN_TIMEOUT_SECONDS = 300.0


def default_timeout(macs_per_sample: int | None, samples: int) -> float:
    """Seconds to wait for `samples` inferences of a model with `macs_per_sample` MACs."""
    if not macs_per_sample:
        return MIN_TIMEOUT_SECONDS
    return max(MIN_TIMEOUT_SECONDS, round(STARTUP_SECONDS + macs_per_sample * samples / EMULATED_MACS_PER_SECOND))


def artifact_macs(path: Path) -> int | None:
    """MACs of one inference of a .tflite or .onnx file (convolutions and matrix products), or
    None when the file cannot be read (then the runtime's own error will say why)."""
    try:
        return _onnx_macs(path) if path.suffix == ".onnx" else _tflite_macs(path.read_bytes())
    except Exception:  # a damaged file: the emulated runtime reports it, with its own message
        return None


def _known(shape: Any) -> list[int]:
    """Dimensions with unknown (dynamic) ones counted as 1."""
    return [int(d) if d and int(d) > 0 else 1 for d in shape]


def _tflite_macs(data: bytes) -> int:
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(data, 0)
    names = {value: name for name, value in vars(fb.BuiltinOperator).items() if not name.startswith("_")}
    subgraph = model.Subgraphs(0)

    def shape(index: int) -> list[int]:
        return _known(subgraph.Tensors(index).ShapeAsNumpy()) if index >= 0 else []

    total = 0
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode())), "")
        inputs, outputs = op.InputsAsNumpy(), op.OutputsAsNumpy()
        if name in ("CONV_2D", "CONV_3D", "TRANSPOSE_CONV"):
            weights = shape(int(inputs[1]))  # (out channels, *kernel, in channels)
            total += math.prod(shape(int(outputs[0]))) * math.prod(weights[1:])
        elif name == "DEPTHWISE_CONV_2D":
            total += math.prod(shape(int(outputs[0]))) * math.prod(shape(int(inputs[1]))[1:3])
        elif name in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            depth = shape(int(inputs[0]))[-1]
            total += math.prod(shape(int(outputs[0]))) * depth
    return total


def _onnx_macs(path: Path) -> int:
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {v.name: _known(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in [*graph.input, *graph.output, *graph.value_info]}
    shapes.update({t.name: _known(t.dims) for t in graph.initializer})
    weight_index = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}
    total = 0
    for node in graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        if node.op_type in weight_index:
            weights = shapes.get(node.input[weight_index[node.op_type]], [])
            total += math.prod(out) * math.prod(weights[1:])
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            left = shapes.get(node.input[0], [1])
            transposed = any(a.name == "transA" and a.i for a in node.attribute)
            total += math.prod(out) * (left[0] if transposed else left[-1])
    return total

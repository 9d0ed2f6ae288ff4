"""Size and compute of a Keras model: parameters, MACs per layer and in total, weight bytes.

MACs are the multiply-accumulates of the layers that do them (Dense, Conv1D/2D/3D,
their transposed forms, DepthwiseConv, SeparableConv) for ONE sample, at the shapes the
model's graph declares. Element-wise layers (activations, BatchNormalization, adds,
pooling) are not counted: converters fold BatchNormalization into the convolution before
it, and the rest is memory-bound, not MAC-bound. Nested models count per call, with
their layers named `outer/inner`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import InputError
from .keras_graph import has_graph, nodes_in_order, sequential_graph

CONV_CLASSES = ("Conv1D", "Conv2D", "Conv3D")
TRANSPOSE_CLASSES = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
DEPTHWISE_CLASSES = ("DepthwiseConv1D", "DepthwiseConv2D")
SEPARABLE_CLASSES = ("SeparableConv1D", "SeparableConv2D")


@dataclass(frozen=True)
class LayerStats:
    name: str
    class_name: str
    params: int
    macs: int | None  # None only from layer_stats(strict=False) when a dimension is unknown
    output_shape: tuple[int | None, ...]  # of the call counted, without the batch dimension


@dataclass(frozen=True)
class ModelStats:
    params: int
    trainable_params: int
    macs: int
    weight_bytes: int
    layers: tuple[LayerStats, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = [
            {**asdict(layer), "output_shape": list(layer.output_shape)} for layer in self.layers
        ]
        return data


def count_params(model: Any) -> int:
    """All weights (trainable and not), as Keras counts them."""
    return int(sum(math.prod(w.shape) for w in model.weights))


def weight_bytes(model: Any) -> int:
    """Bytes of all weights at their stored dtypes (an fp32 artifact's weights are about this)."""
    import numpy as np

    return int(sum(math.prod(w.shape) * np.dtype(_dtype(w)).itemsize for w in model.weights))


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one forward pass of one sample."""
    return sum(layer.macs for layer in layer_stats(model))


def model_stats(model: Any) -> ModelStats:
    layers = tuple(layer_stats(model))
    trainable = int(sum(math.prod(w.shape) for w in model.trainable_weights))
    return ModelStats(
        params=count_params(model),
        trainable_params=trainable,
        macs=sum(layer.macs for layer in layers),
        weight_bytes=weight_bytes(model),
        layers=layers,
    )


def layer_stats(model: Any, prefix: str = "", strict: bool = True) -> list[LayerStats]:
    """One record per layer call in graph order; nested models are expanded.

    strict=False lists a layer whose MACs depend on an unknown dimension with macs None
    instead of refusing the model (`inspect` lists the layers of any graph model).
    """
    stats: list[LayerStats] = []
    for node in _graph_nodes(model):
        layer = node.operation
        if node.is_input or layer is None or type(layer).__name__ == "InputLayer":
            continue
        name = prefix + layer.name
        if _graph_of(layer) is not None:
            stats.extend(layer_stats(layer, prefix=name + "/", strict=strict))
            continue
        inputs = [t for t in node.input_tensors]
        outputs = list(node.outputs)
        try:
            macs = _layer_macs(layer, inputs, outputs, name)
        except InputError:
            if strict:
                raise
            macs = None
        stats.append(LayerStats(
            name=name,
            class_name=type(layer).__name__,
            params=int(sum(math.prod(w.shape) for w in getattr(layer, "weights", ()))),  # ops (x + y) have none
            macs=macs,
            output_shape=tuple(outputs[0].shape[1:]) if outputs else (),
        ))
    return stats


def _graph_of(model: Any) -> Any:
    """The Functional graph of a Functional or Sequential model, None for a plain layer."""
    import keras

    if isinstance(model, keras.Sequential):
        if sequential_graph(model) is None:
            raise InputError(
                f"model '{model.name}' is a Sequential model that is not built; "
                "call it on data or give it an Input first"
            )
        return sequential_graph(model)
    if isinstance(model, keras.Model):
        if has_graph(model):
            return model
        raise InputError(
            f"model '{model.name}' is a subclassed keras.Model: its graph is not declared, so "
            "MACs cannot be counted; rebuild it as a Functional or Sequential model"
        )
    return None


def _graph_nodes(model: Any) -> list[Any]:
    graph = _graph_of(model)
    if graph is None:
        raise InputError(f"'{getattr(model, 'name', model)}' is a layer, not a Keras model")
    return nodes_in_order(graph)


def _layer_macs(layer: Any, inputs: list[Any], outputs: list[Any], name: str) -> int:
    kind = type(layer).__name__
    if kind not in ("Dense", *CONV_CLASSES, *TRANSPOSE_CLASSES, *DEPTHWISE_CLASSES, *SEPARABLE_CLASSES):
        return 0
    out_shape = _known(outputs[0].shape[1:], name)
    in_shape = _known(inputs[0].shape[1:], name)
    channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
    if kind == "Dense":
        return math.prod(out_shape[:-1]) * in_shape[-1] * out_shape[-1]
    if channels_last:
        out_spatial, out_ch = out_shape[:-1], out_shape[-1]
        in_spatial, in_ch = in_shape[:-1], in_shape[-1]
    else:
        out_spatial, out_ch = out_shape[1:], out_shape[0]
        in_spatial, in_ch = in_shape[1:], in_shape[0]
    kernel = math.prod(layer.kernel_size)
    if kind in CONV_CLASSES:
        groups = getattr(layer, "groups", 1) or 1
        return math.prod(out_spatial) * out_ch * kernel * (in_ch // groups)
    if kind in TRANSPOSE_CLASSES:
        return math.prod(in_spatial) * in_ch * out_ch * kernel
    multiplier = layer.depth_multiplier
    depthwise = math.prod(out_spatial) * in_ch * multiplier * kernel
    if kind in DEPTHWISE_CLASSES:
        return depthwise
    return depthwise + math.prod(out_spatial) * in_ch * multiplier * out_ch


def _known(shape: Any, name: str) -> tuple[int, ...]:
    if any(d is None for d in shape):
        raise InputError(
            f"layer '{name}' has unknown dimensions {tuple(shape)}; MACs need a model with a "
            "fixed input shape (give keras.Input a full shape)"
        )
    return tuple(int(d) for d in shape)


def _dtype(weight: Any) -> str:
    dtype = weight.dtype
    return getattr(dtype, "name", str(dtype))

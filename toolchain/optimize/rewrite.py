"""Model rewrites that keep the function but change what the converter emits.

hard-swish for the int8 delegate: TFLite's converter fuses `x * relu6(x + 3) / 6` (and Keras'
hard_swish) back into one HARD_SWISH op, which XNNPACK does not take in int8: the graph splits
into partitions around every one (measured on a two-conv model: 3 partitions, HARD_SWISH x2
outside). Written as `(x * 1/6) * relu6(x + 3)` the converter emits ADD (relu6 fused), MUL,
MUL, which XNNPACK takes in int8: one partition, nothing outside (tests/test_optimize.py
checks both with the op list and the partition count).
"""

from __future__ import annotations

from typing import Any

REWRITES = ("hard_swish_as_mul",)


def hard_swish_layers(model: Any) -> list[str]:
    """The `Activation("hard_swish")` layers (how keras.applications.MobileNetV3 writes it)."""
    return [layer.name for layer in model.layers if _is_hard_swish(layer)]


def _is_hard_swish(layer: Any) -> bool:
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    return type(layer).__name__ == "Activation" and activation in ("hard_swish", "hard_silu")


def hard_swish_as_mul(model: Any) -> Any:
    """The same model (same layer objects, so the same weights) with each hard-swish as (x/6)*relu6(x+3)."""
    import keras
    from keras import ops

    class HardSwishAsMul(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return (x * (1.0 / 6.0)) * ops.relu6(x + 3.0)

    def call_function(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_hard_swish(layer):
            return HardSwishAsMul(name=f"{layer.name}_as_mul")(*args, **kwargs)
        return layer(*args, **kwargs)

    from ..keras_io import input_signature

    # new inputs named as the model's: cloned InputLayers would be named after their tensors (keras_tensor)
    names = [spec.name for spec in input_signature(model)]
    inputs = [keras.Input(shape=tensor.shape[1:], batch_size=tensor.shape[0], dtype=tensor.dtype, name=name)
              for tensor, name in zip(model.inputs, names, strict=True)]
    structured = keras.tree.pack_sequence_as(model.input, inputs)  # the model's own nesting (a tensor, a list...)
    return keras.models.clone_model(model, input_tensors=structured, clone_function=lambda layer: layer,
                                    call_function=call_function)


def apply_rewrite(model: Any, rewrite: str | None) -> Any:
    if rewrite is None:
        return model
    if rewrite == "hard_swish_as_mul":
        return hard_swish_as_mul(model)
    from ..errors import ConfigError

    raise ConfigError(f"unknown model rewrite {rewrite!r}; known: {', '.join(REWRITES)}")

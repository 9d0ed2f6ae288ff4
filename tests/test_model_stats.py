"""Parameters, MACs and weight bytes, checked against hand-computed figures."""

import pytest

from toolchain.errors import InputError
from toolchain.model_stats import count_macs, count_params, model_stats, weight_bytes


def _conv_net(keras, name="inner"):
    inputs = keras.Input((8, 8, 2), name="x")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)  # 6x6x4 outputs, 3*3*2 MACs each
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)  # 6x6x8, 9 each
    x = keras.layers.SeparableConv2D(5, 1, name="sep")(x)  # dw 6x6x8x1 + pw 6x6x8x5
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(3, name="fc")(x)  # 180 -> 3
    return keras.Model(inputs, outputs, name=name)


CONV_NET_MACS = {
    "conv": 6 * 6 * 4 * 3 * 3 * 2,
    "dw": 6 * 6 * 8 * 9,
    "sep": 6 * 6 * 8 + 6 * 6 * 8 * 5,
    "flat": 0,
    "fc": 180 * 3,
}


def test_macs_per_layer_match_hand_counts():
    import keras

    stats = model_stats(_conv_net(keras))
    assert {layer.name: layer.macs for layer in stats.layers} == CONV_NET_MACS
    assert stats.macs == sum(CONV_NET_MACS.values())
    assert stats.params == (4 * 18 + 4) + (8 * 9 + 8) + (8 + 8 * 5 + 5) + (180 * 3 + 3)
    assert stats.weight_bytes == 4 * stats.params  # float32 weights
    assert stats.layers[-1].output_shape == (3,)


def test_nested_model_layers_are_expanded_with_outer_inner_names():
    import keras

    outer = keras.Sequential(
        [keras.Input((8, 8, 2)), _conv_net(keras), keras.layers.Dense(2, name="top")], name="outer"
    )
    stats = model_stats(outer)
    assert [layer.name for layer in stats.layers] == [f"inner/{n}" for n in CONV_NET_MACS] + ["top"]
    assert count_macs(outer) == sum(CONV_NET_MACS.values()) + 3 * 2
    assert count_params(outer) == outer.count_params()
    assert weight_bytes(outer) == 4 * outer.count_params()


def test_batch_norm_is_counted_in_params_not_macs():
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="bn")])
    assert count_params(model) == 16 and count_macs(model) == 0
    assert model_stats(model).trainable_params == 8


def test_ops_called_in_the_graph_count_as_weightless_layers():
    import keras

    # `a * b` and keras.ops calls become graph nodes that are Operations, not Layers
    # (MobileNetV3 builds its hard-swish this way): no weights, no MACs
    inputs = keras.Input((4,), name="x")
    scores = keras.layers.Dense(4, name="fc")(inputs)
    outputs = keras.ops.relu(scores) * scores
    stats = model_stats(keras.Model(inputs, outputs))
    assert stats.macs == 16 and stats.params == 20
    assert [layer.params for layer in stats.layers if layer.name != "fc"] == [0, 0]


def test_unknown_spatial_dims_are_refused():
    import keras

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs))
    with pytest.raises(InputError, match="layer 'conv' has unknown dimensions"):
        count_macs(model)


def test_subclassed_model_is_refused():
    import keras

    class Tiny(keras.Model):
        def __init__(self):
            super().__init__(name="tiny")
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(InputError, match="'tiny' is a subclassed keras.Model"):
        count_macs(Tiny())


def test_unbuilt_sequential_is_refused():
    import keras

    with pytest.raises(InputError, match="Sequential model that is not built"):
        count_macs(keras.Sequential([keras.layers.Dense(2)], name="lazy"))


@pytest.mark.heavy
def test_mobilenet_v2_macs_match_the_paper():
    import keras

    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    # the MobileNetV2 paper: 300M multiply-adds, 3.4M parameters (plus BN statistics here)
    assert count_macs(model) == pytest.approx(300e6, rel=0.01)
    assert count_params(model) == model.count_params()

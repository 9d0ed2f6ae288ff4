"""Tiny Keras models, one per model family, for the export coverage matrix (issue 15).

The families come from reading Keras' export tests (keras/src/export/litert_test.py,
onnx_test.py: sequential, functional, subclassed, list/dict inputs, several outputs, LSTM
and GRU) and tf2onnx's Keras tests (tests/test_keras_model.py, keras2onnx layer tests:
recurrent with states and masks, bidirectional, conv 1/2/3-D, transposed and depthwise
convolutions, 3-D pooling, embedding, attention, TimeDistributed, nested models); the
models are our own. Each builder returns a built model with a few hundred weights.

EXPECTED is the matrix: per family and format, what our export and Keras' own
`model.export` do, with the reason for every cell that is not a pass. tests/
test_keras_coverage.py measures every cell against it; docs/gen_keras_coverage.py renders it.
"""

from __future__ import annotations

from typing import Any

PASS = "pass"
FORMATS = ("tflite", "onnx")
FIXED_BATCH = 3


def _seed():
    import keras

    keras.utils.set_random_seed(15)
    return keras, keras.layers


def sequential():
    keras, L = _seed()
    return keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu"), L.Dense(3)], name="sequential")


def functional_cnn():
    keras, L = _seed()
    x = inputs = keras.Input((8, 8, 2), name="image")
    x = L.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.BatchNormalization(name="bn")(x)
    outputs = L.Dense(3, activation="softmax", name="scores")(L.Flatten(name="flat")(x))
    return keras.Model(inputs, outputs, name="functional_cnn")


def subclassed():
    import numpy as np

    keras, L = _seed()

    class TwoHeads(keras.Model):
        def __init__(self):
            super().__init__(name="two_heads")
            self.hidden = L.Dense(8, activation="relu")
            self.head_a = L.Dense(3)
            self.head_b = L.Dense(1)

        def call(self, features):
            x = self.hidden(features)
            return self.head_a(x), self.head_b(x)

    model = TwoHeads()
    model(np.zeros((1, 6), np.float32))
    return model


def list_inputs():
    keras, L = _seed()
    a, b = keras.Input((4,), name="left"), keras.Input((3,), name="right")
    x = L.Concatenate(name="join")([L.Dense(4, name="da")(a), b])
    return keras.Model([a, b], L.Dense(2, name="out")(x), name="list_inputs")


def dict_inputs():
    keras, L = _seed()
    inputs = {"left": keras.Input((4,), name="left"), "right": keras.Input((3,), name="right")}
    x = L.Concatenate(name="join")([inputs["left"], inputs["right"]])
    return keras.Model(inputs, L.Dense(2, name="out")(x), name="dict_inputs")


def several_outputs():
    keras, L = _seed()
    inputs = keras.Input((6,), name="x")
    h = L.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = {"scores": L.Dense(3, activation="softmax", name="scores")(h),
               "value": L.Dense(1, name="value")(h)}
    return keras.Model(inputs, outputs, name="several_outputs")


def lstm_states():
    """Several outputs of one layer: LSTM(return_sequences, return_state) gives 3 tensors."""
    keras, L = _seed()
    inputs = keras.Input((5, 3), name="seq")
    sequence, h, c = L.LSTM(4, return_sequences=True, return_state=True, name="lstm")(inputs)
    last, h2, c2 = L.LSTM(3, return_state=True, name="lstm_top")(sequence)
    return keras.Model(inputs, [sequence, h, c, last, h2, c2], name="lstm_states")


def gru_simple_rnn():
    """Stacked recurrent layers of two kinds: GRU (return_sequences) into SimpleRNN."""
    keras, L = _seed()
    inputs = keras.Input((5, 3), name="seq")
    x = L.GRU(4, return_sequences=True, name="gru")(inputs)
    return keras.Model(inputs, L.SimpleRNN(3, name="rnn")(x), name="gru_simple_rnn")


def bidirectional():
    keras, L = _seed()
    inputs = keras.Input((5, 3), name="seq")
    return keras.Model(inputs, L.Bidirectional(L.LSTM(3), name="bi_lstm")(inputs), name="bidirectional")


def masking():
    keras, L = _seed()
    inputs = keras.Input((5, 3), name="seq")
    x = L.Masking(mask_value=0.0, name="mask")(inputs)
    return keras.Model(inputs, L.GRU(4, name="gru")(x), name="masking")


def dynamic_time():
    keras, L = _seed()
    inputs = keras.Input((None, 3), name="seq")
    return keras.Model(inputs, L.GRU(4, return_sequences=True, name="gru")(inputs), name="dynamic_time")


def initial_states():
    keras, L = _seed()
    inputs = keras.Input((5, 3), name="seq")
    h0, c0 = keras.Input((4,), name="h0"), keras.Input((4,), name="c0")
    outputs = L.LSTM(4, name="lstm")(inputs, initial_state=[h0, c0])
    return keras.Model([inputs, h0, c0], outputs, name="initial_states")


def conv1d():
    keras, L = _seed()
    inputs = keras.Input((12, 2), name="signal")
    x = L.Conv1D(4, 3, activation="relu", name="conv")(inputs)
    x = L.MaxPooling1D(name="pool")(x)
    return keras.Model(inputs, L.GlobalAveragePooling1D(name="gap")(x), name="conv1d")


def conv3d():
    keras, L = _seed()
    inputs = keras.Input((4, 6, 6, 1), name="volume")
    x = L.Conv3D(2, 3, activation="relu", name="conv")(inputs)
    return keras.Model(inputs, L.GlobalAveragePooling3D(name="gap")(x), name="conv3d")


def pooling3d():
    keras, L = _seed()
    inputs = keras.Input((4, 6, 6, 1), name="volume")
    x = L.MaxPooling3D(2, name="pool3d")(inputs)
    return keras.Model(inputs, L.Flatten(name="flat")(x), name="pooling3d")


def transposed_depthwise():
    keras, L = _seed()
    inputs = keras.Input((6, 6, 2), name="image")
    x = L.DepthwiseConv2D(3, padding="same", name="depthwise")(inputs)
    x = L.SeparableConv2D(3, 3, name="separable")(x)
    return keras.Model(inputs, L.Conv2DTranspose(2, 3, strides=2, name="up")(x), name="transposed_depthwise")


def embedding():
    keras, L = _seed()
    inputs = keras.Input((6,), dtype="int32", name="tokens")
    x = L.Embedding(20, 4, name="embed")(inputs)
    return keras.Model(inputs, L.GlobalAveragePooling1D(name="gap")(x), name="embedding")


def transformer():
    keras, L = _seed()
    tokens = keras.Input((6, 8), name="tokens")
    x = L.MultiHeadAttention(num_heads=2, key_dim=4, name="attention")(tokens, tokens)
    x = L.LayerNormalization(name="ln")(L.Add(name="residual")([tokens, x]))
    y = L.Dense(8, activation="gelu", name="ff")(x)
    return keras.Model(tokens, L.Add(name="encoded")([x, y]), name="transformer")


def time_distributed():
    keras, L = _seed()
    inputs = keras.Input((4, 5), name="steps")
    return keras.Model(inputs, L.TimeDistributed(L.Dense(3), name="per_step")(inputs), name="time_distributed")


def nested_shared():
    keras, L = _seed()
    inner_in = keras.Input((4,), name="inner_in")
    encoder = keras.Model(inner_in, L.Dense(3, activation="tanh", name="enc")(inner_in), name="encoder")
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    joined = L.Concatenate(name="join")([encoder(a), encoder(b)])  # one sub-model, used twice
    return keras.Model([a, b], L.Dense(2, name="out")(joined), name="nested_shared")


def custom_layer():
    keras, L = _seed()

    class ScaledDense(L.Layer):
        def __init__(self, units, scale=0.5, **kwargs):
            super().__init__(**kwargs)
            self.units, self.scale = units, scale

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")

        def call(self, x):
            return keras.ops.matmul(x, self.kernel) * self.scale

        def get_config(self):
            return {**super().get_config(), "units": self.units, "scale": self.scale}

    inputs = keras.Input((5,), name="x")
    return keras.Model(inputs, ScaledDense(3, name="scaled")(inputs), name="custom_layer")


def dynamic_spatial():
    keras, L = _seed()
    inputs = keras.Input((None, None, 2), name="image")
    x = L.Conv2D(3, 3, padding="same", activation="relu", name="conv")(inputs)
    return keras.Model(inputs, L.GlobalMaxPooling2D(name="gmp")(x), name="dynamic_spatial")


def preprocessing():
    import numpy as np

    keras, L = _seed()
    inputs = keras.Input((8, 8, 2), name="image")
    x = L.Rescaling(1 / 255.0, name="rescale")(inputs)
    x = L.Normalization(mean=np.array([0.4, 0.6]), variance=np.array([0.04, 0.09]), name="norm")(x)
    x = L.Resizing(4, 4, name="resize")(x)
    return keras.Model(inputs, L.Conv2D(2, 3, name="conv")(x), name="preprocessing")


def gelu_mix():
    """Exact and tanh-approximate GELU applied to one tensor (they share 0.5 * x)."""
    keras, L = _seed()
    inputs = keras.Input((6,), name="x")
    exact = L.Activation(lambda t: keras.activations.gelu(t, approximate=False), name="gelu_exact")(inputs)
    tanh = L.Activation(lambda t: keras.activations.gelu(t, approximate=True), name="gelu_tanh")(inputs)
    return keras.Model(inputs, L.Add(name="sum")([exact, tanh]), name="gelu_mix")


FAMILIES = {f.__name__: f for f in (
    sequential, functional_cnn, subclassed, list_inputs, dict_inputs, several_outputs,
    lstm_states, gru_simple_rnn, bidirectional, masking, dynamic_time, initial_states,
    conv1d, conv3d, pooling3d, transposed_depthwise, embedding, transformer, time_distributed,
    nested_shared, custom_layer, dynamic_spatial, preprocessing, gelu_mix,
)}

DESCRIPTIONS = {
    "sequential": "Sequential Dense stack",
    "functional_cnn": "functional Conv2D, pooling, BatchNormalization, Dense",
    "subclassed": "keras.Model subclass with call(), two outputs",
    "list_inputs": "two inputs given as a list",
    "dict_inputs": "two inputs given as a dict",
    "several_outputs": "two heads as a dict of outputs",
    "lstm_states": "LSTM with return_sequences and return_state (6 outputs from 2 layers)",
    "gru_simple_rnn": "stacked GRU (return_sequences) and SimpleRNN",
    "bidirectional": "Bidirectional LSTM",
    "masking": "Masking before a GRU",
    "dynamic_time": "GRU over a dynamic number of time steps",
    "initial_states": "LSTM with its initial states as model inputs",
    "conv1d": "Conv1D, MaxPooling1D, GlobalAveragePooling1D",
    "conv3d": "Conv3D, GlobalAveragePooling3D",
    "pooling3d": "MaxPooling3D",
    "transposed_depthwise": "DepthwiseConv2D, SeparableConv2D, Conv2DTranspose",
    "embedding": "Embedding of int32 tokens",
    "transformer": "MultiHeadAttention, LayerNormalization, GELU feed-forward",
    "time_distributed": "TimeDistributed(Dense)",
    "nested_shared": "a nested functional model, shared by two inputs",
    "custom_layer": "custom layer with its own weights and get_config",
    "dynamic_spatial": "Conv2D on a dynamic height and width",
    "preprocessing": "Rescaling, Normalization, Resizing",
    "gelu_mix": "exact and tanh GELU on the same tensor",
}

RECURRENT = ("lstm_states", "gru_simple_rnn", "bidirectional", "masking", "dynamic_time", "initial_states")
# the slow part of the matrix (a recurrent loop takes seconds to convert): pytest.mark.heavy
HEAVY = (*RECURRENT, "transformer")

# How each cell is measured: ours at three batch modes, Keras' model.export (dynamic batch).
SIDES = ("batch 1", f"batch {FIXED_BATCH}", "dynamic batch", "keras.export")
OURS_SIDES = SIDES[:3]

FLEX_RNN = ("the loop's TensorList ops then need Flex kernels",
            "a dynamic batch makes the loop's TensorList shape dynamic, which only Flex ops run; "
            "refused (tflite-runtime/ai-edge-litert have no Flex): export with a fixed batch")
KERAS_FLEX = ("Select TensorFlow op",
              "writes an artifact with Flex ops that ai-edge-litert (and tflite-runtime) cannot run")
ERFC_ONNX = ("INVALID_GRAPH", "invalid ONNX: tf2onnx has no mapping for Erfc (Keras' exact GELU)")
POOL3D = ("has no 3-D pooling kernel", "TFLite has no 3-D pooling builtin: refused before writing, naming the layer")

# Cells that are not a pass: (family, format, side) -> (text the measured failure contains, reason)
EXCEPTIONS: dict[tuple[str, str, str], tuple[str, str]] = {
    **{(family, "tflite", "dynamic batch"): FLEX_RNN for family in RECURRENT},
    **{(family, "tflite", "keras.export"): KERAS_FLEX for family in RECURRENT},
    **{("pooling3d", "tflite", side): POOL3D for side in OURS_SIDES},
    ("pooling3d", "tflite", "keras.export"): KERAS_FLEX,
    ("transformer", "onnx", "keras.export"): ERFC_ONNX,
    ("gelu_mix", "onnx", "keras.export"): ERFC_ONNX,
    ("gelu_mix", "tflite", "keras.export"): (
        "Erfc", "conversion fails: sharing 0.5 * x with the tanh GELU keeps the exact GELU from being "
                "fused, and its Erfc has no TFLite kernel"),
    ("preprocessing", "onnx", "keras.export"): (
        "inputs for the model's", "Normalization's mean and variance become extra graph inputs"),
}


def expected(family: str, fmt: str, side: str) -> tuple[str, str] | None:
    """None for a pass, else (text the failure contains, reason)."""
    return EXCEPTIONS.get((family, fmt, side))


def sample_inputs(model: Any, batch: int, seed: int = 0) -> dict[str, Any]:
    """Random inputs for `model` at `batch`; dynamic dimensions get 6 (time) or 8 (spatial)."""
    import numpy as np

    from toolchain.keras_io import input_signature

    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in input_signature(model):
        shape = (batch, *[d or (8 if len(spec.shape) == 3 else 6) for d in spec.shape])
        if spec.dtype.startswith("int"):
            inputs[spec.name] = rng.integers(0, 20, size=shape).astype(spec.dtype)
        else:
            inputs[spec.name] = rng.uniform(-1, 1, size=shape).astype(spec.dtype)
    if "seq" in inputs and inputs["seq"].ndim == 3:
        inputs["seq"][:, -1:, :] = 0.0  # a masked (all-zero) last step for the masking family
    return inputs

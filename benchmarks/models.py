"""The benchmark models and their data.

Keras applications are built with weights=None (nothing can be downloaded here): latency
does not depend on the weights' values, accuracy does, so the suite reports no accuracy
for them. Their calibration images are smooth random fields in the model's input range,
so activation ranges are those of image-like input rather than white noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FULL = ["digits_cnn", "MobileNetV2", "MobileNetV3Small", "ResNet50", "EfficientNetB0"]
OPTIMIZE = ["digits_cnn", "mnv3_digits", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0"]
QUICK = ["digits_cnn", "MobileNetV3Small"]

# the input range each application's first layer expects (preprocess_input output)
_INPUT_RANGE = {"MobileNetV2": (-1.0, 1.0), "ResNet50": (-128.0, 128.0),
                "MobileNetV3Small": (0.0, 255.0), "EfficientNetB0": (0.0, 255.0)}


@dataclass
class BenchModel:
    name: str
    model: Any
    calibration: np.ndarray  # samples for int8 calibration (same for ours and the baselines)
    evaluation: np.ndarray   # samples for verification
    labels: np.ndarray | None
    note: str


def smooth_images(count: int, size: int, low: float, high: float, seed: int) -> np.ndarray:
    cells = size // 8
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(low, high, (count, cells, cells, 3)).astype(np.float32)
    return np.ascontiguousarray(np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2))


def build(name: str, calibration_samples: int = 16, eval_samples: int = 8) -> BenchModel:
    import keras

    if name == "digits_cnn":
        from toolchain.demo import digits_split, train_digits_cnn

        model = train_digits_cnn(seed=0)
        x_train, _, x_eval, y_eval = digits_split(0)
        return BenchModel(name, model, x_train[:200], x_eval[:500], y_eval[:500],
                          "the demo's CNN, trained on scikit-learn's 8x8 digits")
    if name == "mnv3_digits":
        return mnv3_digits()
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    low, high = _INPUT_RANGE[name]
    return BenchModel(name, model, smooth_images(calibration_samples, 224, low, high, 0),
                      smooth_images(eval_samples, 224, low, high, 1), None,
                      f"keras.applications.{name}(weights=None), 224x224x3")


def mnv3_digits(seed: int = 0) -> BenchModel:
    """A MobileNetV3-style CNN (hard-swish, squeeze-excite, inverted residuals) trained on the
    digits upsampled to 32x32x3, so int8 accuracy is real: 1497 train / 300 eval samples."""
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.repeat(np.repeat(digits.images / 16.0, 4, axis=1), 4, axis=2)[..., None]
    images = np.repeat(images, 3, axis=3).astype(np.float32)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    train, held = order[300:], order[:300]
    keras.utils.set_random_seed(seed)
    model = _mnv3_style((32, 32, 3), 10)
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    model.fit(images[train], labels[train], epochs=15, batch_size=32, verbose=0)
    return BenchModel("mnv3_digits", model, images[train][:200], images[held], labels[held],
                      "MobileNetV3-style (hard-swish, squeeze-excite), trained on the digits at 32x32x3")


def _mnv3_style(shape: tuple[int, int, int], classes: int) -> Any:
    import keras

    def block(x: Any, expand: int, out: int, stride: int, name: str) -> Any:
        y = keras.layers.Conv2D(expand, 1, name=f"{name}_expand")(x)
        y = keras.layers.Activation("hard_swish", name=f"{name}_expand_hswish")(y)
        y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", name=f"{name}_dw")(y)
        y = keras.layers.Activation("hard_swish", name=f"{name}_dw_hswish")(y)
        squeeze = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_squeeze")(y)
        squeeze = keras.layers.Conv2D(expand // 4, 1, activation="relu", name=f"{name}_se_reduce")(squeeze)
        squeeze = keras.layers.Conv2D(expand, 1, activation="hard_sigmoid", name=f"{name}_se_expand")(squeeze)
        y = keras.layers.Multiply(name=f"{name}_se_excite")([y, squeeze])
        y = keras.layers.Conv2D(out, 1, name=f"{name}_project")(y)
        return keras.layers.Add(name=f"{name}_add")([x, y]) if stride == 1 and x.shape[-1] == out else y

    inputs = keras.Input(shape, name="pixels")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.Activation("hard_swish", name="stem_hswish")(x)
    x = block(x, 48, 24, 2, "block1")
    x = block(x, 72, 24, 1, "block2")
    x = block(x, 96, 40, 2, "block3")
    x = block(x, 120, 40, 1, "block4")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name="mnv3_digits")

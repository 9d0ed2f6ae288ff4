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
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    low, high = _INPUT_RANGE[name]
    return BenchModel(name, model, smooth_images(calibration_samples, 224, low, high, 0),
                      smooth_images(eval_samples, 224, low, high, 1), None,
                      f"keras.applications.{name}(weights=None), 224x224x3")

"""The demo: a small CNN trained (seeded) on scikit-learn's bundled handwritten digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fileio import atomic_output

INPUT_NAME = "image"
OUTPUT_NAME = "probs"
EVAL_COUNT = 500
PIPELINE_TOML = """\
# Written by `edge-toolchain demo`. Paths are relative to this file.
[model]
path = "digits_cnn.keras"
name = "digits"

[data]
eval = "digits_eval.npz"
labels_key = "y"
samples = 500
value_range = [0.0, 1.0]

[data.calibration]
source = "digits_train.npz"
samples = 200

[export]
formats = ["tflite", "onnx"]
batch_size = 1

[export.tflite]
recipes = {tflite_recipes}

[export.onnx]
recipes = {onnx_recipes}
per_channel = true
calibration_method = "minmax"

[verify]
samples = 500

[bench]
targets = ["local"]
threads = [1]
min_runs = 200
min_seconds = 1.0
"""


def pipeline_toml() -> str:
    """The demo's pipeline.toml: every recipe of the registry, both formats."""
    import json

    from .recipes import recipe_names

    return PIPELINE_TOML.format(tflite_recipes=json.dumps(list(recipe_names("tflite"))),
                                onnx_recipes=json.dumps(list(recipe_names("onnx"))))


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images scaled to [0, 1], shape (N, 8, 8, 1); a seeded, disjoint train/eval split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    eval_idx, train_idx = order[:EVAL_COUNT], order[EVAL_COUNT:]
    return x[train_idx], y[train_idx], x[eval_idx], y[eval_idx]


def build_digits_cnn():
    import keras

    inputs = keras.Input((8, 8, 1), name=INPUT_NAME)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def train_digits_cnn(seed: int = 0, epochs: int = 15):
    import keras

    keras.utils.set_random_seed(seed)
    x_train, y_train, _, _ = digits_split(seed)
    model = build_digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


def write_demo_inputs(folder: Path, seed: int = 0, write_pipeline: bool = True) -> Path:
    """Train the model and write it, the data and (optionally) pipeline.toml into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_eval, y_eval = digits_split(seed)
    model = train_digits_cnn(seed)
    with atomic_output(folder / "digits_cnn.keras", suffix=".keras") as tmp:
        model.save(tmp)
    for name, x, y in (("digits_train.npz", x_train, y_train), ("digits_eval.npz", x_eval, y_eval)):
        with atomic_output(folder / name, suffix=".npz") as tmp:
            np.savez(tmp, **{INPUT_NAME: x, "y": y})
    pipeline = folder / "pipeline.toml"
    if write_pipeline:
        with atomic_output(pipeline) as tmp:
            tmp.write_text(pipeline_toml())
    return pipeline

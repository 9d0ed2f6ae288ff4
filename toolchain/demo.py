"""The demo: a small CNN trained (seeded) on scikit-learn's bundled handwritten digits."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

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
    save_reproducibly(train_digits_cnn(seed), folder / "digits_cnn.keras")
    for name, x, y in (("digits_train.npz", x_train, y_train), ("digits_eval.npz", x_eval, y_eval)):
        with atomic_output(folder / name, suffix=".npz") as tmp:
            np.savez(tmp, **{INPUT_NAME: x, "y": y})
    pipeline = folder / "pipeline.toml"
    if write_pipeline:
        with atomic_output(pipeline) as tmp:
            tmp.write_text(pipeline_toml())
    return pipeline


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_reproducibly(model: Any, path: Path) -> Path:
    """Save a .keras file whose bytes depend only on the model, so a re-run hits the caches.

    Keras' own file holds the optimizer (its name, 'adam_1', counts the optimizers this
    process made), the save date, the weights' zip timestamp and `shared_object_id`s that
    are memory addresses: the inference model (same layers, no optimizer) is saved, then
    the zip is rewritten without the date, with fixed timestamps and ids numbered 1, 2, ...
    """
    import keras

    inference = keras.Model(model.inputs, model.outputs, name=model.name)
    with tempfile.TemporaryDirectory(prefix="edge-toolchain-save-") as scratch:
        plain = Path(scratch) / "model.keras"
        inference.save(plain)
        with zipfile.ZipFile(plain) as source, atomic_output(path, suffix=".keras") as tmp:
            with zipfile.ZipFile(tmp, "w") as target:
                for info in source.infolist():
                    data = source.read(info)
                    if info.filename == "metadata.json":
                        metadata = json.loads(data)
                        metadata.pop("date_saved", None)
                        data = json.dumps(metadata).encode()
                    elif info.filename == "config.json":
                        data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
                    entry = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
                    entry.compress_type, entry.external_attr = info.compress_type, info.external_attr
                    target.writestr(entry, data)
    return path


def _renumber_shared_objects(node: Any, ids: dict[int, int]) -> Any:
    """Keras marks objects shared between layers with id(obj); any distinct numbers do."""
    if isinstance(node, dict):
        return {key: (ids.setdefault(value, len(ids) + 1) if key == "shared_object_id" else
                      _renumber_shared_objects(value, ids)) for key, value in node.items()}
    if isinstance(node, list):
        return [_renumber_shared_objects(value, ids) for value in node]
    return node

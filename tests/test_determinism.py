"""Byte-reproducible outputs: an export or a saved demo model must not depend on process history.

A re-run (resume after a kill, `make demo` twice) compares sha256 digests to reuse cached
work, so the same model must give the same bytes whatever ran before in the process.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _advance_process_counters() -> None:
    """Trace an unrelated tf.function and make an optimizer: TF's and Keras' name counters move on."""
    import keras
    import tensorflow as tf

    tf.function(lambda t: t * 2.0).get_concrete_function(tf.TensorSpec((None, 3), tf.float32))
    keras.optimizers.Adam()


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_exporting_twice_in_one_process_gives_identical_bytes(small_cnn, tmp_path, fmt):
    from toolchain.stages.export_onnx import export_onnx
    from toolchain.stages.export_tflite import export_tflite

    export = export_onnx if fmt == "onnx" else export_tflite
    first = export(small_cnn, tmp_path / f"first.fp32.{fmt}")
    _advance_process_counters()
    second = export(small_cnn, tmp_path / f"second.fp32.{fmt}")
    assert _sha256(first) == _sha256(second)
    if fmt == "onnx":
        import onnx

        assert onnx.load(str(first)).graph.doc_string == "converted from Keras model 'small_cnn' by tf2onnx"


def test_demo_model_has_the_same_sha256_when_trained_and_saved_twice(tmp_path):
    import numpy as np

    from toolchain.demo import save_reproducibly, train_digits_cnn
    from toolchain.keras_io import load_model

    # both models stay alive: their objects live at different addresses, and the second
    # optimizer is named adam_1, which Keras' plain save would write into the file
    models = [train_digits_cnn(seed=0, epochs=1) for _ in range(2)]
    paths = [save_reproducibly(model, tmp_path / f"digits{i}.keras") for i, model in enumerate(models)]
    assert _sha256(paths[0]) == _sha256(paths[1])
    loaded = load_model(paths[0])
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)
    assert np.array_equal(loaded.predict(x, verbose=0), models[0].predict(x, verbose=0))

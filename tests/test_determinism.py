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


EXPORT_IN_A_FRESH_PROCESS = """
import hashlib, sys
from pathlib import Path
from toolchain.keras_io import load_model
from toolchain.stages.export_onnx import export_onnx
path = export_onnx(load_model(Path(sys.argv[1])), Path(sys.argv[2]))
print(hashlib.sha256(path.read_bytes()).hexdigest())
"""


@pytest.mark.heavy
def test_onnx_of_a_model_with_repeated_constants_is_the_same_in_every_process(tmp_path):
    """MobileNetV3's hard-swish blocks repeat the same constants (3, 6, 1/6): TensorFlow and tf2onnx
    keep a different copy each run, which gave a different file per process; constants named by
    content make it one file."""
    import os
    import subprocess
    import sys

    import keras
    import onnx

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3))
    model.save(tmp_path / "mnv3.keras")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    digests = [subprocess.run([sys.executable, "-c", EXPORT_IN_A_FRESH_PROCESS, str(tmp_path / "mnv3.keras"),
                               str(tmp_path / f"run{i}.onnx")], capture_output=True, text=True, env=env,
                              timeout=600, check=True).stdout.split()[-1] for i in range(3)]
    assert len(set(digests)) == 1, digests
    graph = onnx.load(str(tmp_path / "run0.onnx")).graph
    names = [i.name for i in graph.initializer]
    assert names == sorted(names) and all(name.startswith("const_") for name in names)
    assert len(set(names)) == len(names)

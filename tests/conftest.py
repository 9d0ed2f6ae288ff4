"""Shared models and data: built once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

# The `ssh_server` fixture: a real OpenSSH sshd on 127.0.0.1 (tests/sshd.py).
pytest_plugins = ["sshd"]


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory) -> Path:
    """The demo's trained digits CNN, its data and pipeline.toml (trained once, seeded)."""
    from toolchain.demo import write_demo_inputs

    folder = tmp_path_factory.mktemp("demo-source")
    return write_demo_inputs(folder).parent


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_inputs) -> Path:
    """A complete pipeline run on the demo inputs."""
    from toolchain.cli import main

    out = tmp_path_factory.mktemp("demo-run")
    code = main(["run", str(demo_inputs / "pipeline.toml"), "--out", str(out), "--quiet"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def demo_model(demo_inputs):
    """The demo's trained digits CNN, loaded once."""
    from toolchain.keras_io import load_model

    return load_model(demo_inputs / "digits_cnn.keras")


@pytest.fixture
def pipeline_copy(tmp_path, demo_inputs) -> Path:
    """A writable copy of the demo folder, for tests that edit the pipeline."""
    target = tmp_path / "demo"
    shutil.copytree(demo_inputs, target)
    return target / "pipeline.toml"


@pytest.fixture
def run_copy(tmp_path, demo_run) -> Path:
    """A writable copy of the complete demo run (with its cache), for re-run tests."""
    target = tmp_path / "earlier-run"
    shutil.copytree(demo_run, target)
    return target


def _tree_snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under `folder`: (size, mtime_ns, sha256) or 'dir'; {} when missing."""
    import hashlib

    if not folder.exists():
        return {}
    snapshot: dict[str, tuple] = {".": ("dir", folder.stat().st_mtime_ns)}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        key = path.relative_to(folder).as_posix()
        if path.is_dir():
            snapshot[key] = ("dir", stat.st_mtime_ns)
        else:
            snapshot[key] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return snapshot


@pytest.fixture
def tree_snapshot():
    """snapshot(folder) -> dict; equal snapshots mean nothing was created, changed or removed."""
    return _tree_snapshot


@pytest.fixture(scope="session")
def small_cnn():
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3), name="pixels")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


@pytest.fixture(scope="session")
def small_cnn_file(tmp_path_factory, small_cnn) -> Path:
    path = tmp_path_factory.mktemp("models") / "small_cnn.keras"
    small_cnn.save(path)
    return path


@pytest.fixture(scope="session")
def lambda_model_file(tmp_path_factory) -> Path:
    import keras

    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    path = tmp_path_factory.mktemp("models") / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def random_images(count: int, shape=(16, 16, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(count, *shape)).astype(np.float32)


@pytest.fixture(scope="session")
def mobilenet_v2_96():
    """keras.applications.MobileNetV2, random weights (seeded), 96x96 input, with its top."""
    import keras

    keras.utils.set_random_seed(2)
    return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), classes=10)


@pytest.fixture(scope="session")
def mobilenet_v2_small():
    """MobileNetV2 alpha 0.35, random weights (seeded), 96x96 input, 10 classes: the same
    layer kinds as the full model at a fraction of the conversion time (quantization tests
    convert it ten times)."""
    import keras

    keras.utils.set_random_seed(3)
    return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35, classes=10)


@pytest.fixture(scope="session")
def resnet50_64():
    """keras.applications.ResNet50, random weights (seeded), 64x64 input, with its top."""
    import keras

    keras.utils.set_random_seed(3)
    return keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)


DEVICE_PACKAGES = ["numpy<2", "tflite-runtime==2.14.0", "onnxruntime"]


def _device_venv() -> Path:
    """A venv like a Raspberry Pi's Python 3.11: numpy<2, tflite-runtime 2.14, onnxruntime.

    Cached across sessions (EDGE_TOOLCHAIN_TEST_CACHE, default ~/.cache/edge-toolchain-tests);
    built in a temp folder and renamed into place, under a file lock, so concurrent test
    runs never see a half-built venv.
    """
    import fcntl
    import subprocess
    import sys
    import tempfile

    cache = Path(os.environ.get("EDGE_TOOLCHAIN_TEST_CACHE", Path.home() / ".cache" / "edge-toolchain-tests"))
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / "device-venv"
    python = venv / "bin" / "python"
    with open(cache / "device-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists():
            return python
        build = Path(tempfile.mkdtemp(prefix="device-venv.", dir=cache))
        subprocess.run([sys.executable, "-m", "venv", str(build)], check=True)
        subprocess.run([str(build / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        *DEVICE_PACKAGES], check=True)
        build.rename(venv)
    return python


@pytest.fixture(scope="session")
def device_python() -> Path:
    """Python of the device venv (tflite-runtime 2.14 + numpy<2 + onnxruntime)."""
    return _device_venv()


# ---- export / compatibility (issue 4) -------------------------------------------

@pytest.fixture(scope="session")
def transformer_block():
    """LayerNormalization, MultiHeadAttention and a GELU feed-forward, as in a ViT/BERT block."""
    import keras

    keras.utils.set_random_seed(2)
    tokens = keras.Input((16, 32), name="tokens")
    x = keras.layers.LayerNormalization(name="ln1")(tokens)
    x = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, name="attention")(x, x)
    x = keras.layers.Add(name="residual1")([tokens, x])
    y = keras.layers.LayerNormalization(name="ln2")(x)
    y = keras.layers.Dense(64, activation="gelu", name="ff1")(y)
    y = keras.layers.Dense(32, name="ff2")(y)
    outputs = keras.layers.Add(name="encoded")([x, y])
    return keras.Model(tokens, outputs, name="transformer_block")


@pytest.fixture(scope="session")
def multi_io_model():
    """Two inputs (an image and a vector), two outputs (class scores and a regression value)."""
    import keras

    keras.utils.set_random_seed(3)
    image = keras.Input((12, 12, 1), name="image")
    meta = keras.Input((4,), name="meta")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Concatenate(name="join")([x, meta])
    scores = keras.layers.Dense(3, activation="softmax", name="scores")(x)
    value = keras.layers.Dense(1, name="value")(x)
    return keras.Model([image, meta], [scores, value], name="multi_io")


@pytest.fixture(scope="session")
def sequential_model():
    """A Sequential model: Keras names its input and output after auto-named layers."""
    import keras

    keras.utils.set_random_seed(4)
    return keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)],
        name="sequential_mlp",
    )


@pytest.fixture(scope="session")
def device_profile(tmp_path_factory, device_python) -> Path:
    """A target profile file whose python is the device venv (tflite-runtime 2.14)."""
    path = tmp_path_factory.mktemp("profiles") / "device-tflite214.toml"
    path.write_text(
        'name = "device-tflite214"\n[connection]\nkind = "local"\n'
        f'python = "{device_python}"\n[runtime]\ntflite_backend = "tflite_runtime"\n'
    )
    return path


# ---- optimize (issue 16) ---------------------------------------------------------

def mobilenet_v3_style(input_shape=(16, 16, 1), classes: int = 10, width: int = 16):
    """A tiny MobileNetV3-style CNN: hard-swish activations and a squeeze-excite block."""
    import keras

    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.Activation("hard_swish", name="stem_hswish")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = keras.layers.Activation("hard_swish", name="dw_hswish")(x)
    squeeze = keras.layers.GlobalAveragePooling2D(keepdims=True, name="se_squeeze")(x)
    squeeze = keras.layers.Conv2D(width // 4, 1, activation="relu", name="se_reduce")(squeeze)
    squeeze = keras.layers.Conv2D(width, 1, activation="hard_sigmoid", name="se_expand")(squeeze)
    x = keras.layers.Multiply(name="se_excite")([x, squeeze])
    x = keras.layers.Conv2D(width * 2, 1, name="project")(x)
    x = keras.layers.Activation("hard_swish", name="project_hswish")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name="mnv3_digits")


@pytest.fixture(scope="session")
def mnv3_digits(tmp_path_factory) -> tuple[Path, Path]:
    """(model.keras, eval.npz): the MobileNetV3-style CNN trained on the digits upsampled to 16x16
    (seeded, ~20 s on 2 loaded cores; 95% held-out accuracy), and 300 held-out labelled samples
    keyed 'pixels' and 'y', with Gaussian noise (sigma 0.5): the model is unsure on many (72%
    accuracy), so quantization rounding moves real accuracy."""
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.repeat(np.repeat(digits.images / 16.0, 2, axis=1), 2, axis=2)[..., None].astype(np.float32)
    labels = digits.target.astype(np.int64)
    keras.utils.set_random_seed(5)
    model = mobilenet_v3_style()
    model.compile(optimizer=keras.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(images[300:], labels[300:], epochs=10, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("mnv3-digits")
    model.save(folder / "mnv3_digits.keras")
    noisy = np.clip(images[:300] + np.random.default_rng(1).normal(0, 0.5, images[:300].shape), 0, 1)
    np.savez(folder / "eval.npz", pixels=noisy.astype(np.float32), y=labels[:300])
    return folder / "mnv3_digits.keras", folder / "eval.npz"


# ---- inspect: layers, cut points, droppable blocks (issue 18) -------------------------

@pytest.fixture(scope="session")
def residual_cnn_file(tmp_path_factory) -> Path:
    """A small CNN with one identity residual block (res_add), a BatchNormalization and a head, saved."""
    import keras

    keras.utils.set_random_seed(8)
    inputs = keras.Input((12, 12, 3), name="pixels")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="res_conv1")(x)
    h = keras.layers.Conv2D(8, 3, padding="same", name="res_conv2")(h)
    x = keras.layers.Add(name="res_add")([x, h])
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, name="reduce")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="scores")(x)
    path = tmp_path_factory.mktemp("models") / "residual_cnn_with_a_long_descriptive_name.keras"
    keras.Model(inputs, outputs, name="residual_cnn").save(path)
    return path


@pytest.fixture(scope="session")
def tiny_onnx_file(tmp_path_factory) -> Path:
    """A one-op ONNX model (x[1, 8] -> relu), built directly: milliseconds per benchmark on any runtime."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(model, path)
    return path

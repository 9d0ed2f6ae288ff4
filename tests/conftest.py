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


@pytest.fixture
def pipeline_copy(tmp_path, demo_inputs) -> Path:
    """A writable copy of the demo folder, for tests that edit the pipeline."""
    target = tmp_path / "demo"
    shutil.copytree(demo_inputs, target)
    return target / "pipeline.toml"


@pytest.fixture(scope="session")
def small_cnn():
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3), name="pixels")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
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

"""The emulated run's default timeout: scaled from the artifact's MACs (no emulation needed here)."""

from __future__ import annotations

import pytest

from toolchain.emulator.timeouts import (
    EMULATED_MACS_PER_SECOND,
    MIN_TIMEOUT_SECONDS,
    STARTUP_SECONDS,
    artifact_macs,
    default_timeout,
)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_artifact_macs_equal_the_keras_models(small_cnn, tmp_path, fmt):
    from toolchain.model_stats import count_macs
    from toolchain.stages.export_onnx import export_onnx
    from toolchain.stages.export_tflite import export_tflite

    path = (export_onnx if fmt == "onnx" else export_tflite)(small_cnn, tmp_path / f"cnn.fp32.{fmt}")
    assert artifact_macs(path) == count_macs(small_cnn) > 0


def test_default_timeout_grows_with_the_macs(tmp_path):
    assert default_timeout(None, 8) == MIN_TIMEOUT_SECONDS  # unknown: the old fixed default
    assert default_timeout(10_000, 8) == MIN_TIMEOUT_SECONDS  # small models: start-up dominates
    resnet50 = 4_100_000_000  # MACs of one 224x224 image
    assert default_timeout(resnet50, 8) == round(STARTUP_SECONDS + resnet50 * 8 / EMULATED_MACS_PER_SECOND)
    assert default_timeout(resnet50, 8) > 324  # the ResNet50 cut that ran 324 s emulated got 300 s before
    assert default_timeout(resnet50, 16) > default_timeout(resnet50, 8)
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(b"\x00" * 64)
    assert artifact_macs(damaged) is None  # the emulated runtime reports what is wrong with it

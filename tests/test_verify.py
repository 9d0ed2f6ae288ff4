"""Verification compares names, then shapes, then values, and collects every failure."""

import numpy as np
import pytest

from toolchain.errors import ParityError
from toolchain.stages.verify import (
    compare_outputs,
    raise_on_failures,
    run_artifact,
    tolerance_for,
)


def test_identical_outputs_pass():
    ref = {"p": np.eye(4, dtype=np.float32)}
    metrics, failures = compare_outputs(ref, {"p": ref["p"].copy()}, tolerance_for("fp32"))
    assert failures == []
    assert metrics["p"]["top1_agreement"] == 1.0 and metrics["p"]["max_abs_error"] == 0.0


def test_every_failure_is_collected():
    ref = {"a": np.eye(4, dtype=np.float32), "b": np.ones((4, 3), np.float32), "c": np.ones((4, 2))}
    got = {"a": np.eye(4, dtype=np.float32)[::-1], "b": np.ones((4, 5), np.float32), "z": np.ones(1)}
    _, failures = compare_outputs(ref, got, tolerance_for("fp32"))
    text = " | ".join(failures)
    assert "output 'c' is missing" in text
    assert "unexpected output 'z'" in text
    assert "output 'b': shape [4, 5] != reference [4, 3]" in text
    assert "output 'a': max error" in text and "top-1 agreement 0.0000" in text


def test_nan_output_fails():
    ref = {"p": np.eye(3, dtype=np.float32)}
    got = {"p": np.full((3, 3), np.nan, np.float32)}
    _, failures = compare_outputs(ref, got, tolerance_for("fp32"))
    assert failures == ["output 'p': 9 NaN/inf values in the artifact's output"]


def test_accuracy_with_labels():
    ref = {"p": np.eye(4, dtype=np.float32)}
    metrics, _ = compare_outputs(ref, ref, tolerance_for("fp32"), labels=np.array([0, 1, 2, 0]))
    assert metrics["p"]["accuracy"] == pytest.approx(0.75)
    assert metrics["p"]["accuracy_delta"] == 0.0


def test_raise_on_failures_is_exit_5():
    results = {"m.tflite": {"verdict": "fail", "failures": ["output 'p': bad"]},
               "m.onnx": {"verdict": "pass", "failures": []}}
    with pytest.raises(ParityError, match="m.tflite: output 'p': bad") as info:
        raise_on_failures(results)
    assert info.value.exit_code == 5


def test_perturbed_tflite_artifact_fails_verification(demo_run, demo_inputs, tmp_path):
    """Flip bytes inside the weights of a real artifact: verification must catch it."""
    from toolchain.data import load_npz
    from toolchain.keras_io import input_signature, load_model, run_keras
    from toolchain.stages.verify import verify_artifact

    original = (demo_run / "artifacts" / "digits.fp32.tflite").read_bytes()
    data = bytearray(original)
    middle = len(data) // 2  # the dense weights dominate the middle of the file
    data[middle:middle + 4096] = bytes(4096)
    perturbed = tmp_path / "perturbed.tflite"
    perturbed.write_bytes(bytes(data))

    model = load_model(demo_inputs / "digits_cnn.keras")
    dataset = load_npz(demo_inputs / "digits_eval.npz", input_signature(model)).head(100)
    reference = run_keras(model, dataset.inputs)
    assert run_artifact(demo_run / "artifacts" / "digits.fp32.tflite", dataset.inputs)["probs"].shape == (100, 10)
    result = verify_artifact(perturbed, reference, dataset, tolerance_for("fp32"))
    assert result["verdict"] == "fail"
    assert any("max error" in f for f in result["failures"])
    with pytest.raises(ParityError) as info:
        raise_on_failures({"perturbed.tflite": result})
    assert info.value.exit_code == 5

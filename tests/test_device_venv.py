"""The device venv runs the runner with tflite-runtime 2.14, as a Raspberry Pi would."""

import json
import subprocess

import pytest

from toolchain.targets.local import RUNNER_PATH


@pytest.mark.heavy
def test_runner_in_device_venv(device_python, demo_run):
    for name, backend in (("digits.fp32.tflite", "tflite_runtime"), ("digits.fp32.onnx", "onnxruntime")):
        request = {"model": str(demo_run / "artifacts" / name), "min_runs": 10, "min_seconds": 0}
        done = subprocess.run([str(device_python), str(RUNNER_PATH), json.dumps(request)],
                              capture_output=True, text=True, timeout=120)
        answer = json.loads(done.stdout)
        assert done.returncode == 0, answer
        assert answer["environment"]["backend"] == backend
        assert answer["environment"]["numpy"].startswith("1.")
        if backend == "tflite_runtime":
            assert answer["environment"]["backend_version"] == "2.14.0"
    # the optimize search's session-option candidates: the device's onnxruntime applies them too
    request = {"model": str(demo_run / "artifacts" / "digits.fp32.onnx"), "min_runs": 5, "min_seconds": 0,
               "threads": 2, "session_options": {"allow_spinning": False, "graph_optimization_level": "extended"}}
    done = subprocess.run([str(device_python), str(RUNNER_PATH), json.dumps(request)],
                          capture_output=True, text=True, timeout=120)
    answer = json.loads(done.stdout)
    assert done.returncode == 0, answer
    assert answer["session_options"]["allow_spinning"] is False

"""The device runner's JSON protocol, run as a real subprocess."""

import json
import subprocess
import sys

from toolchain.targets.local import RUNNER_PATH


def run_runner(request, python=sys.executable, timeout=120):
    done = subprocess.run([python, str(RUNNER_PATH), "-"], input=json.dumps(request),
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_benchmark_tflite_and_onnx(demo_run):
    for name in ("digits.fp32.tflite", "digits.fp32.onnx"):
        code, answer = run_runner({"model": str(demo_run / "artifacts" / name), "min_runs": 20,
                                   "min_seconds": 0.05, "warmup_runs": 2})
        assert code == 0 and answer["ok"], answer
        assert answer["latency_ms"]["count"] >= 20
        assert answer["io"]["inputs"][0]["name"] == "image"
        assert answer["memory"]["peak_rss_after_init_kib"] >= answer["memory"]["peak_rss_before_load_kib"]
        env = answer["environment"]
        assert env["backend"] == ("onnxruntime" if name.endswith("onnx") else "ai_edge_litert")
        assert env["python"] and env["numpy"] and env["backend_version"]


def test_max_seconds_caps_runs(demo_run):
    code, answer = run_runner({"model": str(demo_run / "artifacts" / "digits.fp32.onnx"),
                               "min_runs": 10**9, "min_seconds": 0, "max_seconds": 0.3})
    assert code == 0 and answer["capped_by_max_seconds"] is True
    assert answer["timed_seconds"] < 5


def test_bad_requests_exit_2_with_json_error(tmp_path):
    code, answer = run_runner({"model": str(tmp_path / "absent.tflite")})
    assert code == 2 and answer["ok"] is False and "not found" in answer["error"]["message"]
    code, answer = run_runner({"model": "m.tflite", "thread": 2})
    assert code == 2 and "unknown request keys: thread" in answer["error"]["message"]
    code, answer = run_runner({"model": "m.tflite", "threads": 0})
    assert code == 2
    done = subprocess.run([sys.executable, str(RUNNER_PATH), "-"], input="{not json",
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not valid JSON" in json.loads(done.stdout)["error"]["message"]


def test_runner_is_self_contained():
    source = RUNNER_PATH.read_text()
    assert "toolchain" not in source.replace("edge-toolchain", "")

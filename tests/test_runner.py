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


def test_onnx_session_options_are_applied_and_reported(demo_run):
    """The optimize search's session-option candidates run through this request key."""
    model = str(demo_run / "artifacts" / "digits.fp32.onnx")
    code, answer = run_runner({"model": model, "min_runs": 5, "min_seconds": 0, "threads": 2,
                               "session_options": {"allow_spinning": False, "graph_optimization_level": "extended"}})
    assert code == 0, answer
    assert answer["session_options"] == {"allow_spinning": False, "graph_optimization_level": "extended",
                                         "execution_mode": "sequential"}
    assert answer["protocol"] == 2
    code, answer = run_runner({"model": model, "min_runs": 5, "min_seconds": 0})  # absent: the defaults
    assert code == 0 and answer["session_options"] == {"allow_spinning": True, "graph_optimization_level": "all",
                                                       "execution_mode": "sequential"}


def test_bad_session_options_exit_2(demo_run):
    model = str(demo_run / "artifacts" / "digits.fp32.onnx")
    for options, message in (
            ([1], "session_options must be an object or null"),
            ({"spin": False}, "unknown session_options: spin (known: graph_optimization_level"),
            ({"allow_spinning": 0}, "session_options allow_spinning must be one of true, false"),
            ({"graph_optimization_level": "max"}, 'graph_optimization_level must be one of "disable", "basic"')):
        code, answer = run_runner({"model": model, "session_options": options})
        assert code == 2 and message in answer["error"]["message"], answer
    code, answer = run_runner({"model": str(demo_run / "artifacts" / "digits.fp32.tflite"),
                               "session_options": {"allow_spinning": False}})
    assert code == 2 and "session_options apply to onnxruntime (.onnx models) only" in answer["error"]["message"]


def test_requests_without_session_options_leave_the_key_out(tmp_path):
    """A request without session options is one every runner protocol accepts (older runners refuse the key)."""
    from toolchain.stages.bench import bench_request

    settings = {"warmup_runs": 1, "warmup_seconds": 0, "min_runs": 1, "min_seconds": 0, "max_seconds": 1,
                "timeout_seconds": 5}
    assert "session_options" not in bench_request(tmp_path / "m.onnx", 1, settings)
    assert "session_options" not in bench_request(tmp_path / "m.onnx", 1, settings, session_options={})
    request = bench_request(tmp_path / "m.onnx", 1, settings, session_options={"allow_spinning": False})
    assert request["session_options"] == {"allow_spinning": False}

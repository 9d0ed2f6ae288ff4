"""The Raspberry Pi's own aarch64 runtimes under QEMU: setup, gate, golden outputs, crashes, hangs.

The emulated stack is built once into EDGE_TOOLCHAIN_TEST_CACHE (default
~/.cache/edge-toolchain-tests)/emulator and reused across sessions (setup holds a file lock).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import random_images
from system_packages import emulator_missing, require

from toolchain.cli import main
from toolchain.emulator.gate import gate_profile, tolerance_for_recipe
from toolchain.emulator.run import run_emulated
from toolchain.emulator.stack import Stack, setup_stack

pytestmark = pytest.mark.heavy

TEST_CACHE = Path(os.environ.get("EDGE_TOOLCHAIN_TEST_CACHE", Path.home() / ".cache" / "edge-toolchain-tests"))


@pytest.fixture(scope="session")
def emulator_cache() -> Path:
    """The emulated stack (both boards, both runtimes), built once and cached across sessions."""
    folder = TEST_CACHE / "emulator"
    require("qemu-user-static", emulator_missing(folder))
    setup_stack(folder)
    return folder


@pytest.fixture
def use_test_cache(monkeypatch, emulator_cache):
    """Targets and the pipeline find the stack through EDGE_TOOLCHAIN_CACHE."""
    monkeypatch.setenv("EDGE_TOOLCHAIN_CACHE", str(emulator_cache.parent))
    return emulator_cache


@pytest.fixture(scope="session")
def cnn_artifacts(tmp_path_factory, small_cnn) -> Path:
    """The small CNN as fp32 and int8 (full integer, int8 I/O) TFLite files, plus 8 inputs."""
    from toolchain.data import Dataset
    from toolchain.stages.export_tflite import export_tflite

    folder = tmp_path_factory.mktemp("emulated-artifacts")
    export_tflite(small_cnn, folder / "cnn.fp32.tflite")
    calibration = Dataset({"pixels": random_images(64, seed=1)})
    export_tflite(small_cnn, folder / "cnn.int8.tflite", recipe="int8", calibration=calibration)
    np.savez(folder / "inputs.npz", pixels=random_images(8, seed=2))
    return folder


def _check(capsys, *args: str) -> tuple[int, dict]:
    code = main(["emulator", "check", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _corrupt_operator_inputs(source: Path, target: Path) -> None:
    """Point the first operator's `inputs` vector 2 GB past the file: the identifier and the
    tensors the host reads stay valid, only a runtime that skips flatbuffer verification reads it."""
    from ai_edge_litert import schema_py_generated as fb

    data = bytearray(source.read_bytes())
    op = fb.Model.GetRootAs(data, 0).Subgraphs(0).Operators(0)
    struct.pack_into("<I", data, op._tab.Pos + op._tab.Offset(6), 0x7FFFFFF0)
    target.write_bytes(bytes(data))


def test_setup_is_cached_and_status_reports_the_stack(emulator_cache, capsys):
    assert main(["emulator", "setup", "--cache-dir", str(emulator_cache), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["last_setup"]["built"] == []  # everything came from the cache
    assert main(["emulator", "status", "--cache-dir", str(emulator_cache), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["qemu"]["ready"] and "qemu-aarch64" in status["qemu"]["version"]
    assert status["boards"]["raspberry-pi-4"]["qemu_cpu"] == "cortex-a72"
    assert status["boards"]["raspberry-pi-5"]["qemu_cpu"] == "cortex-a76"
    assert status["runtimes"]["tflite_runtime"]["packages"]["tflite-runtime"] == "2.14.0"
    assert status["runtimes"]["tflite_runtime"]["packages"]["numpy"].startswith("1.")
    assert {"ai-edge-litert", "onnxruntime"} <= set(status["runtimes"]["ai_edge_litert"]["packages"])


def test_emulated_python_is_the_pis(emulator_cache):
    stack = Stack(emulator_cache)
    run = run_emulated(stack, "raspberry-pi-5", "tflite_runtime", Path("-c"), [
        "import platform, sys; print(platform.machine(), sys.version_info[:2], open('/proc/cpuinfo').read())"],
        timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("aarch64 (3, 11)")
    assert "Raspberry Pi 5" in run.stdout and "0xd0b" in run.stdout  # the board's cpuinfo, not the host's


@pytest.mark.parametrize("runtime,board", [("tflite_runtime", "raspberry-pi-4"), ("ai_edge_litert", "raspberry-pi-5")])
def test_small_cnn_fp32_and_int8_match_the_host(emulator_cache, cnn_artifacts, capsys, tmp_path, runtime, board):
    golden = tmp_path / "golden"
    code, document = _check(capsys, str(cnn_artifacts / "cnn.fp32.tflite"), str(cnn_artifacts / "cnn.int8.tflite"),
                            "--target", board, "--runtime", runtime, "--inputs", str(cnn_artifacts / "inputs.npz"),
                            "--golden", str(golden), "--cache-dir", str(emulator_cache))
    assert code == 0, document
    for name, recipe in (("cnn.fp32.tflite", "fp32"), ("cnn.int8.tflite", "int8")):
        record = document["artifacts"][name]
        assert record["verdict"] == "pass", record["failures"]
        assert record["backend"] == runtime and record["timing"] == "emulated"
        if runtime == "tflite_runtime":
            assert record["backend_version"] == "2.14.0"
        limit = tolerance_for_recipe(recipe).max_abs_error
        assert 0 <= record["outputs"]["scores"]["normalized_max_error"] <= limit
        with np.load(golden / f"{name}.{board}.{runtime}.golden.npz") as saved:
            assert saved["input:pixels"].shape == (8, 16, 16, 3)
            assert saved["output:scores"].shape == (8, 5)
            assert np.allclose(saved["output:scores"].sum(axis=1), 1.0, atol=0.05)  # softmax rows


def test_runtime_crash_is_a_failure_with_the_signal(emulator_cache, cnn_artifacts, capsys, tmp_path):
    broken = tmp_path / "cnn.fp32.tflite"
    _corrupt_operator_inputs(cnn_artifacts / "cnn.fp32.tflite", broken)
    code, document = _check(capsys, str(broken), "--cache-dir", str(emulator_cache), "--timeout", "120",
                            "--golden", str(tmp_path / "golden"))
    assert code == 5
    record = document["artifacts"][broken.name]
    assert record["verdict"] == "fail" and record["failure"] == "crash" and record["signal"] == "SIGSEGV"
    assert "killed by SIGSEGV" in record["failures"][0]
    assert record["emulated_seconds"] < 120
    assert not (tmp_path / "golden").exists()  # nothing golden about a crash
    # ai-edge-litert verifies the flatbuffer first: the same file is a clean load error there
    code, document = _check(capsys, str(broken), "--runtime", "ai_edge_litert", "--cache-dir", str(emulator_cache))
    record = document["artifacts"][broken.name]
    assert code == 5 and record["failure"] == "load_failed" and record["signal"] is None
    assert "not a valid Flatbuffer" in record["failures"][0]


def test_a_hang_is_killed_at_the_timeout(emulator_cache, tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("import time\nwhile True:\n    time.sleep(1)\n")
    run = run_emulated(Stack(emulator_cache), "raspberry-pi-4", "tflite_runtime", script, [], timeout=5)
    assert run.timed_out and run.returncode is None
    assert run.failure()["kind"] == "timeout"
    assert "no answer within 5 s" in run.failure()["message"]
    assert run.seconds < 60


def test_missing_stack_names_the_setup_command(tmp_path, cnn_artifacts, capsys):
    code = main(["emulator", "check", str(cnn_artifacts / "cnn.fp32.tflite"), "--cache-dir", str(tmp_path)])
    assert code == 3
    assert "edge-toolchain emulator setup --target raspberry-pi-4" in capsys.readouterr().err
    assert main(["emulator", "status", "--cache-dir", str(tmp_path)]) == 0
    assert "emulator setup" in capsys.readouterr().out


def test_bad_command_line_values(cnn_artifacts, capsys, emulator_cache):
    assert main(["emulator", "setup", "--target", "raspberry-pi-3"]) == 2
    assert "--target must be one of raspberry-pi-4, raspberry-pi-5" in capsys.readouterr().err
    assert main(["emulator", "setup", "--runtime", "tensorflow"]) == 2
    assert "--runtime must be one of tflite_runtime, ai_edge_litert" in capsys.readouterr().err
    assert main(["emulator", "check", str(cnn_artifacts / "cnn.fp32.tflite"), "--target", "raspberry-pi-3"]) == 2
    assert "--target must be one of" in capsys.readouterr().err
    assert main(["emulator", "check", str(cnn_artifacts / "cnn.fp32.tflite"), "--runtime", "tensorflow"]) == 2
    assert "--runtime must be one of" in capsys.readouterr().err
    wrong = cnn_artifacts.parent / "wrong-inputs.npz"
    np.savez(wrong, image=random_images(2))
    assert main(["emulator", "check", str(cnn_artifacts / "cnn.fp32.tflite"), "--inputs", str(wrong),
                 "--cache-dir", str(emulator_cache)]) == 2
    assert "has no array for input(s) pixels (it has: image)" in capsys.readouterr().err


def test_emulated_profiles_validate(tmp_path):
    from toolchain.config import find_profile, load_profile
    from toolchain.errors import ConfigError

    assert find_profile("raspberry-pi-4-emulated").connection.board == "raspberry-pi-4"
    assert find_profile("raspberry-pi-5-emulated").connection.board == "raspberry-pi-5"
    no_board = tmp_path / "pi.toml"
    no_board.write_text('name = "pi"\n[connection]\nkind = "emulated"\n')
    with pytest.raises(ConfigError, match="kind = 'emulated' needs 'board'"):
        load_profile(no_board)
    stray = tmp_path / "box.toml"
    stray.write_text('name = "box"\n[connection]\nkind = "local"\nboard = "raspberry-pi-4"\n')
    with pytest.raises(ConfigError, match="board only applies to kind = 'emulated'"):
        load_profile(stray)
    from toolchain.errors import InputError

    with pytest.raises(InputError, match="is not an emulated target"):
        gate_profile(Path("x.tflite"), find_profile("local"), {}, None, recipe="fp32")


def test_bench_on_an_emulated_target_is_labelled_emulated(use_test_cache, cnn_artifacts, capsys):
    code = main(["bench", str(cnn_artifacts / "cnn.int8.tflite"), "--target", "raspberry-pi-4-emulated",
                 "--min-runs", "3", "--json"])
    assert code == 0
    (record,) = json.loads(capsys.readouterr().out)["results"]
    assert record["connection"] == "emulated"
    assert record["environment"]["emulated"]["qemu_cpu"] == "cortex-a72"
    assert record["environment"]["machine"] == "aarch64" and record["environment"]["backend_version"] == "2.14.0"
    from toolchain.stages.bench import comparison_rows

    assert "EMULATED" in comparison_rows([record])[0]["notes"]


def test_pipeline_gates_every_artifact_on_the_emulated_pi(use_test_cache, demo_inputs, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(demo_inputs, source)
    (source / "gate.toml").write_text(
        '[model]\npath = "digits_cnn.keras"\nname = "digits"\n'
        '[data]\neval = "digits_eval.npz"\nsamples = 64\n'
        '[export]\nformats = ["tflite", "onnx"]\ntargets = ["raspberry-pi-4-emulated"]\n'
        '[verify]\nsamples = 64\n[report]\nenabled = false\n'
        '[bench]\ntargets = ["raspberry-pi-4-emulated"]\nwarmup_runs = 0\nwarmup_seconds = 0.0\n'
        'min_runs = 2\nmin_seconds = 0.0\n'
    )
    run_dir = tmp_path / "run"
    assert main(["run", str(source / "gate.toml"), "--out", str(run_dir), "--quiet"]) == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    verify = json.loads((run_dir / "verify.json").read_text())
    assert len(manifest["artifacts"]) == 2  # fp32 .tflite on tflite-runtime 2.14, .onnx on onnxruntime
    for artifact in manifest["artifacts"]:
        gate = artifact["compat"]["raspberry-pi-4-emulated"]
        assert gate["verdict"] == "pass", gate["failures"]
        assert gate["timing"] == "emulated" and gate["qemu_cpu"] == "cortex-a72"
        assert gate["backend"] == ("onnxruntime" if artifact["format"] == "onnx" else "tflite_runtime")
        assert (run_dir / gate["golden"]).is_file()
        assert verify["artifacts"][artifact["name"]]["compat"]["raspberry-pi-4-emulated"]["verdict"] == "pass"
    bench = json.loads((run_dir / "bench.json").read_text())
    assert {r["connection"] for r in bench["results"]} == {"emulated"}
    estimates = json.loads((run_dir / "estimates.json").read_text())
    # emulated timing is not the board's: the board it emulates keeps its estimate beside it
    assert "raspberry-pi-4" in {e["target"] for e in estimates["estimates"]}
    assert "raspberry-pi-4-emulated" in {s["target"] for s in estimates["skipped"]}


@pytest.fixture(scope="session")
def newer_than_214(tmp_path_factory) -> Path:
    """TF 2.21 artifacts tflite-runtime 2.14 cannot run: int8 SQRT is op version 2 (unknown to 2.14,
    rejected at load); int16x8 GELU has no int16 kernel in 2.14 (fails at invoke)."""
    import keras

    from toolchain.data import Dataset
    from toolchain.stages.export_tflite import export_tflite

    keras.utils.set_random_seed(3)
    inputs = keras.Input((8,), name="x")
    hidden = keras.layers.Dense(8, name="dense")(inputs)
    root = keras.Model(inputs, keras.ops.sqrt(keras.ops.abs(hidden)), name="root")
    gelu = keras.Model(inputs, keras.layers.Activation("gelu", name="gelu")(hidden), name="gelu")
    folder = tmp_path_factory.mktemp("newer-than-2.14")
    calibration = Dataset({"x": np.random.default_rng(0).uniform(0, 1, (32, 8)).astype(np.float32)})
    export_tflite(root, folder / "root.int8.tflite", recipe="int8", calibration=calibration)
    export_tflite(gelu, folder / "gelu.int16x8.tflite", recipe="int16x8", calibration=calibration)
    return folder


def test_artifacts_tflite_runtime_214_rejects_are_failures_with_its_message(emulator_cache, newer_than_214, capsys):
    root, gelu = newer_than_214 / "root.int8.tflite", newer_than_214 / "gelu.int16x8.tflite"
    code = main(["emulator", "check", str(root), str(gelu), "--cache-dir", str(emulator_cache), "--json"])
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert code == 5
    assert "2 artifact(s) fail on the emulated raspberry-pi-4: root.int8.tflite, gelu.int16x8.tflite" in captured.err
    rejected = document["artifacts"]["root.int8.tflite"]
    assert rejected["verdict"] == "fail" and rejected["failure"] == "load_failed" and not rejected["loads"]
    assert "Didn't find op for builtin opcode 'SQRT' version '2'" in rejected["failures"][0]
    assert "use the fp32 or fp16 recipe" in rejected["failures"][0]  # the converter setting that avoids it
    invoke = document["artifacts"]["gelu.int16x8.tflite"]
    assert invoke["failure"] == "inference_failed" and invoke["loads"] and not invoke["runs"]
    assert "(GELU) failed to invoke" in invoke["failures"][0] and "use the int8 recipe" in invoke["failures"][0]
    # the maintained interpreter runs both
    code, document = _check(capsys, str(root), str(gelu), "--runtime", "ai_edge_litert", "--cache-dir",
                            str(emulator_cache))
    assert code == 0, document


def test_setup_problems_name_the_fix(tmp_path, monkeypatch):
    from toolchain.emulator import stack as stack_module
    from toolchain.errors import InputError, MissingDependencyError, StageError

    with pytest.raises(InputError, match="no emulated board 'raspberry-pi-3'; choose one of raspberry-pi-4"):
        setup_stack(tmp_path, boards=["raspberry-pi-3"])
    with pytest.raises(InputError, match="no emulated board"):
        Stack(tmp_path).require("raspberry-pi-3", "tflite_runtime")
    with pytest.raises(InputError, match="no emulated runtime 'tensorflow'"):
        Stack(tmp_path).require("raspberry-pi-4", "tensorflow")
    with pytest.raises(MissingDependencyError, match="needs a Debian/Ubuntu host with apt-get and dpkg"):
        stack_module._run(["edge-toolchain-no-such-tool"], "fetching")
    with pytest.raises(StageError, match=r"listing failed \(exit 2\)"):
        stack_module._run(["ls", str(tmp_path / "missing")], "listing")
    with pytest.raises(StageError, match="apt-get download left no .deb for python3.11-minimal"):
        stack_module._deb(tmp_path, "python3.11-minimal")
    # a user without root on a machine whose apt has no arm64 lists: the command to run as root
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpkg").write_text("#!/bin/sh\nexit 0\n")  # dpkg --print-foreign-architectures: none
    (bin_dir / "dpkg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(MissingDependencyError, match=r"run once as root: `dpkg --add-architecture arm64 && apt-get"):
        setup_stack(tmp_path / "cache")


def test_runner_without_an_answer_and_bench_crash(emulator_cache, cnn_artifacts, use_test_cache, tmp_path, capsys):
    script = tmp_path / "quiet.py"
    script.write_text("import sys\nsys.stderr.write('no json today\\n')\nsys.exit(3)\n")
    run = run_emulated(Stack(emulator_cache), "raspberry-pi-4", "tflite_runtime", script, [], timeout=120)
    assert run.failure() == {"kind": "error", "message": "emulated raspberry-pi-4 (cortex-a72) with tflite_runtime: "
                             "exited 3 without an answer; stderr tail: no json today"}
    broken = tmp_path / "broken.tflite"
    _corrupt_operator_inputs(cnn_artifacts / "cnn.fp32.tflite", broken)
    assert main(["bench", str(broken), "--target", "raspberry-pi-4-emulated", "--min-runs", "1"]) == 6
    assert "target 'raspberry-pi-4-emulated': emulated raspberry-pi-4 (cortex-a72) with tflite_runtime: the " \
           "runtime process was killed by SIGSEGV" in " ".join(capsys.readouterr().err.split())


def test_unreadable_inputs_file(cnn_artifacts, emulator_cache, tmp_path, capsys):
    garbage = tmp_path / "inputs.npz"
    garbage.write_bytes(b"not a zip file")
    assert main(["emulator", "check", str(cnn_artifacts / "cnn.fp32.tflite"), "--inputs", str(garbage),
                 "--cache-dir", str(emulator_cache)]) == 2
    assert "cannot read it as .npz" in capsys.readouterr().err


def test_no_answer_in_time_is_a_timeout_verdict_with_the_hint(emulator_cache, cnn_artifacts, capsys, tmp_path,
                                                              monkeypatch):
    from toolchain.emulator import run as run_module

    monkeypatch.setattr(run_module, "HEARTBEAT_SECONDS", 1.0)
    # a device runner that never answers, under the real QEMU: the timeout does not depend on how fast
    # this machine emulates the real runner (a quiet CI machine ran the tiny CNN in under 3 s)
    never_answers = tmp_path / "never_answers.py"
    never_answers.write_text("import time\nwhile True:\n    time.sleep(1)\n")
    monkeypatch.setattr(run_module, "RUNNER_PATH", never_answers)
    artifact = str(cnn_artifacts / "cnn.fp32.tflite")
    code = main(["emulator", "check", artifact, "--timeout", "3", "--cache-dir", str(emulator_cache),
                 "--golden", str(tmp_path / "golden")])
    captured = capsys.readouterr()
    assert code == 6  # a target problem, not a parity failure (5)
    assert "TIMEOUT cnn.fp32.tflite: emulated raspberry-pi-4 (cortex-a72) with tflite_runtime: no answer within " \
           "3 s" in " ".join(captured.out.split())
    assert "give it longer with --timeout" in " ".join(captured.out.split())
    assert "cnn.fp32.tflite: still running on the emulated raspberry-pi-4, 1 s of at most 3 s" in \
        " ".join(captured.err.split())
    assert "1 artifact(s) gave no answer in time on the emulated raspberry-pi-4: cnn.fp32.tflite; that is no " \
           "verdict on the artifact: re-run with a longer --timeout" in " ".join(captured.err.split())
    assert not (tmp_path / "golden").exists()
    code, document = _check(capsys, artifact, "--timeout", "3", "--cache-dir", str(emulator_cache))
    record = document["artifacts"]["cnn.fp32.tflite"]
    assert code == 6 and record["verdict"] == "timeout" and record["failure"] == "timeout"
    assert record["timeout_seconds"] == 3 and record["signal"] is None


def test_results_arrive_as_each_artifact_finishes_with_a_macs_scaled_timeout(emulator_cache, cnn_artifacts,
                                                                            small_cnn):
    from toolchain.emulator.gate import check_files
    from toolchain.emulator.timeouts import default_timeout
    from toolchain.model_stats import count_macs

    names = ["cnn.fp32.tflite", "cnn.int8.tflite"]
    finished: list[tuple[str, str]] = []
    document = check_files([cnn_artifacts / n for n in names], "raspberry-pi-4", "tflite_runtime",
                           cache_dir=emulator_cache, on_result=lambda name, r: finished.append((name, r["verdict"])))
    assert finished == [(n, "pass") for n in names]
    for name in names:
        record = document["artifacts"][name]
        assert record["macs_per_sample"] == count_macs(small_cnn)
        assert record["timeout_seconds"] == default_timeout(count_macs(small_cnn), 8)


def test_onnx_is_gated_on_the_device_profiles_onnxruntime(emulator_cache, small_cnn, tmp_path, capsys):
    import onnx

    from toolchain.stages.export_onnx import export_onnx

    current = export_onnx(small_cnn, tmp_path / "cnn.fp32.onnx")  # opset 17: onnxruntime 1.16 runs it
    newer = onnx.load(str(current))
    newer.opset_import[0].version = 20  # same ops; onnxruntime 1.16.3 (opset <= 19) refuses the file
    onnx.save(newer, str(tmp_path / "cnn20.fp32.onnx"))
    code, document = _check(capsys, str(current), str(tmp_path / "cnn20.fp32.onnx"), "--target", "raspberry-pi-4",
                            "--cache-dir", str(emulator_cache))
    assert code == 5
    passed, refused = document["artifacts"]["cnn.fp32.onnx"], document["artifacts"]["cnn20.fp32.onnx"]
    assert passed["verdict"] == "pass" and document["device_profile"] == "raspberry-pi-4"
    assert passed["runtime_gap"].startswith(f"emulated with onnxruntime {passed['backend_version']}, the device "
                                            "profile says onnxruntime 1.16.3")
    assert "[emulated with onnxruntime" in passed["summary"]
    assert refused["verdict"] == "fail" and refused["failure"] == "opset"
    assert refused["failures"] == ["cnn20.fp32.onnx uses ONNX opset 20, but the device's onnxruntime 1.16.3 runs "
                                   "opset <= 19 (target profile); export it with opset 19 (--opset 19, or "
                                   "export.onnx.opset)"]

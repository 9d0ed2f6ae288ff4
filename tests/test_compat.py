"""Target compatibility in the real device venv (tflite-runtime 2.14, numpy<2, onnxruntime)."""

import json

import numpy as np
import pytest

from toolchain.artifact_info import describe
from toolchain.cli import main
from toolchain.config import load_profile
from toolchain.data import Dataset
from toolchain.errors import ConfigError, StageError, TargetError
from toolchain.keras_io import input_signature
from toolchain.stages.compat import check_compat, raise_on_incompatible
from toolchain.stages.export_onnx import export_onnx
from toolchain.stages.export_tflite import export_tflite
from toolchain.stages.verify import run_artifact

pytestmark = pytest.mark.heavy  # builds (or reuses) the device venv

# What tflite-runtime 2.14 says about an op version it does not know
UNKNOWN_OP_VERSION = "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'"


def inputs_for(model, count=8, seed=0):
    rng = np.random.default_rng(seed)
    return {s.name: rng.uniform(0, 1, (count, *s.shape)).astype(np.float32) for s in input_signature(model)}


def compat(path, profile_file, model):
    inputs = inputs_for(model)
    return check_compat(path, load_profile(profile_file), inputs, run_artifact(path, inputs))


@pytest.fixture(scope="module")
def dynamic_range_transformer(tmp_path_factory, transformer_block):
    """TF 2.21's dynamic-range recipe writes FULLY_CONNECTED v12 (hybrid, keep_num_dims) for
    a Dense on a 3-D input: tflite-runtime 2.14 refuses to load it."""
    path = tmp_path_factory.mktemp("compat") / "transformer.dynamic.tflite"
    return export_tflite(transformer_block, path, recipe="dynamic")


def test_fp32_artifacts_load_and_match_on_tflite_runtime_214(small_cnn, transformer_block, device_profile,
                                                              tmp_path):
    cases = [(small_cnn, export_tflite(small_cnn, tmp_path / "cnn.tflite")),
             (small_cnn, export_onnx(small_cnn, tmp_path / "cnn.onnx", nchw=True)),
             (transformer_block, export_tflite(transformer_block, tmp_path / "block.tflite"))]
    for model, path in cases:
        record = compat(path, device_profile, model)
        assert record["verdict"] == "pass", record
        assert record["loads"] and record["runs"] and record["max_abs_error_vs_host"] < 1e-4
        backend = "tflite_runtime 2.14.0" if path.suffix == ".tflite" else "onnxruntime"
        assert record["summary"].startswith(f"loads on {backend}") and record["summary"].endswith(": yes")


def test_newer_op_version_is_rejected_with_the_runtime_message(dynamic_range_transformer, transformer_block,
                                                                device_profile):
    ops = {op["name"]: op["version"] for op in describe(dynamic_range_transformer)["ops"]}
    assert ops["FULLY_CONNECTED"] == 12
    assert describe(dynamic_range_transformer)["min_runtime_version"] == "2.17.0"
    record = compat(dynamic_range_transformer, device_profile, transformer_block)
    assert record["verdict"] == "fail" and record["loads"] is False
    assert UNKNOWN_OP_VERSION in record["reason"]
    assert record["summary"].startswith("loads on tflite_runtime 2.14.0: no (ValueError: Didn't find op")
    with pytest.raises(StageError, match=f"not usable on target\\(s\\) device-tflite214: .*{UNKNOWN_OP_VERSION}"):
        raise_on_incompatible(dynamic_range_transformer.name, {"device-tflite214": record})


def test_int16_kernel_missing_fails_at_invoke(small_cnn, device_profile, tmp_path):
    """int16x8 GELU: 2.14 loads the file but its GELU kernel has no int16 path."""
    import keras

    inputs = keras.Input((8,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(8, activation="gelu", name="d")(inputs), name="gelu_mlp")
    calibration = Dataset(inputs_for(model, 16, seed=1))
    path = export_tflite(model, tmp_path / "gelu.int16x8.tflite", recipe="int16x8", calibration=calibration)
    data = inputs_for(model)
    record = check_compat(path, load_profile(device_profile), data, run_artifact(path, data))
    assert record["verdict"] == "fail" and record["loads"] is True and record["runs"] is False
    assert "Only float32, int8 and uint8 supported currently, got INT16" in record["reason"]
    assert "GELU" in record["reason"]
    assert record["summary"].startswith("loads on tflite_runtime 2.14.0: yes, but inference fails")


def test_cli_export_for_a_target_that_rejects_it_leaves_nothing(device_profile, tmp_path, capsys):
    import keras

    inputs = keras.Input((32,), name="features")
    hidden = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)  # >= 1024 weights: quantized
    keras.Model(inputs, keras.layers.Dense(4, name="scores")(hidden), name="mlp").save(tmp_path / "block.keras")
    model_file = tmp_path / "block.keras"
    ok = tmp_path / "block.fp32.tflite"
    assert main(["export", str(model_file), "-o", str(ok), "--target", str(device_profile), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["compat"]["device-tflite214"]["summary"] == "loads on tflite_runtime 2.14.0: yes"
    rejected = tmp_path / "block.dynamic.tflite"
    code = main(["export", str(model_file), "--recipe", "dynamic", "-o", str(rejected),
                 "--target", str(device_profile)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 4
    assert "block.dynamic.tflite is not usable on target(s) device-tflite214" in err
    assert UNKNOWN_OP_VERSION in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block.fp32.tflite", "block.keras"]


def test_missing_target_python_is_a_target_error(small_cnn, tmp_path):
    from toolchain.config import TargetProfile

    path = export_tflite(small_cnn, tmp_path / "m.tflite")
    profile = TargetProfile(name="gone", connection={"python": str(tmp_path / "no-python")})
    with pytest.raises(TargetError, match="python executable not usable"):
        check_compat(path, profile, inputs_for(small_cnn), {})


PIPELINE = """
[model]
path = "digits_cnn.keras"
name = "digits"
[data]
eval = "digits_eval.npz"
samples = 40
[export]
formats = ["tflite", "onnx"]
dynamic_batch = true
targets = ["{profile}"]
[export.tflite]
recipes = ["fp32", "dynamic"]
[export.onnx]
recipes = ["fp32"]
nchw = true
[verify]
samples = 40
[bench]
enabled = false
[report]
enabled = false
"""


def test_pipeline_records_compat_and_fails_export_for_the_rejecting_target(pipeline_copy, device_profile,
                                                                           capsys):
    """The digits CNN's dynamic-range artifact has FULLY_CONNECTED v12: 2.14 rejects it."""
    from toolchain.manifest import validate_manifest

    pipeline_copy.write_text(PIPELINE.format(profile=device_profile))
    out = pipeline_copy.parent / "run"
    assert main(["run", str(pipeline_copy), "--out", str(out), "--quiet"]) == 4
    err = " ".join(capsys.readouterr().err.split())
    assert "digits.dynamic.tflite is not usable on target(s) device-tflite214" in err
    assert UNKNOWN_OP_VERSION in err
    manifest = json.loads((out / "manifest.json").read_text())
    validate_manifest(manifest)
    assert manifest["status"] == "failed"
    verify_doc = json.loads((out / "verify.json").read_text())
    verdicts = {a["name"]: a["compat"]["device-tflite214"]["verdict"] for a in manifest["artifacts"]}
    assert verdicts == {"digits.fp32.tflite": "pass", "digits.dynamic.tflite": "fail", "digits.fp32.onnx": "pass"}
    for name, verdict in verdicts.items():
        assert verify_doc["artifacts"][name]["compat"]["device-tflite214"]["verdict"] == verdict
    onnx = next(a for a in manifest["artifacts"] if a["format"] == "onnx")
    assert onnx["inputs"][0]["shape"] == [None, 1, 8, 8]  # nchw = true, dynamic_batch = true
    assert all(a["inputs"][0]["shape"][0] is None for a in manifest["artifacts"])


@pytest.fixture(scope="module")
def cnn_artifact(tmp_path_factory, small_cnn):
    return export_tflite(small_cnn, tmp_path_factory.mktemp("compat-errors") / "cnn.tflite")


def fake_python(tmp_path, body: str):
    """A stand-in device python: a shell script in front of (or instead of) the real one."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def test_runtime_crash_while_loading_is_a_rejection(cnn_artifact, small_cnn, device_python, tmp_path):
    from toolchain.config import TargetProfile

    python = fake_python(tmp_path, 'request=$(cat)\ncase "$request" in\n'
                         f'  *probe*) printf "%s" "$request" | exec "{device_python}" "$@" ;;\n'
                         '  *) kill -SEGV $$ ;;\nesac\n')
    profile = TargetProfile(name="crashy", connection={"python": str(python)})
    data = inputs_for(small_cnn)
    record = check_compat(cnn_artifact, profile, data, run_artifact(cnn_artifact, data))
    assert record["verdict"] == "fail" and record["loads"] is False
    assert record["reason"].startswith("the runtime crashed (exit -11)")
    aborting = fake_python(tmp_path, 'request=$(cat)\ncase "$request" in\n'
                           f'  *probe*) printf "%s" "$request" | exec "{device_python}" "$@" ;;\n'
                           '  *) echo "Fatal Python error: Aborted" >&2; exit 1 ;;\nesac\n')
    profile = TargetProfile(name="aborts", connection={"python": str(aborting)})
    record = check_compat(cnn_artifact, profile, data, run_artifact(cnn_artifact, data))
    assert record["verdict"] == "fail" and record["reason"].startswith("the runtime crashed (exit 1)")
    assert "Fatal Python error" in record["reason"]


def test_runner_setup_problems_are_target_errors(cnn_artifact, small_cnn, device_python, tmp_path):
    from toolchain.config import TargetProfile

    data = inputs_for(small_cnn)
    silent = TargetProfile(name="silent", connection={"python": str(fake_python(tmp_path, "exit 7\n"))})
    with pytest.raises(TargetError, match="target 'silent': the runner exited 7 without a JSON answer"):
        check_compat(cnn_artifact, silent, data, {})
    slow = TargetProfile(name="slow", connection={"python": str(device_python)})
    with pytest.raises(TargetError, match="target 'slow': the runner did not finish within 0.01 s"):
        check_compat(cnn_artifact, slow, data, {}, timeout=0.01)
    emulated = TargetProfile(name="pi", connection={"kind": "emulated", "board": "raspberry-pi-4"})
    with pytest.raises(ConfigError, match="target 'pi': emulated targets are checked by the emulator gate"):
        check_compat(cnn_artifact, emulated, data, {})
    no_backend = TargetProfile(name="nobackend", connection={"python": str(device_python)},
                               runtime={"tflite_backend": "ai_edge_litert"})
    with pytest.raises(TargetError, match="target 'nobackend': no inference backend"):
        check_compat(cnn_artifact, no_backend, data, {})


def test_fewer_samples_than_the_batch_are_repeated(small_cnn, device_profile, tmp_path):
    path = export_tflite(small_cnn, tmp_path / "b4.tflite", batch_size=4)
    data = inputs_for(small_cnn, count=2)
    record = check_compat(path, load_profile(device_profile), data, run_artifact(path, data))
    assert record["verdict"] == "pass", record
    assert record["samples"] == 4


def test_ssh_device_checks_an_artifact_with_its_own_runtime(cnn_artifact, small_cnn, device_python, ssh_server):
    """The same check runs over SSH: upload, infer on the device, outputs fetched back and compared."""
    from toolchain.config import TargetProfile

    connection = {"kind": "ssh", "host": ssh_server.host, "port": ssh_server.port, "user": ssh_server.user,
                  "identity": str(ssh_server.identity_file), "known_hosts": str(ssh_server.known_hosts_file),
                  "python": str(device_python)}
    profile = TargetProfile.model_validate({"name": "ssh-pi", "connection": connection,
                                            "runtime": {"tflite_backend": "tflite_runtime"}})
    data = inputs_for(small_cnn, count=3)
    record = check_compat(cnn_artifact, profile, data, run_artifact(cnn_artifact, data))
    assert record["verdict"] == "pass", record
    assert record["kind"] == "ssh" and record["backend"] == "tflite_runtime" and record["samples"] == 3
    assert record["outputs"] and record["tolerance"]["max_abs_error"] == 1e-4  # fp32's device tolerance
    wrong = {k: v + 1.0 for k, v in run_artifact(cnn_artifact, data).items()}
    record = check_compat(cnn_artifact, profile, data, wrong)
    assert record["verdict"] == "fail" and "outputs differ from the host" in record["summary"]


def test_ssh_infer_without_outputs_is_a_target_error(cnn_artifact, small_cnn, ssh_server, tmp_path):
    """A runner that answers ok but writes no outputs: the download step says so."""
    from toolchain.config import TargetProfile
    from toolchain.targets.ssh import SSHTarget

    python = fake_python(tmp_path, 'cat >/dev/null\necho \'{"ok": true, "mode": "infer"}\'\n')
    connection = {"kind": "ssh", "host": ssh_server.host, "port": ssh_server.port, "user": ssh_server.user,
                  "identity": str(ssh_server.identity_file), "known_hosts": str(ssh_server.known_hosts_file),
                  "python": str(python)}
    target = SSHTarget(TargetProfile.model_validate({"name": "liar", "connection": connection}))
    with pytest.raises(TargetError, match="target 'liar': the runner answered but its outputs could not be read back"):
        target.infer(cnn_artifact, inputs_for(small_cnn, count=1), 60)

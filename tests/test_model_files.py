"""Safe loading and `inspect` on all three formats, including broken files."""

import json
import zipfile

import pytest

from toolchain.cli import main
from toolchain.errors import ModelLoadError
from toolchain.keras_io import load_model


def inspect_json(path, capsys, *extra):
    code = main(["inspect", str(path), "--json", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_keras(demo_inputs, capsys):
    code, out, _ = inspect_json(demo_inputs / "digits_cnn.keras", capsys)
    assert code == 0
    info = json.loads(out)
    assert info["format"] == "keras"
    assert info["inputs"] == [{"name": "image", "shape": [None, 8, 8, 1], "dtype": "float32",
                               "quantization": None}]
    assert info["outputs"][0]["name"] == "probs"
    assert {"name": "Conv2D", "count": 2} in info["ops"]


def test_inspect_tflite_and_onnx(demo_run, capsys):
    code, out, _ = inspect_json(demo_run / "artifacts" / "digits.fp32.tflite", capsys)
    assert code == 0
    info = json.loads(out)
    assert info["inputs"][0]["name"] == "image" and info["inputs"][0]["shape"] == [1, 8, 8, 1]
    assert info["outputs"][0]["name"] == "probs" and info["outputs"][0]["dtype"] == "float32"
    names = {op["name"] for op in info["ops"]}
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= names
    assert all(op["kind"] == "builtin" and op["version"] >= 1 for op in info["ops"])

    code, out, _ = inspect_json(demo_run / "artifacts" / "digits.fp32.onnx", capsys)
    assert code == 0
    info = json.loads(out)
    assert [i["name"] for i in info["inputs"]] == ["image"]
    assert [o["name"] for o in info["outputs"]] == ["probs"]
    assert info["opset"]["ai.onnx"] == 17
    assert "Conv" in {op["name"] for op in info["ops"]}
    assert info["metadata"]["recipe"] == "fp32"
    assert len(info["metadata"]["source_model_sha256"]) == 64


def test_inspect_human_output(demo_run, capsys):
    assert main(["inspect", str(demo_run / "artifacts" / "digits.fp32.tflite")]) == 0
    out = capsys.readouterr().out
    assert "CONV_2D v" in out and "image" in out


@pytest.mark.parametrize("suffix", [".tflite", ".onnx", ".keras"])
def test_inspect_corrupt_files_exit_2(tmp_path, capsys, demo_run, demo_inputs, suffix):
    source = {
        ".tflite": demo_run / "artifacts" / "digits.fp32.tflite",
        ".onnx": demo_run / "artifacts" / "digits.fp32.onnx",
        ".keras": demo_inputs / "digits_cnn.keras",
    }[suffix]
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(source.read_bytes()[: len(source.read_bytes()) // 3])
    code, _, err = inspect_json(broken, capsys)
    assert code == 2
    assert str(broken) in err and "Traceback" not in err


def test_inspect_garbage_tflite_names_identifier(tmp_path, capsys):
    path = tmp_path / "garbage.tflite"
    path.write_bytes(b"hello world, not a flatbuffer")
    code, _, err = inspect_json(path, capsys)
    assert code == 2 and "TFL3" in err


def test_inspect_missing_and_empty_and_unknown(tmp_path, capsys):
    assert inspect_json(tmp_path / "none.onnx", capsys)[0] == 2
    (tmp_path / "empty.onnx").write_bytes(b"")
    code, _, err = inspect_json(tmp_path / "empty.onnx", capsys)
    assert code == 2 and "empty" in err
    (tmp_path / "model.pt").write_bytes(b"x")
    code, _, err = inspect_json(tmp_path / "model.pt", capsys)
    assert code == 2 and "unknown model type" in err


def test_zip_that_is_not_a_keras_model(tmp_path):
    path = tmp_path / "notes.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ModelLoadError, match="not a Keras model.*readme.txt"):
        load_model(path)


def test_lambda_model_refused_without_trust(lambda_model_file, capsys):
    with pytest.raises(ModelLoadError, match="Lambda.*--trust-model"):
        load_model(lambda_model_file)
    code, _, err = inspect_json(lambda_model_file, capsys)
    assert code == 2 and "--trust-model" in err


def test_lambda_model_loads_when_trusted(lambda_model_file, capsys):
    code, out, _ = inspect_json(lambda_model_file, capsys, "--trust-model")
    assert code == 0
    assert {"name": "Lambda", "count": 1} in json.loads(out)["ops"]


def test_debug_flag_shows_traceback(tmp_path, capsys):
    (tmp_path / "bad.tflite").write_bytes(b"nope")
    assert main(["--debug", "inspect", str(tmp_path / "bad.tflite")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("edge-toolchain 0.")

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


def test_inspect_keras_json_lists_layers_and_what_truncate_accepts(residual_cnn_file, capsys, tmp_path):
    code, out, _ = inspect_json(residual_cnn_file, capsys)
    assert code == 0
    info = json.loads(out)
    layers = {layer["name"]: layer for layer in info["layers"]}
    assert list(layers) == ["stem", "res_conv1", "res_conv2", "res_add", "bn", "reduce", "gap", "scores"]
    assert layers["stem"] == {"name": "stem", "class": "Conv2D", "output_shape": [None, 12, 12, 8],
                              "params": 3 * 3 * 3 * 8 + 8, "macs": 12 * 12 * 8 * 3 * 3 * 3}
    assert layers["reduce"]["output_shape"] == [None, 5, 5, 16]
    assert sum(layer["params"] for layer in info["layers"]) == info["parameters"]
    assert info["droppable_blocks"] == ["res_add"]
    assert "bn" in info["droppable_layers"] and "reduce" not in info["droppable_layers"]
    assert info["cut_points"] and set(info["cut_points"]) <= set(layers)
    # what inspect lists is what truncate takes
    assert main(["truncate", str(residual_cnn_file), "-o", str(tmp_path / "cut.keras"),
                 "--at", info["cut_points"][-1], "--drop", info["droppable_blocks"][0], "--json"]) == 0
    cut = json.loads(capsys.readouterr().out)
    assert cut["params"]["after"] < info["parameters"]


def test_inspect_keras_with_unknown_dimensions_lists_layers_without_macs(tmp_path, capsys):
    import keras

    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    outputs = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    path = tmp_path / "any_size.keras"
    keras.Model(inputs, outputs).save(path)
    code, out, _ = inspect_json(path, capsys)
    assert code == 0
    conv = json.loads(out)["layers"][0]
    assert conv["name"] == "conv" and conv["macs"] is None and conv["params"] == 3 * 3 * 3 * 4 + 4
    assert main(["inspect", str(path)]) == 0
    assert "conv" in capsys.readouterr().out

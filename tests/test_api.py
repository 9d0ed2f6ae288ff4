"""The public Python API (toolchain/api.py): a notebook-style script, the namespace, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import toolchain
from toolchain.errors import InputError

PUBLIC = ["Run", "ToolchainError", "bench", "export", "inspect", "load_run", "run", "sweep", "truncate", "verify"]

# What a user types in a notebook: a model in memory, numpy arrays, dicts, paths. No internal objects.
NOTEBOOK = '''
import json, sys
from pathlib import Path

import keras
import numpy as np

import toolchain

work = Path(sys.argv[1])
keras.utils.set_random_seed(0)
inputs = keras.Input((12, 12, 1), name="pixels")
x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
x = keras.layers.MaxPooling2D(name="pool")(x)
x = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(x)
x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
outputs = keras.layers.Dense(3, activation="softmax", name="scores")(x)
model = keras.Model(inputs, outputs, name="tiny")
scores = model.get_layer("scores")  # larger logits: no near-tie for int8 rounding to flip
scores.kernel.assign(scores.kernel * 20.0)
rng = np.random.default_rng(0)
images = rng.uniform(0, 1, (64, 12, 12, 1)).astype("float32")
labels = model.predict(images, verbose=0).argmax(axis=1)
model.save(work / "tiny.keras")

facts = {}
info = toolchain.inspect(work / "tiny.keras")
facts["layers"] = [layer["name"] for layer in info["layers"]]

small = toolchain.truncate(model, work / "small.keras", at="pool", head="gap,classes:3",
                           train_data={"pixels": images, "y": labels}, epochs=2)
facts["truncated_outputs"] = [list(t.shape) for t in small.outputs]
facts["truncated_file"] = toolchain.inspect(work / "small.keras")["outputs"][0]["shape"]

fp32 = toolchain.export(model, work / "tiny.fp32.tflite")
int8 = toolchain.export(work / "tiny.keras", work / "tiny.int8.onnx", recipe="int8", data={"pixels": images})
facts["exported"] = [fp32["format"], fp32["recipe"], int8["format"], int8["recipe"]]

checked = toolchain.verify(work / "tiny.fp32.tflite", model, {"pixels": images, "y": labels})
facts["verdict"] = checked["verdict"]
facts["accuracy"] = checked["outputs"]["scores"]["accuracy"]

document = toolchain.bench([work / "tiny.fp32.tflite", work / "tiny.int8.onnx"], "local", threads=1,
                           min_runs=5, min_seconds=0, inputs={"pixels": images[:1]})
facts["bench"] = sorted((r["artifact"], r["target"], r["threads"]) for r in document["results"])
facts["p50_positive"] = all(r["latency_ms"]["p50"] > 0 for r in document["results"])

np.savez(work / "data.npz", pixels=images, y=labels)
run = toolchain.run({
    "model": {"path": str(work / "tiny.keras")},
    "data": {"eval": str(work / "data.npz"), "calibration": {"source": "eval"}},
    "export": {"formats": ["tflite"], "tflite": {"recipes": ["fp32", "int8"]}},
    "bench": {"min_runs": 5, "min_seconds": 0, "warmup_runs": 1, "warmup_seconds": 0},
}, work / "run")
facts["run_artifacts"] = sorted(run.artifacts)
facts["run_verdicts"] = [a["verify"]["verdict"] for a in run.artifacts.values()]
again = toolchain.load_run(work / "run")
facts["reloaded"] = again.manifest == run.manifest and again.report is not None and again.bench is not None

sweep = toolchain.sweep(model, {"pixels": images, "y": labels}, work / "sweep", at=["pool"], epochs=1,
                        min_seconds=0, drops=False)
facts["sweep_points"] = [p["at"] for p in sweep["points"]]
print(json.dumps(facts))
'''


def test_notebook_script_runs_through_the_public_api(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["layers"] == ["conv", "pool", "conv2", "gap", "scores"]
    assert facts["truncated_outputs"] == [[None, 3]] and facts["truncated_file"] == [None, 3]
    assert facts["exported"] == ["tflite", "fp32", "onnx", "int8"]
    assert facts["verdict"] == "pass" and facts["accuracy"] == 1.0  # labels are the model's own predictions
    assert facts["bench"] == [["tiny.fp32.tflite", "local", 1], ["tiny.int8.onnx", "local", 1]]
    assert facts["p50_positive"]
    assert facts["run_artifacts"] == ["tiny.fp32.tflite", "tiny.int8.tflite"]
    assert facts["run_verdicts"] == ["pass", "pass"]
    assert facts["reloaded"]
    assert facts["sweep_points"] == [None, "pool"]


def test_dir_lists_the_api_and_importing_it_loads_no_tensorflow():
    code = textwrap.dedent("""
        import sys, toolchain
        names = [n for n in dir(toolchain) if not n.startswith("_")]
        assert "keras" not in sys.modules and "tensorflow" not in sys.modules, "import is not lazy"
        import toolchain.sweep  # the submodule of the same name must not hide the function
        from toolchain.sweep import run_sweep
        assert callable(toolchain.sweep) and toolchain.sweep.__module__ == "toolchain.api"
        print(",".join(names))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().split(",") == PUBLIC
    assert sorted(toolchain.__all__) == sorted(["__version__", *PUBLIC])


def test_every_public_function_is_typed_and_documented():
    import inspect

    for name in PUBLIC:
        value = getattr(toolchain, name)
        assert value.__doc__, f"toolchain.{name} has no docstring"
        if inspect.isfunction(value):
            signature = inspect.signature(value)
            assert signature.return_annotation is not inspect.Signature.empty, name
            untyped = [p for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty]
            assert not untyped, f"toolchain.{name}: untyped {untyped}"


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'exprot'"):
        toolchain.exprot  # noqa: B018


def test_data_must_be_a_path_or_a_dict_of_arrays(small_cnn_file, tmp_path):
    with pytest.raises(InputError, match=r"data must be a path to an \.npz file or a dict \{input name: array\}, "
                                         r"got ndarray"):
        toolchain.export(small_cnn_file, tmp_path / "m.tflite", recipe="int8", data=np.zeros((2, 16, 16, 3)))
    assert not (tmp_path / "m.tflite").exists()


def test_model_must_be_a_path_or_a_keras_model(tmp_path):
    with pytest.raises(InputError, match="model must be a path to a .keras/.h5 file or a keras.Model, got dict"):
        toolchain.export({"not": "a model"}, tmp_path / "m.tflite")


def test_pipeline_must_be_a_path_or_a_dict(tmp_path):
    with pytest.raises(InputError, match="pipeline must be a path to a pipeline.toml or a dict of its content, "
                                         "got list"):
        toolchain.run(["pipeline.toml"], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_pipeline_dict_is_validated_like_the_file(tmp_path):
    with pytest.raises(toolchain.ToolchainError, match="pipeline dict") as caught:
        toolchain.run({"model": {"path": "m.keras"}, "exprt": {}}, tmp_path / "run")
    assert caught.value.exit_code == 2


def test_threads_must_be_positive(tmp_path):
    with pytest.raises(InputError, match=r"threads must be positive integers, got \[0\]"):
        toolchain.bench(tmp_path / "m.tflite", "local", threads=[0])


def test_truncate_output_must_be_keras(small_cnn, tmp_path):
    with pytest.raises(InputError, match="give an output path ending in .keras, got .*cut.h5"):
        toolchain.truncate(small_cnn, tmp_path / "cut.h5", at="gap")
    assert not (tmp_path / "cut.h5").exists()


def test_verify_without_check_returns_a_failing_result(small_cnn, small_cnn_file, tmp_path):
    import keras

    toolchain.export(small_cnn_file, tmp_path / "m.tflite")
    other = keras.models.clone_model(small_cnn)  # same graph, fresh random weights
    other.set_weights([w + 1.0 for w in small_cnn.get_weights()])
    images = np.random.default_rng(0).uniform(0, 1, (8, 16, 16, 3)).astype("float32")
    with pytest.raises(toolchain.ToolchainError) as caught:
        toolchain.verify(tmp_path / "m.tflite", other, {"pixels": images})
    assert caught.value.exit_code == 5
    result = toolchain.verify(tmp_path / "m.tflite", other, {"pixels": images}, check=False)
    assert result["verdict"] == "fail" and result["failures"]


def test_load_run_of_a_folder_without_a_run(tmp_path):
    with pytest.raises(InputError, match="has no manifest.json"):
        toolchain.load_run(tmp_path)


def test_run_results_are_plain_documents(demo_run):
    run = toolchain.load_run(demo_run)
    assert isinstance(run, toolchain.Run) and run.run_dir == Path(demo_run).resolve()
    assert run.manifest["status"] == "complete"
    assert list(run.artifacts) == [a["name"] for a in run.manifest["artifacts"]]
    assert run.verify is not None and run.bench["results"]
    assert run.report == run.run_dir / "report" / "report.md"


def test_inspect_lists_layer_names_with_submodels(tmp_path, capsys):
    import keras

    from toolchain.cli import main

    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="dense")], name="body")
    features = keras.Input((8,), name="features")
    outputs = keras.layers.Dense(2, name="top")(inner(features))
    keras.Model(features, outputs, name="outer").save(tmp_path / "nested.keras")
    layers = toolchain.inspect(tmp_path / "nested.keras")["layers"]
    assert [(layer["name"], layer["class"], layer["output_shape"]) for layer in layers] == [
        ("body/dense", "Dense", [None, 4]),
        ("top", "Dense", [None, 2]),
    ]
    assert main(["inspect", str(tmp_path / "nested.keras")]) == 0
    printed = capsys.readouterr().out
    assert "body/dense" in printed and "cut points" in printed

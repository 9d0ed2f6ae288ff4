"""Export routes (batch, names, opset, NCHW, metadata, Flex) verified in the real runtimes."""

from pathlib import Path

import numpy as np
import pytest

from toolchain.artifact_info import describe
from toolchain.cli import main
from toolchain.data import Dataset
from toolchain.errors import ConfigError, ModelLoadError, StageError
from toolchain.keras_io import input_signature, output_signature, run_keras
from toolchain.stages.export_onnx import export_onnx
from toolchain.stages.export_tflite import check_op_inventory, export_tflite
from toolchain.stages.verify import run_artifact, tolerance_for, verify_artifact
from toolchain.tflite_metadata import PROVENANCE_KEY, add_metadata, read_metadata

PROVENANCE = {"edge_toolchain_version": "test", "source_model_sha256": "0" * 64, "recipe": "fp32"}


def random_inputs(model, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.uniform(0, 1, (count, *s.shape)).astype(np.float32) for s in input_signature(model)}


def export(model, path: Path, **kwargs) -> Path:
    if path.suffix == ".tflite":
        return export_tflite(model, path, metadata=PROVENANCE, **kwargs)
    return export_onnx(model, path, metadata=PROVENANCE, **kwargs)


def check_parity(model, artifact: Path, count: int = 6) -> dict:
    """The artifact matches the Keras model at the fp32 tolerance (what `verify` does)."""
    inputs = random_inputs(model, count)
    result = verify_artifact(artifact, run_keras(model, inputs), Dataset(inputs), tolerance_for("fp32"))
    assert result["verdict"] == "pass", result["failures"]
    return result


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
@pytest.mark.parametrize("fixture", ["small_cnn", "transformer_block", "multi_io_model", "sequential_model"])
def test_export_keeps_names_and_shapes_and_matches_keras(request, tmp_path, fixture, fmt):
    model = request.getfixturevalue(fixture)
    artifact = export(model, tmp_path / f"{fixture}.{fmt}")
    info = describe(artifact)
    for kind, keras_side in (("inputs", input_signature(model)), ("outputs", output_signature(model))):
        got = {t["name"]: t["shape"] for t in info[kind]}
        assert got == {t.name: [1, *t.shape] for t in keras_side}, kind
    assert info["metadata"] == PROVENANCE
    check_parity(model, artifact)


def test_sequential_names_come_from_its_layers(sequential_model):
    """Keras auto-names a Sequential model's tensors 'keras_tensor_N'; we use the layer names."""
    names = [t.name for t in input_signature(sequential_model)] + [t.name for t in output_signature(sequential_model)]
    assert not any(n.startswith("keras_tensor") for n in names)
    assert output_signature(sequential_model)[0].name == sequential_model.layers[-1].name


@pytest.mark.heavy
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_mobilenet_v2_exports_and_verifies(mobilenet_v2_96, tmp_path, fmt):
    model = mobilenet_v2_96
    artifact = export(model, tmp_path / f"mobilenet.{fmt}")
    info = describe(artifact)
    assert info["inputs"][0]["shape"] == [1, 96, 96, 3]
    assert info["outputs"][0]["shape"] == [1, 10]
    check_parity(model, artifact, count=4)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_constants_held_as_plain_tensors_stay_inside_the_artifact(tmp_path, fmt):
    """Normalization(mean=, variance=) keeps its statistics as tensors, not variables (as in
    EfficientNet): tf2onnx took them for extra graph inputs until the function was frozen."""
    import keras

    inputs = keras.Input((4, 4, 3), name="image")
    x = keras.layers.Normalization(mean=[0.5, 0.4, 0.3], variance=[0.04, 0.09, 0.16], name="norm")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(x))
    path = export(model, tmp_path / f"norm.{fmt}")
    assert [i["name"] for i in describe(path)["inputs"]] == ["image"]
    data = random_inputs(model, 4)
    expected = run_keras(model, data)
    actual = run_artifact(path, data)
    np.testing.assert_allclose(actual["conv"], expected["conv"], atol=1e-4)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_swish_custom_gradient_keeps_output_names(tmp_path, fmt):
    """Keras' swish carries a custom gradient with a captured tensor (EfficientNet): the
    SavedModel route used to fail silently, leaving a TFLite output named 'Identity'."""
    import keras

    inputs = keras.Input((6, 6, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Activation("swish", name="act")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="scores")(x))
    path = export(model, tmp_path / f"swish.{fmt}")
    assert [o["name"] for o in describe(path)["outputs"]] == ["scores"]
    data = random_inputs(model, 4)
    np.testing.assert_allclose(run_artifact(path, data)["scores"], run_keras(model, data)["scores"], atol=1e-4)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_fixed_and_dynamic_batch(small_cnn, tmp_path, fmt):
    fixed = export(small_cnn, tmp_path / f"b4.{fmt}", batch_size=4)
    dynamic = export(small_cnn, tmp_path / f"dyn.{fmt}", batch_size=None)
    assert describe(fixed)["inputs"][0]["shape"] == [4, 16, 16, 3]
    assert describe(dynamic)["inputs"][0]["shape"] == [None, 16, 16, 3]
    assert describe(dynamic)["outputs"][0]["shape"] == [None, 5]
    check_parity(small_cnn, fixed, count=6)  # 6 samples = one full batch + one padded
    check_parity(small_cnn, dynamic, count=5)


def test_dynamic_onnx_batch_dimension_is_named(small_cnn, tmp_path):
    import onnx

    proto = onnx.load(str(export(small_cnn, tmp_path / "dyn.onnx", batch_size=None)))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_bad_batch_size_is_refused(small_cnn, tmp_path):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="batch size must be a positive integer or None"):
            export_tflite(small_cnn, tmp_path / "x.tflite", batch_size=bad)
        with pytest.raises(ConfigError, match="batch size must be a positive integer or None"):
            export_onnx(small_cnn, tmp_path / "x.onnx", batch_size=bad)
    assert not list(tmp_path.iterdir())


def test_nchw_onnx_inputs(small_cnn, multi_io_model, tmp_path):
    artifact = export(small_cnn, tmp_path / "nchw.onnx", nchw=True)
    info = describe(artifact)
    assert info["inputs"][0]["shape"] == [1, 3, 16, 16]
    assert info["outputs"][0]["shape"] == [1, 5]  # outputs keep the Keras layout
    assert info["metadata"]["edge_toolchain.nchw_inputs"] == "pixels"
    check_parity(small_cnn, artifact)  # verify transposes the NHWC data for this artifact
    both = describe(export(multi_io_model, tmp_path / "multi.onnx", nchw=True))
    assert {t["name"]: t["shape"] for t in both["inputs"]} == {"image": [1, 1, 12, 12], "meta": [1, 4]}


def test_nchw_needs_an_image_input(sequential_model, tmp_path):
    with pytest.raises(ConfigError, match="has no 4-D \\(image\\) input to transpose"):
        export_onnx(sequential_model, tmp_path / "seq.onnx", nchw=True)


def test_opset_is_selectable_and_checked(small_cnn, tmp_path):
    artifact = export(small_cnn, tmp_path / "op13.onnx", opset=13)
    assert describe(artifact)["opset"]["ai.onnx"] == 13
    check_parity(small_cnn, artifact)
    assert describe(export(small_cnn, tmp_path / "op17.onnx"))["opset"]["ai.onnx"] == 17
    with pytest.raises(ConfigError, match="ONNX opset 99 is not supported: tf2onnx here emits opsets 13-18"):
        export_onnx(small_cnn, tmp_path / "bad.onnx", opset=99)


def test_tflite_metadata_round_trip(small_cnn, tmp_path):
    artifact = export_tflite(small_cnn, tmp_path / "plain.tflite")
    plain = artifact.read_bytes()
    assert PROVENANCE_KEY not in read_metadata(plain)
    tagged = add_metadata(plain, {"recipe": "fp32", "n": 1})
    retagged = add_metadata(tagged, {"recipe": "fp32", "n": 2})  # replaces, never duplicates
    entries = read_metadata(retagged)
    assert entries[PROVENANCE_KEY] == {"recipe": "fp32", "n": 2}
    assert entries["min_runtime_version"]  # the converter's own entry survives
    path = tmp_path / "tagged.tflite"
    path.write_bytes(retagged)
    assert describe(path)["metadata"] == {"recipe": "fp32", "n": 2}
    inputs = random_inputs(small_cnn, 3)
    np.testing.assert_array_equal(run_artifact(path, inputs)["scores"], run_artifact(artifact, inputs)["scores"])
    with pytest.raises(ModelLoadError, match="not a TFLite flatbuffer"):
        read_metadata(b"not a model at all")


def test_flex_ops_are_refused_unless_allowed(tmp_path):
    import keras

    inputs = keras.Input((8,), name="x")
    model = keras.Model(inputs, keras.ops.erf(inputs), name="uses_erf")
    with pytest.raises(StageError, match="ops with no TFLite builtin kernel: Erf; .*allow_flex"):
        export_tflite(model, tmp_path / "erf.tflite")
    assert not (tmp_path / "erf.tflite").exists()
    artifact = export_tflite(model, tmp_path / "erf.tflite", allow_flex=True)
    flex = [op for op in describe(artifact)["ops"] if op["kind"] == "flex"]
    assert [op["name"] for op in flex] == ["FlexErf"]
    with pytest.raises(StageError, match="needs Flex \\(TF Select\\) ops FlexErf"):
        check_op_inventory(artifact.read_bytes(), allow_flex=False)


# ---- the `export` and `verify` commands ----------------------------------------------

@pytest.fixture(scope="module")
def multi_io_files(tmp_path_factory, multi_io_model):
    folder = tmp_path_factory.mktemp("multi-io")
    multi_io_model.save(folder / "multi_io.keras")
    np.savez(folder / "data.npz", **random_inputs(multi_io_model, 12, seed=7))
    return folder


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_cli_export_then_verify(multi_io_files, tmp_path, capsys, fmt):
    artifact = tmp_path / f"multi.{fmt}"
    code = main(["export", str(multi_io_files / "multi_io.keras"), "--format", fmt, "--batch", "dynamic",
                 "-o", str(artifact)])
    assert code == 0, capsys.readouterr().err
    assert describe(artifact)["inputs"][0]["shape"][0] is None
    assert describe(artifact)["metadata"]["recipe"] == "fp32"
    capsys.readouterr()
    code = main(["verify", str(artifact), "--reference", str(multi_io_files / "multi_io.keras"),
                 "--data", str(multi_io_files / "data.npz"), "--samples", "10", "--json"])
    assert code == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert result["verdict"] == "pass" and result["samples"] == 10
    assert set(result["outputs"]) == {"scores", "value"}


def test_cli_verify_perturbed_artifact_exits_5_listing_every_output(multi_io_files, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    artifact = tmp_path / "multi.onnx"
    assert main(["export", str(multi_io_files / "multi_io.keras"), "-f", "onnx", "-o", str(artifact)]) == 0
    proto = onnx.load(str(artifact))
    for init in proto.graph.initializer:  # scale every weight: both outputs go wrong
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(array * 1.5 + 0.1, init.name))
    perturbed = tmp_path / "perturbed.onnx"
    onnx.save(proto, str(perturbed))
    capsys.readouterr()
    code = main(["verify", str(perturbed), "--reference", str(multi_io_files / "multi_io.keras"),
                 "--data", str(multi_io_files / "data.npz")])
    captured = capsys.readouterr()
    assert code == 5
    assert "output 'scores'" in captured.err and "output 'value'" in captured.err
    assert "fail" in captured.out


def test_cli_export_rejects_bad_options(multi_io_files, tmp_path, capsys):
    model = str(multi_io_files / "multi_io.keras")
    cases = [
        (["--batch", "0", "-o", str(tmp_path / "a.tflite")], "--batch must be a positive integer or 'dynamic'"),
        (["-f", "onnx", "-o", str(tmp_path / "a.tflite")], "output path must end with .onnx for --format onnx"),
        (["-f", "tflite", "--nchw", "-o", str(tmp_path / "a.tflite")], "--nchw applies to ONNX only"),
        (["-f", "tflite", "--opset", "13", "-o", str(tmp_path / "a.tflite")], "--opset applies to ONNX only"),
        (["-f", "onnx", "--allow-flex", "-o", str(tmp_path / "a.onnx")], "--allow-flex applies to TFLite only"),
        (["-f", "pb", "-o", str(tmp_path / "a.pb")], "--format must be one of tflite, onnx"),
        (["--recipe", "int4", "-o", str(tmp_path / "a.tflite")], "unknown tflite recipe 'int4'"),
        (["--recipe", "int8", "-o", str(tmp_path / "a.tflite")], "recipe 'int8' needs calibration data"),
        (["--target", str(tmp_path / "nope.toml"), "-o", str(tmp_path / "a.tflite")],
         "target profile file not found"),
        (["--keep-float", "conv", "-o", str(tmp_path / "a.tflite")],
         "--keep-float does not apply to tflite recipe 'fp32': it has no quantized layers"),
        (["--recipe", "int8", "--keep-float", "conv", "-o", str(tmp_path / "a.tflite")],
         "--keep-float cannot be applied to tflite recipe 'int8': selective quantization"),
        (["--no-per-channel", "-o", str(tmp_path / "a.tflite")], "--no-per-channel applies to ONNX only"),
        (["--calibration-method", "entropy", "-o", str(tmp_path / "a.tflite")],
         "--calibration-method applies to ONNX only"),
        (["-f", "onnx", "--calibration-method", "median", "-o", str(tmp_path / "a.onnx")],
         "--calibration-method must be one of minmax, entropy, percentile, got 'median'"),
    ]
    for args, message in cases:
        assert main(["export", model, *args]) == 2, args
        assert message in " ".join(capsys.readouterr().err.split()), args
    assert not list(tmp_path.iterdir())


def test_cli_verify_rejects_bad_input(multi_io_files, tmp_path, capsys):
    keras_file = str(multi_io_files / "multi_io.keras")
    assert main(["verify", keras_file, "--reference", keras_file, "--data",
                 str(multi_io_files / "data.npz")]) == 2
    assert "expected a .tflite or .onnx file" in capsys.readouterr().err
    artifact = tmp_path / "m.onnx"
    assert main(["export", keras_file, "-f", "onnx", "-o", str(artifact)]) == 0
    assert main(["verify", str(artifact), "--reference", keras_file, "--data",
                 str(multi_io_files / "data.npz"), "--samples", "0"]) == 2
    assert "--samples must be >= 1" in capsys.readouterr().err
    assert main(["verify", str(artifact), "--reference", keras_file, "--data",
                 str(multi_io_files / "data.npz"), "--recipe", "int3"]) == 2
    assert "unknown recipe 'int3'" in capsys.readouterr().err

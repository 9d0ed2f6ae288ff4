"""One comparator, one tolerance table (the recipe registry), one way to batch samples."""

import numpy as np
import pytest

from toolchain import compare, recipes
from toolchain.compare import Tolerance, batches, compare_outputs, tolerance_for, trim, whole_batches
from toolchain.config import CALIBRATED_RECIPES, ONNX_RECIPES, TFLITE_RECIPES, parse_config
from toolchain.errors import ConfigError
from toolchain.recipes import RECIPES, Recipe, docs_table, recipe_names


def test_config_and_exporters_read_the_registry():
    from toolchain.stages.export_tflite import CALIBRATED, KEEP_FLOAT_REFUSED, RECIPE_NOTES
    from toolchain.stages.quantize_onnx import RECIPE_NOTES as ONNX_NOTES

    assert TFLITE_RECIPES == recipe_names("tflite") and ONNX_RECIPES == recipe_names("onnx")
    assert CALIBRATED_RECIPES == {"tflite": ("int8", "int8-float-io", "int16x8"), "onnx": ("int8",)}
    assert CALIBRATED == CALIBRATED_RECIPES["tflite"]
    assert set(KEEP_FLOAT_REFUSED) == {"int8", "int16x8"}
    assert RECIPE_NOTES["int16x8"] == RECIPES["tflite", "int16x8"].notes
    assert set(ONNX_NOTES) == {"fp16", "dynamic", "int8"}
    raw = {"model": {"path": "m.keras"}, "export": {"tflite": {"recipes": ["int16x8"], "keep_float": ["d"]}}}
    with pytest.raises(ConfigError, match="keep_float works with the 'int8-float-io' recipe only.*remove int16x8"):
        parse_config(raw)


def test_demo_pipeline_lists_every_registry_recipe():
    import tomllib

    from toolchain.demo import pipeline_toml

    config = tomllib.loads(pipeline_toml())
    assert tuple(config["export"]["tflite"]["recipes"]) == recipe_names("tflite")
    assert tuple(config["export"]["onnx"]["recipes"]) == recipe_names("onnx")


def test_verify_device_check_and_emulator_gate_share_one_comparator_and_table():
    from toolchain.emulator import gate
    from toolchain.stages import compat, verify

    assert verify.compare_outputs is compat.compare_outputs is gate.compare_outputs is compare.compare_outputs
    for name in recipes.all_recipe_names():
        assert gate.tolerance_for_recipe(name) == tolerance_for(name, against="host")
    # the device tolerance of a recipe is the registry's, with its reason
    assert tolerance_for("int8", fmt="onnx", against="host").max_abs_error == 0.1
    assert "requantization" in RECIPES["tflite", "int8"].device_tolerance_why
    assert tolerance_for("fp32", against="host") == Tolerance(max_abs_error=1e-4, min_cosine=0.9999,
                                                               min_top1_agreement=0.99)


def test_comparator_collects_names_shapes_and_values():
    reference = {"p": np.eye(4, dtype=np.float32), "q": np.zeros((4, 2), np.float32)}
    candidate = {"p": np.eye(4, dtype=np.float32)[::-1].copy(), "r": np.zeros(1)}
    metrics, failures = compare_outputs(reference, candidate, tolerance_for("fp32"))
    assert failures[0].startswith("output 'q' is missing from the artifact")
    assert failures[1] == "artifact has an unexpected output 'r'"
    assert any("top-1 agreement 0.0000 < 0.99" in f for f in failures)
    assert metrics["p"]["top1_agreement"] == 0.0
    _, failures = compare_outputs({"p": np.ones((2, 3))}, {"p": np.ones((2, 4))}, Tolerance())
    assert failures == ["output 'p': shape [2, 4] != reference [2, 3]"]
    metrics, failures = compare_outputs({"p": np.ones((2, 3))}, {"p": np.full((2, 3), np.nan)}, Tolerance())
    assert metrics["p"]["non_finite_values"] == 6 and "NaN/inf" in failures[0]


def test_one_way_to_batch_samples():
    arrays = {"x": np.arange(5)[:, None]}
    padded = whole_batches(arrays, 4)
    assert padded["x"][:, 0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]  # last sample repeated
    assert whole_batches(arrays, 5)["x"].shape == (5, 1) and whole_batches({}, 3) == {}
    chunks = batches(arrays, 2)
    assert [c["x"][:, 0].tolist() for c in chunks] == [[0, 1], [2, 3], [4, 4]]
    assert trim(padded, 5)["x"].shape == (5, 1)


def test_run_artifact_pads_the_last_partial_batch(small_cnn, tmp_path):
    from toolchain.stages.export_tflite import export_tflite
    from toolchain.stages.verify import run_artifact

    path = export_tflite(small_cnn, tmp_path / "b4.tflite", batch_size=4)
    rng = np.random.default_rng(0)
    name = small_cnn.inputs[0].name
    inputs = {name: rng.uniform(0, 1, (6, *small_cnn.inputs[0].shape[1:])).astype(np.float32)}
    outputs = run_artifact(path, inputs)
    assert all(len(v) == 6 for v in outputs.values())
    alone = run_artifact(path, {name: inputs[name][5:]})
    for key, value in outputs.items():
        np.testing.assert_allclose(value[5:], alone[key], rtol=1e-5, atol=1e-6)


@pytest.fixture
def toy_recipe():
    """A toy recipe: one registry entry, nothing else."""
    entry = recipes.register(Recipe("onnx", "toy8", "a toy for tests", "none", {"min_cosine": 0.5}, "toy",
                                    calibrated=True, keep_float_applies=True))
    yield entry
    recipes.unregister("onnx", "toy8")


def test_a_toy_recipe_is_one_registry_entry(toy_recipe):
    from toolchain.standalone import verify_file  # noqa: F401  (reads the registry at call time)

    assert "toy8" in recipe_names("onnx") and "toy8" in recipes.all_recipe_names()
    assert recipes.is_calibrated("onnx", "toy8") and recipes.calibrated_names("onnx") == ("int8", "toy8")
    assert tolerance_for("toy8", fmt="onnx") == Tolerance(min_cosine=0.5)
    assert tolerance_for("toy8", fmt="onnx", against="host") == Tolerance(**recipes.DEVICE_QUANTIZED)
    assert "| onnx | toy8 | yes | yes | min_cosine=0.5 | a toy for tests |" in docs_table()
    assert recipes.describe("onnx", "toy8")["tolerance_why"] == "toy"


def test_registry_refuses_bad_entries_and_unknown_recipes():
    with pytest.raises(ConfigError, match="recipe 'x': format must be one of tflite, onnx"):
        recipes.register(Recipe("tensorrt", "x", "", "", {}, ""))
    with pytest.raises(ConfigError, match="no default tolerances for recipe 'int4'; known: fp32"):
        tolerance_for("int4")
    assert docs_table().count("\n") == len(RECIPES) + 1

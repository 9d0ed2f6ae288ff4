from pathlib import Path

import pytest

from toolchain.cli import main
from toolchain.config import load_config, parse_config
from toolchain.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


def test_minimal_config_resolves_relative_paths(tmp_path):
    config, raw = load_config(write(tmp_path, '[model]\npath = "models/m.keras"\n'))
    assert config.model.path == (tmp_path / "models" / "m.keras").resolve()
    assert config.output.dir == (tmp_path / "run").resolve()
    assert config.export.formats == ["tflite", "onnx"]
    assert raw == {"model": {"path": "models/m.keras"}}


def test_unknown_key_names_full_path_and_suggestion(tmp_path):
    path = write(tmp_path, '[model]\npath = "m.keras"\n[export.tflite]\nrecipies = ["fp32"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "unknown key 'export.tflite.recipies'" in message
    assert "did you mean 'recipes'?" in message


def test_unknown_top_level_section_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'bench_mark'.*did you mean 'bench'"):
        load_config(write(tmp_path, '[model]\npath = "m.keras"\n[bench_mark]\n'))


def test_wrong_type_names_expected_type():
    with pytest.raises(ConfigError, match=r"'bench.min_runs' must be an integer, got 'ten' \(str\)"):
        parse_config({"model": {"path": "m.keras"}, "bench": {"min_runs": "ten"}})


def test_out_of_range_value():
    with pytest.raises(ConfigError, match=r"'export.batch_size'.*greater than or equal to 1"):
        parse_config({"model": {"path": "m.keras"}, "export": {"batch_size": 0}})


def test_unknown_recipe_lists_choices():
    with pytest.raises(ConfigError, match=r"'export.onnx.recipes.0' must be one of 'fp32'"):
        parse_config({"model": {"path": "m.keras"}, "export": {"onnx": {"recipes": ["int4"]}}})


def test_missing_model_section():
    with pytest.raises(ConfigError, match="missing required key 'model'"):
        parse_config({})


def test_unknown_tolerance_recipe_suggests():
    with pytest.raises(ConfigError, match="unknown recipe 'fp23'.*did you mean 'fp32'"):
        parse_config({"model": {"path": "m"}, "verify": {"tolerances": {"fp23": {}}}})


def test_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[model\n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="pipeline config not found"):
        load_config(tmp_path / "nope.toml")


def test_cli_misspelt_key_exits_2_naming_the_key(tmp_path, capsys):
    path = write(tmp_path, '[model]\npath = "m.keras"\n[verify]\nsamplez = 3\n')
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "verify.samplez" in err and "did you mean 'samples'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_missing_model_file_exits_2_naming_the_path(tmp_path, capsys):
    path = write(tmp_path, '[model]\npath = "absent.keras"\n')
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model file not found" in err and "absent.keras" in err
    assert not (tmp_path / "out" / "manifest.json").exists()

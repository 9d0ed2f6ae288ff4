"""The demo pipeline end to end, the run directory and its manifest."""

import json

import jsonschema
import numpy as np
import pytest

from toolchain.cli import main
from toolchain.config import ONNX_RECIPES, TFLITE_RECIPES
from toolchain.fileio import sha256_file
from toolchain.manifest import load_schema, validate_manifest


def test_demo_run_directory(demo_run):
    manifest = json.loads((demo_run / "manifest.json").read_text())
    validate_manifest(manifest)
    assert manifest["status"] == "complete"
    assert [a["name"] for a in manifest["artifacts"]] == [
        *(f"digits.{r}.tflite" for r in TFLITE_RECIPES), *(f"digits.{r}.onnx" for r in ONNX_RECIPES)
    ]
    for artifact in manifest["artifacts"]:
        path = demo_run / artifact["path"]
        assert sha256_file(path) == artifact["sha256"]
        assert path.stat().st_size == artifact["bytes"]
        assert artifact["parent"] == manifest["source_model"]["sha256"]
        assert artifact["verify"]["verdict"] == "pass"
        accuracy = artifact["verify"]["outputs"]["probs"]["accuracy"]
        assert accuracy > 0.9  # the demo CNN reaches ~97% on held-out digits
        assert artifact["bench"]["local"][0]["p50_ms"] > 0
    assert manifest["tool_versions"]["tensorflow"].startswith("2.")
    verify = json.loads((demo_run / "verify.json").read_text())
    assert verify["samples"] == 500
    bench = json.loads((demo_run / "bench.json").read_text())
    assert len(bench["results"]) == len(TFLITE_RECIPES) + len(ONNX_RECIPES)
    result = bench["results"][0]
    stats = result["latency_ms"]
    assert stats["count"] >= 200
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert result["memory"]["peak_rss_after_runs_kib"] >= result["memory"]["peak_rss_before_load_kib"]
    assert result["environment"]["cpu_count"] >= 1
    report = (demo_run / "report" / "report.md").read_text()
    assert "digits.fp32.tflite" in report and "| pass |" in report
    assert not list(demo_run.rglob(".*.tmp")), "no temp files are left behind"


def test_manifest_schema_rejects_broken_manifest(demo_run):
    manifest = json.loads((demo_run / "manifest.json").read_text())
    manifest["artifacts"][0]["sha256"] = "not-a-hash"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(manifest)
    del manifest["artifacts"][0]["sha256"]
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(manifest)


def test_schema_is_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_corrupt_keras_in_pipeline_gives_clear_error(pipeline_copy, tmp_path, capsys):
    model = pipeline_copy.parent / "digits_cnn.keras"
    model.write_bytes(b"PK\x03\x04 this is not really a zip")
    code = main(["run", str(pipeline_copy), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "digits_cnn.keras" in err and "not a valid .keras file" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_wrong_data_shape_is_a_data_error(pipeline_copy, tmp_path, capsys):
    np.savez(pipeline_copy.parent / "digits_eval.npz", image=np.zeros((4, 8, 8), np.float32))
    code = main(["run", str(pipeline_copy), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "shape (4, 8, 8) does not fit input 'image'" in err


def test_nan_in_data_is_refused(pipeline_copy, tmp_path, capsys):
    data = np.zeros((4, 8, 8, 1), np.float32)
    data[1, 2, 3, 0] = np.nan
    np.savez(pipeline_copy.parent / "digits_eval.npz", image=data, y=np.zeros(4, np.int64))
    code = main(["run", str(pipeline_copy), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert "1 NaN/inf values" in capsys.readouterr().err


def test_unknown_target_is_a_config_error(pipeline_copy, tmp_path, capsys):
    text = pipeline_copy.read_text().replace('targets = ["local"]', 'targets = ["locl"]')
    pipeline_copy.write_text(text)
    code = main(["run", str(pipeline_copy), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown target 'locl'" in err and "did you mean 'local'" in err

"""`edge-toolchain optimize` (issue 16): candidates built, verified against Keras, measured, pruned, cached.

The model is tests/conftest.py's MobileNetV3-style CNN (hard-swish, squeeze-excite) trained on
the digits; the data is noisy held-out digits, so quantization moves real accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from toolchain.cli import main

FAST = ["--min-seconds", "0.05", "--no-explain"]


def _run(*args: str) -> int:
    return main(["optimize", *args])


def _has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "vnni" in flags


@pytest.fixture(scope="module")
def searched(tmp_path_factory, mnv3_digits) -> Path:
    """One search: TFLite and ONNX, a few int8-class candidates, 1 pt accuracy budget, on this machine."""
    model, data = mnv3_digits
    out = tmp_path_factory.mktemp("optimize")
    code = _run(str(model), "--data", str(data), "--max-accuracy-drop", "0.01", "--out", str(out),
                "--candidates", "tflite-int8,tflite-int8-hswish-as-mul,onnx-int8,onnx-int8-u8s8",
                "--min-seconds", "0.05")
    assert code == 0
    return out


def _doc(out: Path) -> dict:
    return json.loads((out / "optimize.json").read_text())


def _by_name(document: dict) -> dict[str, dict]:
    return {c["name"]: c for c in document["candidates"]}


def test_search_records_every_candidate_and_recommends_the_fastest_passing(searched):
    document = _doc(searched)
    candidates = _by_name(document)
    tried = [name for name, c in candidates.items() if "derived_from" not in c]
    assert tried == ["tflite-fp32", "onnx-fp32", "tflite-int8", "tflite-int8-hswish-as-mul",
                     "onnx-int8", "onnx-int8-u8s8"]  # fp32 baselines first; derived follow-ups after them
    assert list(candidates)[:6] == tried
    local = document["targets"]["local"]
    chosen = document["recommended"]["local"]
    assert chosen["candidate"] == min(
        (name for name, r in local["results"].items() if r["verdict"] in ("recommended", "accepted")),
        key=lambda name: local["results"][name]["p50_ms"])
    assert local["results"][chosen["candidate"]]["verdict"] == "recommended"
    assert (searched / chosen["path"]).is_file()
    # never slower than its format's fp32 on this target
    fp32 = local["results"][f"{chosen['format']}-fp32"]
    assert chosen["p50_ms"] <= fp32["p50_ms"]
    assert "quantization" in chosen["note"] or "no int8-class" in chosen["note"]
    for record in candidates.values():
        assert record["verdict"] in ("pass", "rejected-accuracy")
        assert {"bytes", "sha256", "accuracy", "recipe", "knobs", "why_tried"} <= set(record)
        assert record["accuracy"]["samples"] == 200  # 100 calibrate, 200 evaluate (disjoint)
    assert document["candidate_count"] == len(candidates) and document["wall_seconds"] > 0
    assert chosen["candidate"] in local["front"]


def test_accuracy_budget_rejects_before_benchmarking(searched):
    """The verdict follows verify's failures (the 1 pt budget, the recipe's cosine and agreement
    floors); a rejected candidate never reaches the target."""
    document = _doc(searched)
    local = document["targets"]["local"]["results"]
    for record in document["candidates"]:
        accuracy, tolerance = record["accuracy"], record["tolerance"]
        assert tolerance["max_accuracy_drop"] == 0.01
        fails = (-accuracy["accuracy_delta"] > 0.01 + 1e-9
                 or accuracy["cosine_min"] < tolerance.get("min_cosine", -1)
                 or accuracy["top1_agreement"] < tolerance.get("min_top1_agreement", 0))
        if fails:
            assert record["verdict"] == "rejected-accuracy", record
            assert "probe" not in local[record["name"]] and "p50_ms" not in local[record["name"]]
            assert local[record["name"]]["why"] == record["why"]
        else:
            assert record["verdict"] == "pass", record
    rejected = {r["name"]: r["why"] for r in document["candidates"] if r["verdict"] == "rejected-accuracy"}
    if not _has_vnni():
        # uint8 activations x int8 weights saturate VPMADDUBSW's int16 sums on CPUs without VNNI
        # (ORT documents reduce_range for this): one sample's cosine to Keras fell to 0.18 here
        assert "cosine similarity" in rejected["onnx-int8-u8s8"]


def test_slower_than_probe_margin_is_pruned(searched):
    """onnxruntime's per-call overhead makes every ONNX candidate several times slower than TFLite
    fp32 on this 0.01 ms model: their probes cannot win, so they never get the full benchmark."""
    local = _doc(searched)["targets"]["local"]["results"]
    pruned = [name for name, r in local.items() if r.get("pruned")]
    assert pruned
    for name in pruned:
        assert local[name]["verdict"] == "rejected"
        assert local[name]["why"].startswith("pruned: probe p50")
        assert "p50_ms" not in local[name] and local[name]["probe"]["p50_ms"] > 0


def test_close_candidates_are_confirmed_by_interleaved_rounds(searched):
    """The candidates near the best and the fp32 baselines are measured twice more; the median of
    the three decides (one measurement cannot rank files a few percent apart)."""
    import statistics

    local = _doc(searched)["targets"]["local"]["results"]
    confirmed = {name: r for name, r in local.items() if r.get("confirm_p50s_ms")}
    assert "tflite-fp32" in confirmed and len(confirmed) >= 2
    for result in confirmed.values():
        assert len(result["confirm_p50s_ms"]) == 3
        assert result["p50_first_ms"] == result["confirm_p50s_ms"][0]
        assert result["p50_ms"] == statistics.median(result["confirm_p50s_ms"])
    assert not any("confirm_p50s_ms" in r for r in local.values() if r.get("pruned"))


def test_candidate_slower_than_its_fp32_is_rejected(tmp_path, mnv3_digits):
    """Without pruning, a candidate measured slower than its format's fp32 is rejected for speed.

    ONNX int8 quantizing only Conv/MatMul/Gemm/Add leaves Q/DQ pairs around every Mul and Clip of
    hard-swish: measured ~4x the fp32 p50 on this model."""
    from toolchain.config import find_profile
    from toolchain.optimize.candidates import candidates_for
    from toolchain.optimize.search import Budget, SearchSettings, load_inputs, search

    inputs = load_inputs(*mnv3_digits)
    chosen = candidates_for(inputs.model, ["onnx"], ["onnx-int8-conv-matmul-add"])
    document = search(inputs, chosen, [find_profile("local")], tmp_path, Budget(0.05),
                      SearchSettings(bench={"min_seconds": 0.1}, probe_margin=1000, explain=False))
    result = document["targets"]["local"]["results"]["onnx-int8-conv-matmul-add"]
    assert result["verdict"] == "rejected"
    assert result["why"].startswith("slower than onnx fp32 on this target")
    assert document["recommended"]["local"]["candidate"] == "onnx-fp32"
    assert "quantization buys nothing here" in document["recommended"]["local"]["note"]


def test_unchanged_rerun_is_cached_and_new_target_remeasures_only(searched, mnv3_digits, tmp_path, tree_snapshot):
    model, data = mnv3_digits
    before = tree_snapshot(searched / "candidates")
    args = [str(model), "--data", str(data), "--out", str(searched), "--candidates",
            "tflite-int8,tflite-int8-hswish-as-mul,onnx-int8,onnx-int8-u8s8", "--min-seconds", "0.05"]
    assert _run(*args) == 0
    document = _doc(searched)
    assert all(c["cached"]["build"] for c in document["candidates"])
    timed = [r for r in document["targets"]["local"]["results"].values() if "probe" in r]
    assert timed and all(r["probe"]["cached"] for r in timed)
    assert all(r["cached"] for r in timed if "p50_ms" in r)
    assert tree_snapshot(searched / "candidates") == before  # nothing rebuilt

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "other.toml").write_text('name = "other"\n[connection]\nkind = "local"\n')
    assert _run(*args, "--target", "other", "--targets-dir", str(profiles)) == 0
    document = _doc(searched)
    assert all(c["cached"]["build"] for c in document["candidates"])
    timed = [r for r in document["targets"]["other"]["results"].values() if "probe" in r]
    assert timed and not any(r["probe"]["cached"] for r in timed)


def test_unmeasured_target_is_ranked_by_size_and_labelled_an_estimate(searched, mnv3_digits, tmp_path):
    """An emulated Pi's timings are not a device's: passing candidates are ranked by file size, labelled."""
    import shutil

    from toolchain.config import find_profile
    from toolchain.optimize.candidates import candidates_for
    from toolchain.optimize.search import Budget, SearchSettings, load_inputs, search

    folder = tmp_path / "copy"
    shutil.copytree(searched, folder)
    inputs = load_inputs(*mnv3_digits)
    chosen = candidates_for(inputs.model, ["tflite", "onnx"], ["tflite-int8", "onnx-int8-u8s8"])
    document = search(inputs, chosen, [find_profile("raspberry-pi-4-emulated")], folder, Budget(0.01),
                      SearchSettings(explain=False))
    assert all(c["cached"]["build"] for c in document["candidates"])  # nothing rebuilt for a new target
    found = document["targets"]["raspberry-pi-4-emulated"]
    passing = sorted((c["bytes"], c["name"]) for c in document["candidates"] if c["verdict"] == "pass")
    assert found["measured"] is False and found["recommended"]["candidate"] == passing[0][1]
    assert found["recommended"]["p50_ms"] is None and "ESTIMATE" in found["recommended"]["note"]
    assert all("p50_ms" not in r and "probe" not in r for r in found["results"].values())


def test_explain_names_what_the_runtime_did_not_accelerate(searched, mnv3_digits, capsys):
    """Each measured candidate says why it is slow: XNNPACK partitions / ORT time per op type."""
    candidates = _by_name(_doc(searched))
    tflite = candidates["tflite-int8"]["explain"]
    assert tflite["xnnpack"]["outside_delegate"].get("HARD_SWISH") == 3
    assert "HARD_SWISH×3" in tflite["reason"]
    rewritten = candidates["tflite-int8-hswish-as-mul"]
    if "explain" in rewritten:
        assert "HARD_SWISH" not in rewritten["explain"]["xnnpack"]["outside_delegate"]
    onnx = candidates["onnx-int8"]["explain"]
    assert "DequantizeLinear" in onnx["onnxruntime"]["ms_per_op_type"]
    assert onnx["reason"].startswith("onnxruntime time by op type")
    # and the table says it beside each candidate that lost on speed (a cached re-run: nothing measured)
    model, data = mnv3_digits
    capsys.readouterr()
    assert _run(str(model), "--data", str(data), "--out", str(searched), "--candidates",
                "tflite-int8,tflite-int8-hswish-as-mul,onnx-int8,onnx-int8-u8s8", "--min-seconds", "0.05") == 0
    printed = " ".join(capsys.readouterr().out.split())
    local = _doc(searched)["targets"]["local"]["results"]
    if local["tflite-int8"]["verdict"] == "rejected":
        assert "HARD_SWISH×3" in printed


def test_hard_swish_as_mul_is_not_refused_and_xnnpack_takes_it_in_int8(tmp_path):
    """The converter fuses Keras' hard-swish (and x*relu6(x+3)/6) into HARD_SWISH, which XNNPACK
    leaves out in int8; (x/6)*relu6(x+3) stays ADD/MUL, and the delegate takes the whole graph."""
    import keras

    from toolchain.data import Dataset
    from toolchain.optimize.explain import explain_artifact
    from toolchain.optimize.rewrite import hard_swish_as_mul, hard_swish_layers
    from toolchain.stages.export_tflite import export_tflite

    keras.utils.set_random_seed(0)
    image = keras.Input((16, 16, 8), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(image)
    x = keras.layers.Activation("hard_swish", name="hs1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = keras.layers.Activation("hard_swish", name="hs2")(x)
    model = keras.Model(image, x)
    assert hard_swish_layers(model) == ["hs1", "hs2"]
    rewritten = hard_swish_as_mul(model)
    probe = np.random.default_rng(0).uniform(-4, 4, (4, 16, 16, 8)).astype(np.float32)
    np.testing.assert_allclose(rewritten(probe), model(probe), atol=1e-5)  # same function, same weights
    calibration = Dataset({"image": np.random.default_rng(1).uniform(-1, 1, (16, 16, 16, 8)).astype(np.float32)})
    found = {}
    for name, graph in (("keras", model), ("as_mul", rewritten)):
        path = export_tflite(graph, tmp_path / f"{name}.tflite", recipe="int8-float-io", calibration=calibration)
        found[name] = explain_artifact(path, 0.05, max_runs=5)
    assert found["keras"]["op_counts"]["HARD_SWISH"] == 2
    assert found["keras"]["xnnpack"] == {"partitions": 3, "outside_delegate": {"HARD_SWISH": 2}}
    assert "HARD_SWISH" not in found["as_mul"]["op_counts"]
    assert found["as_mul"]["xnnpack"] == {"partitions": 1, "outside_delegate": {}}


def test_hard_swish_rewrite_keeps_the_input_names_of_an_unnamed_input():
    """keras.applications build their input without a name (layer 'input_layer', tensor 'keras_tensor'):
    the rewritten model must take the same input names, or verify sees no input it knows."""
    import keras

    from toolchain.keras_io import input_signature
    from toolchain.optimize.rewrite import hard_swish_as_mul

    unnamed = keras.Input((8, 8, 4))
    x = keras.layers.Activation("hard_swish", name="hs")(keras.layers.Conv2D(4, 1, name="conv")(unnamed))
    model = keras.Model(unnamed, x)
    rewritten = hard_swish_as_mul(model)
    assert [s.name for s in input_signature(rewritten)] == [s.name for s in input_signature(model)]
    assert "hs_as_mul" in [layer.name for layer in rewritten.layers]


def test_worst_int8_layers_are_kept_in_float(mnv3_digits, tmp_path):
    """The keep-float candidate names the Keras layers whose ops have the largest int8 error."""
    from toolchain.artifact_info import describe
    from toolchain.optimize.candidates import build_candidate, candidates_for, worst_int8_layers
    from toolchain.optimize.search import load_inputs

    inputs = load_inputs(*mnv3_digits)
    worst = worst_int8_layers(inputs.model, inputs.calibration, 3)
    assert len(set(worst)) == 3 and set(worst) <= {layer.name for layer in inputs.model.layers}
    candidate = next(c for c in candidates_for(inputs.model, ["tflite"]) if c.name == "tflite-int8-float-worst3")
    path = build_candidate(inputs.model, candidate, tmp_path / "worst.tflite", inputs.calibration,
                           tmp_path / "float.onnx")
    ops = {op["name"] for op in describe(path)["ops"]}
    assert "DEQUANTIZE" in ops  # float islands inside the int8 graph


def test_time_budget_stops_new_candidates(tmp_path, mnv3_digits, capsys):
    model, data = mnv3_digits
    code = _run(str(model), "--data", str(data), "--out", str(tmp_path), "--time-budget", "0.000001",
                "--formats", "tflite", *FAST)
    assert code == 7
    assert "no candidate meets the budgets on local" in capsys.readouterr().err
    document = _doc(tmp_path)
    assert {c["verdict"] for c in document["candidates"]} == {"not-tried"}
    assert all("--time-budget" in c["why"] for c in document["candidates"])
    assert not (tmp_path / "candidates").exists() or not any((tmp_path / "candidates").iterdir())


def test_session_options_are_candidates_only_where_they_can_matter(mnv3_digits):
    """Measured on this 2-core EPYC (docs/optimize.md): with one thread spinning has nothing to do;
    with two, allow_spinning=false changes latency (1.0-2.5x here), so it is tried there."""
    import keras

    from toolchain.optimize.candidates import candidates_for

    model = keras.models.load_model(mnv3_digits[0])
    assert not [c for c in candidates_for(model, ["onnx"], threads=1) if c.session_options]
    variants = {c.name: c for c in candidates_for(model, ["onnx"], threads=2) if c.session_options}
    assert set(variants) == {"onnx-fp32-no-spin", "onnx-int8-no-spin"}
    assert variants["onnx-int8-no-spin"].shares_file == "onnx-int8"
    assert variants["onnx-int8-no-spin"].settings()["session_options"] == {"allow_spinning": False}
    # --candidates with a variant brings the file it runs
    chosen = [c.name for c in candidates_for(model, ["onnx"], ["onnx-int8-no-spin"], threads=2)]
    assert chosen == ["onnx-fp32", "onnx-int8", "onnx-int8-no-spin"]


def test_session_option_variant_runs_the_same_file_with_its_options(tmp_path, mnv3_digits):
    """One build, two benchmarks: the variant's cache key and runner request carry its session options."""
    from toolchain.config import find_profile
    from toolchain.optimize.candidates import candidates_for
    from toolchain.optimize.search import Budget, SearchSettings, load_inputs, search

    inputs = load_inputs(*mnv3_digits)
    chosen = candidates_for(inputs.model, ["onnx"], ["onnx-fp32-no-spin"], threads=2)
    document = search(inputs, chosen, [find_profile("local")], tmp_path, Budget(0.05),
                      SearchSettings(threads=2, bench={"min_seconds": 0.05}, probe_margin=1000, explain=False))
    records = _by_name(document)
    base, variant = records["onnx-fp32"], records["onnx-fp32-no-spin"]
    assert variant["sha256"] == base["sha256"] and variant["path"] == base["path"]
    assert variant["shares_file"] == "onnx-fp32" and variant["session_options"] == {"allow_spinning": False}
    assert [p.name for p in (tmp_path / "candidates").glob("*.onnx")] == ["mnv3_digits.onnx-fp32.onnx"]
    local = document["targets"]["local"]["results"]
    assert local["onnx-fp32-no-spin"]["probe"]["session_options"]["allow_spinning"] is False  # the runner says so
    assert "session_options" not in local["onnx-fp32"]["probe"]
    assert local["onnx-fp32-no-spin"]["cached"] is False  # its own benchmark, not the base's
    if local["onnx-fp32-no-spin"]["p50_ms"] > local["onnx-fp32"]["p50_ms"]:  # the plain fp32 is the baseline
        assert local["onnx-fp32-no-spin"]["why"].startswith("slower than onnx fp32 on this target")
    chosen = document["recommended"]["local"]
    assert chosen["session_options"] == records[chosen["candidate"]]["session_options"]


def test_optimize_json_validates_against_its_schema(searched):
    import jsonschema

    from toolchain.records import OptimizeDocument, json_schema, schema_path

    document = _doc(searched)
    schema = json.loads(schema_path("optimize").read_text())
    assert schema == json_schema("optimize")
    jsonschema.validate(document, schema)
    assert OptimizeDocument.model_validate(document).to_json() == document  # typed and back, unchanged
    broken = {**document, "candidates": [{**document["candidates"][0], "verdict": "maybe"}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_derived_follow_ups_come_from_the_slow_candidates_profile(searched, mnv3_digits):
    """int8 lost to fp32 on speed: TFLite keeps the layers of the ops XNNPACK left out (the
    hard-swish activations) in float; ONNX stops quantizing the costliest non-Conv op types."""
    import keras

    from toolchain.optimize.candidates import candidates_for
    from toolchain.optimize.derive import derive_candidates

    document = _doc(searched)
    model = keras.models.load_model(mnv3_digits[0])
    candidates = candidates_for(model, ["tflite", "onnx"], ["tflite-int8", "tflite-int8-hswish-as-mul",
                                                             "onnx-int8", "onnx-int8-u8s8"])
    records = [r for r in document["candidates"] if "derived_from" not in r]
    slow = {"results": {name: {"verdict": "rejected", "why": "slower than fp32 on this target: ..."}
                        for name in ("tflite-int8", "onnx-int8")}}
    derived, notes = derive_candidates(model, candidates, records, {"local": slow}, searched)
    by_format = {c.format: c for c in derived}
    assert by_format["tflite"].name == "tflite-int8-derived" and by_format["tflite"].derived_from == "tflite-int8"
    assert set(by_format["tflite"].keep_float) == {"stem_hswish", "dw_hswish", "project_hswish"}
    onnx = by_format["onnx"]
    assert onnx.derived_from == "onnx-int8" and "Conv" in onnx.knobs["op_types"]
    excluded = next(n for n in notes if n["format"] == "onnx")["why"].split("): ")[-1]
    assert excluded.endswith("no longer quantized")
    assert not set(excluded.removesuffix(" no longer quantized").split(", ")) & set(onnx.knobs["op_types"])
    # nothing lost on speed: nothing derived, and it says so
    derived, notes = derive_candidates(model, candidates, records, {"local": {"results": {}}}, searched)
    assert derived == [] and all("no int8 candidate lost to fp32" in n["why"] for n in notes)
    # in the search itself: each follow-up was built, verified and measured, with its reason
    for note in document["derived"]:
        if note["candidate"]:
            record = _by_name(document)[note["candidate"]]
            assert record["derived_from"] == note["derived_from"]
            assert record["why_tried"].startswith(f"derived from {note['derived_from']}'s profile")
            assert record["verdict"] in ("pass", "rejected-accuracy")
            assert record["name"] in document["targets"]["local"]["results"]


def test_force_rebuilds_and_remeasures(tmp_path, mnv3_digits):
    model, data = mnv3_digits
    args = [str(model), "--data", str(data), "--out", str(tmp_path), "--formats", "tflite", "--candidates",
            "tflite-int8", *FAST]
    assert _run(*args) == 0
    assert _run(*args) == 0
    assert all(c["cached"]["build"] for c in _doc(tmp_path)["candidates"])
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "candidates").glob("*.tflite")}
    assert _run(*args, "--force") == 0
    document = _doc(tmp_path)
    assert document["settings"]["force"] is True
    assert not any(c["cached"]["build"] for c in document["candidates"])
    timed = [r for r in document["targets"]["local"]["results"].values() if "probe" in r]
    assert timed and not any(r["probe"]["cached"] for r in timed)
    assert not any(r["cached"] for r in timed if "p50_ms" in r)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "candidates").glob("*.tflite")}
    assert set(after) == set(before) and all(after[name] > before[name] for name in before)


@pytest.mark.parametrize("args, message", [
    (["--formats", "tflite,coreml"], "--formats: unknown format 'coreml'"),
    (["--candidates", "tflite-int4"], "--candidates: no candidate named 'tflite-int4'"),
    (["--candidates", "onnx-int8-no-spin"], "no candidate named 'onnx-int8-no-spin' (the -no-spin candidates "
                                            "need --threads >= 2)"),
    (["--max-accuracy-drop", "2"], "--max-accuracy-drop must be in [0, 1]"),
    (["--max-size-mb", "0"], "--max-size-mb must be positive"),
    (["--time-budget", "0"], "--time-budget must be positive seconds"),
])
def test_bad_options_are_one_line_errors(tmp_path, mnv3_digits, capsys, args, message):
    model, data = mnv3_digits
    assert _run(str(model), "--data", str(data), "--out", str(tmp_path / "out"), *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "optimize.json").exists()


@pytest.mark.parametrize("command", ["optimize", "sweep"])
@pytest.mark.parametrize("args, message", [
    (["--executor", "dask"], "--executor must be inprocess or ray, got 'dask'"),
    (["--ray-address", "auto"], "--ray-address needs --executor ray"),
    (["--executor", "ray", "--ray-address", "host;reboot"], "--ray-address 'host;reboot' is not an address"),
])
def test_executor_options_are_checked_before_anything_runs(tmp_path, capsys, command, args, message):
    out = tmp_path / "out"
    code = main([command, str(tmp_path / "model.keras"), "--data", str(tmp_path / "data.npz"), "--out", str(out),
                 *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_too_little_data_is_refused(tmp_path, mnv3_digits, capsys):
    model, _ = mnv3_digits
    np.savez(tmp_path / "tiny.npz", pixels=np.zeros((3, 16, 16, 1), np.float32), y=np.zeros(3, np.int64))
    assert _run(str(model), "--data", str(tmp_path / "tiny.npz"), "--out", str(tmp_path / "out")) == 2
    assert "3 samples; the search needs at least 4" in capsys.readouterr().err


def test_unknown_onnx_knob_and_rewrite_are_refused():
    from toolchain.errors import ConfigError
    from toolchain.optimize.rewrite import apply_rewrite
    from toolchain.stages.quantize_onnx import check_knobs

    with pytest.raises(ConfigError, match="unknown ONNX quantization setting 'reduce'"):
        check_knobs({"reduce": True})
    with pytest.raises(ConfigError, match="ONNX activation_type must be one of int8, uint8"):
        check_knobs({"activation_type": "int4"})
    with pytest.raises(ConfigError, match="ONNX quant_format must be qdq or qoperator"):
        check_knobs({"quant_format": "qlinear"})
    with pytest.raises(ConfigError, match="unknown model rewrite 'swish'"):
        apply_rewrite(object(), "swish")


PIPELINE = """
[model]
path = "{model}"
name = "mnv3"

[data]
eval = "{data}"

[data.calibration]
source = "eval"

[export]
formats = ["tflite"]

[bench]
targets = ["local"]
threads = [1]
min_seconds = 0.05

[optimize]
formats = ["tflite"]
candidates = ["tflite-int8-hswish-as-mul"]
max_accuracy_drop = 0.02
min_seconds = 0.05
explain = false
"""


@pytest.mark.heavy
def test_pipeline_optimize_section_and_package_recommended(tmp_path, mnv3_digits, capsys):
    """The [optimize] stage records the recommendation in the manifest; `package --recommended` ships it."""
    import tarfile

    from toolchain.manifest import validate_manifest

    model, data = mnv3_digits
    config = tmp_path / "pipeline.toml"
    config.write_text(PIPELINE.format(model=model, data=data))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    validate_manifest(manifest)
    assert manifest["files"]["optimize"] == "optimize/optimize.json"
    document = json.loads((out / "optimize" / "optimize.json").read_text())
    chosen = document["recommended"]["local"]["candidate"]
    recommended = [a for a in manifest["artifacts"] if a.get("optimize")]
    assert len(recommended) == 1 and recommended[0]["optimize"]["recommended_on"] == ["local"]
    assert recommended[0]["optimize"]["candidate"] == chosen
    assert recommended[0]["path"].startswith("optimize/candidates/")
    # the report charts the search: latency vs accuracy on each measured target, front and choice marked
    assert (out / "report" / "plots" / "optimize-local.png").stat().st_size > 1000
    report = (out / "report" / "report.md").read_text()
    assert f"optimize on local: latency vs accuracy (recommended: {chosen})" in report
    assert "optimize on local" in (out / "report" / "report.html").read_text()

    capsys.readouterr()
    assert main(["package", str(out), "--target", "local", "--recommended"]) == 0
    printed = capsys.readouterr().out
    assert "recommended for local by the optimize search" in printed
    bundle = next((out / "packages").glob("*.tar.gz"))
    with tarfile.open(bundle) as archive:
        names = archive.getnames()
    assert any(n.endswith(f"models/{recommended[0]['name']}") for n in names)

    assert main(["package", str(out), "--target", "local", "--recommended", "--artifact", "x"]) == 2
    assert "--recommended and --artifact both choose the artifact" in capsys.readouterr().err
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "elsewhere.toml").write_text('name = "elsewhere"\n[connection]\nkind = "local"\n')
    assert main(["package", str(out), "--target", "elsewhere", "--targets-dir", str(profiles), "--recommended"]) == 2
    assert "has no optimize recommendation for target 'elsewhere'" in capsys.readouterr().err


SESSION_PIPELINE = PIPELINE.replace('formats = ["tflite"]\ncandidates = ["tflite-int8-hswish-as-mul"]',
                                    'formats = ["onnx"]\ncandidates = ["onnx-fp32-no-spin"]\nthreads = 2\n'
                                    'probe_margin = 1000')


@pytest.mark.heavy
def test_pipeline_session_options_reach_the_bundle_and_force_rebuilds(tmp_path, mnv3_digits, capsys):
    """The recommendation carries its session options into the manifest and the bundle (the device
    runs the file as it was measured); `run --force` rebuilds and re-measures inside the search."""
    import tarfile

    from toolchain.manifest import validate_manifest
    from toolchain.package import verify_bundle

    model, data = mnv3_digits
    config = tmp_path / "pipeline.toml"
    config.write_text(SESSION_PIPELINE.format(model=model, data=data))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    document = json.loads((out / "optimize" / "optimize.json").read_text())
    assert {c["name"] for c in document["candidates"]} == {"onnx-fp32", "onnx-fp32-no-spin"}
    assert main(["run", str(config), "--out", str(out), "--quiet", "--force"]) == 0
    forced = json.loads((out / "optimize" / "optimize.json").read_text())
    assert forced["settings"]["force"] is True
    assert not any(c["cached"]["build"] for c in forced["candidates"])
    assert not any(r["probe"]["cached"] for r in forced["targets"]["local"]["results"].values())

    manifest = json.loads((out / "manifest.json").read_text())
    [record] = [a for a in manifest["artifacts"] if a.get("optimize")]
    chosen = forced["recommended"]["local"]
    assert record["name"] == f"mnv3.{chosen['candidate']}.onnx"
    assert record["optimize"]["settings"]["session_options"] == chosen["session_options"]
    if chosen["candidate"] == "onnx-fp32":
        # the other candidate runs the very same file (same sha256): what the manifest says had it won
        assert forced["candidates"][0]["sha256"] == forced["candidates"][1]["sha256"] == record["sha256"]
        record["name"] = "mnv3.onnx-fp32-no-spin.onnx"
        record["optimize"]["candidate"] = "onnx-fp32-no-spin"
        record["optimize"]["settings"]["session_options"] = {"allow_spinning": False}
        validate_manifest(manifest)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    capsys.readouterr()
    assert main(["package", str(out), "--target", "local", "--recommended"]) == 0
    bundle = next((out / "packages").glob("*.tar.gz"))
    verify_bundle(bundle)  # the bundle schema knows session_options
    with tarfile.open(bundle) as archive:
        inside = json.load(archive.extractfile(next(m for m in archive.getmembers()
                                                     if m.name.endswith("/manifest.json"))))
    [artifact] = inside["artifacts"]
    assert artifact["name"] == "mnv3.onnx-fp32-no-spin.onnx"
    assert artifact["session_options"] == {"allow_spinning": False}


def test_pipeline_optimize_without_evaluation_data_is_refused_before_writing(tmp_path, mnv3_digits, capsys):
    model, data = mnv3_digits
    config = tmp_path / "pipeline.toml"
    text = PIPELINE.format(model=model, data=data).replace(f'eval = "{data}"', "")
    config.write_text(text.replace('source = "eval"', f'source = "{data}"'))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 2
    assert "[optimize] needs evaluation data to judge accuracy against the Keras model" in capsys.readouterr().err
    assert not (out / "manifest.json").exists() and not (out / "optimize").exists()

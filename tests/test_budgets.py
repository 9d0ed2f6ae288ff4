"""Budgets: pass/fail per artifact x target with reasons, exit 7 for a failing release candidate, JUnit."""

import json
import xml.etree.ElementTree as ET

import pytest

from toolchain.budgets import (
    budgets_from_manifest,
    check_release_candidate,
    evaluate_budgets,
    profile_limits,
    raise_if_release_candidate_fails,
)
from toolchain.cli import main
from toolchain.config import BudgetLimits, BudgetsSection, find_profile
from toolchain.errors import BudgetError, ConfigError
from toolchain.junit import junit_xml


def _artifact(name, recipe="fp32", nbytes=2 * 1024 * 1024, bench=None, accuracy=0.95, delta=0.0):
    return {
        "name": name, "format": name.rsplit(".", 1)[1], "recipe": recipe, "bytes": nbytes,
        "verify": {"verdict": "pass", "failures": [],
                   "outputs": {"probs": {"accuracy": accuracy, "accuracy_delta": delta}}},
        "bench": bench or {},
    }


def _summary(threads, p90, peak_mb=100.0):
    return {"threads": threads, "p50_ms": p90 * 0.9, "p90_ms": p90, "mean_ms": p90 * 0.9,
            "peak_rss_kib": int(peak_mb * 1024), "throttled": False}


MANIFEST = {"artifacts": [
    _artifact("m.fp32.tflite", bench={"pi": [_summary(1, 12.0), _summary(4, 5.0, 120.0)]}),
    _artifact("m.int8.tflite", "int8", 600 * 1024, {"pi": [_summary(1, 4.0, 90.0)]}, 0.93, -0.02),
]}


def _by(evaluation, artifact, target="pi"):
    return next(r for r in evaluation["results"] if r["artifact"] == artifact and r["target"] == target)


def test_checks_use_the_fastest_thread_count_and_name_the_source():
    budgets = BudgetsSection(max_p90_ms=6.0, max_peak_memory_mb=110, max_file_mb=1.0)
    evaluation = evaluate_budgets(MANIFEST, budgets, {"pi": None})
    fp32 = _by(evaluation, "m.fp32.tflite")
    assert fp32["threads"] == 4 and fp32["values"]["p90_latency_ms"] == 5.0
    assert not fp32["passed"]
    assert sorted(c["metric"] for c in fp32["checks"] if not c["passed"]) == ["file_size_mb", "peak_memory_mb"]
    assert any("file_size_mb 2.000 MB exceeds max_file_mb 1.000 MB (pipeline budget)" == f
               for f in fp32["failures"])
    assert _by(evaluation, "m.int8.tflite")["passed"]


def test_target_profile_budgets_apply_to_their_target_only():
    pi = BudgetLimits(max_p90_ms=4.5)
    evaluation = evaluate_budgets(MANIFEST, BudgetsSection(), {"pi": pi, "other": None})
    fp32 = _by(evaluation, "m.fp32.tflite")
    assert fp32["failures"] == ["p90_latency_ms 5.000 ms exceeds max_p90_ms 4.500 ms (target 'pi' budget)"]
    assert _by(evaluation, "m.int8.tflite")["passed"]
    assert _by(evaluation, "m.fp32.tflite", "other")["checks"] == []  # no limits there


def test_accuracy_budgets_and_unmeasured_metrics_fail():
    budgets = BudgetsSection(min_accuracy=0.94, max_accuracy_drop=0.01, max_p90_ms=100)
    evaluation = evaluate_budgets(MANIFEST, budgets, {"pi": None, "nano": None})
    int8 = _by(evaluation, "m.int8.tflite")
    assert {c["metric"] for c in int8["checks"] if not c["passed"]} == {"accuracy", "accuracy_drop"}
    assert "accuracy_drop 2.00 pt exceeds max_accuracy_drop 1.00 pt" in " ".join(int8["failures"])
    unmeasured = _by(evaluation, "m.fp32.tflite", "nano")
    assert unmeasured["failures"] == [
        "p90_latency_ms: not benchmarked on target 'nano' (limit 100.000 ms, pipeline budget)"]
    no_labels = {"artifacts": [dict(MANIFEST["artifacts"][0], verify={"outputs": {"p": {"top1_agreement": 1}}})]}
    result = evaluate_budgets(no_labels, BudgetsSection(min_accuracy=0.5), {"pi": None})["results"][0]
    assert "no accuracy measured" in result["failures"][0]


def test_release_candidate_failure_raises_budget_error():
    budgets = BudgetsSection(max_file_mb=1.0, release_candidate="m.fp32.tflite")
    evaluation = evaluate_budgets(MANIFEST, budgets, {"pi": None})
    assert evaluation["release_candidate_passed"] is False
    with pytest.raises(BudgetError, match="release candidate m.fp32.tflite fails its budgets: pi: file_size_mb"):
        raise_if_release_candidate_fails(evaluation)
    passing = evaluate_budgets(MANIFEST, budgets.model_copy(update={"release_candidate": "m.int8.tflite"}),
                               {"pi": None})
    raise_if_release_candidate_fails(passing)  # no error


def test_unknown_release_candidate_is_a_config_error():
    expected = r"'budgets.release_candidate' is 'm.fp32.tflit'.*did you mean 'm.fp32.tflite'"
    with pytest.raises(ConfigError, match=expected):
        check_release_candidate(BudgetsSection(release_candidate="m.fp32.tflit"), ["m.fp32.tflite"])


def test_recorded_budgets_are_validated():
    with pytest.raises(ConfigError, match="the run's recorded \\[budgets\\]: unknown key 'max_p90'"):
        budgets_from_manifest({"config": {"budgets": {"max_p90": 3}}})


def test_profile_budgets_are_read_from_the_target_profile():
    profile = find_profile("local")
    assert profile_limits(profile) is None  # the shipped local profile sets no limits
    limited = profile.model_copy(update={"budgets": profile.budgets.model_copy(update={"max_p90_ms": 2.0})})
    assert profile_limits(limited).max_p90_ms == 2.0


def test_junit_names_the_failing_metric():
    budgets = BudgetsSection(max_file_mb=1.0, release_candidate="m.fp32.tflite")
    root = ET.fromstring(junit_xml(evaluate_budgets(MANIFEST, budgets, {"pi": None})))
    assert root.get("tests") == "2" and root.get("failures") == "1"
    failure = root.find(".//testcase[@name='m.fp32.tflite']/failure")
    assert failure.get("message") == "file_size_mb over budget"
    assert "max_file_mb" in failure.text
    assert root.find(".//testcase[@name='m.int8.tflite']/failure") is None
    error = ET.fromstring(junit_xml(None, "target 'pi': unreachable")).find(".//testcase/error")
    assert error.get("message") == "target 'pi': unreachable"


@pytest.fixture(scope="module")
def over_budget_run(tmp_path_factory, demo_inputs):
    """The demo model (fp32 TFLite only) with a release candidate that cannot meet its budgets."""
    folder = tmp_path_factory.mktemp("budget-src")
    (folder / "pipeline.toml").write_text(f"""
[model]
path = "{demo_inputs / 'digits_cnn.keras'}"
name = "digits"

[data]
eval = "{demo_inputs / 'digits_eval.npz'}"
samples = 200

[export]
formats = ["tflite"]

[bench]
min_runs = 20
min_seconds = 0.1

[budgets]
max_file_mb = 0.05
min_accuracy = 0.5
release_candidate = "digits.fp32.tflite"
""")
    out = tmp_path_factory.mktemp("budget-run")
    junit = out.parent / "budget-junit.xml"
    code = main(["run", str(folder / "pipeline.toml"), "--out", str(out), "--quiet", "--junit", str(junit)])
    return code, out, junit


def test_run_exits_7_when_the_release_candidate_fails(over_budget_run, capsys):
    code, out, junit = over_budget_run
    assert code == 7
    budgets = json.loads((out / "budgets.json").read_text())
    result = budgets["results"][0]
    assert result["artifact"] == "digits.fp32.tflite" and not result["passed"]
    assert [c["metric"] for c in result["checks"] if not c["passed"]] == ["file_size_mb"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["files"]["budgets"] == "budgets.json"
    report = (out / "report" / "report.md").read_text()
    assert "Release candidate `digits.fp32.tflite` **FAILS** its budgets." in report
    case = ET.parse(junit).getroot().find(".//testcase[@name='digits.fp32.tflite']")
    assert case.get("classname") == "budgets.local"
    assert case.find("failure").get("message") == "file_size_mb over budget"


def test_junit_is_written_when_the_run_fails(tmp_path, capsys):
    junit = tmp_path / "junit.xml"
    code = main(["run", str(tmp_path / "missing.toml"), "--quiet", "--junit", str(junit)])
    assert code == 2
    error = ET.parse(junit).getroot().find(".//testcase[@name='run']/error")
    assert "pipeline config not found" in error.get("message")

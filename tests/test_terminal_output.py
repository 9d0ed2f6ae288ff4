"""What a user sees in the terminal: tables never cut names or numbers, at any width, piped or not."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from toolchain import cli
from toolchain.cli import main
from toolchain.stages.report import load_run

WIDTHS = (80, 100, 140)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def console_width(monkeypatch):
    """set(width): the CLI's stdout console renders at `width` columns, as when piped with COLUMNS."""
    def set_width(width: int) -> None:
        monkeypatch.setattr(cli.out, "width", width)
    return set_width


def _lines_longest(text: str) -> int:
    return max(len(line.rstrip()) for line in text.splitlines())


@pytest.mark.parametrize("width", WIDTHS)
def test_run_summary_shows_every_artifact_name_whole_with_its_format(demo_run, capsys, console_width, width):
    console_width(width)
    docs = load_run(demo_run)
    cli._print_summary(SimpleNamespace(manifest=docs.manifest, budgets=docs.budgets, run_dir=demo_run,
                                       report=None), quiet=False)
    out = capsys.readouterr().out
    assert "…" not in out
    header = next(line for line in out.splitlines() if "Artifact" in line)
    assert "Format" in header
    for artifact in docs.manifest["artifacts"]:
        row = next(line for line in out.splitlines() if line.startswith(artifact["name"] + " "))
        assert f" {artifact['format']} " in row and f" {artifact['recipe']} " in row
    assert "Budgets" not in out, "no budgets set: no column saying they pass"


@pytest.mark.parametrize("width", WIDTHS)
def test_bench_table_keeps_long_numbers_and_names_whole(demo_run, capsys, console_width, width):
    console_width(width)
    results = copy.deepcopy(json.loads((demo_run / "bench.json").read_text())["results"])
    results[0]["latency_ms"].update(p50=5529.123456, p90=6001.5, p99=7012.25)
    results[0]["target"] = "raspberry-pi-4-emulated"
    cli._print_bench(results)
    out = capsys.readouterr().out
    assert "…" not in out
    assert "5529.123" in out and "6001.500" in out and "7012.250" in out
    for r in results:
        assert r["artifact"] in out
    assert "raspberry-pi-4-emulated" in out


def test_narrow_console_prints_wider_rather_than_cutting(demo_run, capsys, console_width):
    console_width(40)
    docs = load_run(demo_run)
    cli._print_summary(SimpleNamespace(manifest=docs.manifest, budgets=docs.budgets, run_dir=demo_run,
                                       report=None), quiet=False)
    out = capsys.readouterr().out
    assert "…" not in out and _lines_longest(out) > 40
    assert all(a["name"] in out for a in docs.manifest["artifacts"])


def _cli(*args: str, columns: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if columns:
        env["COLUMNS"] = columns
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_piped_output_is_not_cut_at_a_fixed_width(tmp_path):
    profile = tmp_path / "a-target-profile-with-a-rather-long-name-for-the-lab-bench.toml"
    profile.write_text('name = "a-target-profile-with-a-rather-long-name-for-the-lab-bench"\n'
                       'description = "a board"\n[connection]\nkind = "local"\n')
    piped = _cli("targets", "--targets-dir", str(tmp_path), columns=None)
    assert piped.returncode == 0, piped.stderr
    row = next(line for line in piped.stdout.splitlines() if line.startswith("a-target-profile"))
    assert "a-target-profile-with-a-rather-long-name-for-the-lab-bench" in row and "this machine" in row
    narrow = _cli("targets", "--targets-dir", str(tmp_path), columns="60")
    assert narrow.returncode == 0, narrow.stderr
    assert "a-target-profile-with-a-rather-long-name-for-the-lab-bench" in narrow.stdout
    assert "…" not in narrow.stdout


@pytest.mark.parametrize("width", WIDTHS)
def test_inspect_lists_layers_cut_points_and_droppable_blocks(residual_cnn_file, capsys, console_width, width):
    console_width(width)
    assert main(["inspect", str(residual_cnn_file)]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    lines = out.splitlines()
    for name, cls, shape in (("stem", "Conv2D", "(None, 12, 12, 8)"), ("res_add", "Add", "(None, 12, 12, 8)"),
                             ("bn", "BatchNormalization", "(None, 12, 12, 8)"), ("scores", "Dense", "(None, 4)")):
        row = next(line for line in lines if f" {name} " in line)
        assert cls in row and shape in row
    assert "224" in next(line for line in lines if " stem " in line)  # 3x3x3x8 + 8 parameters
    text = " ".join(out.split())  # the hint lines may wrap
    assert "droppable blocks (truncate --drop ADD_LAYER): res_add" in text
    assert "cut points (truncate --at LAYER" in text and "stem, bn, gap" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_verify_table_keeps_output_names_and_metrics_whole(capsys, console_width, width):
    console_width(width)
    result = {"artifact": "runs/a/digits.int8-float-io.tflite", "reference": "digits_cnn.keras", "recipe": "int8",
              "samples": 500, "verdict": "pass", "failures": [], "outputs": {
                  "classification_probabilities_of_the_long_named_head": {
                      "max_abs_error": 0.01234, "mean_abs_error": 0.000456, "cosine_min": 0.999991,
                      "top1_agreement": 0.9876, "accuracy": None}}}
    cli._print_verify(result, as_json=False)
    out = capsys.readouterr().out
    assert "…" not in out
    assert "classification_probabilities_of_the_long_named_head" in out
    assert all(value in out for value in ("0.0123", "0.000456", "0.999991", "0.9876"))

"""report.md and report.html from a demo run, rebuilt by `edge-toolchain report`, checked in chromium."""

import base64
import json
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from system_packages import chromium, chromium_missing, require

from toolchain.cli import main
from toolchain.config import find_profile
from toolchain.estimate import lower_bound_ms
from toolchain.stages.report_html import pareto_front

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_copy(tmp_path, demo_run) -> Path:
    target = tmp_path / "run"
    shutil.copytree(demo_run, target, ignore=shutil.ignore_patterns("packages", "*.lock"))
    return target


def test_demo_run_writes_both_report_forms(demo_run):
    md = (demo_run / "report" / "report.md").read_text()
    page = (demo_run / "report" / "report.html").read_text()
    for heading in ("## Summary", "## Sizes", "## Latency distributions (ms)", "## Benchmark environments",
                    "## Charts"):
        assert heading in md
    assert "| Speedup vs fp32 |" in md and "| digits.fp32.tflite | tflite | fp32 |" in md
    for key in ("latency", "tradeoff", "sizes"):
        assert f"](plots/{key}.png)" in md
        assert (demo_run / "report" / "plots" / f"{key}.png").read_bytes().startswith(PNG_SIGNATURE)
        assert f'id="plot-{key}"' in page
    assert "<script" not in page and not re.search(r"(src|href)=\"(https?:)?//", page), "must open offline"
    manifest = json.loads((demo_run / "manifest.json").read_text())
    assert manifest["files"]["report_html"] == "report/report.html"


def test_estimates_for_unmeasured_targets_are_labelled(demo_run):
    estimates = json.loads((demo_run / "estimates.json").read_text())
    assert estimates["kind"] == "estimate" and estimates["macs_per_sample"] > 0
    rows = {(e["artifact"], e["target"]): e for e in estimates["estimates"]}
    assert not any(target == "local" for _, target in rows), "local was measured: no estimate"
    pi4 = rows[("digits.fp32.tflite", "raspberry-pi-4")]
    expected = lower_bound_ms(estimates["macs_per_sample"], pi4["bytes"], 57.6, 12.8)
    assert pi4["lower_bound_ms"] == pytest.approx(expected["lower_bound_ms"])
    md = (demo_run / "report" / "report.md").read_text()
    assert "ESTIMATE, not a measurement" in md and "raspberry-pi-4" in md
    assert "ESTIMATE</span>" in (demo_run / "report" / "report.html").read_text()


def test_lower_bound_is_the_slower_of_compute_and_memory():
    # 1e9 MACs = 2e9 FLOP at 100 GFLOP/s = 20 ms; 1e6 bytes at 10 GB/s = 0.1 ms
    result = lower_bound_ms(10**9, 10**6, 100.0, 10.0)
    assert result["compute_ms"] == pytest.approx(20.0) and result["memory_ms"] == pytest.approx(0.1)
    assert result["lower_bound_ms"] == pytest.approx(20.0) and result["bound"] == "compute"
    assert lower_bound_ms(10, 10**9, 100.0, 10.0)["bound"] == "memory"


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 0.90, "a"), (2.0, 0.95, "b"), (3.0, 0.93, "c"), (2.0, 0.80, "d"), (4.0, 0.97, "e")]
    assert [p[2] for p in pareto_front(points)] == ["a", "b", "e"]


def test_report_command_rebuilds_from_the_json_files(run_copy, capsys):
    original_md = (run_copy / "report" / "report.md").read_text()
    shutil.rmtree(run_copy / "report")
    assert main(["report", str(run_copy)]) == 0
    assert (run_copy / "report" / "report.md").read_text() == original_md
    assert (run_copy / "report" / "report.html").stat().st_size > 10_000
    assert "report.html" in capsys.readouterr().out


def test_report_refuses_a_directory_without_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no manifest.json" in capsys.readouterr().err


def test_report_refuses_corrupt_json(run_copy, capsys):
    (run_copy / "bench.json").write_text("{ not json")
    assert main(["report", str(run_copy)]) == 2
    assert "bench.json: not valid JSON" in capsys.readouterr().err


def test_report_refuses_a_failed_run(run_copy, capsys):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest.update(status="failed", error="export failed")
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["report", str(run_copy)]) == 2
    assert "the run did not complete (export failed)" in capsys.readouterr().err


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile.") as profile:
        return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, timeout=180)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.heavy
def test_html_report_renders_in_headless_chromium(demo_run, tmp_path):
    require("chromium", chromium_missing())
    page = (demo_run / "report" / "report.html").resolve().as_uri()
    dumped = _chromium("--dump-dom", page)
    assert dumped.returncode == 0, dumped.stderr.decode()[-2000:]
    dom = dumped.stdout.decode()
    assert "<h1>edge-toolchain report: digits</h1>" in dom
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom)
    assert [alt for alt, _ in images] == ["Latency distributions", "Accuracy vs latency, with the Pareto front",
                                          "Artifact sizes"]
    for _, data in images:
        width, height = _png_size(base64.b64decode(data))
        assert width >= 400 and height >= 100

    shot = tmp_path / "shot.png"
    taken = _chromium("--window-size=1200,8000", f"--screenshot={shot}", page)
    assert taken.returncode == 0 and shot.exists(), taken.stderr.decode()[-2000:]
    from PIL import Image

    pixels = Image.open(shot).convert("RGB")
    colours = pixels.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50, "the screenshot is blank"
    # the size chart's bars are #72b7b2: the embedded plot was decoded and painted
    assert any(abs(r - 0x72) + abs(g - 0xB7) + abs(b - 0xB2) < 12 for _, (r, g, b) in colours)


def test_estimates_skip_profiles_without_facts_or_unreadable(tmp_path):
    from toolchain.estimate import estimate, unmeasured_profiles

    (tmp_path / "broken.toml").write_text("[connection]\nkind = 'carrier-pigeon'\n")
    (tmp_path / "tiny.toml").write_text("[hardware]\npeak_gflops = 1.0\nmemory_bandwidth_gbs = 1.0\n")
    profiles, unreadable = unmeasured_profiles(["local"], [tmp_path])
    assert unreadable[0]["target"] == "broken" and "profile could not be read" in unreadable[0]["reason"]
    names = [p.name for p in profiles]
    assert "tiny" in names and "local" not in names
    doc = estimate(1000, 2, [{"name": "m.tflite", "bytes": 10**6}], [find_profile("local", [tmp_path]),
                                                                       find_profile("tiny", [tmp_path])])
    assert doc["skipped"] == [{"target": "local",
                               "reason": "profile has no hardware.peak_gflops / hardware.memory_bandwidth_gbs"}]
    assert doc["estimates"][0]["lower_bound_ms"] == pytest.approx(1.0)  # 1e6 bytes at 1 GB/s


def test_runner_keeps_a_bounded_sample_of_latencies(demo_run):
    from toolchain.device.runner import MAX_LATENCY_SAMPLES, bounded_samples

    assert bounded_samples([1.0, 2.0]) == [1.0, 2.0]
    many = [float(i) for i in range(5000)]
    picked = bounded_samples(many)
    assert len(picked) == MAX_LATENCY_SAMPLES and picked[:2] == [0.0, 5.0] and picked[-1] == 4995.0
    for result in json.loads((demo_run / "bench.json").read_text())["results"]:
        samples, stats = result["latency_samples_ms"], result["latency_ms"]
        assert 0 < len(samples) <= min(stats["count"], MAX_LATENCY_SAMPLES)
        assert stats["min"] - 1e-6 <= min(samples) <= max(samples) <= stats["max"] + 1e-6


def test_html_shouts_data_warnings(demo_run):
    from toolchain.stages.report import load_run
    from toolchain.stages.report_html import render_html

    docs = load_run(demo_run)
    docs.manifest["data"] = {"warning": "calibrated on RANDOM data <unsafe>"}
    assert '<p class="warn" id="data-warning">WARNING: calibrated on RANDOM data &lt;unsafe&gt;</p>' in \
        render_html(docs, {})


def test_environment_warnings_show_throttling_and_powersave():
    from toolchain.stages.report import environment_rows

    env = {"cpu_model": "Cortex-A72", "cpu_count": 4, "machine": "aarch64", "governor": "powersave",
           "temperatures_c": {"cpu": 81.0}, "throttled": {"throttled_since_boot": True}, "backend": "tflite_runtime"}
    bench = {"results": [
        {"artifact": "a.tflite", "target": "pi", "threads": 4, "throttled": False, "environment": env},
        {"artifact": "b.tflite", "target": "pi", "threads": 4, "throttled": True, "environment": env,
         "throttling": ["throttled during the runs"]},
    ]}
    [row] = environment_rows(bench)
    assert row["temperatures"] == "cpu 81°C"
    assert row["warnings"] == ["throttled since boot", "'powersave' CPU governor: latency may be inflated",
                               "THROTTLED (b.tflite): throttled during the runs"]


def test_budgets_column_says_dash_when_no_limit_was_checked(demo_run):
    from toolchain.stages.report import summary_rows

    docs_budgets = json.loads((demo_run / "budgets.json").read_text())
    manifest = json.loads((demo_run / "manifest.json").read_text())
    assert not any(r["checks"] for r in docs_budgets["results"]), "the demo sets no budgets"
    assert {row["budget"] for row in summary_rows(manifest, docs_budgets)} == {"—"}
    summary = (demo_run / "report" / "report.md").read_text().split("## Summary")[1].split("\n\n")[1]
    body = summary.splitlines()[2:]
    assert body and all(line.endswith("| — |") for line in body)
    checked = json.loads(json.dumps(docs_budgets))
    checked["results"][0]["checks"] = [{"passed": True, "reason": "p90 0.01 ms <= 5 ms"}]
    first = checked["results"][0]
    verdicts = {(r["artifact"], r["target"]): r["budget"] for r in summary_rows(manifest, checked)}
    assert verdicts[(first["artifact"], first["target"])] == "pass"


def test_emulated_targets_share_the_estimate_of_the_board_they_emulate(demo_run):
    estimates = json.loads((demo_run / "estimates.json").read_text())
    targets = {e["target"] for e in estimates["estimates"]}
    assert {"raspberry-pi-4", "raspberry-pi-5"} <= targets
    assert not any(t.endswith("-emulated") for t in targets), "same hardware listed twice"
    skipped = {s["target"]: s["reason"] for s in estimates["skipped"]}
    assert skipped["raspberry-pi-4-emulated"] == "emulates raspberry-pi-4's hardware (see its estimate)"
    md = (demo_run / "report" / "report.md").read_text()
    assert "no estimate for raspberry-pi-5-emulated: emulates raspberry-pi-5's hardware" in md


def test_int8_estimates_use_the_int8_peak_or_say_they_cannot(tmp_path):
    from toolchain.estimate import NO_INT8_PEAK, estimate
    from toolchain.stages.report import estimate_lines

    artifacts = [{"name": "m.fp32.tflite", "recipe": "fp32", "bytes": 4 * 10**6},
                 {"name": "m.int8.tflite", "recipe": "int8", "bytes": 10**6}]
    doc = estimate(10**9, 1, artifacts, [find_profile("raspberry-pi-4"), find_profile("raspberry-pi-5")])
    rows = {(e["artifact"], e["target"]): e for e in doc["estimates"]}
    pi5_fp32, pi5_int8 = rows[("m.fp32.tflite", "raspberry-pi-5")], rows[("m.int8.tflite", "raspberry-pi-5")]
    assert pi5_fp32["compute_ms"] == pytest.approx(2e9 / 153.6e9 * 1000)
    assert pi5_int8["compute_ms"] == pytest.approx(2e9 / 614.4e9 * 1000) and pi5_int8["compute_precision"] == "int8"
    assert pi5_int8["lower_bound_ms"] < pi5_fp32["lower_bound_ms"]
    pi4_fp32, pi4_int8 = rows[("m.fp32.tflite", "raspberry-pi-4")], rows[("m.int8.tflite", "raspberry-pi-4")]
    assert pi4_int8["compute_ms"] == pytest.approx(pi4_fp32["compute_ms"]) and pi4_int8["note"] == NO_INT8_PEAK
    assert pi4_fp32["note"] is None and pi5_int8["note"] is None
    md = "\n".join(estimate_lines(doc))
    assert "614.4 GOP/s int8" in md and "153.6 GFLOP/s fp32" in md
    assert f"- int8 artifacts on raspberry-pi-4: {NO_INT8_PEAK}" in md


def test_latency_chart_labels_several_ticks_on_a_narrow_range(demo_run):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from toolchain.stages.report_html import latency_figure

    bench = json.loads((demo_run / "bench.json").read_text())
    for i, r in enumerate(bench["results"]):  # everything between 11 and 19 microseconds: inside one decade
        low = 0.011 + 0.0005 * (i % 4)
        r["latency_ms"].update(min=low, p50=low + 0.002, p90=low + 0.004, p99=low + 0.005, max=0.019)
        r["latency_samples_ms"] = [low, low + 0.001, low + 0.002, low + 0.004]
    fig = latency_figure(bench)
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high]
        assert len(labels) >= 3, labels
        assert all(float(label) > 0 for label in labels), "plain numbers, not 10^x"

"""Re-runs: the stage cache, --force/--only/--log-json, resume after SIGKILL, and the run-directory lock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolchain.cache import StageCache, content_view
from toolchain.cli import main
from toolchain.errors import RunLockedError
from toolchain.fileio import sha256_file
from toolchain.manifest import validate_manifest
from toolchain.runlock import RunLock

CLI = [sys.executable, "-m", "toolchain"]


def manifest_of(run_dir: Path) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    validate_manifest(manifest)
    return manifest


def stages(manifest: dict) -> dict[str, dict]:
    return {s["name"]: s for s in manifest["stages"]}


def assert_artifacts_match(run_dir: Path, manifest: dict) -> None:
    assert manifest["artifacts"]
    for artifact in manifest["artifacts"]:
        assert sha256_file(run_dir / artifact["path"]) == artifact["sha256"], artifact["name"]
    leftovers = [p for p in run_dir.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".quantize-")]
    assert not leftovers, f"half-written files left behind: {leftovers}"


def quick_pipeline(pipeline: Path) -> Path:
    """fp32 only and a short benchmark: enough for tests of the run machinery."""
    text = re.sub(r"recipes = \[.*\]", 'recipes = ["fp32"]', pipeline.read_text())
    text = text.replace("min_runs = 200", "min_runs = 20").replace("min_seconds = 1.0", "min_seconds = 0.1")
    pipeline.write_text(text)
    return pipeline


def wait_for(condition, seconds: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---- the cache ------------------------------------------------------------------

def test_cache_hit_needs_outputs_with_their_recorded_sha256(tmp_path):
    cache = StageCache(tmp_path, tool_versions={"tool": "1"})
    output = tmp_path / "artifacts" / "a.bin"
    output.parent.mkdir()
    output.write_bytes(b"one")
    key = cache.key("export", recipe="fp32")
    assert cache.get("export", key) is None
    cache.put("export", key, [output], result={"n": 1})
    hit = cache.get("export", key)
    assert hit.outputs == {"artifacts/a.bin": sha256_file(output)} and hit.result == {"n": 1}
    assert StageCache(tmp_path, force=True, tool_versions={"tool": "1"}).get("export", key) is None
    assert cache.key("export", recipe="int8") != key
    assert StageCache(tmp_path, tool_versions={"tool": "2"}).key("export", recipe="fp32") != key
    output.write_bytes(b"two")  # changed after the record was written
    assert cache.get("export", key) is None
    output.unlink()
    assert cache.get("export", key) is None


def test_corrupt_cache_record_is_a_miss(tmp_path):
    cache = StageCache(tmp_path, tool_versions={})
    key = cache.key("verify", artifact="x")
    cache.put("verify", key, result={"verdict": "pass"})
    record = tmp_path / ".cache" / "verify" / f"{key}.json"
    record.write_text(record.read_text()[:20])
    assert cache.get("verify", key) is None


def test_cache_keys_follow_file_contents_not_paths(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    a.write_bytes(b"data")
    b.write_bytes(b"data")
    assert content_view({"eval": str(a)}) == content_view({"eval": str(b)})
    b.write_bytes(b"other")
    assert content_view({"eval": str(a)}) != content_view({"eval": str(b)})


def test_second_identical_run_converts_nothing(demo_inputs, run_copy):
    before = {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in (run_copy / "artifacts").iterdir()}
    code = main(["run", str(demo_inputs / "pipeline.toml"), "--out", str(run_copy), "--quiet"])
    assert code == 0
    manifest = manifest_of(run_copy)
    assert manifest["status"] == "complete"
    done = [s for s in manifest["stages"] if s["status"] == "done"]
    assert {s["stage"] for s in done} >= {"load model", "export", "verify", "benchmark", "report"}
    assert all(s["cached"] for s in done), manifest["stages"]
    for artifact in manifest["artifacts"]:
        assert artifact["cached"] == {"export": True, "verify": True, "bench": True}
    after = {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in (run_copy / "artifacts").iterdir()}
    assert after == before, "an artifact was written again"
    assert_artifacts_match(run_copy, manifest)


def test_changed_bench_setting_reruns_only_the_benchmark(pipeline_copy, run_copy):
    text = pipeline_copy.read_text().replace("min_runs = 200", "min_runs = 20").replace("min_seconds = 1.0",
                                                                                      "min_seconds = 0.1")
    pipeline_copy.write_text(text)
    code = main(["run", str(pipeline_copy), "--out", str(run_copy), "--quiet"])
    assert code == 0
    manifest = manifest_of(run_copy)
    by_stage = {s["stage"]: s for s in manifest["stages"]}
    assert all(s["cached"] for s in manifest["stages"] if s["stage"] == "export")
    assert by_stage["verify"]["cached"] is True
    assert by_stage["benchmark"]["cached"] is False
    for artifact in manifest["artifacts"]:
        assert artifact["cached"] == {"export": True, "verify": True, "bench": False}
    bench = json.loads((run_copy / "bench.json").read_text())
    assert all(r["latency_ms"]["count"] >= 20 and r["cached"] is False for r in bench["results"])


def test_only_verify_with_force_reruns_verify_and_skips_the_rest(demo_inputs, run_copy):
    code = main(["run", str(demo_inputs / "pipeline.toml"), "--out", str(run_copy), "--quiet",
                 "--only", "verify", "--force"])
    assert code == 0
    manifest = manifest_of(run_copy)
    by_stage = {s["stage"]: s for s in manifest["stages"]}
    assert all(s["cached"] for s in manifest["stages"] if s["stage"] == "export")
    assert by_stage["verify"]["status"] == "done" and by_stage["verify"]["cached"] is False
    assert by_stage["benchmark"]["status"] == "skipped"
    assert by_stage["report"]["status"] == "skipped"
    assert all(a["verify"]["verdict"] == "pass" for a in manifest["artifacts"])


def test_only_report_takes_every_earlier_stage_from_the_cache(demo_inputs, run_copy):
    code = main(["run", str(demo_inputs / "pipeline.toml"), "--out", str(run_copy), "--quiet", "--only", "report"])
    assert code == 0
    by_stage = {s["stage"]: s for s in manifest_of(run_copy)["stages"]}
    assert by_stage["verify"]["cached"] and by_stage["benchmark"]["cached"]
    assert by_stage["report"]["status"] == "done"
    assert (run_copy / "report" / "report.md").is_file()


def test_log_json_prints_one_object_per_stage_event(demo_inputs, run_copy, capsys):
    code = main(["run", str(demo_inputs / "pipeline.toml"), "--out", str(run_copy), "--log-json"])
    assert code == 0
    lines = capsys.readouterr().err.strip().splitlines()
    events = [json.loads(line) for line in lines]  # nothing else on stderr
    finished = [e for e in events if e["status"] != "started"]
    assert {"export", "verify", "benchmark"} <= {e["stage"] for e in finished}
    assert all(set(e) >= {"stage", "status", "seconds", "cached"} for e in finished)
    assert all(e["cached"] for e in finished if e["status"] == "done")
    assert len([e for e in events if e["status"] == "started"]) == len(finished)


# ---- resume after SIGKILL ---------------------------------------------------------

@pytest.mark.heavy
def test_run_killed_during_export_resumes_to_completion(pipeline_copy, tmp_path):
    pipeline = quick_pipeline(pipeline_copy)
    out = tmp_path / "run"
    records = out / ".cache" / "export"
    process = subprocess.Popen([*CLI, "run", str(pipeline), "--out", str(out), "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: records.is_dir() and any(records.glob("*.json")), 600, "the first export", process)
        process.send_signal(signal.SIGKILL)  # the second export is running or about to
        assert process.wait(60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert not (out / "manifest.json").exists()
    finished = len(list(records.glob("*.json")))

    code = main(["run", str(pipeline), "--out", str(out), "--quiet"])
    assert code == 0
    manifest = manifest_of(out)
    assert manifest["status"] == "complete"
    assert_artifacts_match(out, manifest)
    exports = [s for s in manifest["stages"] if s["stage"] == "export"]
    assert exports[0]["name"] == "export tflite fp32" and exports[0]["cached"] is True
    assert sum(s["cached"] for s in exports) == finished  # only the missing exports ran again
    assert (out / ".lock").read_text() == "", "the lock is released after the run"


# ---- one writer per run directory -----------------------------------------------

HOLD_LOCK = """
import sys, time
from toolchain.runlock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_lock_names_the_holder_and_a_dead_holder_is_recovered(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"locked by another edge-toolchain run \(pid {holder.pid} on "
                                                 r".*, started \d{4}-\d\d-\d\dT"):
            RunLock(run_dir).check_free()
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            RunLock(run_dir).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    lock = RunLock(run_dir)
    lock.check_free()
    with lock:
        assert lock.recovered["pid"] == holder.pid  # the dead run's lock was taken over
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
    assert (run_dir / ".lock").read_text() == ""


def test_run_directory_that_cannot_be_created_is_bad_input(demo_inputs, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["run", str(demo_inputs / "pipeline.toml"), "--out", str(blocker / "run"), "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and f"cannot create the run directory {blocker / 'run'}" in err and "--out" in err
    assert blocker.read_text() == "not a folder"


def test_failed_stage_writes_a_manifest_that_matches_the_files(pipeline_copy, run_copy):
    quick_pipeline(pipeline_copy)
    text = pipeline_copy.read_text().replace("[verify]", "[verify.tolerances.fp32]\nmin_cosine = 1.0\n"
                                             "max_abs_error = 0.0\n\n[verify]")
    pipeline_copy.write_text(text)
    code = main(["run", str(pipeline_copy), "--out", str(run_copy), "--quiet"])
    assert code == 5  # a float-exact match is not possible across runtimes
    manifest = manifest_of(run_copy)
    assert manifest["status"] == "failed" and "verif" in manifest["error"]
    assert [a["name"] for a in manifest["artifacts"]] == ["digits.fp32.tflite", "digits.fp32.onnx"]
    assert all(a["cached"]["export"] for a in manifest["artifacts"])  # the earlier run's conversions
    assert_artifacts_match(run_copy, manifest)
    assert {s["stage"]: s["status"] for s in manifest["stages"]}["verify"] == "failed"
    assert "bench" not in manifest["files"]


def test_lock_sweeps_half_written_files_of_a_killed_run(tmp_path):
    (tmp_path / "artifacts").mkdir()
    stale = [tmp_path / "artifacts" / ".m.fp32.onnx.abc123.tmp", tmp_path / ".quantize-xyz" / "float.onnx"]
    stale[1].parent.mkdir()
    for path in stale:
        path.write_bytes(b"half")
    keep = tmp_path / "artifacts" / "m.fp32.onnx"
    keep.write_bytes(b"whole")
    with RunLock(tmp_path) as lock:
        lock.sweep_temp_files()
    assert not stale[0].exists() and not stale[1].parent.exists() and keep.exists()


@pytest.mark.heavy
def test_concurrent_run_on_the_same_directory_fails_with_the_lock_message(pipeline_copy, tmp_path):
    # a slow benchmark keeps the first run holding the lock
    quick_pipeline(pipeline_copy)
    text = pipeline_copy.read_text().replace("min_seconds = 0.1", "min_seconds = 60.0\nmax_seconds = 60.0")
    pipeline_copy.write_text(text)
    out = tmp_path / "run"
    first = subprocess.Popen([*CLI, "run", str(pipeline_copy), "--out", str(out), "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def first_holds_lock() -> bool:
            try:
                return json.loads((out / ".lock").read_text())["pid"] == first.pid
            except (OSError, ValueError, KeyError):
                return False

        wait_for(first_holds_lock, 600, "the first run to take the lock", first)
        second = subprocess.run([*CLI, "run", str(pipeline_copy), "--out", str(out), "--quiet"],
                                capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run must still be running"
        err = " ".join(second.stderr.split())
        assert second.returncode == 8, err
        assert f"is locked by another edge-toolchain run (pid {first.pid} on " in err and "started" in err
        assert "Traceback" not in err
    finally:
        first.kill()
        first.wait()

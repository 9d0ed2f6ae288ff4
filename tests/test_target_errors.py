"""Every way a target can fail says what is wrong and what to do (exit 6), with the stderr tail."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain.config import TargetProfile
from toolchain.errors import TargetError
from toolchain.targets import LocalTarget, SSHTarget
from toolchain.targets.local import RUNNER_PATH

pytestmark = pytest.mark.heavy

QUICK_REQUEST = {"mode": "benchmark", "threads": 1, "min_runs": 5, "min_seconds": 0, "warmup_runs": 1,
                 "warmup_seconds": 0}


@pytest.fixture(scope="module")
def onnx_file(demo_run) -> Path:
    return demo_run / "artifacts" / "digits.fp32.onnx"


def ssh_profile(server, **connection) -> TargetProfile:
    settings = {"kind": "ssh", "host": server.host, "port": server.port, "user": server.user,
                "identity": str(server.identity_file), "known_hosts": str(server.known_hosts_file)}
    return TargetProfile.model_validate({"name": "test-device", "connection": {**settings, **connection}})


def run_ssh(profile: TargetProfile, model: Path, sleeps: list | None = None, timeout: float = 60) -> dict:
    target = SSHTarget(profile, sleep=(sleeps.append if sleeps is not None else lambda _: None))
    return target.run({**QUICK_REQUEST, "model": str(model)}, timeout)


def test_wrong_client_key_is_refused_without_retries(ssh_server, onnx_file, tmp_path):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sleeps: list[float] = []
    with pytest.raises(TargetError, match=r"ssh login to root@127\.0\.0\.1:\d+ was refused.*Permission denied"):
        run_ssh(ssh_profile(ssh_server, identity=str(key)), onnx_file, sleeps)
    assert sleeps == []


def test_unknown_host_name(onnx_file, tmp_path):
    profile = TargetProfile.model_validate({"name": "typo", "connection": {
        "kind": "ssh", "host": "no-such-device.invalid", "known_hosts": str(tmp_path / "kh")}})
    with pytest.raises(TargetError, match=r"unknown host 'no-such-device.invalid'.*fix connection.host"):
        run_ssh(profile, onnx_file)


def test_bad_ssh_config_is_reported_not_retried(onnx_file, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host device\n    NoSuchOption yes\n")
    profile = TargetProfile.model_validate({"name": "badcfg", "connection": {
        "kind": "ssh", "host": "device", "ssh_config": str(config)}})
    sleeps: list[float] = []
    with pytest.raises(TargetError, match=r"ssh failed during upload .*exit 255.*Bad configuration option"):
        run_ssh(profile, onnx_file, sleeps)
    assert sleeps == []


def test_missing_ssh_client(ssh_server, onnx_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TargetError, match=r"the OpenSSH client `ssh` is not installed"):
        run_ssh(ssh_profile(ssh_server), onnx_file)


def test_unwritable_temp_folder_on_the_device(ssh_server, onnx_file, tmp_path):
    config = ssh_server.write_ssh_config(tmp_path / "ssh_config", SetEnv="TMPDIR=/nonexistent/folder")
    profile = TargetProfile.model_validate({"name": "fulldisk", "connection": {
        "kind": "ssh", "host": "device", "ssh_config": str(config)}})
    with pytest.raises(TargetError, match=r"could not create a temp folder.*stderr tail: .*nonexistent"):
        run_ssh(profile, onnx_file)


def test_changed_upload_is_not_run(ssh_server, onnx_file, device_python):
    target = SSHTarget(ssh_profile(ssh_server, python=str(device_python)))
    files = target.payload({**QUICK_REQUEST, "model": str(onnx_file)})
    folder = target.upload(files)
    try:
        assert sorted(p.name for p in Path(folder).iterdir()) == ["model.onnx", "request.json", "runner.py"]
        assert oct(Path(folder).stat().st_mode & 0o777) == "0o700"  # private to the login user
        with open(Path(folder) / "model.onnx", "ab") as model:
            model.write(b"tampered")
        with pytest.raises(TargetError, match=r"could not be verified on the device \(sha256 mismatch.*FAILED"):
            target.execute(folder, files, 60)
    finally:
        target._cleanup(folder)
    assert not Path(folder).exists()
    with pytest.raises(TargetError, match=r"the upload folder vanished before the run"):
        target.execute(folder, files, 60)


def test_device_python_not_executable(ssh_server, onnx_file):
    with pytest.raises(TargetError, match=r"the device's python '.*known_hosts' is not executable"):
        run_ssh(ssh_profile(ssh_server, python=str(ssh_server.known_hosts_file)), onnx_file)


def test_local_python_missing_and_local_timeout(onnx_file, tmp_path):
    missing = TargetProfile.model_validate({"name": "venv", "connection": {"python": str(tmp_path / "python")}})
    with pytest.raises(TargetError, match=r"python executable not usable: .*fix connection.python"):
        LocalTarget(missing).run({**QUICK_REQUEST, "model": str(onnx_file)}, 60)
    here = TargetProfile.model_validate({"name": "here"})
    endless = {**QUICK_REQUEST, "min_runs": 10**9, "min_seconds": 600, "max_seconds": 600}
    with pytest.raises(TargetError, match=r"did not finish within 2 s .*no result recorded"):
        LocalTarget(here).run({**endless, "model": str(onnx_file)}, 2)


def run_runner(request: dict) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, str(RUNNER_PATH), json.dumps(request)], capture_output=True,
                          text=True, timeout=120)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_runner_reports_corrupt_models_and_empty_inputs(onnx_file, tmp_path):
    import numpy as np

    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer" * 10)
    code, answer = run_runner({"model": str(broken)})
    assert code == 1 and answer["error"]["type"] == "load_failed"
    assert "cannot load" in answer["error"]["message"] and "broken.tflite" in answer["error"]["message"]
    np.savez(tmp_path / "empty.npz", image=np.zeros((0, 8, 8, 1), np.float32))
    code, answer = run_runner({**QUICK_REQUEST, "model": str(onnx_file), "inputs": str(tmp_path / "empty.npz")})
    assert code == 2 and "has 0 samples, the model's batch is 1" in answer["error"]["message"]


def load_runner_module():
    spec = importlib.util.spec_from_file_location("device_runner", RUNNER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throttling_is_flagged_with_reasons():
    runner = load_runner_module()

    def snapshot(raw: int | None, events: int | None) -> dict:
        flags = None
        if raw is not None:
            flags = {"raw": hex(raw), **{name: bool(raw & bit) for bit, name in runner.VCGENCMD_BITS}}
        return {"vcgencmd": flags, "thermal_throttle_events": events}

    assert runner.throttling_reasons(snapshot(None, None), snapshot(None, None)) == []
    assert runner.throttling_reasons(snapshot(0x50000, 3), snapshot(0x50000, 3)) == []  # old events only
    assert runner.throttling_reasons(snapshot(0x0, None), snapshot(0x4, None)) == [
        "throttled after runs (vcgencmd 0x4)"]
    assert runner.throttling_reasons(snapshot(0x0, None), snapshot(0x20000, None)) == [
        "freq_capped during the runs"]
    assert runner.throttling_reasons(snapshot(None, 10), snapshot(None, 12)) == [
        "2 thermal throttle events during the runs"]

"""Device leases: never two benchmarks on one board at once, across processes; a dead holder frees it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toolchain.config import TargetProfile
from toolchain.errors import TargetError
from toolchain.leases import device_key, device_lease

HOLD = """
import sys, time
from toolchain.config import TargetProfile
from toolchain.leases import device_lease
profile = TargetProfile.model_validate({"name": "pi", "connection": {"kind": "ssh", "host": "127.0.0.1",
                                                                      "port": int(sys.argv[1])}})
with device_lease(profile):
    print("held", flush=True)
    time.sleep(600)
"""


def ssh_profile(name: str, port: int) -> TargetProfile:
    return TargetProfile.model_validate({"name": name, "connection": {"kind": "ssh", "host": "127.0.0.1",
                                                                       "port": port}})


@pytest.fixture
def lease_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "leases"
    monkeypatch.setenv("EDGE_TOOLCHAIN_LEASE_DIR", str(folder))
    return folder


@pytest.fixture
def holder(lease_folder):
    """Another process holding the lease of board 127.0.0.1:2222."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", HOLD, "2222"], stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "held"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def test_a_leased_board_makes_others_wait_then_time_out_naming_the_holder(holder):
    told = []
    # two profiles (names differ) on the same board share its lease
    with pytest.raises(TargetError) as error, device_lease(ssh_profile("other-name", 2222), wait_seconds=0.3,
                                                           on_wait=told.append):
        pass
    assert f"stayed leased by pid {holder.pid}" in str(error.value)
    assert "target 'other-name'" in str(error.value)
    assert told and "waiting for the board ssh:127.0.0.1:2222" in told[0]
    with device_lease(ssh_profile("pi", 2223), wait_seconds=0.3):  # another board: free
        pass


def test_a_killed_holder_releases_its_lease(holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with device_lease(ssh_profile("pi", 2222), wait_seconds=10):
        pass


def test_unwritable_lease_folder_is_a_target_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("EDGE_TOOLCHAIN_LEASE_DIR", str(blocker))
    with pytest.raises(TargetError) as error, device_lease(ssh_profile("pi", 2222)):
        pass
    assert "cannot open its lease file" in str(error.value) and "EDGE_TOOLCHAIN_LEASE_DIR" in str(error.value)


def test_only_devices_are_leased():
    assert device_key(TargetProfile.model_validate({"name": "local"})) is None
    assert device_key(ssh_profile("pi", 22)) == device_key(ssh_profile("pi-again", 22)) == "ssh:127.0.0.1:22"


def windows(log: Path) -> list[tuple[float, float]]:
    """(start, end) of every runner process the device ran, from its python wrapper's log."""
    starts: dict[str, float] = {}
    spans = []
    for line in log.read_text().splitlines():
        what, when, pid = line.split()
        if what == "start":
            starts[pid] = float(when)
        else:
            spans.append((starts.pop(pid), float(when)))
    return sorted(spans)


@pytest.mark.heavy
def test_two_concurrent_runs_never_time_on_one_board_at_once(ssh_server, tiny_onnx_file, lease_folder, tmp_path):
    log = tmp_path / "device.log"
    wrapper = tmp_path / "device-python"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "start $(date +%s.%N) $$" >> {log}
        {sys.executable} "$@"
        code=$?
        echo "end $(date +%s.%N) $$" >> {log}
        exit $code
        """))
    wrapper.chmod(0o755)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    connection = {"kind": "ssh", "host": ssh_server.host, "port": ssh_server.port, "user": ssh_server.user,
                  "identity": str(ssh_server.identity_file), "known_hosts": str(ssh_server.known_hosts_file),
                  "python": str(wrapper)}
    for name in ("pi-run-1", "pi-run-2"):  # two teams' profiles for the same board
        (profiles / f"{name}.toml").write_text(
            "[connection]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in connection.items()))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runs = [subprocess.Popen(
        [sys.executable, "-m", "toolchain", "bench", str(tiny_onnx_file), "--target", name, "--threads", "1,2",
         "--targets-dir", str(profiles), "--json", "--min-runs", "5", "--min-seconds", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for name in ("pi-run-1", "pi-run-2")]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert len(json.loads(out)["results"]) == 2
    spans = windows(log)
    assert len(spans) == 4
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"two benchmarks overlapped on one board: {spans}"

"""Real benchmarks on targets: this machine, a device venv, and over SSH to a real sshd.

The SSH device is the `ssh_server` fixture (OpenSSH sshd on 127.0.0.1) running the
`device_python` venv (numpy<2, tflite-runtime 2.14, onnxruntime), as a Raspberry Pi would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from toolchain.cli import main
from toolchain.config import load_profile
from toolchain.errors import TargetError
from toolchain.targets import SSHTarget, open_target

pytestmark = pytest.mark.heavy

QUICK = ["--min-runs", "10", "--min-seconds", "0", "--max-seconds", "20"]
QUICK_REQUEST = {"mode": "benchmark", "threads": 1, "min_runs": 10, "min_seconds": 0, "warmup_runs": 1,
                 "warmup_seconds": 0}
# Long enough that a kill or a timeout lands mid-run.
ENDLESS_REQUEST = {**QUICK_REQUEST, "min_runs": 10**9, "min_seconds": 600, "max_seconds": 600}


@pytest.fixture(scope="module")
def artifacts(demo_run) -> dict[str, Path]:
    return {suffix: demo_run / "artifacts" / f"digits.fp32.{suffix}" for suffix in ("tflite", "onnx")}


def write_profile(folder: Path, name: str, connection: dict, runtime: str = "tflite_runtime") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'description = "test target {name}"', "[connection]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in connection.items()]
    lines += ["[runtime]", f'tflite_backend = "{runtime}"']
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def ssh_connection(server, **extra) -> dict:
    return {"kind": "ssh", "host": server.host, "port": server.port, "user": server.user,
            "identity": str(server.identity_file), "known_hosts": str(server.known_hosts_file),
            "connect_timeout_seconds": 10, **extra}


def device_temp_dirs() -> set[str]:
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    return {str(p) for p in tmp.glob("edge-toolchain.*")}


def bench_json(capsys, args: list[str]) -> tuple[int, dict | None, str]:
    code = main(["bench", *args, "--json", *QUICK])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def test_bench_locally_with_the_host_environment(artifacts, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, document, err = bench_json(capsys, [str(artifacts["tflite"]), str(artifacts["onnx"]), "--target",
                                              "local", "--threads", "1,2", "--out", str(out)])
    assert code == 0, err
    assert json.loads(out.read_text()) == document
    results = document["results"]
    assert [(r["artifact"], r["threads"]) for r in results] == [
        ("digits.fp32.tflite", 1), ("digits.fp32.tflite", 2), ("digits.fp32.onnx", 1), ("digits.fp32.onnx", 2)]
    for r in results:
        env = r["environment"]
        assert r["valid"] is True and r["latency_ms"]["count"] >= 10
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
        assert env["python_executable"] == sys.executable and env["numpy"].startswith("2.")
        assert env["backend"] == ("ai_edge_litert" if r["artifact"].endswith("tflite") else "onnxruntime")
        assert env["threads"] == r["threads"] and env["cpu_count"] >= 1 and env["load_average"] is not None
        assert r["memory"]["peak_rss_after_runs_kib"] >= r["memory"]["peak_rss_after_init_kib"] > 0
    # the human view: one row per run in a comparison table
    assert main(["bench", str(artifacts["onnx"]), *QUICK]) == 0
    table = capsys.readouterr().out
    assert "digits.fp32.onnx" in table and "p90 ms" in table and "vs best" in table


def test_bench_with_given_inputs(artifacts, demo_inputs, tmp_path, capsys):
    import numpy as np

    images = np.load(demo_inputs / "digits_eval.npz")["image"][:12]
    np.savez(tmp_path / "inputs.npz", image=images)
    code, document, err = bench_json(capsys, [str(artifacts["tflite"]), "--inputs", str(tmp_path / "inputs.npz")])
    assert code == 0, err
    assert document["results"][0]["inputs"] == "file"
    np.savez(tmp_path / "wrong.npz", pixels=images)
    code, _, err = bench_json(capsys, [str(artifacts["tflite"]), "--inputs", str(tmp_path / "wrong.npz")])
    assert code == 6 and "has no array 'image' (it has: pixels)" in err


def test_bench_in_device_venv_through_local_target(artifacts, device_python, tmp_path, capsys):
    folder = tmp_path / "profiles"
    write_profile(folder, "venv-pi", {"kind": "local", "python": str(device_python)})
    code, document, err = bench_json(capsys, [str(artifacts["tflite"]), str(artifacts["onnx"]),
                                              "--target", "venv-pi", "--targets-dir", str(folder)])
    assert code == 0, err
    tflite, onnx = document["results"]
    assert tflite["environment"]["backend"] == "tflite_runtime"
    assert tflite["environment"]["backend_version"] == "2.14.0"
    assert onnx["environment"]["backend"] == "onnxruntime"
    for r in (tflite, onnx):
        assert r["environment"]["numpy"].startswith("1.")
        assert r["environment"]["python_executable"] == str(device_python)


def test_bench_over_ssh_in_parallel_with_local(artifacts, demo_inputs, device_python, ssh_server, tmp_path, capsys):
    folder = tmp_path / "profiles"
    write_profile(folder, "ssh-pi", ssh_connection(ssh_server, python=str(device_python)))
    config = ssh_server.write_ssh_config(tmp_path / "ssh_config", alias="pi-alias")
    write_profile(folder, "alias-pi", {"kind": "ssh", "host": "pi-alias", "ssh_config": str(config),
                                       "python": str(device_python)})
    before = device_temp_dirs()
    code, document, err = bench_json(capsys, [str(artifacts["tflite"]), str(artifacts["onnx"]),
                                              "--target", "ssh-pi", "--target", "alias-pi", "--target", "local",
                                              "--targets-dir", str(folder),
                                              "--inputs", str(demo_inputs / "digits_eval.npz")])
    assert code == 0, err
    runs = {(r["target"], r["artifact"]): r for r in document["results"]}
    assert len(runs) == 6
    for target in ("ssh-pi", "alias-pi"):
        tflite = runs[(target, "digits.fp32.tflite")]
        assert tflite["connection"] == "ssh" and tflite["inputs"] == "file"
        assert tflite["environment"]["backend"] == "tflite_runtime"
        assert tflite["environment"]["numpy"].startswith("1.")
        assert runs[(target, "digits.fp32.onnx")]["environment"]["backend"] == "onnxruntime"
    assert runs[("local", "digits.fp32.tflite")]["environment"]["backend"] == "ai_edge_litert"
    assert device_temp_dirs() - before == set()  # every upload folder was removed


def test_first_connection_needs_accept_new_host_key(artifacts, device_python, ssh_server, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    strict = load_profile(write_profile(tmp_path, "strict", ssh_connection(
        ssh_server, known_hosts=str(empty), python=str(device_python))))
    with pytest.raises(TargetError, match="refused the host key of .*: it is not in known_hosts"):
        open_target(strict).run({**QUICK_REQUEST, "model": str(artifacts["onnx"])}, 60)
    assert empty.read_text() == ""
    trusting = load_profile(write_profile(tmp_path, "trusting", ssh_connection(
        ssh_server, known_hosts=str(empty), python=str(device_python), accept_new_host_key=True)))
    answer = open_target(trusting).run({**QUICK_REQUEST, "model": str(artifacts["onnx"])}, 60)
    assert answer["ok"] and ssh_server.host_key_line.split()[-1] in empty.read_text()  # key learned


def test_changed_host_key_is_refused_without_retries(artifacts, ssh_server, tmp_path, capsys):
    wrong = ssh_server.write_known_hosts(tmp_path / "known_hosts", other_key=True)
    path = write_profile(tmp_path / "profiles", "reimaged", ssh_connection(
        ssh_server, known_hosts=str(wrong), accept_new_host_key=True))
    sleeps: list[float] = []
    with pytest.raises(TargetError, match="its host key has changed") as info:
        SSHTarget(load_profile(path), sleep=sleeps.append).run({**QUICK_REQUEST, "model": str(artifacts["onnx"])}, 60)
    assert "ssh-keygen -R" in str(info.value) and "Host key verification failed" in str(info.value)
    assert sleeps == []  # not a connection failure: no retry
    code, _, err = bench_json(capsys, [str(artifacts["onnx"]), "--target", "reimaged",
                                       "--targets-dir", str(tmp_path / "profiles")])
    assert code == 6 and "its host key has changed" in err


def test_unreachable_host_fails_within_the_connect_timeout(artifacts, tmp_path, capsys):
    silent = socket.socket()  # accepts TCP connections but never speaks SSH
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    folder = tmp_path / "profiles"
    write_profile(folder, "dead-pi", {"kind": "ssh", "host": "127.0.0.1", "port": port,
                                      "connect_timeout_seconds": 1, "retries": 0,
                                      "known_hosts": str(tmp_path / "kh")})
    started = time.monotonic()
    try:
        code, _, err = bench_json(capsys, [str(artifacts["onnx"]), "--target", "dead-pi", "--targets-dir", str(folder)])
    finally:
        silent.close()
    elapsed = time.monotonic() - started
    assert code == 6
    assert "cannot connect to 127.0.0.1" in err and "connect timeout 1 s" in err and "timed out" in err
    assert elapsed < 30  # bounded by ConnectTimeout, instead of hanging on the silent port


def test_connection_refused_is_retried_with_backoff(artifacts, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens here
    profile = load_profile(write_profile(tmp_path, "off-pi", {"kind": "ssh", "host": "127.0.0.1", "port": port,
                                                              "retries": 2, "known_hosts": str(tmp_path / "kh")}))
    sleeps: list[float] = []
    with pytest.raises(TargetError, match=r"3 attempt\(s\).*Connection refused"):
        SSHTarget(profile, sleep=sleeps.append).run({**QUICK_REQUEST, "model": str(artifacts["onnx"])}, 60)
    assert sleeps == [1.0, 2.0]


def test_device_python_without_the_backend_names_the_package(artifacts, ssh_server, tmp_path, capsys):
    plain = tmp_path / "plain-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(plain)], check=True)
    folder = tmp_path / "profiles"
    write_profile(folder, "bare-pi", ssh_connection(ssh_server, python=str(plain / "bin" / "python")))
    write_profile(folder, "bare-local", {"kind": "local", "python": str(plain / "bin" / "python")})
    for target in ("bare-pi", "bare-local"):
        code, _, err = bench_json(capsys, [str(artifacts["tflite"]), "--target", target, "--targets-dir", str(folder)])
        assert code == 6
        assert "pip install 'tflite-runtime'" in err and "[backend_missing]" in err and target in err
    write_profile(folder, "no-python", ssh_connection(ssh_server, python="/opt/absent/bin/python"))
    code, _, err = bench_json(capsys, [str(artifacts["onnx"]), "--target", "no-python", "--targets-dir", str(folder)])
    assert code == 6 and "no python at '/opt/absent/bin/python'" in err and "No such file" in err


def _descendants_named(root: int, word: str) -> list[int]:
    """Processes under `root` whose command line contains `word`."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                if word in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(child)
            except OSError:
                pass
    return found


def _kill_runner_under(root: int, stop: threading.Event) -> None:
    while not stop.is_set():
        pids = [p for p in _descendants_named(root, "runner.py")
                if "python" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace").split("\0")[0]]
        if pids:
            time.sleep(1.0)  # let it get into the timed runs
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_benchmark_killed_mid_run_records_nothing(artifacts, device_python, ssh_server, tmp_path, capsys, kind):
    folder = tmp_path / "profiles"
    if kind == "ssh":
        write_profile(folder, "victim", ssh_connection(ssh_server, python=str(device_python)))
        root = ssh_server.process.pid
    else:
        write_profile(folder, "victim", {"kind": "local", "python": str(device_python)})
        root = os.getpid()
    stop = threading.Event()
    killer = threading.Thread(target=_kill_runner_under, args=(root, stop), daemon=True)
    killer.start()
    out = tmp_path / "bench.json"
    before = device_temp_dirs()
    try:
        code = main(["bench", str(artifacts["tflite"]), "--target", "victim", "--targets-dir", str(folder),
                     "--min-runs", str(10**9), "--min-seconds", "600", "--max-seconds", "600", "--out", str(out)])
    finally:
        stop.set()
        killer.join()
    err = capsys.readouterr().err
    assert code == 6 and "killed by signal SIGKILL" in err and "no result recorded" in err
    assert not out.exists()
    assert device_temp_dirs() - before == set()


def test_benchmark_timeout_on_the_device(artifacts, device_python, ssh_server, tmp_path):
    profile = load_profile(write_profile(tmp_path, "slow-pi", ssh_connection(ssh_server, python=str(device_python))))
    before = device_temp_dirs()
    with pytest.raises(TargetError, match=r"did not finish within 3 s on the device.*no result recorded"):
        open_target(profile).run({**ENDLESS_REQUEST, "model": str(artifacts["onnx"])}, 3)
    assert device_temp_dirs() - before == set()


def test_pipeline_bench_stage_on_an_ssh_target(demo_inputs, device_python, ssh_server, tmp_path, capsys):
    write_profile(tmp_path / "profiles", "ssh-pi", ssh_connection(ssh_server, python=str(device_python)))
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(f"""
[model]
path = "{demo_inputs / 'digits_cnn.keras'}"
name = "digits"
[export]
formats = ["tflite"]
[verify]
enabled = false
[bench]
targets = ["ssh-pi"]
targets_dir = "profiles"
min_runs = 10
min_seconds = 0.0
warmup_seconds = 0.0
[report]
enabled = false
""")
    code = main(["run", str(pipeline), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "bench.json").read_text())["results"]
    assert [(r["artifact"], r["target"], r["connection"]) for r in results] == [
        ("digits.fp32.tflite", "ssh-pi", "ssh")]
    assert results[0]["environment"]["backend"] == "tflite_runtime"
    assert results[0]["settings"]["min_runs"] == 10

"""Board leases held by a real Ray cluster on 127.0.0.1: exclusive across drivers that share no folder.

Two driver processes connect to the cluster (one `bench --ray-address`, one pipeline run with
`--executor ray`) and benchmark the same real sshd board; a third driver holds the board's
lease and is killed. Both drivers show that they wait (naming the holder), take the board over
once the dead holder's lease expires (its TTL), and never time on the board at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# keep every Ray address on loopback (see tests/test_ray_executor.py); set before ray loads
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")

from toolchain.errors import TargetError  # noqa: E402
from toolchain.leases import LEASE_NAMESPACE, ClusterLeases  # noqa: E402
from toolchain.ray_executor import wait_for_nodes  # noqa: E402

pytestmark = pytest.mark.heavy
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "object_store_memory": 100 * 1024 * 1024})
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        wait_for_nodes(1, timeout=120)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def connected() -> None:
    """The test process is connected by the fixture."""


BOARD = "ssh:127.0.0.1:2222"


def test_a_lease_that_expires_during_a_benchmark_fails_it_naming_who_took_it(cluster):
    stalled = ClusterLeases(connected, ttl_seconds=0.5, renew_seconds=600)  # renewals never come in time
    other = ClusterLeases(connected, ttl_seconds=30)
    first = stalled.hold("pi", BOARD, 5, None)
    first.__enter__()
    time.sleep(1.0)
    second = other.hold("pi-2", BOARD, 5, None)
    second.__enter__()  # the expired lease is granted to the other run
    with pytest.raises(TargetError) as error:
        first.__exit__(None, None, None)
    message = str(error.value)
    assert f"target 'pi': the lease on board {BOARD} expired during the benchmark" in message
    assert f"pid {os.getpid()} on " in message and "lease_ttl_seconds" in message
    second.__exit__(None, None, None)


def test_a_held_board_makes_another_run_wait_then_time_out_naming_the_holder(cluster):
    holding = ClusterLeases(connected, ttl_seconds=30)
    waiting = ClusterLeases(connected, ttl_seconds=30, poll_seconds=0.05)
    told: list[str] = []
    with holding.hold("pi", BOARD, 5, None):
        with pytest.raises(TargetError) as error, waiting.hold("pi-2", BOARD, 0.3, told.append):
            pass
        with waiting.hold("pi-2", "ssh:127.0.0.1:2223", 0.3, None):  # another board: free at once
            pass
    assert f"target 'pi-2': the board {BOARD} stayed leased by pid {os.getpid()}" in str(error.value)
    assert told and f"waiting for the board {BOARD} (held by pid {os.getpid()}" in told[0]
    with waiting.hold("pi-2", BOARD, 0.3, None):  # released at the end of the block
        pass


def test_a_lease_actor_that_is_gone_is_a_target_error(cluster):
    leases = ClusterLeases(connected, call_timeout_seconds=10)
    actor = leases.actor("ssh:127.0.0.1:2224")
    ray.kill(actor, no_restart=True)
    with pytest.raises(TargetError) as error:
        leases.call("ssh:127.0.0.1:2224", actor.acquire, "someone", 1.0)
    assert error.value.exit_code == 6
    assert "board ssh:127.0.0.1:2224: the Ray cluster did not answer its lease request" in str(error.value)


HOLD = """
import sys, time
from toolchain.config import TargetProfile
from toolchain.leases import ClusterLeases, device_lease, leases_in_use
from toolchain.ray_executor import RayExecutor
address, port, ttl = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
profile = TargetProfile.model_validate({"name": "holder", "connection": {"kind": "ssh", "host": "127.0.0.1",
                                                                          "port": port}})
with leases_in_use(ClusterLeases(RayExecutor(address).connect, ttl_seconds=ttl)), device_lease(profile):
    print("held", flush=True)
    time.sleep(600)
"""

PIPELINE = """
[model]
path = "{model}"
[export]
formats = ["onnx"]
[export.onnx]
recipes = ["fp32"]
[verify]
enabled = false
[bench]
targets = ["pi-run-2"]
targets_dir = "{profiles}"
threads = [1]
min_runs = 5
min_seconds = 0.5
[report]
enabled = false
[execution]
backend = "ray"
ray_address = "{address}"
"""


def device_wrapper(tmp_path: Path, log: Path) -> Path:
    """The board's python: logs when each runner process starts and ends."""
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
    return wrapper


def windows(log: Path) -> list[tuple[float, float]]:
    starts: dict[str, float] = {}
    spans = []
    for line in log.read_text().splitlines():
        what, when, pid = line.split()
        if what == "start":
            starts[pid] = float(when)
        else:
            spans.append((starts.pop(pid), float(when)))
    return sorted(spans)


def wait_for_text(path: Path, pattern: str, process: subprocess.Popen, timeout: float = 240) -> str:
    """The first match of `pattern` in a driver's stderr (lines unwrapped), while the driver runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = " ".join(path.read_text().split()) if path.exists() else ""
        found = re.search(pattern, text)
        if found:
            return found.group(0)
        assert process.poll() is None, f"the driver ended early: {text}"
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in {path} within {timeout:g} s")


@contextlib.contextmanager
def started(*commands: list[str], stderr: list[Path]):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "400"}
    processes = []
    try:
        for command, err in zip(commands, stderr, strict=True):
            processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err.open("w"), text=True,
                                              env=env))
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)


def test_two_drivers_never_time_on_one_board_and_take_over_a_dead_holders_lease(
        cluster, ssh_server, tiny_onnx_file, small_cnn_file, tmp_path):
    log = tmp_path / "device.log"
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    connection = {"kind": "ssh", "host": ssh_server.host, "port": ssh_server.port, "user": ssh_server.user,
                  "identity": str(ssh_server.identity_file), "known_hosts": str(ssh_server.known_hosts_file),
                  "python": str(device_wrapper(tmp_path, log))}
    for name in ("pi-run-1", "pi-run-2"):  # two teams' profiles for the same board
        (profiles / f"{name}.toml").write_text(
            "[connection]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in connection.items()))
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(PIPELINE.format(model=small_cnn_file, profiles=profiles, address=cluster.address))
    bench = [sys.executable, "-m", "toolchain", "bench", str(tiny_onnx_file), "--target", "pi-run-1",
             "--threads", "1,2", "--targets-dir", str(profiles), "--json", "--min-runs", "5",
             "--min-seconds", "0.5", "--ray-address", cluster.address]
    run = [sys.executable, "-m", "toolchain", "run", str(pipeline), "--out", str(tmp_path / "run")]
    holder_command = [sys.executable, "-c", HOLD, cluster.address, str(ssh_server.port), "2"]
    errs = [tmp_path / "holder.err", tmp_path / "bench.err", tmp_path / "run.err"]

    with started(holder_command, stderr=errs[:1]) as (holder,):
        assert holder.stdout.readline().strip() == "held"
        with started(bench, run, stderr=errs[1:]) as drivers:
            board = f"ssh:{ssh_server.host}:{ssh_server.port}"
            for err, target, driver in zip(errs[1:], ("pi-run-1", "pi-run-2"), drivers, strict=True):
                shown = wait_for_text(err, rf"target '{target}': waiting for the board {board} \(held by "
                                           r"pid \d+", driver)
                assert shown.endswith(f"pid {holder.pid}"), shown
            killed_at = time.time()
            holder.send_signal(signal.SIGKILL)  # dies holding the lease: it expires after its TTL (2 s)
            outputs = [driver.communicate(timeout=600) for driver in drivers]

    for driver, err in zip(drivers, errs[1:], strict=True):
        assert driver.returncode == 0, err.read_text()
    assert len(json.loads(outputs[0][0])["results"]) == 2
    bench_json = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert [r["target"] for r in bench_json["results"]] == ["pi-run-2"]
    spans = windows(log)
    assert len(spans) == 3
    assert spans[0][0] > killed_at, "a benchmark ran while the dead holder's lease was live"
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"two drivers' benchmarks overlapped on one board: {spans}"
    leases = ray.util.list_named_actors(all_namespaces=True)
    assert {"name": f"board {board}", "namespace": LEASE_NAMESPACE} in leases


def test_a_run_with_cluster_leases_and_in_process_units_waits_on_the_clusters_lease(cluster):
    import io

    from rich.console import Console

    from toolchain.config import ExecutionSection, TargetProfile
    from toolchain.executor import InProcessExecutor
    from toolchain.leases import device_lease
    from toolchain.pipeline import StageLog, _board_leases

    execution = ExecutionSection(leases="cluster", ray_address=cluster.address)
    config = type("Config", (), {"execution": execution})()
    screen = io.StringIO()
    log = StageLog(Console(file=screen, width=300))
    board = TargetProfile.model_validate({"name": "pi", "connection": {"kind": "ssh", "host": "127.0.0.1",
                                                                        "port": 2225}})
    with ClusterLeases(connected).hold("other-run", "ssh:127.0.0.1:2225", 5, None):
        with _board_leases(config, InProcessExecutor(), log), pytest.raises(TargetError) as error, \
                device_lease(board, wait_seconds=0.5):
            pass
    assert f"the board ssh:127.0.0.1:2225 stayed leased by pid {os.getpid()}" in str(error.value)
    assert "waiting for the board ssh:127.0.0.1:2225 (held by pid" in screen.getvalue()
    with device_lease(board, wait_seconds=0.5):  # outside the run: flock again, a free board
        pass


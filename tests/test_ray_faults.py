"""The Ray executor when the cluster goes away or never answers: exit 6, bounded in time, resumable.

Each test starts its own real cluster on 127.0.0.1 (ray.cluster_utils.Cluster) and runs the
pipeline in a driver subprocess, as a user would; the cluster is shut down under the running
driver. Addresses that do not answer are a closed port and a socket that accepts but never speaks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# keep every Ray address on loopback (see tests/test_ray_executor.py); set before ray loads
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
pytest.importorskip("ray")

from toolchain.cli import main  # noqa: E402

pytestmark = pytest.mark.heavy
ROOT = Path(__file__).resolve().parents[1]

PIPELINE = """
[model]
path = "{model}"
[export]
formats = {formats}
[export.tflite]
recipes = ["fp32", "dynamic"]
[export.onnx]
recipes = ["fp32", "dynamic"]
[verify]
enabled = false
[bench]
enabled = false
[report]
enabled = false
[execution]
connect_timeout_seconds = {timeout}
"""


def write_pipeline(tmp_path: Path, model: Path, formats: list[str], timeout: float = 60) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(PIPELINE.format(model=model, formats=json.dumps(formats), timeout=timeout))
    return path


class Clusters:
    """Real one-node clusters on 127.0.0.1 (one CPU: units run one after the other); all shut down at the end."""

    def __init__(self) -> None:
        self.started: list = []

    def start(self):
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "object_store_memory": 100 * 1024 * 1024})
        self.started.append(cluster)
        return cluster


@pytest.fixture
def clusters() -> Iterator[Clusters]:
    made = Clusters()
    try:
        yield made
    finally:
        for cluster in made.started:
            cluster.shutdown()


def driver(pipeline: Path, run_dir: Path, address: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "toolchain", "run", str(pipeline), "--out", str(run_dir), "--executor", "ray",
               "--ray-address", address, "--log-json", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def events(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def leftovers(run_dir: Path) -> list[Path]:
    """Temp or half-written files: hidden names other than the run lock and the cache."""
    return [p for p in run_dir.rglob("*") if (p.name.startswith(".") or ".tmp" in p.name)
            and p.name not in (".lock", ".cache") and ".cache" not in p.relative_to(run_dir).parts]


def test_a_lost_cluster_is_exit_6_and_a_rerun_on_a_new_cluster_resumes_from_the_cache(
        clusters, small_cnn_file, tmp_path):
    pipeline = write_pipeline(tmp_path, small_cnn_file, ["tflite", "onnx"])
    run_dir = tmp_path / "run"
    first = clusters.start()
    address = first.address
    process = driver(pipeline, run_dir, address)
    lines = []
    for line in process.stderr:  # until the first unit is done on the cluster
        lines.append(line)
        if line.startswith("{") and json.loads(line).get("status") == "done" and "unit" in json.loads(line):
            break
    first.shutdown()  # the whole cluster goes away under the running driver
    _, rest = process.communicate(timeout=300)
    lines += rest.splitlines()

    assert process.returncode == 6, "".join(lines[-20:])
    last = [line for line in lines if line.strip()][-1]
    assert last.startswith(f"error: lost the Ray cluster at {address} (")
    assert last.rstrip().endswith("units finished so far are cached: run again to resume")
    done_before = {e["unit"] for e in events(lines) if e.get("status") == "done" and "unit" in e}
    assert 1 <= len(done_before) < 4
    assert not leftovers(run_dir), "temp or partial files left behind"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "lost the Ray cluster" in manifest["error"]

    second = clusters.start()
    again = driver(pipeline, run_dir, second.address)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    cached = {f"{a['format']} {a['recipe']}" for a in manifest["artifacts"] if a["cached"]["export"]}
    assert len(manifest["artifacts"]) == 4
    assert cached == done_before, "units done before the cluster was lost were not served from the cache"
    remote = {e["unit"] for e in events(err.splitlines()) if e.get("status") == "done" and "unit" in e}
    assert remote == {f"{a['format']} {a['recipe']}" for a in manifest["artifacts"]} - done_before
    assert not leftovers(run_dir)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_ray_client_address_on_a_closed_port_is_exit_6_within_the_timeout(small_cnn_file, tmp_path, capsys):
    pipeline = write_pipeline(tmp_path, small_cnn_file, ["onnx"], timeout=2)
    port = closed_port()
    code = main(["run", str(pipeline), "--out", str(tmp_path / "run"), "--executor", "ray",
                 "--ray-address", f"ray://127.0.0.1:{port}"])
    assert code == 6
    assert f"cannot connect to the Ray cluster at ray://127.0.0.1:{port} within 2 s" in capsys.readouterr().err
    assert not list((tmp_path / "run" / "artifacts").glob("*"))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a firewall that black-holes, a wrong service)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("address, environment", [
    ("ray://127.0.0.1:{port}", {}),
    ("auto", {"RAY_ADDRESS": "127.0.0.1:{port}"}),  # auto: the address Ray finds, here one that never answers
])
def test_an_address_that_never_answers_is_exit_6_after_the_connect_timeout(
        small_cnn_file, tmp_path, silent_port, address, environment):
    pipeline = write_pipeline(tmp_path, small_cnn_file, ["onnx"], timeout=3)
    address = address.format(port=silent_port)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **{k: v.format(port=silent_port) for k, v in environment.items()}}
    process = subprocess.run(
        [sys.executable, "-m", "toolchain", "run", str(pipeline), "--out", str(tmp_path / "run"),
         "--executor", "ray", "--ray-address", address], capture_output=True, text=True, env=env, timeout=120)
    assert process.returncode == 6, process.stderr[-3000:]
    last = process.stderr.strip().splitlines()[-1]
    assert last == (f"error: cannot connect to the Ray cluster at {address}: no answer within 3 s; check the "
                    "address, that the head node is running (ray status) and [execution] "
                    "connect_timeout_seconds")
    assert not list((tmp_path / "run" / "artifacts").glob("*"))

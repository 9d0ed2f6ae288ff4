"""The Ray executor on a real multi-node Ray cluster on 127.0.0.1 (ray.cluster_utils.Cluster).

Two nodes (one CPU each) on loopback; a pipeline's export and verify units run there as Ray
tasks and must produce the same bytes as an in-process run, sharing its cache. A unit whose
worker process dies is retried; one that keeps dying, or fails on its own, fails the run
with the right error; a cluster that is not there is exit 6 within the connect timeout.
Optimize candidates and sweep points run there too, with the same files and figures as in process.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Ray resolves 127.0.0.1 to the machine's outward address unless its cluster mode is off
# (ray_constants.ENABLE_RAY_CLUSTER): keep all test traffic on loopback. Set before ray loads.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")

from toolchain.cli import main  # noqa: E402
from toolchain.config import parse_config  # noqa: E402
from toolchain.errors import DataError, MissingDependencyError, StageError, TargetError  # noqa: E402
from toolchain.pipeline import run_pipeline  # noqa: E402
from toolchain.ray_executor import RayExecutor, import_ray, wait_for_nodes  # noqa: E402
from toolchain.steps.base import RemoteUnit, Unit  # noqa: E402

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "object_store_memory": 100 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "resources": {"node-head": 1}})
    cluster.add_node(**node, resources={"node-b": 1})
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    # the unit functions below travel by value: workers cannot import this test module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    wait_for_nodes(2, timeout=120)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


PIPELINE = """
[model]
path = "{model}"
[export]
formats = ["tflite", "onnx"]
[export.tflite]
recipes = ["fp32", "dynamic"]
[export.onnx]
recipes = ["fp32", "dynamic"]
[verify]
enabled = true
[bench]
enabled = false
[report]
enabled = false
"""


def pipeline(model: Path, **execution) -> tuple:
    import tomllib

    text = PIPELINE.format(model=model)
    if execution:
        text += "[execution]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in execution.items())
    raw = tomllib.loads(text)
    return parse_config(raw), raw


def artifacts(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "artifacts").iterdir())}


def test_pipeline_on_two_nodes_matches_in_process_byte_for_byte(cluster, small_cnn_file, tmp_path, capsys):
    local_config, local_raw = pipeline(small_cnn_file)
    local = run_pipeline(local_config, local_raw, tmp_path / "local", quiet=True)
    config, raw = pipeline(small_cnn_file, backend="ray", ray_address=cluster.address)
    capsys.readouterr()
    remote = run_pipeline(config, raw, tmp_path / "ray", log_json=True)
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]

    assert artifacts(tmp_path / "ray") == artifacts(tmp_path / "local")
    assert len(artifacts(tmp_path / "ray")) == 4
    fields = ("name", "sha256", "bytes", "format", "recipe")
    assert [{k: a[k] for k in fields} for a in remote.manifest["artifacts"]] == \
        [{k: a[k] for k in fields} for a in local.manifest["artifacts"]]
    assert {a["name"]: a["verify"]["verdict"] for a in remote.manifest["artifacts"]} == \
        {a["name"]: a["verify"]["verdict"] for a in local.manifest["artifacts"]}
    units = [e for e in events if e.get("status") == "done" and "unit" in e]
    assert sorted(e["stage"] for e in units) == ["export"] * 4 + ["verify"] * 4
    # every remote unit is queued, then running on a node, then done on that node, in that order
    for unit in units:
        states = [(e["status"], e.get("node")) for e in events
                  if (e.get("stage"), e.get("unit")) == (unit["stage"], unit["unit"])]
        assert states == [("queued", None), ("running", unit["node"]), ("done", unit["node"])], states
    assert all(e["node"].startswith("127.0.0.1/") for e in units)
    assert len({e["node"] for e in units}) == 2, "units ran on one node only"
    leftovers = [p for p in (tmp_path / "ray").rglob(".*")
                 if p.name not in (".lock", ".cache") and ".cache" not in p.parts]
    assert not leftovers, "temp files left behind"

    # the same run in process is served from the distributed run's cache
    again = run_pipeline(local_config, local_raw, tmp_path / "ray", quiet=True, force=False)
    assert all(a["cached"]["export"] for a in again.manifest["artifacts"])


@dataclass
class Item:
    unit: Unit
    index: int = 0
    lane: str | None = None


@dataclass
class Work:
    """A stage stand-in whose units run only remotely (the executor under test is real)."""

    remote_unit: RemoteUnit

    def __call__(self, item: Item):
        raise AssertionError("a remote unit ran in the driver")

    def remote(self, item: Item) -> RemoteUnit:
        return self.remote_unit


def die_once(spec: dict, inputs: dict) -> tuple:
    """Kills its own worker process on the first attempt (mid-unit), then succeeds."""
    marker = Path(spec["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return {"attempt": 2}, {"out": inputs["model"][::-1]}


def die_always(spec: dict, inputs: dict) -> tuple:
    os._exit(1)


def refuse(spec: dict, inputs: dict) -> tuple:
    raise DataError("calibration data is empty: give [data.calibration] a source")


def run_units(executor: RayExecutor, remote: RemoteUnit) -> list:
    done = []
    executor.run([Item(Unit("u"))], Work(remote), lambda item, result: done.append(result))
    return done


def test_a_worker_killed_mid_unit_is_retried_and_the_output_written_once(cluster, tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(b"0123456789" * 1000)
    out = tmp_path / "out" / "artifact.bin"
    remote = RemoteUnit(die_once, {"marker": str(tmp_path / "attempt-1")}, inputs={"model": source},
                        outputs={"out": out})
    done = run_units(RayExecutor(cluster.address, max_retries=2), remote)
    assert done == [{"attempt": 2}]
    assert (tmp_path / "attempt-1").exists()  # the first attempt did die
    assert out.read_bytes() == source.read_bytes()[::-1]
    assert sorted(p.name for p in out.parent.iterdir()) == ["artifact.bin"]  # no partial or temp file


def test_a_worker_that_keeps_dying_fails_the_unit_with_no_output(cluster, tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(b"x")
    out = tmp_path / "out" / "artifact.bin"
    with pytest.raises(StageError) as error:
        run_units(RayExecutor(cluster.address, max_retries=0),
                  RemoteUnit(die_always, {}, inputs={"model": source}, outputs={"out": out}))
    assert "its worker died 1 time(s)" in str(error.value) and "memory_mb_per_unit" in str(error.value)
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_a_units_own_error_keeps_its_type_and_is_not_retried(cluster, tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(b"x")
    with pytest.raises(DataError) as error:
        run_units(RayExecutor(cluster.address, max_retries=3), RemoteUnit(refuse, {}, inputs={"model": source}))
    assert "calibration data is empty" in str(error.value)


def test_no_cluster_at_the_address_is_exit_6_within_the_timeout(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    executor = RayExecutor(f"127.0.0.1:{port}", connect_timeout_seconds=2)
    with pytest.raises(TargetError) as error:
        executor._check_reachable()
    assert error.value.exit_code == 6
    assert f"cannot connect to the Ray cluster at 127.0.0.1:{port} within 2 s" in str(error.value)


def test_without_ray_installed_the_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError) as error:
        import_ray()
    assert "pip install 'edge-toolchain[ray]'" in str(error.value)


@pytest.mark.parametrize("args, message", [
    (["--executor", "dask"], "--executor must be inprocess or ray, got 'dask'"),
    (["--ray-address", "auto"], "--ray-address needs --executor ray"),
    (["--executor", "ray", "--ray-address", "host;reboot"], "--ray-address 'host;reboot' is not an address"),
])
def test_bad_executor_options_are_exit_2(pipeline_copy, tmp_path, capsys, args, message):
    code = main(["run", str(pipeline_copy), "--out", str(tmp_path / "run"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---- optimize candidates and sweep points as units (issue 17) ------------------------------

def test_optimize_candidates_on_two_nodes_match_in_process_and_share_its_cache(cluster, small_cnn_file, tmp_path):
    """Each candidate's build and verify is a unit on the cluster; benchmarks stay in the driver."""
    from toolchain.config import find_profile
    from toolchain.optimize.candidates import Candidate, candidates_for
    from toolchain.optimize.search import Budget, SearchSettings, load_inputs, search
    from toolchain.remote_units import Placement

    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, pixels=rng.uniform(0, 1, (30, 16, 16, 3)).astype(np.float32), y=rng.integers(0, 5, 30))
    inputs = load_inputs(small_cnn_file, data)
    # a knob the quantizer refuses: the build fails on the worker as it does here
    candidates = [*candidates_for(inputs.model, ["tflite", "onnx"], ["tflite-int8", "onnx-int8"]),
                  Candidate("onnx-int8-bad-knob", "onnx", "int8", knobs={"no_such_knob": 1})]
    settings = SearchSettings(explain=False, bench={"min_seconds": 0.05})
    profiles = [find_profile("local")]
    budget = Budget(max_accuracy_drop=0.5)
    local = search(inputs, candidates, profiles, tmp_path / "local", budget, settings)
    events = []
    executor = RayExecutor(cluster.address)
    executor.on_event = events.append
    remote = search(inputs, candidates, profiles, tmp_path / "ray", budget, settings,
                    placement=Placement(executor, small_cnn_file))

    fields = ("name", "verdict", "sha256", "bytes", "accuracy")
    assert [{k: c.get(k) for k in fields} for c in remote["candidates"]] == \
        [{k: c.get(k) for k in fields} for c in local["candidates"]]
    verdicts = {c["name"]: c["verdict"] for c in remote["candidates"]}
    assert verdicts == {"tflite-fp32": "pass", "onnx-fp32": "pass", "tflite-int8": "pass", "onnx-int8": "pass",
                        "onnx-int8-bad-knob": "build-failed"}
    assert "no_such_knob" in next(c["why"] for c in remote["candidates"] if c["name"] == "onnx-int8-bad-knob")
    built = sorted(p.name for p in (tmp_path / "ray" / "candidates").iterdir())
    assert built == sorted(Path(c["path"]).name for c in remote["candidates"] if c["verdict"] == "pass")
    for name in built:  # byte for byte, and no scratch or partial file beside them
        assert (tmp_path / "ray" / "candidates" / name).read_bytes() == \
            (tmp_path / "local" / "candidates" / name).read_bytes()
    done = [e for e in events if e["status"] == "done"]
    assert sorted(e["unit"] for e in done) == sorted(c.name for c in candidates)
    assert {e["stage"] for e in events} == {"optimize"}
    assert len({e["node"] for e in done}) == 2, "candidates built on one node only"
    measured = remote["targets"]["local"]["results"]
    assert {name for name, r in measured.items() if "p50_ms" in r or "probe" in r} == \
        {name for name, verdict in verdicts.items() if verdict == "pass"}  # benchmarked here, each passing one

    # the same search in process is served from the distributed search's cache
    messages = []
    again = search(inputs, candidates, profiles, tmp_path / "ray", budget, settings, progress=messages.append)
    cached = {c["name"]: c["cached"]["build"] for c in again["candidates"]}
    assert cached == {**{name: True for name in verdicts}, "onnx-int8-bad-knob": False}  # failures are not cached
    assert f"{candidates[0].name}: cached" in messages


def test_sweep_points_on_two_nodes_match_in_process(cluster, demo_inputs, tmp_path, capsys):
    """Each point's head training, export and scoring is a unit on the cluster (`sweep --executor ray`)."""
    common = [str(demo_inputs / "digits_cnn.keras"), "--data", str(demo_inputs / "digits_train.npz"),
              "--eval", str(demo_inputs / "digits_eval.npz"), "--at", "conv1", "--at", "flatten", "--epochs", "2",
              "--samples", "300", "--min-seconds", "0.05", "--no-drops"]
    assert main(["sweep", *common, "--out", str(tmp_path / "local")]) == 0
    capsys.readouterr()
    assert main(["sweep", *common, "--out", str(tmp_path / "ray"), "--executor", "ray",
                 "--ray-address", cluster.address]) == 0
    err = capsys.readouterr().err

    def points(folder: str) -> list[dict]:
        document = json.loads((tmp_path / folder / "sweep.json").read_text())
        return [{k: v for k, v in p.items() if k not in ("latency_ms", "pareto")} for p in document["points"]]

    assert points("ray") == points("local")
    assert [p["at"] for p in points("ray")] == [None, "conv1", "flatten"]
    assert "cut at flatten: training the head classes:10 on the cluster" in err
    nodes = set(re.findall(r"\(on (127\.0\.0\.1/[0-9a-f]+)\)", err))
    assert len(nodes) == 2, err
    for label in ("full model", "conv1", "flatten"):
        assert re.search(rf"· {label} \(on 127\.0\.0\.1/", err), label
    assert not list((tmp_path / "ray").glob(".*")), "temp files left behind"


OPTIMIZE_PIPELINE = """
[model]
path = "{model}"
[data]
eval = "{data}"
[data.calibration]
source = "eval"
[export]
formats = ["tflite"]
[export.tflite]
recipes = ["fp32"]
[bench]
targets = ["local"]
threads = [1]
min_seconds = 0.05
[report]
enabled = false
[optimize]
formats = ["tflite"]
candidates = ["tflite-dynamic"]
max_accuracy_drop = 0.5
min_seconds = 0.05
explain = false
[execution]
backend = "ray"
ray_address = "{address}"
"""


def test_pipeline_optimize_stage_builds_its_candidates_on_the_cluster(cluster, small_cnn_file, tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, pixels=rng.uniform(0, 1, (30, 16, 16, 3)).astype(np.float32), y=rng.integers(0, 5, 30))
    config = tmp_path / "pipeline.toml"
    config.write_text(OPTIMIZE_PIPELINE.format(model=small_cnn_file, data=data, address=cluster.address))
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--log-json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    built = sorted(e["unit"] for e in events if e.get("stage") == "optimize" and e.get("status") == "done"
                   and "node" in e)
    assert built == ["tflite-dynamic", "tflite-fp32"]
    document = json.loads((tmp_path / "run" / "optimize" / "optimize.json").read_text())
    assert [c["verdict"] for c in document["candidates"]] == ["pass", "pass"]
    assert document["recommended"]["local"]["measured"]  # benchmarked in the driver
    assert not list((tmp_path / "run" / "optimize" / "candidates").glob(".*")), "scratch left behind"

"""Scale-out figures: Ray executor overhead, pipeline wall time on 1 and 2 Ray nodes, fleet fan-out.

    PYTHONPATH=. python benchmarks/ray_overhead.py [--units 20] [--fleet 1,4,16] [--skip-pipeline]

1. Per-unit scheduling overhead: trivial units (echo 1 KiB) through the Ray executor (a worker
   process runs up to 8 units, input/output by content) against calling them in this process.
2. Pipeline wall time of one small CNN (tflite fp32+dynamic, onnx fp32+dynamic, verify) in
   process, and on a local Ray cluster of 1 and 2 one-CPU nodes on 127.0.0.1.
3. Fleet fan-out: `bench` of a one-op ONNX model on a fleet of N local sshd devices, wall time
   and time per device.
Everything stays on 127.0.0.1. Results go to benchmarks/results/<date>-scaleout-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep Ray on loopback (see tests/test_ray_executor.py)
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]


def echo_unit(spec: dict[str, Any], inputs: dict[str, bytes]) -> tuple[None, dict[str, bytes]]:
    return None, {"out": inputs["in"]}


def start_cluster(nodes: int) -> Any:
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "object_store_memory": 100 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return cluster


def stop_cluster(cluster: Any) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


class _Item:
    def __init__(self, index: int):
        from toolchain.steps.base import Unit

        self.unit, self.index, self.lane = Unit(f"u{index}"), index, None


class _Work:
    def __init__(self, remote: Any):
        self.remote_unit = remote

    def __call__(self, item: Any) -> Any:
        return echo_unit({}, {"in": b""})

    def remote(self, item: Any) -> Any:
        return self.remote_unit(item)


def overhead(units: int, folder: Path) -> dict[str, Any]:
    from toolchain.executor import InProcessExecutor
    from toolchain.ray_executor import RayExecutor
    from toolchain.steps.base import RemoteUnit

    source = folder / "in.bin"
    source.write_bytes(os.urandom(1024))
    items = [_Item(i) for i in range(units)]

    def remote(item: Any) -> RemoteUnit:
        return RemoteUnit(echo_unit, {}, inputs={"in": source}, outputs={"out": folder / f"out{item.index}.bin"})

    started = time.perf_counter()
    InProcessExecutor().run(items, lambda item: echo_unit({}, {"in": source.read_bytes()}), lambda i, r: None)
    local = (time.perf_counter() - started) / units
    cluster = start_cluster(2)
    try:
        executor = RayExecutor(cluster.address)
        executor.run(items[:2], _Work(remote), lambda i, r: None)  # connect, first workers
        started = time.perf_counter()
        executor.run(items, _Work(remote), lambda i, r: None)
        per_unit = (time.perf_counter() - started) / units
    finally:
        stop_cluster(cluster)
    return {"units": units, "inprocess_ms_per_unit": round(local * 1000, 3),
            "ray_ms_per_unit": round(per_unit * 1000, 1), "ray_nodes": 2, "cpus_per_node": 1}


PIPELINE = """
[model]
path = "{model}"
[export]
formats = ["tflite", "onnx"]
[export.tflite]
recipes = ["fp32", "dynamic"]
[export.onnx]
recipes = ["fp32", "dynamic"]
[bench]
enabled = false
[report]
enabled = false
"""


def pipeline_wall(folder: Path) -> list[dict[str, Any]]:
    import keras
    import tomllib

    from toolchain.config import parse_config
    from toolchain.pipeline import run_pipeline
    from toolchain.ray_executor import RayExecutor

    keras.utils.set_random_seed(1)
    inputs = keras.Input((32, 32, 3), name="pixels")
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.save(folder / "cnn.keras")
    raw = tomllib.loads(PIPELINE.format(model=folder / "cnn.keras"))
    config = parse_config(raw)
    rows = []
    started = time.perf_counter()
    run_pipeline(config, raw, folder / "inprocess", quiet=True)
    rows.append({"executor": "inprocess", "nodes": 0, "seconds": round(time.perf_counter() - started, 1)})
    for nodes in (1, 2):
        cluster = start_cluster(nodes)
        try:
            started = time.perf_counter()
            run_pipeline(config, raw, folder / f"ray{nodes}", quiet=True, executor=RayExecutor(cluster.address))
            rows.append({"executor": "ray", "nodes": nodes, "seconds": round(time.perf_counter() - started, 1)})
        finally:
            stop_cluster(cluster)
    return rows


def fleet_fanout(counts: list[int], folder: Path) -> list[dict[str, Any]]:
    import onnx
    from onnx import TensorProto, helper
    from sshd import start_ssh_server

    from toolchain.config import TargetProfile
    from toolchain.fleet import expand_fleet
    from toolchain.stages.bench import run_benchmarks

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = folder / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), model)
    servers = [start_ssh_server(folder / f"sshd{i}") for i in range(max(counts))]
    known = folder / "known_hosts"
    known.write_text("".join(s.host_key_line + "\n" for s in servers))
    rows = []
    try:
        for count in counts:
            devices = [{"name": f"d{i}", "host": "127.0.0.1", "port": s.port, "identity": str(s.identity_file)}
                       for i, s in enumerate(servers[:count])]
            profile = TargetProfile.model_validate({
                "name": "lab", "fleet": {"devices": devices},
                "connection": {"kind": "fleet", "user": servers[0].user, "known_hosts": str(known),
                               "python": sys.executable}})
            members = expand_fleet(profile).devices
            started = time.perf_counter()
            failures: dict[str, str] = {}
            results = run_benchmarks([model], members, [1], None, overrides={"min_runs": 20, "min_seconds": 0},
                                     failures=failures)
            seconds = time.perf_counter() - started
            rows.append({"devices": count, "measured": len(results), "failed": len(failures),
                         "wall_seconds": round(seconds, 2), "seconds_per_device": round(seconds / count, 2)})
    finally:
        for server in servers:
            server.stop()
    return rows


def write_results(document: dict[str, Any]) -> Path:
    from machine import slug

    stem = ROOT / "benchmarks" / "results" / f"{date.today().isoformat()}-scaleout-{slug(document['machine'])}"
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [f"# Scale-out figures, {document['date']}", "", f"Machine: {document['machine'].get('cpu_model')}, "
             f"{document['machine'].get('cores')} cores (shared with other jobs while measured).", ""]
    o = document["overhead"]
    lines += ["## Per-unit scheduling overhead", "",
              f"{o['units']} trivial units (1 KiB in, 1 KiB out): in process {o['inprocess_ms_per_unit']} ms/unit; "
              f"Ray executor on {o['ray_nodes']} local nodes {o['ray_ms_per_unit']} ms/unit "
              "(a worker process runs up to 8 units, inputs and outputs by content).", ""]
    if document.get("pipeline"):
        lines += ["## Pipeline wall time (small CNN, 4 artifacts + verify)", "", "| executor | nodes | seconds |",
                  "|---|---|---|"]
        lines += [f"| {r['executor']} | {r['nodes']} | {r['seconds']} |" for r in document["pipeline"]] + [""]
    lines += ["## Fleet fan-out (local sshd devices, one-op ONNX, 20 runs each)", "",
              "| devices | measured | failed | wall s | s per device |", "|---|---|---|---|---|"]
    lines += [f"| {r['devices']} | {r['measured']} | {r['failed']} | {r['wall_seconds']} | "
              f"{r['seconds_per_device']} |" for r in document["fleet"]]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem


def main() -> None:
    from machine import describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=20)
    parser.add_argument("--fleet", default="1,4,16")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scaleout-") as work:
        folder = Path(work)
        document: dict[str, Any] = {"date": date.today().isoformat(), "machine": describe()}
        document["overhead"] = overhead(args.units, folder)
        print(json.dumps(document["overhead"]), flush=True)
        document["fleet"] = fleet_fanout([int(n) for n in args.fleet.split(",")], folder)
        print(json.dumps(document["fleet"]), flush=True)
        if not args.skip_pipeline:
            document["pipeline"] = pipeline_wall(folder)
            print(json.dumps(document["pipeline"]), flush=True)
    print(write_results(document))


if __name__ == "__main__":
    main()

"""Pipeline wall time of the five-model suite matrix: in process, and on Ray with 1 and 2 workers.

    python benchmarks/ray_suite_wall.py                     # the five suite models (models.FULL)
    python benchmarks/ray_suite_wall.py --models digits_cnn # a check

Each suite model gets the suite's matrix (TFLite fp32 + int8, ONNX fp32 + int8, each verified
against Keras: 4 export and 4 verify units per model; benchmarks off, since timing on the
driver while the cluster converts would measure the conversions). Every run is a fresh
`edge-toolchain run` process into an empty run directory:
  inprocess   the default executor
  ray x1      `--executor ray` on a local cluster of one 1-CPU worker node on 127.0.0.1
  ray x2      the same with two 1-CPU worker nodes
Per model: seconds and the artifacts' sha256 (the Ray runs must match in-process byte for byte).
Writes benchmarks/results/<date>-<machine>-ray-suite.{json,md}. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep Ray on loopback (see tests/test_ray_executor.py)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import machine  # noqa: E402
import models  # noqa: E402
import pipeline_wall  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OBJECT_STORE_BYTES = 1024 * 1024 * 1024  # ResNet50's .keras and fp32 files are ~100 MB each


def say(message: str) -> None:
    print(f"[ray-suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_pipeline(bench_model: Any, folder: Path) -> Path:
    """The suite's inputs and matrix, with benchmarks and the report off."""
    config = pipeline_wall.write_inputs(bench_model, folder, bench_runs=5)
    text = config.read_text()
    head = text[:text.index("[bench]")]
    config.write_text(head + "[bench]\nenabled = false\n\n[report]\nenabled = false\n")
    return config


def start_cluster(nodes: int) -> Any:
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "object_store_memory": OBJECT_STORE_BYTES}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    return cluster


def run_once(config: Path, out: Path, ray_address: str | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "toolchain", "run", str(config), "--out", str(out), "--quiet"]
    if ray_address:
        command += ["--executor", "ray", "--ray-address", ray_address]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"seconds": round(seconds, 1), "exit": done.returncode, "error": done.stderr.strip()[-2000:]}
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": round(seconds, 1), "exit": 0,
            "sha256": {f"{a['format']} {a['recipe']}": a["sha256"] for a in manifest["artifacts"]},
            "verdicts": {f"{a['format']} {a['recipe']}": (a.get("verify") or {}).get("verdict")
                         for a in manifest["artifacts"]}}


def run_matrix(configs: dict[str, Path], folder: Path, label: str, ray_address: str | None) -> dict[str, Any]:
    runs = {}
    for name, config in configs.items():
        say(f"{label}: {name}")
        runs[name] = run_once(config, folder / label / name, ray_address)
        say(f"{label}: {name} {runs[name]['seconds']} s (exit {runs[name]['exit']})")
    return {"label": label, "runs": runs, "total_seconds": round(sum(r["seconds"] for r in runs.values()), 1)}


def same_bytes(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, bool]:
    return {name: run.get("sha256") == reference["runs"][name].get("sha256") and "sha256" in run
            for name, run in other["runs"].items()}


def markdown(document: dict[str, Any]) -> str:
    described = document["machine"]
    lines = [f"# Five-model suite pipeline on Ray, {document['date']}", "",
             f"Machine: {described.get('cpu_model')}, {described.get('cores')} cores, SIMD "
             f"{' '.join(described.get('cpu_flags_simd') or [])}, "
             f"{document['memory_gb']} GB; load average at start {described.get('load_average_at_start')}, "
             f"at end {document.get('load_average_at_end')}.",
             "Each model: TFLite fp32 + int8 and ONNX fp32 + int8, each verified (8 units); benchmarks off.",
             "Every cell is one fresh `edge-toolchain run` process into an empty run directory; a Ray",
             "worker is a 1-CPU node of a local cluster on 127.0.0.1 (a worker process runs up to 8 units).", "",
             "| model | " + " | ".join(m["label"] for m in document["matrix"]) + " | Ray bytes = in-process |",
             "|---|" + "---|" * len(document["matrix"]) + "---|"]
    for name in document["models"]:
        cells = [f"{m['runs'][name]['seconds']}" + ("" if m["runs"][name]["exit"] == 0 else
                                                    f" (exit {m['runs'][name]['exit']})")
                 for m in document["matrix"]]
        same = all(document["identical"][label][name] for label in document["identical"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")
    lines.append("| **total** | " + " | ".join(f"**{m['total_seconds']}**" for m in document["matrix"]) + " | |")
    base = document["matrix"][0]["total_seconds"]
    lines += ["", "Total relative to in process: " + ", ".join(
        f"{m['label']} {m['total_seconds'] / base:.2f}x" for m in document["matrix"]) + "."]
    differing = sorted({f"{name} {artifact}" for label, runs in document["matrix_sha_diffs"].items()
                        for name, artifacts in runs.items() for artifact in artifacts})
    if differing:
        lines += ["", "Artifacts whose bytes differ from the in-process run: " + ", ".join(differing) + "."]
    lines += [f"\nNote: {note}" for note in document.get("notes", [])]
    return "\n".join(lines) + "\n"


def sha_diffs(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, list[str]]:
    found = {}
    for name, run in other["runs"].items():
        theirs = reference["runs"][name].get("sha256", {})
        changed = [k for k, v in run.get("sha256", {}).items() if theirs.get(k) != v]
        if changed:
            found[name] = changed
    return found


def main() -> int:
    import ray

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=models.FULL, default=models.FULL)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    described = machine.describe()
    document: dict[str, Any] = {"date": described["date_utc"][:10], "machine": described, "models": args.models,
                                "matrix": []}
    with tempfile.TemporaryDirectory(prefix="ray-suite-") as tmp:
        folder = Path(tmp)
        configs = {}
        for name in args.models:
            say(f"building {name}")
            configs[name] = write_pipeline(models.build(name), folder / "inputs" / name)
        document["matrix"].append(run_matrix(configs, folder, "inprocess", None))
        for nodes in (1, 2):
            cluster = start_cluster(nodes)
            try:
                document["matrix"].append(run_matrix(configs, folder, f"ray x{nodes}", cluster.address))
            finally:
                ray.shutdown()
                cluster.shutdown()
    document["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    document["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    reference = document["matrix"][0]
    document["identical"] = {m["label"]: same_bytes(reference, m) for m in document["matrix"][1:]}
    document["matrix_sha_diffs"] = {m["label"]: sha_diffs(reference, m) for m in document["matrix"][1:]}
    stem = f"{document['date']}-{machine.slug(described)}-ray-suite"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(document))
    print(markdown(document))
    failed = any(r["exit"] != 0 for m in document["matrix"] for r in m["runs"].values())
    return 1 if failed or not all(all(v.values()) for v in document["identical"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())

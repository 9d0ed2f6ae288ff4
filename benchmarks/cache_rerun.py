"""Wall time of an unchanged re-run (served from the run directory's cache) against the first run.

Each round uses a fresh run directory and runs `edge-toolchain run` as a separate process,
as a user would: the first run converts, verifies and benchmarks everything; the second,
identical run must convert nothing (checked in its manifest) and should take well under
20% of the first run's time, since it does not even import Keras.

    python benchmarks/cache_rerun.py           # the demo pipeline, 3 rounds
    python benchmarks/cache_rerun.py --quick   # smoke test: 1 round

Writes benchmarks/results/cache_rerun.{json,md} (cache_rerun-quick.* with --quick).
Figures depend on the machine and its load: the JSON records both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, write_results  # noqa: E402


def timed_run(pipeline: Path, out: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "toolchain", "run", str(pipeline), "--out", str(out), "--quiet"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"edge-toolchain run failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return seconds, json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round: a smoke test, not figures")
    parser.add_argument("--pipeline", type=Path, help="pipeline.toml to time (default: the demo's)")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="cache-rerun-") as tmp:
        pipeline = args.pipeline
        if pipeline is None:
            from toolchain.demo import write_demo_inputs

            pipeline = write_demo_inputs(Path(tmp) / "demo")
        results = []
        for index in range(rounds):
            out = Path(tmp) / f"run{index}"
            first, _ = timed_run(pipeline, out)
            second, manifest = timed_run(pipeline, out)
            converted = [s["name"] for s in manifest["stages"] if s["status"] == "done" and not s.get("cached")]
            if converted:
                raise SystemExit(f"the identical re-run was not served from the cache: {converted}")
            results.append({"first_s": round(first, 3), "rerun_s": round(second, 3),
                            "ratio": round(second / first, 4),
                            "artifacts": len(manifest["artifacts"])})
            print(f"round {index + 1}: first {first:.1f} s, identical re-run {second:.2f} s "
                  f"({100 * second / first:.1f}%)", flush=True)
    ratio = statistics.median(r["ratio"] for r in results)
    document = {"benchmark": "cache_rerun", "quick": args.quick, "pipeline": str(args.pipeline or "demo"),
                "machine": machine(), "rounds": results, "median_ratio": ratio}
    rows = "\n".join(f"| {i + 1} | {r['artifacts']} | {r['first_s']:.1f} | {r['rerun_s']:.2f} | "
                     f"{100 * r['ratio']:.1f}% |" for i, r in enumerate(results))
    markdown = (
        "# Identical re-run vs first run\n\n"
        f"Machine: {document['machine']['cpu']} ({document['machine']['cpu_count']} CPUs), load average at "
        f"start {document['machine']['load_average_at_start']}.\n\n"
        "| round | artifacts | first run (s) | identical re-run (s) | re-run / first |\n|---|---|---|---|---|\n"
        f"{rows}\n\nMedian re-run / first: {100 * ratio:.1f}%.\n"
    )
    json_path, _ = write_results("cache_rerun", args.quick, document, markdown)
    print(f"median re-run / first: {100 * ratio:.1f}%  ({json_path})")


if __name__ == "__main__":
    main()

"""The device runner's per-inference overhead compared with a bare invoke() loop.

For each model and backend, in alternating rounds (each in a fresh process, so the two
methods see the same machine state):
  bare    a minimal script: load, set the input once, time N invoke() calls as one block
  runner  toolchain/device/runner.py benchmark mode: per-call timers, set_inputs per call
overhead per inference = runner mean - bare mean (median over rounds).

    python benchmarks/runner_overhead.py           # full: 2 models x 2 formats, 7 rounds
    python benchmarks/runner_overhead.py --quick   # smoke test: small model, 2 rounds

Writes benchmarks/results/runner_overhead.{json,md} (runner_overhead-quick.* with --quick).
Figures depend on the machine and its load: the JSON records both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import export_models, machine, write_results  # noqa: E402

from toolchain.targets.local import RUNNER_PATH  # noqa: E402

BARE_LOOP = r"""
import json, sys, time
import numpy as np
path, runs = sys.argv[1], int(sys.argv[2])
if path.endswith(".onnx"):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in first.shape]
    feed = {first.name: np.random.RandomState(0).uniform(0, 1, shape).astype(np.float32)}
    def invoke():
        session.run(None, feed)
else:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    data = np.random.RandomState(0).uniform(0, 1, detail["shape"]).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], data)
    invoke = interpreter.invoke
for _ in range(max(5, runs // 20)):
    invoke()
start = time.perf_counter()
for _ in range(runs):
    invoke()
print(json.dumps({"mean_ms": (time.perf_counter() - start) * 1000 / runs}))
"""


def bare_mean_ms(model: Path, runs: int) -> float:
    done = subprocess.run([sys.executable, "-c", BARE_LOOP, str(model), str(runs)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["mean_ms"]


def runner_result(model: Path, runs: int) -> dict:
    request = {"model": str(model), "threads": 1, "min_runs": runs, "min_seconds": 0,
               "max_seconds": 600, "warmup_runs": max(5, runs // 20), "warmup_seconds": 0}
    if model.suffix == ".tflite":
        request["backend"] = "ai_edge_litert"
    done = subprocess.run([sys.executable, str(RUNNER_PATH), json.dumps(request)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: small model only, few runs")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None, help="invocations per round")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 7)
    runs = args.runs or (200 if args.quick else 2000)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for model in export_models(Path(folder), large=not args.quick):
            bare, runner, backend = [], [], None
            for _ in range(rounds):
                bare.append(bare_mean_ms(model, runs))
                answer = runner_result(model, runs)
                runner.append(answer["latency_ms"]["mean"])
                backend = f"{answer['environment']['backend']} {answer['environment']['backend_version']}"
            bare_ms, runner_ms = statistics.median(bare), statistics.median(runner)
            rows.append({"model": model.name, "backend": backend, "runs_per_round": runs, "rounds": rounds,
                         "bare_mean_ms": bare_ms, "runner_mean_ms": runner_ms,
                         "overhead_us_per_inference": (runner_ms - bare_ms) * 1000,
                         "overhead_percent": (runner_ms - bare_ms) / bare_ms * 100,
                         "bare_rounds_ms": bare, "runner_rounds_ms": runner})
    document = {"benchmark": "runner_overhead", "quick": args.quick, "machine": machine(),
                "method": "median over alternating rounds of: bare invoke() loop timed as one block vs the "
                          "runner's per-call timed mean (set_inputs outside the clock)", "results": rows}
    lines = ["# Runner overhead per inference", "",
             f"Machine: {document['machine']['cpu']} ({document['machine']['cpu_count']} cores), "
             f"load at start {document['machine']['load_average_at_start']}, {document['machine']['date_utc']}."
             + (" **Quick smoke run: not a figure.**" if args.quick else ""), "",
             "| model | backend | bare mean ms | runner mean ms | overhead µs/inference | overhead % |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['backend']} | {r['bare_mean_ms']:.4f} | {r['runner_mean_ms']:.4f} | "
              f"{r['overhead_us_per_inference']:.2f} | {r['overhead_percent']:.1f} |" for r in rows]
    json_path, md_path = write_results("runner_overhead", args.quick, document, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much the measuring instrument itself costs: the runner against a bare invoke loop.

bare    a minimal script: load, set the input once, time N invoke() / run() calls as one
        block (the least a benchmark can do)
runner  toolchain/device/runner.py: a timer around every call, inputs set per call
Both run in fresh processes, alternating, `rounds` times; overhead per inference is the
median over rounds of (runner mean - bare mean).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from latency import run_runner

BARE_LOOP = r"""
import json, sys, time
import numpy as np
path, runs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if path.endswith(".onnx"):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in first.shape]
    feed = {first.name: np.random.RandomState(0).uniform(0, 1, shape).astype(np.float32)}
    def invoke():
        session.run(None, feed)
else:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    data = np.random.RandomState(0).uniform(0, 1, detail["shape"]).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], data)
    invoke = interpreter.invoke
for _ in range(max(3, runs // 20)):
    invoke()
start = time.perf_counter()
for _ in range(runs):
    invoke()
print(json.dumps({"mean_ms": (time.perf_counter() - start) * 1000 / runs}))
"""


def bare_mean_ms(path: Path, runs: int, threads: int = 1) -> float:
    done = subprocess.run([sys.executable, "-c", BARE_LOOP, str(path), str(runs), str(threads)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["mean_ms"]


def runner_overhead(path: Path, p50_ms: float, rounds: int, seconds: float) -> dict[str, Any]:
    """`p50_ms` (from the latency table) sizes the loops to about `seconds` each."""
    runs = int(min(20000, max(20, seconds * 1000 / max(p50_ms, 1e-3))))
    bare, runner = [], []
    for _ in range(rounds):
        bare.append(bare_mean_ms(path, runs))
        runner.append(run_runner(path, 1, runs, 0, warmup_runs=max(3, runs // 20), warmup_seconds=0)
                      ["latency_ms"]["mean"])
    overheads = [r - b for r, b in zip(runner, bare, strict=True)]
    bare_ms = statistics.median(bare)
    return {"file": path.name, "runs_per_round": runs, "rounds": rounds,
            "bare_mean_ms": bare_ms, "runner_mean_ms": statistics.median(runner),
            "overhead_us_per_inference": statistics.median(overheads) * 1000,
            "overhead_fraction": statistics.median(overheads) / bare_ms if bare_ms else None,
            "bare_rounds_ms": bare, "runner_rounds_ms": runner}

"""The runner's peak-RSS figure against `/usr/bin/time -v`'s maximum resident set size.

Each model is benchmarked by toolchain/device/runner.py under GNU time; the runner's
`peak_rss_after_runs_kib` (VmHWM of its own process) must agree with time's
"Maximum resident set size" (the kernel's ru_maxrss for the same process) within 10%.

    python benchmarks/memory_vs_time.py           # small CNN + MobileNetV2 (alpha 0.35), both formats
    python benchmarks/memory_vs_time.py --quick   # smoke test: small CNN only

Needs GNU time at /usr/bin/time (Debian: apt-get install time). Writes
benchmarks/results/memory_vs_time.{json,md} (memory_vs_time-quick.* with --quick).
Exits 1 if any model disagrees by more than the tolerance.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import export_models, machine, write_results  # noqa: E402

from toolchain.targets.local import RUNNER_PATH  # noqa: E402

GNU_TIME = Path("/usr/bin/time")
TOLERANCE = 0.10


def measure(model: Path, runs: int) -> dict:
    request = {"model": str(model), "threads": 1, "min_runs": runs, "min_seconds": 0, "warmup_runs": 5,
               "warmup_seconds": 0}
    done = subprocess.run([str(GNU_TIME), "-v", sys.executable, str(RUNNER_PATH), json.dumps(request)],
                          capture_output=True, text=True, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if not found:
        raise RuntimeError(f"no maximum resident set size in /usr/bin/time output: {done.stderr[-500:]}")
    time_kib = int(found.group(1))
    runner_kib = answer["memory"]["peak_rss_after_runs_kib"]
    return {"model": model.name, "backend": answer["environment"]["backend"],
            "runner_peak_rss_kib": runner_kib, "time_max_rss_kib": time_kib,
            "relative_difference": (runner_kib - time_kib) / time_kib,
            "model_delta_kib": answer["memory"]["total_delta_kib"],
            "within_tolerance": abs(runner_kib - time_kib) <= TOLERANCE * time_kib}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: small model only")
    args = parser.parse_args()
    if not GNU_TIME.exists():
        print("GNU time is missing: apt-get install time", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(model, 50 if args.quick else 200) for model in export_models(Path(folder), not args.quick)]
    document = {"benchmark": "memory_vs_time", "quick": args.quick, "machine": machine(),
                "tolerance": TOLERANCE, "results": rows}
    lines = ["# Runner peak RSS vs /usr/bin/time -v", "",
             f"Machine: {document['machine']['cpu']} ({document['machine']['cpu_count']} cores), "
             f"{document['machine']['date_utc']}. Tolerance ±{TOLERANCE:.0%}."
             + (" **Quick smoke run: not a figure.**" if args.quick else ""), "",
             "| model | backend | runner peak RSS MiB | time max RSS MiB | difference | model delta MiB | ok |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['backend']} | {r['runner_peak_rss_kib'] / 1024:.1f} | "
              f"{r['time_max_rss_kib'] / 1024:.1f} | {r['relative_difference']:+.2%} | "
              f"{(r['model_delta_kib'] or 0) / 1024:.1f} | {'yes' if r['within_tolerance'] else 'NO'} |"
              for r in rows]
    json_path, md_path = write_results("memory_vs_time", args.quick, document, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")
    return 0 if all(r["within_tolerance"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

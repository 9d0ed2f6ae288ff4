"""Peak memory of `edge-toolchain truncate --train` on ResNet50 as the training set grows.

Each run is a separate process under GNU time (`/usr/bin/time -v`, "Maximum resident set
size"): ResNet50 (weights=None, 224x224x3) cut at --at, a `gap,classes:10` head trained on N
random images with labels 0-9, and once without --train for the baseline. The frozen base
runs in batches (toolchain.stages.truncate.FEATURE_BATCH), so the peak should stay flat as N
grows; what still grows is the image array itself (N x 602 KB as float32, loaded whole).

    python benchmarks/truncate_memory.py [--images 32 160 1000] [--at conv4_block6_out]

Writes benchmarks/results/<date>-<machine>-truncate-memory.json and .md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (224, 224, 3)


def write_model(folder: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    path = folder / "resnet50.keras"
    keras.applications.ResNet50(weights=None, input_shape=SHAPE, classes=1000).save(path)
    return path


def write_data(folder: Path, count: int) -> Path:
    """`count` random images in [0, 255) as float32 under the input's name, labels 0-9 under y."""
    rng = np.random.default_rng(count)
    path = folder / f"train_{count}.npz"
    images = np.empty((count, *SHAPE), np.float32)
    for start in range(0, count, 100):  # the generator's float64 temporaries stay small
        end = min(count, start + 100)
        images[start:end] = rng.uniform(0, 255, (end - start, *SHAPE))
    np.savez(path, input_layer=images, y=rng.integers(0, 10, count))
    return path


def measure(command: list[str]) -> dict[str, Any]:
    """Peak RSS (MB) and wall seconds of `command`, from GNU time's report on stderr."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    metrics = re.search(r"head after \d+ epoch\(s\): (.*)", done.stdout)
    return {"peak_rss_mb": round(peak_kb / 1024, 1), "wall_seconds": round(seconds, 1),
            "head": metrics.group(1).strip() if metrics else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[32, 160, 1000])
    parser.add_argument("--at", default="conv4_block6_out")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    described = machine.describe()
    described["ram_gb"] = round(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
                                / 1024**2, 1)
    from toolchain.stages.truncate import FEATURE_BATCH

    rows = []
    with tempfile.TemporaryDirectory(prefix="truncate-memory-") as scratch:
        folder = Path(scratch)
        model = write_model(folder)
        base = [sys.executable, "-m", "toolchain", "truncate", str(model), "--at", args.at,
                "--head", "gap,classes:10"]
        rows.append({"images": 0, "train": False,
                     **measure([*base, "-o", str(folder / "cut.keras")])})
        print(rows[-1], flush=True)
        for count in args.images:
            data = write_data(folder, count)
            rows.append({"images": count, "train": True, **measure(
                [*base, "-o", str(folder / f"cut_{count}.keras"), "--train", str(data), "--epochs",
                 str(args.epochs)])})
            print(rows[-1], flush=True)
            data.unlink()
    document = {"benchmark": "truncate_memory", "machine": described, "model": "ResNet50 weights=None 224x224x3",
                "at": args.at, "head": "gap,classes:10", "epochs": args.epochs, "feature_batch": FEATURE_BATCH,
                "load_average_at_end": [round(x, 2) for x in __import__("os").getloadavg()], "runs": rows}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{described['date_utc'][:10]}-{machine.slug(described)}-truncate-memory"
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(document))
    print(f"wrote {stem}.json and .md")


def markdown(document: dict[str, Any]) -> str:
    m = document["machine"]
    lines = [
        f"# truncate --train peak memory: {document['model']}, cut at {document['at']}",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m.get('ram_gb', '?')} GB RAM, "
        f"{'virtualised' if m['virtualised'] else 'bare metal'}; load average at start "
        f"{m['load_average_at_start']}, at end {document['load_average_at_end']} (shared machine: "
        "wall times are indicative only). Peak = GNU time's maximum resident set size of the "
        f"whole `edge-toolchain truncate` process; head `{document['head']}`, {document['epochs']} epochs, "
        f"the base runs {document['feature_batch']} images per call.",
        "",
        "| Images | --train | Peak RSS (MB) | Wall (s) | Head (last epoch) |",
        "|---|---|---|---|---|",
    ]
    for r in document["runs"]:
        lines.append(f"| {r['images']:,} | {'yes' if r['train'] else 'no'} | {r['peak_rss_mb']:,.0f} | "
                     f"{r['wall_seconds']:.0f} | {r['head'] or '-'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

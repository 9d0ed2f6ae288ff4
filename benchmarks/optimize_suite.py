"""The optimizer against what a user would ship instead, per model and thread count.

    python benchmarks/optimize_suite.py                        # 5 models, 1 and all cores
    python benchmarks/optimize_suite.py --models mnv3_digits --threads 1 --repeats 1   # a check

Per model and thread count:
 1. `edge-toolchain optimize`'s search on this machine (1 pt budget on labelled data, else
    top-1 agreement): its wall time, candidate count and recommendation;
 2. the recommended file against Keras' `model.export` fp32 and TFLiteConverter's int8,
    measured interleaved with the same runner (latency.py), repeats as the noise;
 3. the fastest int8-class candidate against the plain int8 recipe (tflite int8-float-io,
    onnx int8), and where int8 still loses to fp32, the reason (XNNPACK partitions / ORT ops).
Writes benchmarks/results/<date>-<machine>-optimize.json and .md. Record figures on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402
import latency  # noqa: E402
import machine  # noqa: E402
import models  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def say(message: str) -> None:
    print(f"[optimize-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def search_inputs(bench_model: Any) -> Any:
    from toolchain.data import Dataset
    from toolchain.keras_io import input_signature, run_keras
    from toolchain.optimize.search import SearchInputs

    name = input_signature(bench_model.model)[0].name
    calibration = Dataset({name: bench_model.calibration})
    evaluation = Dataset({name: bench_model.evaluation}, bench_model.labels)
    return SearchInputs(bench_model.model, f"bench-{bench_model.name}", calibration, evaluation,
                        run_keras(bench_model.model, evaluation.inputs), bench_model.name)


def budget_for(bench_model: Any) -> Any:
    """1 pt of accuracy on labelled data; for a weights=None model (near-uniform scores, so top-1
    is a near tie and says nothing, as the suite's pipelines note) the recipe's own cosine and
    error limits without top-1 agreement."""
    from toolchain.optimize.search import Budget

    class UntrainedBudget(Budget):
        def tolerance(self, fmt: str, recipe: str, labelled: bool) -> Any:
            tolerance = super().tolerance(fmt, recipe, labelled)
            tolerance.min_top1_agreement = None
            return tolerance

    return Budget(0.01) if bench_model.labels is not None else UntrainedBudget(0.01)


BUDGET_NOTE = {True: "accuracy drop <= 1 pt vs Keras on labelled held-out data",
               False: "weights=None: the recipe's cosine / error limits vs Keras, no top-1 agreement"}


def run_search(bench_model: Any, threads: int, folder: Path, min_seconds: float) -> dict[str, Any]:
    from toolchain.config import find_profile
    from toolchain.optimize.candidates import candidates_for
    from toolchain.optimize.search import SearchSettings, search

    inputs = search_inputs(bench_model)
    started = time.perf_counter()
    candidates = candidates_for(inputs.model, ["tflite", "onnx"], threads=threads)
    document = search(inputs, candidates, [find_profile("local")], folder,
                      budget_for(bench_model), SearchSettings(threads=threads, bench={"min_seconds": min_seconds}),
                      progress=lambda message: say(f"{bench_model.name} x{threads}: {message}"))
    document["measured_wall_seconds"] = time.perf_counter() - started
    return document


def compared_files(document: dict[str, Any], folder: Path, theirs: dict[tuple, Path]) -> dict[tuple, Path]:
    """The recommended file, the plain int8 recipes, the fastest int8-class candidate, and the baselines."""
    by_name = {c["name"]: c for c in document["candidates"]}
    results = document["targets"]["local"]["results"]
    files = dict(theirs)
    chosen = document["recommended"]["local"]
    if chosen:
        files[("any", "recommended", chosen["candidate"])] = folder / chosen["path"]
    for plain in ("tflite-int8", "onnx-int8"):
        if by_name.get(plain, {}).get("verdict") == "pass":
            files[("any", "plain-int8", plain)] = folder / by_name[plain]["path"]
    timed = [(n, r.get("p50_ms", (r.get("probe") or {}).get("p50_ms"))) for n, r in results.items()]
    int8 = [(n, p) for n, p in timed if p is not None and by_name[n]["int8_class"]]
    if int8:
        fastest = min(int8, key=lambda item: item[1])[0]
        files[("any", "fastest-int8-class", fastest)] = folder / by_name[fastest]["path"]
    return files


def baseline_verdicts(bench_model: Any, theirs: dict[tuple, Path]) -> dict[tuple, str]:
    """Whether each baseline file meets the same budget the search held our candidates to."""
    from toolchain.compare import compare_outputs
    from toolchain.stages.verify import run_artifact

    inputs = search_inputs(bench_model)
    budget = budget_for(bench_model)
    verdicts = {}
    for key, path in theirs.items():
        recipe = "int8-float-io" if key[1] == "int8" else "fp32"
        tolerance = budget.tolerance(key[0], recipe, inputs.evaluation.labels is not None)
        try:
            outputs = run_artifact(path, _fed_by_position(path, inputs.evaluation.inputs))
            if len(outputs) == len(inputs.reference) == 1:  # their files rename the output (output_0, Identity:0)
                outputs = {next(iter(inputs.reference)): next(iter(outputs.values()))}
            _, failures = compare_outputs(inputs.reference, outputs, tolerance, inputs.evaluation.labels)
            verdicts[key] = "fail: " + "; ".join(failures)[:200] if failures else "pass"
        except Exception as e:  # a baseline file our checker cannot run is a finding, not a crash
            verdicts[key] = f"not checked: {type(e).__name__}: {str(e)[:160]}"
    return verdicts


def _fed_by_position(path: Path, arrays: dict[str, Any]) -> dict[str, Any]:
    """Their files may rename a single input (keras_tensor_247): feed it by position."""
    from toolchain.artifact_info import describe

    names = [i["name"] for i in describe(path)["inputs"]]
    if len(names) == len(arrays) == 1:
        return {names[0]: next(iter(arrays.values()))}
    return arrays


def ratios(rows: list[dict[str, Any]], document: dict[str, Any], threads: int,
           budget_verdicts: dict[tuple, str]) -> list[dict[str, Any]]:
    by_role = {(r["format"], r["recipe"], r["producer"]): r for r in rows if r["threads"] == threads}
    found = []

    def add(label: str, ours: tuple, theirs: tuple) -> None:
        if ours in by_role and theirs in by_role:
            a, b = by_role[ours], by_role[theirs]
            noise = max(a["p50_spread"] or 0, b["p50_spread"] or 0)
            found.append({"comparison": label, "threads": threads, "ours": a["file"], "theirs": b["file"],
                          "ratio": a["p50_ms"] / b["p50_ms"], "noise": noise,
                          "theirs_budget": budget_verdicts.get(theirs, "pass")})

    recommended = next((k for k in by_role if k[1] == "recommended"), None)
    fastest = next((k for k in by_role if k[1] == "fastest-int8-class"), None)
    if recommended:
        add("recommended vs keras.export fp32 (tflite)", recommended, ("tflite", "fp32", "keras.export"))
        add("recommended vs keras.export fp32 (onnx)", recommended, ("onnx", "fp32", "keras.export"))
        add("recommended vs TFLiteConverter int8", recommended, ("tflite", "int8", "TFLiteConverter"))
    if fastest:
        for plain in ("tflite-int8", "onnx-int8"):
            if fastest[2].split("-")[0] == plain.split("-")[0]:
                add(f"fastest int8-class vs plain {plain}", fastest, ("any", "plain-int8", plain))
    return found


def int8_reasons(document: dict[str, Any]) -> dict[str, str]:
    """Why each int8-class candidate that lost to fp32 is slow (from the search's explanations)."""
    reasons = {}
    for record in document["candidates"]:
        result = document["targets"]["local"]["results"].get(record["name"], {})
        if record["int8_class"] and result.get("verdict") == "rejected" and "explain" in record:
            reasons[record["name"]] = record["explain"]["reason"]
    return reasons


def candidate_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every candidate: its build verdict, size, accuracy figures and its result on this machine."""
    rows = []
    for record in document["candidates"]:
        result = document["targets"]["local"]["results"].get(record["name"], {})
        rows.append({"name": record["name"], "build": record.get("verdict"), "bytes": record.get("bytes"),
                     "accuracy": record.get("accuracy"), "verdict": result.get("verdict"), "why": result.get("why"),
                     "p50_ms": result.get("p50_ms", (result.get("probe") or {}).get("p50_ms"))})
    return rows


def run_model(name: str, threads: list[int], repeats: int, min_seconds: float, folder: Path) -> dict[str, Any]:
    say(f"{name}: building")
    bench_model = models.build(name)
    theirs, _, failures = baselines.export_all(bench_model.model, bench_model.calibration, folder / "baselines")
    budget_verdicts = baseline_verdicts(bench_model, theirs)
    entry: dict[str, Any] = {"model": name, "note": bench_model.note, "baseline_failures": failures,
                             "budget": BUDGET_NOTE[bench_model.labels is not None],
                             "baseline_budget_verdicts": {" ".join(k): v for k, v in budget_verdicts.items()},
                             "runs": []}
    for count in threads:  # one search folder: candidates are built once, benchmarked per thread count
        document = run_search(bench_model, count, folder / "search", min_seconds)
        files = compared_files(document, folder / "search", theirs)
        rows = latency.measure(files, [count], repeats, 5, min_seconds)
        entry["runs"].append({
            "threads": count, "search_wall_seconds": document["measured_wall_seconds"],
            "candidates": document["candidate_count"], "recommended": document["recommended"]["local"],
            "rows": rows, "ratios": ratios(rows, document, count, budget_verdicts),
            "int8_reasons": int8_reasons(document), "candidate_results": candidate_rows(document),
            "quantization_note": (document["recommended"]["local"] or {}).get("note"),
        })
    return entry


def _verdict(row: dict[str, Any]) -> str:
    if row["ratio"] != row["ratio"]:  # nan: nothing compared
        return "-"
    if row["comparison"].startswith("fastest int8-class"):
        if row["ratio"] < 1 - row["noise"]:
            return "faster"
        return "same (within noise)" if row["ratio"] <= 1 + row["noise"] else "slower"
    if row["ratio"] <= 1 + row["noise"]:
        return "ok"
    return "SLOWER" if row["theirs_budget"] == "pass" else "slower; theirs misses the budget"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Optimize benchmark {result['date']}", "",
             f"Machine: {result['machine']['cpu_model']}, {result['machine']['cores']} cores, SIMD "
             f"{' '.join(result['machine']['cpu_flags_simd'])}; "
             f"repeats {result['repeats']}, min_seconds {result['min_seconds']}; load average at start "
             f"{result['machine'].get('load_average_at_start')}, at end {result.get('load_average_at_end')} "
             "(other jobs ran at nice 19 while measured).", "",
             "Ratios are p50 ours / theirs, measured interleaved in fresh processes; noise is the larger",
             "p50 spread of the two across repeats. Verdict: `ok` when the ratio is at most 1 + noise.",
             "The search's wall time of the first thread count includes building and verifying every",
             "candidate; later thread counts reuse the builds (cached) and only re-measure.", "",
             "| model | threads | search s | candidates | recommended | comparison | ratio | noise | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for entry in result["models"]:
        for run in entry.get("runs", []):
            chosen = (run["recommended"] or {}).get("candidate", "none")
            for r in run["ratios"] or [{"comparison": "-", "ratio": float("nan"), "noise": 0}]:
                lines.append(f"| {entry['model']} | {run['threads']} | {run['search_wall_seconds']:.0f} | "
                             f"{run['candidates']} | {chosen} | {r['comparison']} | {r['ratio']:.2f}x | "
                             f"±{r['noise']:.0%} | {_verdict(r)} |")
    for entry in result["models"]:
        lines += model_section(entry)
    return "\n".join(lines) + "\n"


def model_section(entry: dict[str, Any]) -> list[str]:
    """Per model: the budget, whether the baselines meet it, and every candidate's fate."""
    lines = ["", f"## {entry['model']}", ""]
    if "error" in entry:
        return lines + [f"FAILED: {entry['error']}"]
    lines += [f"{entry['note']}. Budget: {entry['budget']}.", ""]
    lines += [f"- baseline `{name}`: {verdict}" for name, verdict in entry["baseline_budget_verdicts"].items()]
    lines += [f"- baseline `{name}` failed to export: {why}" for name, why in entry["baseline_failures"].items()]
    for run in entry["runs"]:
        lines += [f"- x{run['threads']}: {run['quantization_note']}"]
    first = entry["runs"][0]
    lines += ["", f"Candidates at {first['threads']} thread(s):", "",
              "| candidate | built | KB | verdict | p50 ms | why |", "|---|---|---|---|---|---|"]
    for row in first["candidate_results"]:
        size = f"{row['bytes'] / 1e3:.0f}" if row["bytes"] else "-"
        p50 = f"{row['p50_ms']:.3f}" if row["p50_ms"] is not None else "-"
        why = (row["why"] or "").replace("|", "/")
        lines.append(f"| {row['name']} | {row['build']} | {size} | {row['verdict']} | {p50} | {why} |")
    if first["int8_reasons"]:
        lines += ["", "Why the int8-class candidates that lost are slow (the search's explanations):", ""]
        lines += [f"- {name}: {why}" for name, why in first["int8_reasons"].items()]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=models.OPTIMIZE, default=models.OPTIMIZE)
    parser.add_argument("--threads", type=int, nargs="+", help="default: 1 and all cores")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    described = machine.describe()
    result: dict[str, Any] = {"date": described["date_utc"][:10], "machine": described, "repeats": args.repeats,
                              "min_seconds": args.min_seconds, "models": []}
    stem = f"{result['date']}-{machine.slug(described)}-optimize"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-optimize-bench-") as tmp:
        for name in args.models:
            try:
                result["models"].append(run_model(name, threads, args.repeats, args.min_seconds, Path(tmp) / name))
            except Exception as e:  # one model's failure is a finding; the others still run
                say(f"{name}: FAILED: {e}")
                result["models"].append({"model": name, "error": f"{type(e).__name__}: {e}"})
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 1 if any("error" in m for m in result["models"]) else 0


if __name__ == "__main__":
    sys.exit(main())

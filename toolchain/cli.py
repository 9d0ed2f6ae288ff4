"""Command line: parse -> config -> call one function -> print / exit code."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from . import __version__
from .errors import ToolchainError
from .tables import UNLIMITED, Column, print_rows

app = typer.Typer(
    name="edge-toolchain",
    help="Take a trained Keras model to edge devices: export, verify, benchmark, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# piped output: COLUMNS if set, else unbounded (tables at their natural width, lines unwrapped)
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else UNLIMITED)
err = Console(stderr=True)
STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"edge-toolchain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    STATE["debug"] = debug


RayAddressOption = Annotated[
    str | None, typer.Option("--ray-address", help="Ray cluster: auto, HOST:PORT or ray://HOST:10001.")
]
StandaloneExecutorOption = Annotated[
    str | None, typer.Option("--executor", metavar="BACKEND", help=(
        "Where the units run: inprocess (default) or ray (each unit a task on the cluster; benchmarks stay here)."))
]


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline config (TOML).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default: output.dir of the config).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Write the budget checks as JUnit XML to this file (for CI).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Ignore cached results and run every stage again.")
    ] = False,
    only: Annotated[
        str | None, typer.Option("--only", metavar="STAGE", help=(
            "Run only this stage (export, verify, bench, optimize or report); earlier stages come from the "
            "cache, later ones are skipped."))
    ] = None,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Progress as one JSON object per line on stderr.")
    ] = False,
    executor: Annotated[
        str | None, typer.Option("--executor", metavar="BACKEND", help=(
            "Where export, verify and optimize-candidate units run: inprocess or ray (default: the "
            "pipeline's execution.backend)."))
    ] = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Run a pipeline: export, verify, benchmark, check budgets and report."""
    from .config import load_config
    from .junit import write_junit
    from .pipeline import run_pipeline

    try:
        config, raw = load_config(pipeline)
        config = _with_execution(config, executor, ray_address)
        result = run_pipeline(config, raw, out_dir, console=err, quiet=quiet, force=force, only=only,
                              log_json=log_json)
    except ToolchainError as e:  # CI still gets a JUnit file, with the error in it
        if junit:
            evaluation = getattr(e, "evaluation", None)
            write_junit(junit, evaluation, None if evaluation else str(e))
        raise
    if junit:
        write_junit(junit, result.budgets)
    _print_summary(result, quiet)


def _with_execution(config: Any, backend: str | None, address: str | None) -> Any:
    """--executor / --ray-address over the pipeline's [execution]."""
    if backend is None and address is None:
        return config
    return config.model_copy(update={"execution": _execution_section(config.execution.model_dump(), backend,
                                                                     address)})


def _standalone_executor(backend: str | None, address: str | None) -> Any:
    """The executor of --executor / --ray-address for a command without a pipeline (optimize, sweep):
    None in process; a RayExecutor that prints each unit done on the cluster with its node."""
    from .config import ExecutionSection

    execution = _execution_section(ExecutionSection().model_dump(), backend, address)
    if execution.backend == "inprocess":
        return None
    from .ray_executor import executor_for

    executor = executor_for(execution.backend, execution.ray_address, execution.max_retries,
                            execution.connect_timeout_seconds)

    def unit_done(event: dict[str, Any]) -> None:
        if event["status"] == "done":
            err.print(f"  [green]·[/] {event['unit']} [dim](on {event['node']})[/]", highlight=False)

    executor.on_event = unit_done
    return executor


def _execution_section(values: dict[str, Any], backend: str | None, address: str | None) -> Any:
    """An [execution] section's `values` with --executor / --ray-address over them, checked."""
    from .config import ExecutionSection
    from .errors import InputError

    if backend is not None and backend not in ("inprocess", "ray"):
        raise InputError(f"--executor must be inprocess or ray, got {backend!r}")
    values = {**values, **{k: v for k, v in (("backend", backend), ("ray_address", address)) if v is not None}}
    if address is not None and values["backend"] != "ray":
        raise InputError("--ray-address needs --executor ray (or [execution] backend = \"ray\")")
    from pydantic import ValidationError

    try:
        return ExecutionSection.model_validate(values)
    except ValidationError as e:
        raise InputError(f"--ray-address {address!r} is not an address: give auto, HOST:PORT or "
                         "ray://HOST:10001") from e


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (written by `run` or `demo`).")],
) -> None:
    """Rebuild report/report.md and report/report.html from a run's JSON files."""
    from .stages.report import load_run
    from .stages.report_html import write_reports

    md, page = write_reports(load_run(run_dir))
    out.print(f"report: {md}\n        {page}")


@app.command()
def package(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (written by `run` or `demo`).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target profile the bundle is for.")],
    artifact: Annotated[
        list[str] | None,
        typer.Option("--artifact", "-a", help="Artifact to ship (repeatable). Default: the best one "
                                              "that passes the budgets on the target."),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Bundle version (default: [package] version, else 0.0.0).")
    ] = None,
    targets_dir: Annotated[
        Path | None, typer.Option("--targets-dir", help="A folder of your own target profiles.")
    ] = None,
    class_names: Annotated[
        Path | None, typer.Option("--class-names", help="Text file, one class name per line in label order, "
                                                         "written into the bundle for device scripts.")
    ] = None,
    recommended: Annotated[
        bool, typer.Option("--recommended", help="Ship the artifact the run's [optimize] search recommends "
                                                 "for the target.")
    ] = False,
) -> None:
    """Write a reproducible release bundle RUN_DIR/packages/<model>-<version>-<target>.tar.gz."""
    from .package import package_run

    result = package_run(run_dir, target, artifact or None, version, [targets_dir] if targets_dir else None,
                         class_names, recommended)
    out.print(f"chose: {result.reason}", highlight=False)
    out.print(f"bundle: {result.path}\nsha256: {result.sha256}", highlight=False)


@app.command("verify-bundle")
def verify_bundle_command(
    bundle: Annotated[Path, typer.Argument(help="A bundle .tar.gz written by `package`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check a release bundle's checksums and manifest (exit 5 if damaged or tampered with)."""
    from .package import verify_bundle

    summary = verify_bundle(bundle)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    out.print(f"OK {summary['name']}: {summary['files']} files match SHA256SUMS and manifest.json; "
              f"target {summary['target']}, artifacts {', '.join(summary['artifacts'])}; "
              f"bundle checksum beside it: {summary['outer_checksum']}", highlight=False)
    if summary["outer_checksum"] != "ok":
        out.print("note: this shows the bundle is consistent, not who made it (bundles are not signed); compare "
                  "its sha256 with a SHA256SUMS you got over a channel you trust", highlight=False)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("demo-run"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train a small CNN on the bundled digits data and run the whole pipeline on it."""
    from .config import load_config
    from .demo import write_demo_inputs
    from .pipeline import run_pipeline

    out_dir = out_dir.resolve()
    with err.status("[bold]training the demo CNN on scikit-learn's digits[/] …"):
        pipeline = write_demo_inputs(out_dir / "source")
    if not quiet:
        err.print(f"[green]✓[/] trained the demo model: {pipeline.parent / 'digits_cnn.keras'}")
    config, raw = load_config(pipeline)
    result = run_pipeline(config, raw, out_dir, console=err, quiet=quiet)
    _print_summary(result, quiet)


@app.command("export")
def export_command(
    model: Annotated[Path, typer.Argument(help="Keras model (.keras or .h5).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact path (.tflite or .onnx).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="tflite or onnx.")] = "tflite",
    recipe: Annotated[str, typer.Option("--recipe", help="fp32 (default) or a quantization recipe.")] = "fp32",
    batch: Annotated[str, typer.Option("--batch", help="Batch dimension: N (default 1) or 'dynamic'.")] = "1",
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default 17).")] = None,
    nchw: Annotated[bool, typer.Option("--nchw", help="ONNX: 4-D inputs channels-first.")] = False,
    allow_flex: Annotated[
        bool, typer.Option("--allow-flex", help="TFLite: allow Flex (TF Select) ops.")
    ] = False,
    keep_float: Annotated[
        list[str] | None,
        typer.Option("--keep-float", help="Keras layer left in float (repeatable; int8-float-io, ONNX dynamic/int8)."),
    ] = None,
    per_channel: Annotated[
        bool, typer.Option("--per-channel/--no-per-channel", help="ONNX int8: one scale per output channel.")
    ] = True,
    calibration_method: Annotated[
        str, typer.Option("--calibration-method", help="ONNX int8: minmax (default), entropy or percentile.")
    ] = "minmax",
    target: Annotated[
        list[str] | None,
        typer.Option("--target", help="Target profile whose own runtime must load and run it (repeatable)."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Inputs .npz (calibration; compatibility check samples).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    trust_model: Annotated[
        bool, typer.Option("--trust-model", help="Allow Lambda layers (runs code from the file).")
    ] = False,
) -> None:
    """Export one Keras model to TFLite or ONNX, optionally checked on target runtimes."""
    from .config import DEFAULT_ONNX_OPSET
    from .standalone import export_artifact, parse_batch

    result = export_artifact(
        model, output, fmt=fmt, recipe=recipe, batch_size=parse_batch(batch),
        opset=DEFAULT_ONNX_OPSET if opset is None else opset, nchw=nchw, allow_flex=allow_flex,
        keep_float=keep_float, per_channel=per_channel, calibration_method=calibration_method,
        targets=target, data=data, trust=trust_model,
    )
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    info = result["info"]
    out.print(f"[green]✓[/] wrote {result['path']} ({info['bytes']:,} bytes, {fmt} {recipe})")
    for title in ("inputs", "outputs"):
        out.print(f"  {title}: " + ", ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in info[title]))
    for record in result["compat"].values():
        out.print(f"  target {record['target']}: {record['summary']}", highlight=False)


@app.command("verify")
def verify_command(
    artifact: Annotated[Path, typer.Argument(help="A .tflite or .onnx file.")],
    reference: Annotated[Path, typer.Option("--reference", help="The Keras model it was made from.")],
    data: Annotated[Path, typer.Option("--data", help="Evaluation data .npz keyed by input name.")],
    samples: Annotated[int | None, typer.Option("--samples", help="Use the first N samples.")] = None,
    recipe: Annotated[
        str | None, typer.Option("--recipe", help="Tolerance recipe (default: from the artifact's metadata).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    trust_model: Annotated[
        bool, typer.Option("--trust-model", help="Allow Lambda layers (runs code from the file).")
    ] = False,
) -> None:
    """Run an artifact in its runtime and compare it with the Keras model (exit 5 on mismatch)."""
    from .errors import ParityError
    from .standalone import verify_file

    try:
        result = verify_file(artifact, reference, data, samples=samples, recipe=recipe, trust=trust_model)
    except ParityError as e:
        if getattr(e, "result", None) is not None:
            _print_verify(e.result, as_json)
        raise
    _print_verify(result, as_json)


VERIFY_COLUMNS = (
    Column("output", "output", "name"), Column("max", "max abs error", "number"),
    Column("mean", "mean abs error", "number"), Column("cosine", "cosine min", "number"),
    Column("top1", "top-1 agreement", "number"), Column("accuracy", "accuracy", "number"),
)


def _print_verify(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    title = (f"{Path(result['artifact']).name} vs {Path(result['reference']).name} "
             f"({result['recipe']}, {result.get('samples', 0)} samples): {result['verdict']}")
    rows = []
    for name, m in result["outputs"].items():
        def fmt(key: str, spec: str = ".3g", m: dict = m) -> str:
            return "—" if m.get(key) is None else format(m[key], spec)
        rows.append({"output": name, "max": fmt("max_abs_error"), "mean": fmt("mean_abs_error"),
                     "cosine": fmt("cosine_min", ".6f"), "top1": fmt("top1_agreement", ".4f"),
                     "accuracy": fmt("accuracy", ".4f")})
    print_rows(out, title, VERIFY_COLUMNS, rows)
    for failure in result["failures"]:
        out.print(f"  [red]✗[/] {failure}", highlight=False)


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(help="A .keras, .h5, .tflite or .onnx file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    trust_model: Annotated[
        bool, typer.Option("--trust-model", help="Allow Lambda layers (runs code from the file).")
    ] = False,
) -> None:
    """Show a model file's inputs, outputs (with quantization), ops and size; for a Keras model its layers
    and where `truncate` can cut (--at) or drop (--drop)."""
    from .artifact_info import describe

    info = describe(file, trust=trust_model)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    _print_inspect(info)


TENSOR_COLUMNS = (Column("name", "name", "name"), Column("shape", "shape", "name"), Column("dtype", "dtype", "name"),
                  Column("quantization", "quantization"))
LAYER_COLUMNS = (Column("index", "#", "number"), Column("name", "layer", "name"), Column("class", "class", "name"),
                 Column("shape", "output shape", "name"), Column("params", "params", "number"),
                 Column("macs", "MACs", "number"), Column("truncate", "truncate"))


def _print_inspect(info: dict[str, Any]) -> None:
    out.print(f"[bold]{info['path']}[/]", highlight=False)
    out.print(f"{info['format']}, {info['bytes']:,} bytes, sha256 {info['sha256']}", highlight=False)
    for title in ("inputs", "outputs"):
        print_rows(out, title, TENSOR_COLUMNS, [{
            "name": t["name"], "shape": str(t["shape"]), "dtype": t["dtype"],
            "quantization": "—" if not t.get("quantization") else
            f"scale {t['quantization']['scale']}, zero point {t['quantization']['zero_point']}",
        } for t in info[title]])
    if info["format"] == "keras":
        _print_keras_layers(info)
        return
    ops = ", ".join(
        op["name"] + (f" v{op['version']}" if "version" in op else "")
        + (f" ×{op['count']}" if "count" in op else "")
        + (f" [{op['kind']}]" if op.get("kind") not in (None, "builtin") else "")
        for op in info["ops"]
    )
    out.print(f"[bold]ops[/] ({len(info['ops'])}): {ops}", highlight=False)
    if "opset" in info:
        out.print(f"[bold]opset[/]: {info['opset']}")
    if info.get("min_runtime_version"):
        out.print(f"[bold]min runtime version[/] (converter's estimate): {info['min_runtime_version']}")
    if info.get("metadata"):
        out.print(f"[bold]metadata[/]: {info['metadata']}")


def _print_keras_layers(info: dict[str, Any]) -> None:
    """The layer table and what `truncate --at / --drop` accept, so nobody needs Python to choose."""
    marks: dict[str, list[str]] = {}
    for key, mark in (("cut_points", "cut point"), ("droppable_blocks", "droppable block"),
                      ("droppable_layers", "droppable")):
        for name in info[key]:
            marks.setdefault(name, []).append(mark)
    rows = [{"index": str(i), "name": layer["name"], "class": layer["class"],
             "shape": "(" + ", ".join("None" if d is None else str(d) for d in layer["output_shape"]) + ")",
             "params": f"{layer['params']:,}", "macs": "?" if layer["macs"] is None else f"{layer['macs']:,}",
             "truncate": ", ".join(marks.get(layer["name"], []))} for i, layer in enumerate(info["layers"])]
    print_rows(out, f"layers of {info['model_name']} ({info['parameters']:,} parameters)", LAYER_COLUMNS, rows)
    if info.get("layers_note"):
        out.print(f"no layer list: {info['layers_note']}", highlight=False)
        return
    out.print("[bold]cut points[/] (truncate --at LAYER; any layer above is accepted, these cut between blocks): "
              + (", ".join(info["cut_points"]) or "none"), highlight=False)
    out.print("[bold]droppable blocks[/] (truncate --drop ADD_LAYER): "
              + (", ".join(info["droppable_blocks"]) or "none"), highlight=False)
    out.print("[bold]droppable layers[/] (truncate --drop LAYER, shape-preserving): "
              + (", ".join(info["droppable_layers"]) or "none"), highlight=False)


targets_app = typer.Typer(help="List target profiles, or show one.", no_args_is_help=False)
app.add_typer(targets_app, name="targets")
TargetsDirOption = Annotated[
    list[Path] | None,
    typer.Option("--targets-dir", help="A folder of your own target profiles (*.toml); repeatable."),
]


@targets_app.callback(invoke_without_command=True)
def targets_list(
    ctx: typer.Context,
    targets_dir: TargetsDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the target profiles (shipped ones and those in --targets-dir)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = targets_dir
        return
    from .targets.catalog import profile_rows

    rows = profile_rows(targets_dir)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print_rows(out, "targets", [Column("name", "name", "name"), Column("where", "where"), Column("runtime", "runtime"),
                                Column("hardware", "hardware"), Column("threads", "threads", "name")], rows)


@targets_app.command("show")
def targets_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Profile name, e.g. raspberry-pi-4.")],
    targets_dir: TargetsDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print one target profile: connection, runtime, hardware, benchmark settings, budgets."""
    from .targets.catalog import profile_document

    document = profile_document(name, (targets_dir or []) + (ctx.obj or []))
    if as_json:
        print(json.dumps(document, indent=2))
        return
    out.print(f"[bold]{document['name']}[/]  {document['description']}  [dim]({document['file']})[/]")
    out.print(f"threads: {document['threads']}")
    for section in ("connection", "runtime", "hardware", "bench", "budgets"):
        values = {k: v for k, v in document[section].items() if v is not None}
        out.print(f"[bold]\\[{section}][/]")
        for key, value in values.items():
            out.print(f"  {key} = {json.dumps(value)}", highlight=False)
        if not values:
            out.print("  (none set)")


BENCH_KINDS = {"artifact": "name", "target": "name", "backend": "text", "notes": "text"}  # the rest: numbers


GROUP_KINDS = {"artifact": "name", "fleet": "name", "outliers": "text", "failed": "text"}  # the rest: numbers


def _print_bench(results: list[dict[str, Any]], document: dict[str, Any] | None = None) -> None:
    from .fleet import GROUP_COLUMNS, group_table_rows
    from .stages.bench import COMPARISON_COLUMNS, comparison_rows

    columns = [Column(key, title, BENCH_KINDS.get(key, "number")) for key, title in COMPARISON_COLUMNS]
    print_rows(out, "benchmark (latency per inference)", columns, comparison_rows(results))
    if document and document.get("groups"):
        columns = [Column(key, title, GROUP_KINDS.get(key, "number")) for key, title in GROUP_COLUMNS]
        print_rows(out, "fleets (median of the devices' p50)", columns, group_table_rows(document["groups"]))


@app.command()
def bench(
    artifacts: Annotated[list[Path], typer.Argument(help=".tflite / .onnx files to benchmark.")],
    target: Annotated[list[str] | None, typer.Option("--target", "-t", help="Target profile; repeatable.")] = None,
    threads: Annotated[str | None, typer.Option("--threads", help="Thread counts, e.g. 1,4 "
                                                "(default: the profile's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print bench.json to stdout.")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write bench.json here.")] = None,
    targets_dir: TargetsDirOption = None,
    inputs: Annotated[Path | None, typer.Option("--inputs", help="Input data (.npz keyed by input name) "
                                                "instead of random inputs.")] = None,
    min_runs: Annotated[int | None, typer.Option("--min-runs", min=1, help="Timed runs, at least.")] = None,
    min_seconds: Annotated[float | None, typer.Option("--min-seconds", min=0, help="Timed seconds, at least.")] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", min=0.001,
                                                      help="Stop timing after this long.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=1, help="Seconds per benchmark.")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help=(
        "Lease the boards on this Ray cluster (auto, HOST:PORT or ray://HOST:10001): drivers on other "
        "machines connected to it never time on one board at once."))] = None,
) -> None:
    """Benchmark artifacts on one or more targets (in parallel) and print a comparison table."""
    from .config import find_profile
    from .fileio import atomic_write_json
    from .fleet import expand_targets
    from .stages.bench import bench_document, run_benchmarks

    counts = _thread_counts(threads)
    given = [find_profile(name, targets_dir) for name in (target or ["local"])]
    profiles, fleet_of = expand_targets(given)
    failures: dict[str, str] | None = {} if fleet_of else None
    overrides = {"min_runs": min_runs, "min_seconds": min_seconds, "max_seconds": max_seconds,
                 "timeout_seconds": timeout}

    def progress(record: dict[str, Any]) -> None:
        if not as_json:
            err.print(f"[green]✓[/] {record['artifact']} on {record['target']} x{record['threads']}: "
                      f"p50 {record['latency_ms']['p50']:.3f} ms"
                      + (" (EMULATED timing, not a device figure)" if record.get("connection") == "emulated" else ""),
                      highlight=False)

    with _bench_leases(ray_address):
        results = run_benchmarks(artifacts, profiles, counts, None, progress, overrides=overrides, inputs=inputs,
                                 failures=failures, fleet_of=fleet_of)
    document = bench_document(results)
    if fleet_of:
        document.update(_fleet_sections(given, results, fleet_of, failures or {}))
    if out_file is not None:
        atomic_write_json(out_file, document)
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        _print_bench(results, document)
        if out_file is not None:
            out.print(f"wrote {out_file}")
    if failures:
        from .errors import TargetError

        raise TargetError(f"{len(failures)} device(s) failed, the others were measured: "
                          + "; ".join(failures.values()))


def _bench_leases(ray_address: str | None) -> Any:
    """Boards leased with flock here, or on the Ray cluster at --ray-address; waits are shown."""
    from .leases import ClusterLeases, leases_in_use

    def waiting(message: str) -> None:
        err.print(f"[yellow]…[/] {message}", highlight=False)

    if ray_address is None:
        return leases_in_use(None, waiting)
    from .ray_executor import RayExecutor

    execution = _execution_section({}, "ray", ray_address)
    executor = RayExecutor(execution.ray_address, connect_timeout_seconds=execution.connect_timeout_seconds)
    return leases_in_use(ClusterLeases(executor.connect, execution.lease_ttl_seconds), waiting)


def _thread_counts(threads: str | None) -> list[int] | None:
    from .errors import InputError

    if threads is None:
        return None
    try:
        counts = [int(t) for t in threads.split(",")]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise InputError(f"--threads must be comma-separated positive integers like 1,4; got {threads!r}")
    return counts


def _fleet_sections(given: list[Any], results: list[dict[str, Any]], fleet_of: dict[str, str],
                    failures: dict[str, str]) -> dict[str, Any]:
    from .fleet import group_rows

    ratios = {p.name: p.fleet.outlier_ratio for p in given if p.fleet is not None}
    return {"groups": group_rows(results, fleet_of, failures, ratios), "failed": failures or None}


emulator_app = typer.Typer(help="A Raspberry Pi without a Pi: the Pi's own aarch64 runtimes under QEMU.",
                           no_args_is_help=True)
app.add_typer(emulator_app, name="emulator")
CacheDirOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Where the emulated stack lives (default: $EDGE_TOOLCHAIN_CACHE/emulator "
                 "or ~/.cache/edge-toolchain/emulator)."),
]


@emulator_app.command("setup")
def emulator_setup(
    target: Annotated[list[str] | None, typer.Option("--target", "-t", help="raspberry-pi-4 or raspberry-pi-5; "
                                                     "repeatable (default: both).")] = None,
    runtime: Annotated[list[str] | None, typer.Option("--runtime", help="tflite_runtime or ai_edge_litert "
                                                      "(with onnxruntime); repeatable (default: both).")] = None,
    cache_dir: CacheDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stack status as JSON.")] = False,
) -> None:
    """Build the emulated stack once: qemu-user-static, arm64 python3.11 .debs, aarch64 wheels."""
    from .emulator.stack import BOARDS, RUNTIMES, setup_stack
    from .errors import InputError

    for name in target or []:
        if name not in BOARDS:
            raise InputError(f"--target must be one of {', '.join(BOARDS)}, got {name!r}")
    for name in runtime or []:
        if name not in RUNTIMES:
            raise InputError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {name!r}")
    state = setup_stack(cache_dir, target, runtime, log=lambda m: err.print(f"[dim]·[/] {m}", highlight=False))
    if as_json:
        print(json.dumps(state, indent=2))
        return
    _print_emulator_status(state)
    built = ", ".join(state["last_setup"]["built"]) or "nothing, all cached"
    out.print(f"setup took {state['last_setup']['seconds']:.1f} s (built: {built})")


@emulator_app.command("status")
def emulator_status(
    cache_dir: CacheDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Say what is built in the emulated stack's cache folder."""
    from .emulator.stack import stack_status

    state = stack_status(cache_dir)
    if as_json:
        print(json.dumps(state, indent=2))
        return
    _print_emulator_status(state)


def _print_emulator_status(state: dict[str, Any]) -> None:
    mark = {True: "[green]ready[/]", False: "[red]missing[/]"}
    out.print(f"[bold]emulated Raspberry Pi stack[/] in {state['cache_dir']}", highlight=False)
    out.print(f"qemu:   {mark[state['qemu']['ready']]} {state['qemu']['version'] or ''}", highlight=False)
    out.print(f"python: {mark[state['python']['ready']]} Debian bookworm arm64 python{state['python']['version']} "
              f"({state['python']['rootfs_megabytes']} MB)", highlight=False)
    for name, board in state["boards"].items():
        out.print(f"board {name}: {mark[board['ready']]} -cpu {board['qemu_cpu']}", highlight=False)
    for name, site in state["runtimes"].items():
        packages = ", ".join(f"{k} {v}" for k, v in site["packages"].items()
                             if k in ("numpy", "tflite-runtime", "ai-edge-litert", "onnxruntime"))
        out.print(f"runtime {name}: {mark[site['ready']]} {packages} ({site['megabytes']} MB)", highlight=False)
    if not all([state["qemu"]["ready"], state["python"]["ready"],
                *(b["ready"] for b in state["boards"].values()), *(r["ready"] for r in state["runtimes"].values())]):
        out.print("build what is missing with `edge-toolchain emulator setup`")


@emulator_app.command("check")
def emulator_check(
    artifacts: Annotated[list[Path], typer.Argument(help=".tflite / .onnx files to check.")],
    target: Annotated[str, typer.Option("--target", "-t", help="raspberry-pi-4 or raspberry-pi-5.")] = "raspberry-pi-4",
    runtime: Annotated[str, typer.Option("--runtime", help="Interpreter for .tflite files: tflite_runtime "
                                         "or ai_edge_litert (.onnx always runs on onnxruntime).")] = "tflite_runtime",
    inputs: Annotated[Path | None, typer.Option("--inputs", help="Inputs .npz keyed by input name (Keras layout); "
                                                "default: 8 random samples.")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="Tolerance recipe (default: from the file name "
                                               "<name>.<recipe>.<format>, else fp32).")] = None,
    golden: Annotated[Path | None, typer.Option("--golden", help="Save golden .npz files (inputs and emulated "
                                                "outputs) of passing artifacts here.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=1, help=(
        "Seconds per artifact (default: scaled from the artifact's MACs, at least 300). No answer "
        "in time is the verdict TIMEOUT (exit 6), not a failure."))] = None,
    cache_dir: CacheDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Load and invoke artifacts on the emulated Pi and compare their outputs with the host's."""
    from .emulator.gate import check_files
    from .errors import ParityError, TargetError

    def print_result(name: str, record: dict[str, Any]) -> None:
        verdict = {"pass": "[green]pass[/]", "timeout": "[yellow]TIMEOUT[/]"}.get(record["verdict"], "[red]FAIL[/]")
        seconds = record["emulated_seconds"]
        out.print(f"{verdict} {name}: {record['summary']} [dim](emulated run {seconds:.1f} s)[/]", highlight=False)

    def still_running(name: str, seconds: float, limit: float) -> None:
        err.print(f"[dim]{name}: still running on the emulated {target}, {seconds:.0f} s of at most {limit:.0f} s[/]",
                  highlight=False)

    document = check_files(artifacts, target, runtime, inputs=inputs, recipe=recipe, golden_dir=golden,
                           timeout=timeout, cache_dir=cache_dir, on_result=None if as_json else print_result,
                           heartbeat=still_running)
    if as_json:
        print(json.dumps(document, indent=2))
    verdicts = {name: record["verdict"] for name, record in document["artifacts"].items()}
    failed = [n for n, v in verdicts.items() if v == "fail"]
    slow = [n for n, v in verdicts.items() if v == "timeout"]
    also = f"; no answer in time (TIMEOUT): {', '.join(slow)}" if slow else ""
    if failed:
        raise ParityError(f"{len(failed)} artifact(s) fail on the emulated {target}: {', '.join(failed)}{also}")
    if slow:
        raise TargetError(f"{len(slow)} artifact(s) gave no answer in time on the emulated {target}: "
                          f"{', '.join(slow)}; that is no verdict on the artifact: re-run with a longer --timeout")


HEAD_HELP = ("New head, comma-separated: gap | gmp | flatten | dense:UNITS[:ACT] | dropout:RATE | "
             "activation:NAME | classes:N[:softmax|linear], e.g. 'gap,dense:64:relu,dropout:0.2,classes:10'.")


@app.command("truncate")
def truncate_command(
    model: Annotated[Path, typer.Argument(help="Keras model (.keras or .h5).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Truncated model to write (.keras).")],
    at: Annotated[list[str] | None, typer.Option(
        "--at", metavar="LAYER", help="Cut after this layer (name, outer/inner, or index into model.layers, "
        "negative from the end: --at=-3). Repeat for a multi-output model.")] = None,
    drop: Annotated[list[str] | None, typer.Option(
        "--drop", metavar="NAME", help="Drop a shape-preserving layer, or a residual block named by its Add "
        "layer (e.g. block_14_add). Repeatable.")] = None,
    head: Annotated[str | None, typer.Option("--head", metavar="SPEC", help=HEAD_HELP)] = None,
    train: Annotated[Path | None, typer.Option(
        "--train", metavar="DATA.npz", help="Labelled data (inputs by name + labels) to train the head on; "
        "the base stays frozen.")] = None,
    eval_data: Annotated[Path | None, typer.Option(
        "--eval", metavar="EVAL.npz", help="Labelled held-out data: the head's loss and accuracy on it are "
        "printed after each epoch.")] = None,
    labels_key: Annotated[str, typer.Option("--labels-key", help="Key of the labels in --train.")] = "y",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Head training epochs.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the head's initialisation and training.")] = 0,
    trust_model: Annotated[
        bool, typer.Option("--trust-model", help="Allow Lambda and custom layers (runs code from the model).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Cut a model at layers, drop inner layers or residual blocks, and attach a new head."""
    from .stages.truncate import truncate_file

    with _head_progress() as progress:
        info = truncate_file(model, output, at=at, drop=drop, head=head, train=train, eval_file=eval_data,
                             labels_key=labels_key, epochs=epochs, seed=seed, trust=trust_model,
                             progress=progress)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    macs = info["macs"]
    out.print(f"[bold]{info['path']}[/]  {info['bytes']:,} bytes, sha256 {info['sha256'][:16]}…", highlight=False)
    out.print(f"parameters: {info['params']['before']:,} → {info['params']['after']:,}", highlight=False)
    if macs["before"] is not None and macs["after"] is not None:
        out.print(f"MACs:       {macs['before']:,} → {macs['after']:,}", highlight=False)
    for t in info["outputs"]:
        out.print(f"output {t['name']}: {t['shape']} {t['dtype']}", highlight=False)
    if head and not info["head_trained"]:
        out.print("the new head is untrained (give --train DATA.npz to train it)")
    if info["head_metrics"]:
        out.print(f"head after {epochs} epoch(s): {epoch_metrics_text(info['head_metrics'])}", highlight=False)


def epoch_metrics_text(metrics: dict[str, float]) -> str:
    text = f"loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f}"
    if "eval_loss" in metrics:
        text += f"; eval loss {metrics['eval_loss']:.4f}, accuracy {metrics['eval_accuracy']:.4f}"
    return text


@contextlib.contextmanager
def _head_progress() -> Iterator[Any]:
    """A progress bar on stderr while the frozen base computes features, then one line per epoch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=True)
    tasks: dict[str, Any] = {}
    tenths: dict[str, int] = {}
    last_done: dict[str, int] = {}

    def show(event: Any) -> None:
        if event.stage == "epoch":
            bar.console.print(f"[dim]epoch {event.done}/{event.total}: "
                              f"{epoch_metrics_text(event.metrics)}[/]", highlight=False)
            return
        restarted = event.done <= last_done.get(event.what, 0)  # the next model's features (sweep)
        last_done[event.what] = event.done
        description = f"features of the {event.what} data"
        if err.is_terminal:
            if event.what not in tasks:
                tasks[event.what] = bar.add_task(description, total=event.total)
            elif restarted:
                bar.reset(tasks[event.what], total=event.total)
            bar.update(tasks[event.what], completed=event.done)
            return
        tenth = event.done * 10 // event.total  # a log, not a terminal: a line per tenth of the data
        if restarted or tenths.get(event.what, -1) < tenth:
            tenths[event.what] = tenth
            err.print(f"[dim]{description}: {event.done}/{event.total}[/]", highlight=False)

    with bar:
        yield show


@app.command("sweep")
def sweep_command(
    model: Annotated[Path, typer.Argument(help="Keras model (.keras or .h5).")],
    data: Annotated[Path, typer.Option("--data", metavar="DATA.npz", help=(
        "Data keyed by input name, with labels (else agreement with the model's top-1 is scored). "
        "Heads train on it; 20% is held out unless --eval is given."))],
    eval_data: Annotated[Path | None, typer.Option("--eval", metavar="EVAL.npz", help="Held-out data.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for sweep.json, sweep.md, sweep.png.")] = Path(
        "sweep"),
    at: Annotated[list[str] | None, typer.Option(
        "--at", metavar="LAYER", help="Cut points to try (repeatable); default: the block boundaries.")] = None,
    head: Annotated[str | None, typer.Option("--head", metavar="SPEC", help=(
        "Head for every cut point, ending in classes:N; default 'gap,classes:N' (no gap on flat features).")
    )] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Head training epochs per cut point.")] = 10,
    classes: Annotated[int | None, typer.Option("--classes", min=1, help=(
        "Outputs of the default head; default: the labels' classes (0..max), without labels the model's."))
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and the heads.")] = 0,
    labels_key: Annotated[str, typer.Option("--labels-key", help="Key of the labels in the data.")] = "y",
    samples: Annotated[int | None, typer.Option("--samples", min=1, help="Use at most N samples of each set.")
                       ] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="Target profile for the latency.")] = "local",
    threads: Annotated[int, typer.Option("--threads", min=1, help="Benchmark threads.")] = 1,
    min_seconds: Annotated[float, typer.Option("--min-seconds", min=0, help="Timed seconds per point.")] = 0.3,
    max_latency_ms: Annotated[float | None, typer.Option(
        "--max-latency-ms", min=0, help="Latency budget (p50): recommend the most accurate point within it.")] = None,
    min_accuracy: Annotated[float | None, typer.Option(
        "--min-accuracy", min=0, max=1, help="Accuracy floor: recommend the fastest point above it.")] = None,
    no_drops: Annotated[bool, typer.Option("--no-drops", help="Skip pricing each droppable residual block.")
                        ] = False,
    trust_model: Annotated[
        bool, typer.Option("--trust-model", help="Allow Lambda and custom layers (runs code from the model).")
    ] = False,
    executor: StandaloneExecutorOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Try cut points: params, MACs, size, TFLite latency and accuracy with a retrained head."""
    from .sweep import Budget, sweep_file

    units = _standalone_executor(executor, ray_address)
    with _head_progress() as head_progress:
        document = sweep_file(
            model, data, out_dir, eval_data=eval_data, labels_key=labels_key, samples=samples, points=at,
            head=head, epochs=epochs, classes=classes, seed=seed, target=target, threads=threads,
            bench_overrides={"min_seconds": min_seconds}, budget=Budget(max_latency_ms, min_accuracy),
            drops=not no_drops, trust=trust_model, head_progress=head_progress,
            progress=lambda message: err.print(f"[dim]{message}[/]", highlight=False), executor=units,
        )
    columns = (Column("at", "cut at", "name"), Column("params", "params", "number"), Column("macs", "MACs", "number"),
               Column("p50", "p50 ms", "number"), Column("score", document["metric"], "number"),
               Column("pareto", "Pareto", "name"))
    chosen = document["recommended"]
    rows = [{"at": ("full model" if p["at"] is None else p["at"])
             + (" (recommended)" if chosen and chosen["at"] == p["at"] else ""),
             "params": f"{p['params']:,}", "macs": f"{p['macs']:,}", "p50": f"{p['latency_ms']['p50']:.3f}",
             "score": f"{p['accuracy']:.4f}", "pareto": "★" if p["pareto"] else ""} for p in document["points"]]
    print_rows(out, f"cut-point sweep ({document['metric']})", columns, rows)
    out.print(f"sweep: {out_dir / 'sweep.json'}, {out_dir / 'sweep.md'}, {out_dir / 'sweep.png'}", highlight=False)


@app.command("optimize")
def optimize_command(
    model: Annotated[Path, typer.Argument(help="Keras model (.keras or .h5).")],
    data: Annotated[Path, typer.Option("--data", metavar="DATA.npz", help=(
        "Data keyed by input name, labels under 'y' (else top-1 agreement with Keras is the metric). "
        "The first third (at most 100 samples) calibrates, the rest evaluates."))],
    target: Annotated[list[str] | None, typer.Option("--target", "-t", help="Target profile; repeatable "
                                                     "(default: local).")] = None,
    max_accuracy_drop: Annotated[float, typer.Option("--max-accuracy-drop", help="Accuracy budget vs the Keras "
                                                     "model (0.01 = 1 pt).")] = 0.01,
    max_size_mb: Annotated[float | None, typer.Option("--max-size-mb", help="Largest artifact allowed.")] = None,
    formats: Annotated[str, typer.Option("--formats", help="Formats to search, e.g. tflite,onnx.")] = "tflite,onnx",
    candidates: Annotated[str | None, typer.Option("--candidates", help="Only these candidates (comma-separated "
                                                   "names; the fp32 baselines always run).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for optimize.json and the candidates.")
                       ] = Path("optimize"),
    time_budget: Annotated[float | None, typer.Option("--time-budget", help="Seconds; no new candidate starts "
                                                      "after this.")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Benchmark threads.")] = 1,
    min_seconds: Annotated[float | None, typer.Option("--min-seconds", min=0, help="Timed seconds per full "
                                                      "benchmark (default: the profile's).")] = None,
    targets_dir: TargetsDirOption = None,
    no_explain: Annotated[bool, typer.Option("--no-explain", help="Skip profiling why each candidate is slow "
                                             "(and the candidates derived from those profiles).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Ignore the search's cache: rebuild and re-measure every "
                                        "candidate.")] = False,
    trust_model: Annotated[
        bool, typer.Option("--trust-model", help="Allow Lambda and custom layers (runs code from the model).")
    ] = False,
    executor: StandaloneExecutorOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Find the fastest artifact that meets an accuracy budget on each target, by measuring there."""
    from .config import find_profile
    from .optimize.search import Budget, SearchSettings, optimize_file

    units = _standalone_executor(executor, ray_address)
    profiles = [find_profile(name, targets_dir) for name in (target or ["local"])]
    settings = SearchSettings(threads=threads, time_budget_s=time_budget, explain=not no_explain, force=force,
                              bench={"min_seconds": min_seconds} if min_seconds is not None else {})
    document = optimize_file(
        model, data, profiles, out_dir, Budget(max_accuracy_drop, max_size_mb), settings,
        formats=[f.strip() for f in formats.split(",") if f.strip()],
        only=[c.strip() for c in candidates.split(",") if c.strip()] if candidates else None,
        trust=trust_model, progress=lambda message: err.print(f"[dim]{message}[/]", highlight=False),
        executor=units)
    _print_optimize(document)
    out.print(f"optimize: {out_dir / 'optimize.json'}", highlight=False)
    empty = [name for name, chosen in document["recommended"].items() if chosen is None]
    if empty:
        from .errors import BudgetError

        raise BudgetError(f"no candidate meets the budgets on {', '.join(empty)} (see {out_dir / 'optimize.json'}); "
                          "relax --max-accuracy-drop / --max-size-mb, or raise --time-budget")


def _why_slow(result: dict[str, Any], record: dict[str, Any]) -> str:
    """The verdict's reason, and for a candidate that lost on speed what the runtime did not accelerate."""
    why = result.get("why", record.get("why", ""))
    lost = why.startswith(("pruned", "slower than"))
    return f"{why}; {record['explain']['reason']}" if lost and "explain" in record else why


OPTIMIZE_COLUMNS = (Column("candidate", "candidate", "name"), Column("mb", "MB", "number"),
                    Column("accuracy", "accuracy", "number"), Column("p50", "p50 ms", "number"),
                    Column("verdict", "verdict", "name"), Column("why", "why"))


def _optimize_row(record: dict[str, Any], result: dict[str, Any]) -> dict[str, str]:
    accuracy = record.get("accuracy", {})
    score = accuracy.get("accuracy", accuracy.get("top1_agreement"))
    p50 = result.get("p50_ms", (result.get("probe") or {}).get("p50_ms"))
    return {"candidate": record["name"], "mb": f"{record['bytes'] / 1e6:.3f}" if "bytes" in record else "-",
            "accuracy": f"{score:.4f}" if score is not None else "-",
            "p50": (f"{p50:.3f}" + (" (probe)" if "p50_ms" not in result else "")) if p50 is not None else "-",
            "verdict": result.get("verdict", record["verdict"]), "why": _why_slow(result, record)}


def _print_optimize(document: dict[str, Any]) -> None:
    for name, found in document["targets"].items():
        title = f"optimize on {name}" + ("" if found["measured"] else " (ESTIMATE: not measured)")
        rows = [_optimize_row(record, found["results"].get(record["name"], {})) for record in document["candidates"]]
        print_rows(out, title, OPTIMIZE_COLUMNS, rows)
        chosen = found["recommended"]
        if chosen:
            out.print(f"recommended on {name}: {chosen['candidate']} ({chosen['path']}); {chosen['note']}",
                      highlight=False)
        else:
            out.print(f"[red]no candidate meets the budgets on {name}[/]", highlight=False)


SUMMARY_KINDS = {"artifact": "name", "format": "name", "recipe": "name", "verify": "name", "quality": "text",
                 "target": "name", "budget": "name"}  # the rest: numbers


def _print_summary(result: Any, quiet: bool) -> None:
    from .stages.report import COLUMNS, summary_rows

    budgets = getattr(result, "budgets", None) or {}
    rows = summary_rows(result.manifest, budgets)
    hidden = set() if any(r["checks"] for r in budgets.get("results", [])) else {"budget"}
    columns = [Column(key, title, SUMMARY_KINDS.get(key, "number")) for key, title in COLUMNS if key not in hidden]
    print_rows(out, "edge-toolchain run", columns, rows)
    for r in budgets.get("results", []):
        if not r["passed"]:
            out.print(f"[red]over budget[/] {r['artifact']} on {r['target']}: {'; '.join(r['failures'])}",
                      highlight=False)
    out.print(f"run directory: {result.run_dir}")
    out.print(f"manifest:      {result.run_dir / 'manifest.json'}")
    if result.report:
        out.print(f"report:        {result.report}")
        out.print(f"               {result.report.with_suffix('.html')}")


def main(argv: list[str] | None = None) -> int:
    """Every failure ends here as one line and its documented exit code (traceback with --debug)."""
    from .interrupt import sigint_recorded

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is first imported
    STATE["debug"] = False
    with sigint_recorded():
        return _run_app(argv if argv is not None else sys.argv[1:])


def _run_app(args: list[str]) -> int:
    from typer import Abort
    from typer._click.exceptions import ClickException  # typer vendors click; no public name

    from .interrupt import interrupted

    try:
        code = app(args=args, prog_name="edge-toolchain", standalone_mode=False)
    except ClickException as e:  # usage errors: typer's own display, exit 2
        _show_usage_error(e)
        return e.exit_code
    except Abort as e:  # click turns an EOFError from a command into Abort, as if Ctrl-D was pressed
        return _report_unexpected(e.__cause__ or e)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        return _report_interrupt()
    except Exception as e:
        return _report_unexpected(e)
    if interrupted():  # a Ctrl-C that TensorFlow swallowed: the run did not finish as asked
        return _report_interrupt()
    return code if isinstance(code, int) else 0


def _show_usage_error(error: Exception) -> None:
    try:
        from typer import rich_utils

        rich_utils.rich_format_error(error)
    except ImportError:
        error.show()


def _report_interrupt() -> int:
    err.print("interrupted (Ctrl-C): stopped; no partial output was kept")
    return 130


def _report_unexpected(error: BaseException) -> int:
    """ToolchainError as is; OS errors mapped to their class; anything else is a bug (exit 1)."""
    from .fileio import os_error, symlink_loop_error

    known: ToolchainError | None = None
    if isinstance(error, ToolchainError):
        known = error
    elif isinstance(error, OSError):
        known = os_error(error)
    elif isinstance(error, RuntimeError):
        known = symlink_loop_error(error)
    if STATE["debug"]:
        import traceback

        traceback.print_exception(error)
    err.print("[bold red]error:[/] ", end="")
    if known is None:
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        err.print(f"internal error: {type(error).__name__}: {reason}; re-run with --debug and report the "
                  "traceback", highlight=False, soft_wrap=True, markup=False)
        return 1
    err.print(str(known), highlight=False, soft_wrap=True, markup=False)
    return known.exit_code


if __name__ == "__main__":
    sys.exit(main())

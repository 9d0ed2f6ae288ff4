"""Command line: parse -> config -> call one function -> print / exit code."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import ToolchainError

app = typer.Typer(
    name="edge-toolchain",
    help="Take a trained Keras model to edge devices: export, verify, benchmark, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 140)
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


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline config (TOML).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default: output.dir of the config).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Run a pipeline: export, verify, benchmark and report."""
    from .config import load_config
    from .pipeline import run_pipeline

    config, raw = load_config(pipeline)
    result = run_pipeline(config, raw, out_dir, console=err, quiet=quiet)
    _print_summary(result, quiet)


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


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(help="A .keras, .h5, .tflite or .onnx file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    trust_model: Annotated[
        bool, typer.Option("--trust-model", help="Allow Lambda layers (runs code from the file).")
    ] = False,
) -> None:
    """Show a model file's inputs, outputs (with quantization), ops and size."""
    from .artifact_info import describe

    info = describe(file, trust=trust_model)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    out.print(f"[bold]{info['path']}[/]  {info['format']}, {info['bytes']:,} bytes, sha256 {info['sha256'][:16]}…")
    for title in ("inputs", "outputs"):
        table = Table(title=title, title_justify="left")
        for column in ("name", "shape", "dtype", "quantization"):
            table.add_column(column)
        for t in info[title]:
            q = t.get("quantization")
            table.add_row(t["name"], str(t["shape"]), t["dtype"],
                          "—" if not q else f"scale {q['scale']}, zero point {q['zero_point']}")
        out.print(table)
    ops = ", ".join(
        op["name"] + (f" v{op['version']}" if "version" in op else "")
        + (f" ×{op['count']}" if "count" in op else "")
        + (f" [{op['kind']}]" if op.get("kind") not in (None, "builtin") else "")
        for op in info["ops"]
    )
    out.print(f"[bold]ops[/] ({len(info['ops'])}): {ops}")
    if "opset" in info:
        out.print(f"[bold]opset[/]: {info['opset']}")
    if info.get("metadata"):
        out.print(f"[bold]metadata[/]: {info['metadata']}")


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
    table = Table(title="targets")
    for column in ("name", "where", "runtime", "hardware", "threads"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["where"], row["runtime"], row["hardware"], row["threads"])
    out.print(table)


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
    min_runs: Annotated[int | None, typer.Option("--min-runs", min=1)] = None,
    min_seconds: Annotated[float | None, typer.Option("--min-seconds", min=0)] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", min=0.001)] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=1, help="Seconds per benchmark.")] = None,
) -> None:
    """Benchmark artifacts on one or more targets (in parallel) and print a comparison table."""
    from .config import find_profile
    from .errors import InputError
    from .fileio import atomic_write_json
    from .stages.bench import COMPARISON_COLUMNS, bench_document, comparison_rows, run_benchmarks

    counts = None
    if threads is not None:
        try:
            counts = [int(t) for t in threads.split(",")]
        except ValueError:
            counts = []
        if not counts or any(c < 1 for c in counts):
            raise InputError(f"--threads must be comma-separated positive integers like 1,4; got {threads!r}")
    profiles = [find_profile(name, targets_dir) for name in (target or ["local"])]
    overrides = {"min_runs": min_runs, "min_seconds": min_seconds, "max_seconds": max_seconds,
                 "timeout_seconds": timeout}

    def progress(record: dict[str, Any]) -> None:
        if not as_json:
            err.print(f"[green]✓[/] {record['artifact']} on {record['target']} x{record['threads']}: "
                      f"p50 {record['latency_ms']['p50']:.3f} ms", highlight=False)

    results = run_benchmarks(artifacts, profiles, counts, None, progress, overrides=overrides, inputs=inputs)
    document = bench_document(results)
    if out_file is not None:
        atomic_write_json(out_file, document)
    if as_json:
        print(json.dumps(document, indent=2))
        return
    table = Table(title="benchmark (latency per inference)")
    for key, title in COMPARISON_COLUMNS:
        table.add_column(title, no_wrap=key in ("artifact", "target"))
    for row in comparison_rows(results):
        table.add_row(*[row[key] for key, _ in COMPARISON_COLUMNS])
    out.print(table)
    if out_file is not None:
        out.print(f"wrote {out_file}")


def _print_summary(result: Any, quiet: bool) -> None:
    from .stages.report import COLUMNS, summary_rows

    rows = summary_rows(result.manifest)
    table = Table(title="edge-toolchain run")
    keep = [(k, t) for k, t in COLUMNS if k not in ("format",)]
    for _, title in keep:
        table.add_column(title)
    for row in rows:
        table.add_row(*[row[k] for k, _ in keep])
    out.print(table)
    out.print(f"run directory: {result.run_dir}")
    out.print(f"manifest:      {result.run_dir / 'manifest.json'}")
    if result.report:
        out.print(f"report:        {result.report}")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is first imported
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="edge-toolchain")
    except SystemExit as e:  # typer/click: usage errors exit 2, --help and --version 0
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except ToolchainError as e:
        if STATE["debug"]:
            import traceback

            traceback.print_exception(e)
        err.print("[bold red]error:[/] ", end="")
        err.print(str(e), highlight=False, soft_wrap=True, markup=False)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bad input: each gives its specific error and exit code, and the output directory is left untouched.

Every case runs twice: into a copy of an earlier complete run (whose files must not change,
not even their mtimes) and into a fresh path (which must not be created).
"""

from __future__ import annotations

import shutil
import socket
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from toolchain.cli import main


def edit(pipeline: Path, old: str, new: str) -> None:
    text = pipeline.read_text()
    assert old in text, f"{old!r} not in the demo pipeline"
    pipeline.write_text(text.replace(old, new, 1))


def model_file(pipeline: Path) -> Path:
    return pipeline.parent / "digits_cnn.keras"


def eval_file(pipeline: Path) -> Path:
    return pipeline.parent / "digits_eval.npz"


def use_model(pipeline: Path, name: str, data: bytes) -> None:
    (pipeline.parent / name).write_bytes(data)
    edit(pipeline, 'path = "digits_cnn.keras"', f'path = "{name}"')


def not_a_keras_zip(pipeline: Path) -> None:
    with zipfile.ZipFile(model_file(pipeline), "w") as archive:
        archive.writestr("weights.bin", b"\0" * 64)


def truncated_model(pipeline: Path) -> None:
    data = model_file(pipeline).read_bytes()
    model_file(pipeline).write_bytes(data[: len(data) // 2])


def corrupt_h5(pipeline: Path) -> None:
    use_model(pipeline, "model.h5", b"\x89HDF\r\n\x1a\n" + b"\xff" * 200)


def eval_data(**arrays: np.ndarray) -> Callable[[Path], None]:
    def write(pipeline: Path) -> None:
        np.savez(eval_file(pipeline), **arrays)

    return write


def images(count: int = 4, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (count, 8, 8, 1)).astype(dtype)


def with_value(value: float) -> np.ndarray:
    data = images()
    data[2, 3, 4, 0] = value
    return data


def empty_image_folder(pipeline: Path) -> None:
    (pipeline.parent / "no-images").mkdir()
    (pipeline.parent / "no-images" / "notes.txt").write_text("no pictures here")
    edit(pipeline, 'eval = "digits_eval.npz"', 'eval = "no-images"')


def unreachable_ssh_target(pipeline: Path) -> None:
    with socket.socket() as probe:  # a port on 127.0.0.1 that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    devices = pipeline.parent / "devices"
    devices.mkdir()
    (devices / "dead-pi.toml").write_text(textwrap.dedent(f"""
        name = "dead-pi"
        [connection]
        kind = "ssh"
        host = "127.0.0.1"
        port = {port}
        user = "pi"
        connect_timeout_seconds = 5
        retries = 0
    """))
    edit(pipeline, 'targets = ["local"]', 'targets = ["dead-pi"]\ntargets_dir = "devices"')


# case -> (break the inputs, expected exit code, expected text in the error)
CASES: dict[str, tuple[Callable[[Path], None], int, str]] = {
    "model missing": (lambda p: model_file(p).unlink(), 2, "model file not found"),
    "model empty": (lambda p: model_file(p).write_bytes(b""), 2, "model file is empty"),
    "model truncated": (truncated_model, 2, "not a valid .keras file"),
    "model corrupt": (lambda p: model_file(p).write_bytes(b"\x00garbage" * 50), 2, "not a valid .keras file"),
    "zip that is not a keras model": (not_a_keras_zip, 2, "not a Keras model (no config.json inside"),
    "h5 corrupt": (corrupt_h5, 2, "corrupt HDF5 model file"),
    "h5 not hdf5": (lambda p: use_model(p, "model.h5", b"plain text"), 2, "not an HDF5 file"),
    "tflite given as the model": (lambda p: use_model(p, "model.tflite", b"TFL3" * 8), 2,
                                  "unsupported model file type '.tflite'"),
    "config wrong type": (lambda p: edit(p, "batch_size = 1", 'batch_size = "one"'), 2,
                          "'export.batch_size' must be an integer, got 'one'"),
    "config out of range": (lambda p: edit(p, "min_runs = 200", "min_runs = 0"), 2,
                            "'bench.min_runs': Input should be greater than or equal to 1"),
    "config unknown key": (lambda p: edit(p, "[verify]", "[verify]\nsamplez = 3"), 2,
                           "unknown key 'verify.samplez' (did you mean 'samples'?)"),
    "data wrong shape": (eval_data(image=np.zeros((4, 8, 8), np.float32)), 2,
                         "shape (4, 8, 8) does not fit input 'image'"),
    "data wrong dtype": (eval_data(image=np.full((4, 8, 8, 1), "x")), 2, "is not numeric"),
    "data wrong size": (eval_data(image=images(4), y=np.arange(3)), 2, "3 labels under 'y' for 4 samples"),
    "data with NaN": (eval_data(image=with_value(np.nan)), 2, "contains 1 NaN/inf values"),
    "data with inf": (eval_data(image=with_value(np.inf)), 2, "contains 1 NaN/inf values"),
    "data without samples": (eval_data(image=images(0)), 2, "holds no samples"),
    "calibration data with NaN": (lambda p: np.savez(p.parent / "digits_train.npz", image=with_value(np.nan)), 2,
                                  "digits_train.npz['image']: contains 1 NaN/inf values"),
    "calibration data wrong shape": (lambda p: np.savez(p.parent / "digits_train.npz", image=images()[..., 0]), 2,
                                     "does not fit input 'image'"),
    "data file corrupt": (lambda p: eval_file(p).write_bytes(b"PK\x03\x04broken"), 2, "not a readable .npz"),
    "data file missing": (lambda p: eval_file(p).unlink(), 2, "not found"),
    "empty data folder": (empty_image_folder, 2, "no .png/.jpg/.jpeg images found"),
    "unknown target": (lambda p: edit(p, 'targets = ["local"]', 'targets = ["locl"]'), 2,
                       "unknown target 'locl' (did you mean 'local'?)"),
    "unreachable target": (unreachable_ssh_target, 6, "target 'dead-pi': cannot reach pi@127.0.0.1:"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_writes_nothing(case, pipeline_copy, run_copy, tmp_path, capsys, tree_snapshot):
    breaks, exit_code, message = CASES[case]
    breaks(pipeline_copy)
    fresh = tmp_path / "fresh-run"
    earlier = tree_snapshot(run_copy)
    for out in (run_copy, fresh):
        code = main(["run", str(pipeline_copy), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == exit_code, err
        assert message in " ".join(err.split()), err
        assert "Traceback" not in err
    assert tree_snapshot(run_copy) == earlier, "an earlier run's outputs were touched"
    assert not fresh.exists(), "a failed validation created the run directory"


def test_lambda_model_without_trust_writes_nothing(pipeline_copy, lambda_model_file, run_copy, capsys,
                                                   tree_snapshot):
    shutil.copy(lambda_model_file, pipeline_copy.parent / "lambda.keras")
    edit(pipeline_copy, 'path = "digits_cnn.keras"', 'path = "lambda.keras"')
    earlier = tree_snapshot(run_copy)
    code = main(["run", str(pipeline_copy), "--out", str(run_copy), "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "refusing to load a model with Lambda layers" in err and "--trust-model" in err
    assert tree_snapshot(run_copy) == earlier


@pytest.mark.parametrize("args,message", [
    (["--only", "bnch"], "--only 'bnch' is not a stage (did you mean 'bench'?)"),
    (["--only", "bench"], "--only bench needs the export result for digits.fp32.tflite"),
])
def test_bad_command_line_writes_nothing(args, message, demo_inputs, tmp_path, capsys):
    fresh = tmp_path / "fresh-run"
    code = main(["run", str(demo_inputs / "pipeline.toml"), "--out", str(fresh), "--quiet", *args])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and message in err
    assert not fresh.exists()


@pytest.mark.parametrize("suffix", [".tflite", ".onnx", ".keras", ".h5"])
@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "flipped"])
def test_inspect_bad_model_files(suffix, damage, demo_run, demo_inputs, tmp_path, capsys):
    sources = {
        ".tflite": demo_run / "artifacts" / "digits.fp32.tflite",
        ".onnx": demo_run / "artifacts" / "digits.fp32.onnx",
        ".keras": demo_inputs / "digits_cnn.keras",
        ".h5": None,
    }
    data = sources[suffix].read_bytes() if sources[suffix] else b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4
    path = tmp_path / f"model{suffix}"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 4])
    elif damage == "flipped":  # the first and last 64 bytes inverted: header and zip directory
        path.write_bytes(bytes(b ^ 0xFF for b in data[:64]) + data[64:-64] + bytes(b ^ 0xFF for b in data[-64:]))
    code = main(["inspect", str(path), "--json"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert str(path) in " ".join(captured.err.split())
    assert "Traceback" not in captured.err and captured.out == ""

"""Install and run output a user can read: no converter/runtime chatter, no packaging deprecations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

from toolchain.native_chatter import filtered_native_stderr

REPO = Path(__file__).resolve().parents[1]
CHATTER = ("fully_quantize", "INFO: Created TensorFlow Lite XNNPACK delegate", "I0000 ")


def test_native_chatter_is_dropped_and_everything_else_passes(capfd):
    with filtered_native_stderr():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        with filtered_native_stderr():  # nested: one filter
            os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8\n")
        os.write(2, b"E0000 00:00:1.2 1 model.cc:1] a real error from C++\n")
        os.write(2, b"W0000 00:00:1733.5 7 flatbuffer_helpers.cc:365] Ignored output_format.\n")
    os.write(2, b"after the block\n")
    err = capfd.readouterr().err
    assert "a real error from C++" in err and "after the block" in err
    assert not any(word in err for word in ("XNNPACK", "fully_quantize", "Ignored output_format"))


def test_cli_export_shows_no_converter_chatter(demo_inputs, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the toolchain sets it itself
    done = subprocess.run(
        [sys.executable, "-m", "toolchain", "export", str(demo_inputs / "digits_cnn.keras"), "-o",
         str(tmp_path / "digits.int8.tflite"), "--recipe", "int8", "--data", str(demo_inputs / "digits_train.npz")],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and (tmp_path / "digits.int8.tflite").is_file()
    assert not [line for line in done.stderr.splitlines() if any(word in line for word in CHATTER)], done.stderr


def test_packaging_metadata_has_no_deprecated_or_missing_parts():
    """setuptools >= 77 warns on `license` as a table and on importable folders missing from `packages`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str), "an SPDX expression, not a table"
    setuptools = project["tool"]["setuptools"]
    listed = {setuptools.get("package-dir", {}).get(name, name.replace(".", "/")) for name in setuptools["packages"]}
    folders = {path.relative_to(REPO).as_posix() for path in (REPO / "toolchain").rglob("*")
               if path.is_dir() and path.name != "__pycache__" and any(path.iterdir())}
    assert folders | {"toolchain"} <= listed, f"folders not in [tool.setuptools] packages: {folders - listed}"
    requires = project["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in requires)


def test_make_demo_says_where_the_command_is(tmp_path):
    """`make demo` installs into a virtualenv that is not on PATH: it prints where the command is."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "edge-toolchain"):  # stand-ins: this checks the Makefile, not the demo
        (venv / "bin" / name).write_text("#!/bin/sh\necho \"ran $0 $*\"\n")
        (venv / "bin" / name).chmod(0o755)
    (venv / ".installed").touch()
    done = subprocess.run(["make", "-s", "demo", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"ran {venv}/bin/edge-toolchain demo --out demo-run" in done.stdout
    assert f"The edge-toolchain command is {venv}/bin/edge-toolchain (not on PATH)" in done.stdout
    assert f"source {venv}/bin/activate" in done.stdout

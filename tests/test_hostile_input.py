"""Hostile input: bombs, lying headers, absurd names, code in data sources, full disks, Ctrl-C.

Each case ends in one line on stderr with its documented exit code, no traceback, and no
output left behind. Bombs are built cheaply: streamed zeros, or headers that only declare
huge sizes; no test allocates more than a few MiB.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from toolchain.cli import main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Aborted" not in err, err
    return " ".join(err.split())


# ---- .keras archives -------------------------------------------------------------------

def stream_member(archive: zipfile.ZipFile, name: str, total: int, fill: bytes = b" ") -> None:
    """A deflated member of `total` bytes of `fill`, written 1 MiB at a time."""
    chunk = fill * (2**20 // len(fill))
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as member:
        for _ in range(total // len(chunk)):
            member.write(chunk)
        member.write(fill * ((total % len(chunk)) // len(fill)))


def patch_central_directory(data: bytes, name: str, **sizes: int) -> bytes:
    """Rewrite a member's compress_size / file_size in the zip's central directory only."""
    offsets = {"compress_size": 20, "file_size": 24}
    at = data.index(b"PK\x01\x02")  # the first central directory entry
    out = bytearray(data)
    while at >= 0:
        name_length = struct.unpack_from("<H", out, at + 28)[0]
        if out[at + 46: at + 46 + name_length].decode() == name:
            for key, value in sizes.items():
                struct.pack_into("<I", out, at + offsets[key], value)
            return bytes(out)
        at = data.find(b"PK\x01\x02", at + 46)
    raise AssertionError(f"{name} not in the central directory")


def test_keras_config_bomb_is_refused_before_inflating(tmp_path, capsys):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        stream_member(archive, "config.json", 65 * 2**20)
    assert path.stat().st_size < 2**20  # the zip is small; its config.json is not
    assert main(["inspect", str(path)]) == 2
    err = one_line_error(capsys)
    assert f"{path}: refusing a config.json of 68,157,440 bytes (over 64 MiB" in err


def test_keras_member_bomb_is_refused(tmp_path, capsys):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        stream_member(archive, "model.weights.h5", 257 * 2**20, b"\0")
    assert main(["inspect", str(path)]) == 2
    err = one_line_error(capsys)
    assert "corrupt .keras file: member 'model.weights.h5' is a decompression bomb: it inflates" in err


@pytest.mark.parametrize("member,sizes,message", [
    ("model.weights.h5", {"compress_size": 2**31}, "claims 2,147,483,648 bytes past the end of the"),
    ("config.json", {"file_size": 2**31}, "declares 2,147,483,648 bytes from"),
])
def test_keras_zip_whose_header_lies_about_sizes(member, sizes, message, small_cnn_file, tmp_path, capsys):
    path = tmp_path / "liar.keras"
    path.write_bytes(patch_central_directory(small_cnn_file.read_bytes(), member, **sizes))
    for args in (["inspect", str(path)], ["--debug", "export", str(path), "-o", str(tmp_path / "m.tflite")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{path}: corrupt .keras file: member '{member}' {message}" in " ".join(err.split())
        assert "Aborted" not in err
    assert not (tmp_path / "m.tflite").exists()


# ---- data files ----------------------------------------------------------------------------

def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A .npy header declaring `shape` (no data follows unless the caller adds it)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds none: PIL reads only the header."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def run_demo(pipeline: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    out = tmp_path / "fresh-run"
    code = main(["run", str(pipeline), "--out", str(out), "--quiet", *extra])
    err = one_line_error(capsys)
    assert code == 0 or not out.exists(), "a refused input left a run directory behind"
    return code, err


def test_npz_whose_header_declares_64_gib(pipeline_copy, tmp_path, capsys):
    with zipfile.ZipFile(pipeline_copy.parent / "digits_eval.npz", "w") as archive:
        archive.writestr("image.npy", npy_header((2**28, 8, 8, 1)))
        archive.writestr("y.npy", npy_header((4,), "<i8") + bytes(32))
    code, err = run_demo(pipeline_copy, tmp_path, capsys)
    assert code == 2
    assert ("digits_eval.npz: array 'image.npy' declares shape (268435456, 8, 8, 1) (68,719,476,736 bytes of "
            "float32) but holds 0 bytes; the file is truncated or its header lies") in err


def test_npy_larger_than_memory_is_refused_before_reading(tmp_path, capsys, small_cnn_file):
    from toolchain.fileio import available_memory

    path = tmp_path / "huge.npy"
    header = npy_header((2**32, 16, 16, 3))  # 12 TiB of float32, a sparse file: no disk is used
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + 2**32 * 16 * 16 * 3 * 4)
    assert (available_memory() or 0) < 2**43
    code = main(["export", str(small_cnn_file), "-o", str(tmp_path / "m.tflite"), "--recipe", "int8",
                 "--data", str(path)])
    assert code == 2
    assert f"{path}: its arrays need 12,288.0 GiB of memory but" in one_line_error(capsys)
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.parametrize("width,message", [
    (10_000, "10000x10000 pixels is over the 89,478,485-pixel limit"),  # PIL only warns at 1-2x its limit
    (20_000, "Image size (400000000 pixels) exceeds limit"),  # PIL refuses over 2x
])
def test_decompression_bomb_png_in_an_image_folder(width, message, pipeline_copy, tmp_path, capsys):
    folder = pipeline_copy.parent / "images" / "zero"
    folder.mkdir(parents=True)
    (folder / "bomb.png").write_bytes(png_header(width, width))
    text = pipeline_copy.read_text().replace('eval = "digits_eval.npz"', 'eval = "images"')
    pipeline_copy.write_text(text + '\n[data.preprocess]\ncolor = "grayscale"\n')
    code, err = run_demo(pipeline_copy, tmp_path, capsys)
    assert code == 2
    assert f"{folder / 'bomb.png'}: refusing a decompression bomb" in err and message in err


# ---- module:function data sources are code ------------------------------------------------

DATA_CODE = '''
import numpy as np

def endless():
    while True:
        yield np.zeros((10, 8, 8, 1), np.float32)

def breaks_midway():
    yield np.zeros((2, 8, 8, 1), np.float32)
    raise OSError("dataset server went away")

def text():
    return "not batches"

class _Interrupts:
    def __del__(self):  # Ctrl-C delivered while Python runs a __del__, as inside TensorFlow's converter
        import signal
        signal.raise_signal(signal.SIGINT)

def interrupted_digits():
    import os
    with np.load(os.environ["DIGITS_EVAL"]) as data:
        batch = (data["image"][:50], data["y"][:50])
    _Interrupts()  # dropped at once: its __del__ runs here and the KeyboardInterrupt is swallowed
    yield batch
'''


@pytest.fixture
def code_module(tmp_path, monkeypatch):
    import sys

    (tmp_path / "hostile_batches.py").write_text(DATA_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "hostile_batches"
    sys.modules.pop("hostile_batches", None)


def use_source(pipeline: Path, source: str, allow_code: bool) -> None:
    text = pipeline.read_text().replace('eval = "digits_eval.npz"', f'eval = "{source}"')
    pipeline.write_text(text.replace("[data]\n", "[data]\nallow_code = true\n" if allow_code else "[data]\n", 1))


def test_code_data_source_needs_allow_code(pipeline_copy, tmp_path, capsys):
    use_source(pipeline_copy, "sys:exit", allow_code=False)
    code, err = run_demo(pipeline_copy, tmp_path, capsys)
    assert code == 2
    assert ("'data': eval = 'sys:exit' names a Python function: loading the data imports and runs it. "
            "Set allow_code = true under [data] if you wrote that code") in err


def test_code_data_source_that_exits_is_refused(pipeline_copy, tmp_path, capsys):
    use_source(pipeline_copy, "sys:exit", allow_code=True)
    code, err = run_demo(pipeline_copy, tmp_path, capsys)
    assert code == 2  # was 0, with nothing done
    assert ("data source 'sys:exit' called exit(None) instead of returning data; a data source must return "
            "or yield batches") in err


@pytest.mark.parametrize("function,message", [
    ("breaks_midway", "data source 'hostile_batches:breaks_midway' raised OSError: dataset server went away"),
    ("text", "data source 'hostile_batches:text' must return or yield batches (an iterable), got str"),
    ("endless", "data source 'hostile_batches:endless' yielded over 100 samples without end"),
])
def test_code_data_source_must_return_data(function, message, code_module, monkeypatch):
    from toolchain import data
    from toolchain.errors import DataError
    from toolchain.keras_io import TensorInfo

    monkeypatch.setattr(data, "MAX_CALLABLE_SAMPLES", 100)  # the real cap is 1,000,000 samples
    with pytest.raises(DataError) as caught:
        data.load_source(f"{code_module}:{function}", [TensorInfo("image", (8, 8, 1), "float32")])
    assert message in str(caught.value)


# ---- values that silently disabled a check --------------------------------------------------

@pytest.mark.parametrize("label", [99, -1])
def test_labels_outside_the_model_classes_are_refused(label, pipeline_copy, tmp_path, capsys):
    import numpy as np

    path = pipeline_copy.parent / "digits_eval.npz"
    with np.load(path) as loaded:
        arrays = dict(loaded)
    arrays["y"][3] = label
    np.savez(path, **arrays)
    code, err = run_demo(pipeline_copy, tmp_path, capsys)
    assert code == 2
    assert (f"digits_eval.npz: 1 label(s) outside the 10 classes of output 'probs' (0 to 9), e.g. {label}; "
            "check labels_key") in err


def test_nan_value_range_is_refused(pipeline_copy, tmp_path, capsys):
    pipeline_copy.write_text(pipeline_copy.read_text().replace("value_range = [0.0, 1.0]", "value_range = [nan, 1.0]"))
    code, err = run_demo(pipeline_copy, tmp_path, capsys)
    assert code == 2
    assert "'data.value_range.0': Input should be a finite number (got nan)" in err


# ---- SSH options -----------------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["my keys", "50% off", "tab\there"])
def test_known_hosts_path_with_spaces_and_percent_reaches_ssh_whole(folder, ssh_server, tmp_path):
    import shutil
    import subprocess

    from toolchain.errors import ConfigError
    from toolchain.targets import SSHTarget

    if "\t" in folder:  # a control character: refused before ssh runs
        with pytest.raises(ConfigError, match="has a character ssh cannot take in an option value"):
            SSHTarget(ssh_profile(ssh_server, tmp_path / folder / "known hosts")).ssh_argv("true")
        return
    known_hosts = tmp_path / folder / "known hosts"
    known_hosts.parent.mkdir()
    shutil.copy(ssh_server.known_hosts_file, known_hosts)
    profile = ssh_profile(ssh_server, known_hosts)
    done = subprocess.run(SSHTarget(profile).ssh_argv("echo reached"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "reached", done.stderr


@pytest.mark.parametrize("folder", ["my keys", "50% off %d", "${HOME}x", "tab\there"])
def test_identity_path_with_spaces_and_percent_reaches_ssh_whole(folder, ssh_server, tmp_path):
    """ssh expands % tokens and ${VAR} in identity paths as in known_hosts paths: the key is
    used as named, or the path is refused before ssh runs."""
    import shutil
    import subprocess

    from toolchain.errors import ConfigError
    from toolchain.targets import SSHTarget

    identity = tmp_path / folder / "id key"
    if "\t" in folder or "${" in folder:
        profile = ssh_profile(ssh_server, ssh_server.known_hosts_file, identity)
        with pytest.raises(ConfigError, match="identity path .* has a character ssh cannot take in an option value"):
            SSHTarget(profile).ssh_argv("true")
        return
    identity.parent.mkdir()
    shutil.copy(ssh_server.identity_file, identity)
    identity.chmod(0o600)
    profile = ssh_profile(ssh_server, ssh_server.known_hosts_file, identity)
    done = subprocess.run(SSHTarget(profile).ssh_argv("echo reached"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "reached", done.stderr


def ssh_profile(server, known_hosts: Path, identity: Path | None = None):
    from toolchain.config import TargetProfile

    return TargetProfile.model_validate({"name": "test-device", "connection": {
        "kind": "ssh", "host": server.host, "port": server.port, "user": server.user,
        "identity": str(identity or server.identity_file), "known_hosts": str(known_hosts)}})


# ---- a full disk --------------------------------------------------------------------------------

SMALL_PIPELINE = """
[model]
path = "{inputs}/digits_cnn.keras"
name = "digits"

[data]
eval = "{inputs}/digits_eval.npz"
samples = 50

[export]
formats = ["tflite"]

[bench]
enabled = false
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: room for a manifest, not for a model (needs root, as in this project's CI)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_is_a_stage_error_with_a_failed_manifest(small_disk, demo_inputs, tmp_path, capsys):
    import json

    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(SMALL_PIPELINE.format(inputs=demo_inputs))
    out = small_disk / "run"
    assert main(["run", str(pipeline), "--out", str(out), "--quiet"]) == 4
    err = one_line_error(capsys)
    expected = f"no space left on the device writing {out / 'artifacts' / 'digits.fp32.tflite'} ("
    assert expected in err and "bytes free); free some space or write the run elsewhere (--out)" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"].startswith("no space left on the device")
    assert manifest["artifacts"] == []
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == [] and list((out / "artifacts").iterdir()) == []


# ---- Ctrl-C ----------------------------------------------------------------------------------

def test_ctrl_c_swallowed_by_a_del_still_stops_the_run(pipeline_copy, code_module, tmp_path, capsys,
                                                       monkeypatch):
    """The KeyboardInterrupt lands in a __del__ (printed as "Exception ignored", then lost)."""
    monkeypatch.setenv("DIGITS_EVAL", str(pipeline_copy.parent / "digits_eval.npz"))
    use_source(pipeline_copy, f"{code_module}:interrupted_digits", allow_code=True)
    text = pipeline_copy.read_text().replace('formats = ["tflite", "onnx"]', 'formats = ["tflite"]')
    pipeline_copy.write_text(text.replace('recipes = ["fp32", "fp16", "dynamic", "int8", "int8-float-io", "int16x8"]',
                                          'recipes = ["fp32"]'))
    out = tmp_path / "run"
    code = main(["run", str(pipeline_copy), "--out", str(out), "--quiet"])
    err = one_line_error(capsys)
    assert code == 130, err  # was 0: the run went on as if nothing happened
    assert "interrupted (Ctrl-C): stopped; no partial output was kept" in err
    assert "Exception ignored" not in err
    assert not list(out.glob("artifacts/*")), "an artifact was published after Ctrl-C"
    assert [p.name for p in out.rglob(".*") if p.name != ".lock"] == []


@pytest.mark.heavy
def test_ctrl_c_during_tflite_conversion_exits_130_without_temp_files(tmp_path):
    """A real SIGINT to a real process, sent once the SavedModel is written and the converter runs.

    A 120-layer model keeps the converter busy for about a second (a small CNN converted within
    0.3 s on an AVX-512 machine, so the signal landed after the file was written)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import keras

    keras.utils.set_random_seed(0)
    x = features = keras.Input((64,), name="features")
    for index in range(120):
        x = keras.layers.Dense(64, activation="relu", name=f"dense{index}")(x)
    keras.Model(features, keras.layers.Dense(5, name="scores")(x)).save(tmp_path / "deep.keras")
    scratch, out = tmp_path / "tmp", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(Path(__file__).parent.parent)}
    process = subprocess.Popen([sys.executable, "-m", "toolchain", "export", str(tmp_path / "deep.keras"),
                                "-o", str(out / "m.tflite")], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    while process.poll() is None and not any(scratch.glob("edge-toolchain-savedmodel-*/saved_model.pb")):
        time.sleep(0.01)
    time.sleep(0.1)  # inside the converter: where the interrupt used to be swallowed
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    err = err.decode()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert list(out.iterdir()) == [] and list(scratch.iterdir()) == []


# ---- names and paths the OS refuses ---------------------------------------------------------

def test_out_that_is_a_symlink_loop(pipeline_copy, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop-back")
    (tmp_path / "loop-back").symlink_to(loop)
    for out in (loop, loop / "run"):
        assert main(["run", str(pipeline_copy), "--out", str(out), "--quiet"]) == 2  # was 1, RuntimeError
        assert f"{out}: symbolic link loop; point it at a real path" in one_line_error(capsys)


def test_file_names_longer_than_the_file_system_allows(pipeline_copy, tmp_path, capsys):
    long_name = "m" * 300
    assert main(["run", str(pipeline_copy), "--out", str(tmp_path / long_name), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert f"file name too long: {tmp_path}/mmm" in err and "(a part has 300 characters" in err
    assert main(["inspect", str(tmp_path / f"{long_name}.keras")]) == 2
    assert "file name too long" in one_line_error(capsys)
    text = pipeline_copy.read_text()
    pipeline_copy.write_text(text.replace('path = "digits_cnn.keras"', f'path = "{long_name}.keras"'))
    assert main(["run", str(pipeline_copy), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "'model.path': 'mmmm" in one_line_error(capsys)


def test_a_10_mb_config_value_is_not_echoed_whole(pipeline_copy, tmp_path, capsys):
    huge = "a" * 10_000_000
    text = pipeline_copy.read_text()
    for old, new in (('path = "digits_cnn.keras"', f'path = "{huge}.keras"'),
                     ("batch_size = 1", f'batch_size = "{huge}"')):
        pipeline_copy.write_text(text.replace(old, new))
        assert main(["run", str(pipeline_copy), "--out", str(tmp_path / "run"), "--quiet"]) == 2
        err = one_line_error(capsys)
        assert len(err) < 500 and "(10,000,00" in err, err[:500]


def test_an_unexpected_error_is_one_line_exit_1_with_the_traceback_under_debug(pipeline_copy, monkeypatch,
                                                                                 capsys):
    from toolchain import config

    def bug(path):  # stands in for any bug: an exception that is no ToolchainError
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(config, "load_config", bug)
    assert main(["run", str(pipeline_copy)]) == 1
    assert ("error: internal error: ZeroDivisionError: division by zero; re-run with --debug and report the "
            "traceback") in one_line_error(capsys)
    assert main(["--debug", "run", str(pipeline_copy)]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("code,exit_code,message", [
    ("ELOOP", 2, "/x/y: symbolic link loop (too many levels of links); point it at a real path"),
    ("EACCES", 2, "/x/y: permission denied (Permission denied)"),
    ("EIO", 4, "/x/y: Input/output error (EIO); check the disk and the path"),
    ("EDQUOT", 4, "no space left on the device writing /x/y ("),
])
def test_os_errors_map_to_documented_exit_codes(code, exit_code, message):
    import errno
    import os

    from toolchain.fileio import os_error

    number = getattr(errno, code)
    error = os_error(OSError(number, os.strerror(number), "/x/y"))
    assert error.exit_code == exit_code and str(error).startswith(message)

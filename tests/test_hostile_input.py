"""Hostile input: bombs, lying headers, absurd names, code in data sources, full disks, Ctrl-C.

Each case ends in one line on stderr with its documented exit code, no traceback, and no
output left behind. Bombs are built cheaply: streamed zeros, or headers that only declare
huge sizes; no test allocates more than a few MiB.
"""

from __future__ import annotations

import struct
import zipfile

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
    assert "refusing a decompression bomb: member 'model.weights.h5' inflates" in one_line_error(capsys)


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

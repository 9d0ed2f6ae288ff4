import os

import pytest

from toolchain.fileio import atomic_output, atomic_write_json, atomic_write_text


def test_atomic_write_has_the_usual_file_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "hello")
    finally:
        os.umask(mask)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "verify.json"
    atomic_write_json(target, {"old": True})
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("converter crashed")
    assert target.read_text().strip().startswith('{\n  "old": true')
    assert [p.name for p in tmp_path.iterdir()] == ["verify.json"]

"""Tests that need system packages skip with the package to install, and fail instead on CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from system_packages import emulator_missing, require, sshd_missing

REPO = Path(__file__).resolve().parents[1]


def test_a_missing_package_skips_with_its_name_and_fails_on_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    require("openssh-server", None)  # present: nothing happens
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install -y openssh-server"):
        require("openssh-server", "OpenSSH server not found at /nowhere/sshd")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require("chromium", "chromium not found")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI is set, so the system packages must be installed, but "
                                                    r"chromium not found: install the Debian package\(s\) chromium"):
        require("chromium", "chromium not found")


def test_what_is_missing_is_named(tmp_path, monkeypatch):
    assert sshd_missing(str(tmp_path / "sshd")) == f"OpenSSH server not found at {tmp_path / 'sshd'}"
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg
    assert emulator_missing(tmp_path / "empty-cache") == (
        "the emulated Raspberry Pi stack needs a Debian/Ubuntu host with apt-get and dpkg")


def _pytest(test_file: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "CI"}
    environment.update(env, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test_file],
                          cwd=REPO, capture_output=True, text=True, env=environment, timeout=300)


def test_sshd_tests_skip_without_openssh_and_fail_on_ci():
    skipped = _pytest("tests/test_sshd_fixture.py", EDGE_TOOLCHAIN_TEST_SSHD="/nonexistent/sshd")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "3 skipped" in skipped.stdout and "apt-get install -y openssh-server openssh-client" in skipped.stdout
    failed = _pytest("tests/test_sshd_fixture.py", EDGE_TOOLCHAIN_TEST_SSHD="/nonexistent/sshd", CI="true")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "CI is set, so the system packages must be installed" in failed.stdout

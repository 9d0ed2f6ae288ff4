"""System packages some tests need (OpenSSH, chromium, the emulator's apt/dpkg), and what to do without them.

Without a package a test skips with a reason naming the Debian package to install. On CI
(`CI` set, as GitHub Actions and GitLab do) the packages are installed on purpose, so a
missing one FAILS the test instead: a broken CI install must not go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# EDGE_TOOLCHAIN_TEST_SSHD: another sshd binary (tests use it to check the skip)
SSHD = os.environ.get("EDGE_TOOLCHAIN_TEST_SSHD") or shutil.which("sshd") or "/usr/sbin/sshd"


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(package: str, missing: str | None) -> None:
    """Skip (fail on CI) with `missing` and the apt-get command when `missing` says what is absent."""
    if missing is None:
        return
    message = f"{missing}: install the Debian package(s) {package} (apt-get install -y {package})"
    if on_ci():
        pytest.fail(f"CI is set, so the system packages must be installed, but {message}", pytrace=False)
    pytest.skip(message)


def sshd_missing(sshd: str = SSHD) -> str | None:
    if not Path(sshd).is_file():
        return f"OpenSSH server not found at {sshd}"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "OpenSSH client (ssh, ssh-keygen) not found"
    return None


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_missing() -> str | None:
    return None if chromium() else "chromium not found (renders the HTML report headless)"


def emulator_missing(cache: Path) -> str | None:
    """What stops `emulator setup` from building the stack in `cache` (None if built or buildable).

    The stack needs apt-get download of qemu-user-static and arm64 python3.11 packages, so a Debian/Ubuntu
    host whose dpkg has the arm64 architecture, or root to add it (`dpkg --add-architecture arm64`).
    """
    from toolchain.emulator.stack import stack_status

    status = stack_status(cache)
    parts = [status["qemu"], status["python"], *status["boards"].values(), *status["runtimes"].values()]
    if all(part["ready"] for part in parts):
        return None
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return "the emulated Raspberry Pi stack needs a Debian/Ubuntu host with apt-get and dpkg"
    arches = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout.split()
    if "arm64" not in arches and os.geteuid() != 0:
        return ("dpkg has no arm64 architecture and the tests do not run as root; run once as root "
                "`dpkg --add-architecture arm64 && apt-get update` for the arm64 python3.11 packages")
    return None

"""A real OpenSSH server on 127.0.0.1 for tests: the `ssh_server` session fixture.

Loaded from conftest.py as a pytest plugin. The server runs `/usr/sbin/sshd -D` with a
config, a throwaway host key and a throwaway client key in a temp folder, on a free high
port, allowing only public-key login for the user running the tests (root included).
Install it with `apt-get install openssh-server openssh-client` (.ci/run does).

Interface (kept stable; other tests build on it):
    server.host, server.port, server.user        where to connect
    server.identity_file                          private client key (no passphrase)
    server.known_hosts_file                       known_hosts holding the server's host key
    server.host_key_line                          that known_hosts line
    server.write_ssh_config(path, alias="device", **options) -> Path
        an ssh_config file with `Host alias` pointing at the server; options override
        or add ssh_config keywords (e.g. UserKnownHostsFile="/tmp/other").
    server.ssh_options() -> list[str]             `-o` options to reach it without a config
    server.ssh_command(*remote) -> list[str]      argv running `remote` on the server
    server.write_known_hosts(path, other_key=False) -> Path
        a known_hosts file for the server, or (other_key=True) one holding a different
        key for the same host:port, as after a device was re-imaged.
    server.log_file                               sshd's log (quoted in fixture errors)
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from system_packages import SSHD, require, sshd_missing


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)
    return Path(f"{path}.pub").read_text().strip()


@dataclass
class SSHServer:
    host: str
    port: int
    user: str
    identity_file: Path
    known_hosts_file: Path
    host_key_line: str
    log_file: Path
    folder: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    def ssh_options(self) -> list[str]:
        return [
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", f"IdentityFile={self.identity_file}",
            "-o", f"UserKnownHostsFile={self.known_hosts_file}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=10",
            "-p", str(self.port),
            "-l", self.user,
        ]

    def ssh_command(self, *remote: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", *self.ssh_options(), self.host, "--", *remote]

    def write_ssh_config(self, path: Path, alias: str = "device", **options: str) -> Path:
        settings = {
            "HostName": self.host,
            "Port": str(self.port),
            "User": self.user,
            "IdentityFile": str(self.identity_file),
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": str(self.known_hosts_file),
            "GlobalKnownHostsFile": "/dev/null",
            **{key: str(value) for key, value in options.items()},
        }
        lines = [f"Host {alias}"] + [f"    {key} {value}" for key, value in settings.items()]
        path = Path(path)
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def write_known_hosts(self, path: Path, other_key: bool = False) -> Path:
        line = self.host_key_line
        if other_key:
            scratch = Path(path).with_name(Path(path).name + ".otherkey")
            for stale in (scratch, Path(f"{scratch}.pub")):
                stale.unlink(missing_ok=True)
            public = _keygen(scratch, "other-host-key")
            line = f"[{self.host}]:{self.port} " + " ".join(public.split()[:2])
        Path(path).write_text(line + "\n")
        return Path(path)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _config(folder: Path, port: int, host_key: Path, authorized: Path, user: str) -> str:
    return "\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        f"AllowUsers {user}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The temp folder's parents are not owned by the login user when run unprivileged.
        "StrictModes no",
        "PrintMotd no",
        "UseDNS no",
        "MaxStartups 30:30:60",
        "MaxSessions 30",
        "LogLevel VERBOSE",
        # lets a client's `SetEnv TMPDIR=...` point the device's temp folder elsewhere
        "AcceptEnv TMPDIR LANG LC_*",
        "Subsystem sftp internal-sftp",
        "",
    ])


def start_ssh_server(folder: Path, attempts: int = 5) -> SSHServer:
    """Start sshd in `folder`; retries on another port if the one picked got taken."""
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        raise RuntimeError("OpenSSH is not installed: apt-get install -y openssh-server openssh-client")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    user = getpass.getuser()
    host_key = folder / "ssh_host_ed25519_key"
    host_public = _keygen(host_key, "edge-toolchain-test-host")
    identity = folder / "id_ed25519"
    client_public = _keygen(identity, "edge-toolchain-test-client")
    authorized = folder / "authorized_keys"
    authorized.write_text(client_public + "\n")
    authorized.chmod(0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation dir
    log = folder / "sshd.log"
    last_error = ""
    for _ in range(attempts):
        port = _free_port()
        config = folder / "sshd_config"
        config.write_text(_config(folder, port, host_key, authorized, user))
        known_hosts = folder / "known_hosts"
        host_line = f"[127.0.0.1]:{port} " + " ".join(host_public.split()[:2])
        known_hosts.write_text(host_line + "\n")
        with open(log, "ab") as log_handle:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=log_handle,
            )
        server = SSHServer("127.0.0.1", port, user, identity, known_hosts, host_line, log, folder, process)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            probe = subprocess.run(server.ssh_command("true"), capture_output=True, text=True,
                                   stdin=subprocess.DEVNULL)
            if probe.returncode == 0:
                return server
            last_error = probe.stderr.strip()
            time.sleep(0.2)
        server.stop()
        last_error = f"{last_error}\nsshd log:\n{log.read_text()[-2000:]}"
    raise RuntimeError(f"could not start a test sshd on 127.0.0.1: {last_error}")


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory) -> Iterator[SSHServer]:
    """A real sshd on 127.0.0.1:<free port>, key login only, for the test user (skips without OpenSSH)."""
    require("openssh-server openssh-client", sshd_missing())
    server = start_ssh_server(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()

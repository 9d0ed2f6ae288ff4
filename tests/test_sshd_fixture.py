"""The ssh_server fixture is a real sshd: key login works, a wrong host key is refused."""

from __future__ import annotations

import subprocess


def test_ssh_server_runs_commands_as_the_test_user(ssh_server):
    done = subprocess.run(ssh_server.ssh_command("id", "-un"), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ssh_server.user


def test_ssh_config_alias_reaches_the_server(ssh_server, tmp_path):
    config = ssh_server.write_ssh_config(tmp_path / "ssh_config", alias="pi-under-test")
    done = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "pi-under-test", "echo", "hello"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello"


def test_other_host_key_is_refused(ssh_server, tmp_path):
    wrong = ssh_server.write_known_hosts(tmp_path / "known_hosts", other_key=True)
    config = ssh_server.write_ssh_config(tmp_path / "ssh_config", UserKnownHostsFile=wrong,
                                         StrictHostKeyChecking="yes")
    done = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "device", "true"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in done.stderr

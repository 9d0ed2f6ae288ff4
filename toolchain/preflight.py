"""Before a run writes anything: can each benchmark target be reached at all?

An SSH device that is off, or a wrong host/port, would otherwise only show up after every
conversion ran. One `ssh HOST exit 0` per SSH target answers it in a second or two.
"""

from __future__ import annotations

import subprocess
from typing import Any

from .errors import TargetError


def check_reachable(profiles: list[Any]) -> None:
    """Raise TargetError naming the first SSH target that does not answer; other kinds need no check."""
    from .targets import SSHTarget
    from .targets.local import stderr_tail

    for profile in profiles:
        if profile.connection.kind != "ssh":
            continue
        target = SSHTarget(profile)
        timeout = profile.connection.connect_timeout_seconds + 30
        try:
            done = subprocess.run(target.ssh_argv("exit 0"), input=b"", capture_output=True, timeout=timeout)
        except FileNotFoundError as e:
            raise TargetError(
                f"target '{profile.name}': the OpenSSH client `ssh` is not installed on this machine "
                "(apt-get install openssh-client)"
            ) from e
        except subprocess.TimeoutExpired as e:
            raise TargetError(
                f"target '{profile.name}': {target.where} did not answer within {timeout:g} s; "
                "nothing was run. Check that the device is on and reachable"
            ) from e
        if done.returncode != 0:
            raise TargetError(
                f"target '{profile.name}': cannot reach {target.where} over ssh (exit {done.returncode}); "
                "nothing was run. Check that the device is on and connection.host/port/user are right. "
                f"ssh said: {stderr_tail(done.stderr.decode(errors='replace'))}"
            )

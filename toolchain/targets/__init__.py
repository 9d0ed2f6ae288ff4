"""Where a benchmark runs. Every target runs device/runner.py in a fresh process."""

from __future__ import annotations

from typing import Any, Protocol

from ..config import TargetProfile
from .local import LocalTarget
from .ssh import SSHTarget


class Target(Protocol):
    profile: TargetProfile

    def run(self, request: dict[str, Any], timeout: float) -> dict[str, Any]: ...


def open_target(profile: TargetProfile) -> Target:
    if profile.connection.kind == "ssh":
        return SSHTarget(profile)
    if profile.connection.kind == "emulated":
        from .emulated import EmulatedTarget

        return EmulatedTarget(profile)
    return LocalTarget(profile)


__all__ = ["LocalTarget", "SSHTarget", "Target", "open_target"]

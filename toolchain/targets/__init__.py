"""Where an artifact runs: `bench` (run a benchmark request) and `infer` on every target kind.

Every target runs device/runner.py in a fresh process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..config import TargetProfile
from .local import LocalTarget
from .ssh import SSHTarget


class Target(Protocol):
    profile: TargetProfile

    def run(self, request: dict[str, Any], timeout: float) -> dict[str, Any]: ...

    def infer(self, artifact: Path, inputs: dict[str, np.ndarray],
              timeout: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...


def open_target(profile: TargetProfile) -> Target:
    if profile.connection.kind == "fleet":
        from ..errors import TargetError

        raise TargetError(f"target '{profile.name}' is a fleet; expand it to its devices first (fleet.py)")
    if profile.connection.kind == "ssh":
        return SSHTarget(profile)
    if profile.connection.kind == "emulated":
        from .emulated import EmulatedTarget

        return EmulatedTarget(profile)
    return LocalTarget(profile)


__all__ = ["LocalTarget", "SSHTarget", "Target", "open_target"]

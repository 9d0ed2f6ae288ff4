"""Where a benchmark runs. Every target runs device/runner.py in a fresh process."""

from __future__ import annotations

from typing import Any

from ..config import TargetProfile
from .local import LocalTarget


def open_target(profile: TargetProfile) -> Any:
    if profile.connection.kind == "local":
        return LocalTarget(profile)
    raise ValueError(f"unsupported connection kind {profile.connection.kind!r}")


__all__ = ["LocalTarget", "open_target"]

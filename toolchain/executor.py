"""Where units of work run. The pipeline loop hands each stage's units to an executor.

The default runs them in this process, as before: units in one lane (one benchmark
target) one after the other, lanes in parallel threads. This is the seam a cluster
executor (Ray) plugs into: a unit's inputs and outputs are files named by content hash
(see steps.base.Unit), so nothing outside an executor may assume units run in this process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .errors import TargetError


class Executor(Protocol):
    def run(self, units: Sequence[Any], work: Callable[[Any], Any],
            on_done: Callable[[Any, Any], None]) -> None:
        """Run `work(unit)` for every unit; call `on_done(unit, result)` as each one finishes."""


class InProcessExecutor:
    """Units of one lane in order; lanes (e.g. benchmark targets) in parallel threads."""

    def run(self, units: Sequence[Any], work: Callable[[Any], Any],
            on_done: Callable[[Any, Any], None]) -> None:
        lanes: dict[Any, list[Any]] = {}
        for unit in units:
            lanes.setdefault(getattr(unit, "lane", None), []).append(unit)

        def run_lane(pending: list[Any]) -> None:
            for unit in pending:
                on_done(unit, work(unit))

        if len(lanes) <= 1:
            for pending in lanes.values():
                run_lane(pending)
            return
        with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
            futures = [pool.submit(run_lane, pending) for pending in lanes.values()]
        raise_lane_failures([f.exception() for f in futures])


def raise_lane_failures(failures: list[BaseException | None]) -> None:
    """Other errors first (a bug or a stop); target errors of several lanes as one TargetError."""
    failures = [f for f in failures if f is not None]
    for failure in failures:
        if not isinstance(failure, TargetError):
            raise failure
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise TargetError("; ".join(str(f) for f in failures))

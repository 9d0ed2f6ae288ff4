"""Run the device runner (or any script) with the emulated Pi's Python under qemu-aarch64-static.

A crash of the emulated process (QEMU re-raises the guest's fatal signal on itself) or a
hang (killed at the timeout, with its whole process group) is an outcome, never a pass
and never a hang of the toolchain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stack import BOARDS, RUNTIMES, Stack

RUNNER_PATH = Path(__file__).resolve().parent.parent / "device" / "runner.py"
HEARTBEAT_SECONDS = 30.0


@dataclass
class EmulatedRun:
    """What happened to one emulated process."""

    board: str
    runtime: str
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str
    timed_out: bool = False
    timeout: float = 0.0
    answer: dict[str, Any] | None = field(default=None)

    @property
    def signal(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    @property
    def ok(self) -> bool:
        return bool(self.answer and self.answer.get("ok")) and self.returncode == 0

    def stderr_tail(self, lines: int = 6) -> str:
        kept = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def failure(self) -> dict[str, str] | None:
        """None on success, else {kind, message}: timeout, crash, load/inference error."""
        where = f"emulated {self.board} ({BOARDS[self.board].qemu_cpu}) with {self.runtime}"
        if self.timed_out:
            return {"kind": "timeout",
                    "message": f"{where}: no answer within {self.timeout:g} s; the process was killed"}
        if self.signal:
            tail = self.stderr_tail(3)
            return {"kind": "crash",
                    "message": f"{where}: the runtime process was killed by {self.signal}"
                    + (f"; stderr tail: {tail}" if tail else "")}
        if self.ok:
            return None
        if self.answer and "error" in self.answer:
            error = self.answer["error"]
            return {"kind": error.get("type", "error"), "message": f"{where}: {error.get('message', '')}"}
        tail = self.stderr_tail()
        return {"kind": "error",
                "message": f"{where}: exited {self.returncode} without an answer; stderr tail: {tail or '(empty)'}"}


def emulated_command(stack: Stack, board: str, script: Path, *args: str) -> list[str]:
    return [str(stack.qemu), "-L", str(stack.board_root(board)), "-cpu", BOARDS[board].qemu_cpu,
            str(stack.python), str(script), *args]


def emulated_env(stack: Stack, runtime: str) -> dict[str, str]:
    """Only what the emulated Python needs: nothing from the host's Python leaks in."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(stack.site(runtime)),
        "PYTHONNOUSERSITE": "1",
        "PYTHONPYCACHEPREFIX": str(stack.root / "pycache"),  # not beside the runner, not in site/
        "OMP_NUM_THREADS": "1",
    }


def run_emulated(
    stack: Stack,
    board: str,
    runtime: str,
    script: Path,
    args: list[str],
    *,
    timeout: float,
    stdin: str | None = None,
    heartbeat: Callable[[float], None] | None = None,
    every: float | None = None,
) -> EmulatedRun:
    """Run `script` with the emulated Python; kill the whole process group at the timeout.

    `heartbeat(seconds)` is called every `every` (default HEARTBEAT_SECONDS) seconds while the
    process runs: a long emulated inference shows it is alive.
    """
    every = every or HEARTBEAT_SECONDS
    stack.require(board, runtime)
    command = emulated_command(stack, board, script, *args)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=emulated_env(stack, runtime), start_new_session=True,
    )
    timed_out = False
    pending = stdin
    while True:
        elapsed = time.perf_counter() - started
        try:
            stdout, stderr = process.communicate(pending, timeout=max(0.0, min(every, timeout - elapsed)))
            break
        except subprocess.TimeoutExpired:
            pending = None  # written already: a retry must not send it again
            elapsed = time.perf_counter() - started
            if elapsed >= timeout:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                stdout, stderr = process.communicate()
                break
            if heartbeat is not None:
                heartbeat(elapsed)
    return EmulatedRun(board, runtime, None if timed_out else process.returncode,
                       round(time.perf_counter() - started, 3), stdout, stderr, timed_out, timeout)


def run_runner(stack: Stack, board: str, runtime: str, request: dict[str, Any], timeout: float,
               heartbeat: Callable[[float], None] | None = None) -> EmulatedRun:
    """One device-runner request on the emulated board, with the runtime's backend for .tflite."""
    if str(request.get("model", "")).endswith(".tflite") and "backend" not in request:
        request = {**request, "backend": RUNTIMES[runtime].backend}
    result = run_emulated(stack, board, runtime, RUNNER_PATH, ["-"], timeout=timeout, stdin=json.dumps(request),
                          heartbeat=heartbeat)
    lines = [line for line in result.stdout.strip().splitlines() if line.startswith("{")]
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    result.answer = answer if isinstance(answer, dict) else None
    return result

"""Run the device runner on this machine, with any Python executable (e.g. a device-like venv)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TargetProfile
from ..errors import TargetError
from .infer import REJECTIONS, RejectedError, infer_through_files

RUNNER_PATH = Path(__file__).resolve().parent.parent / "device" / "runner.py"
TAIL_LINES = 8


def stderr_tail(stderr: str | bytes | None, lines: int = TAIL_LINES) -> str:
    """The last lines of a process's stderr, on one line, for error messages."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    kept = [line.strip() for line in (stderr or "").strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(empty)"


def parse_runner_output(target: str, stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    """The runner's JSON answer, or a TargetError that quotes what went wrong.

    A negative returncode is a signal (the benchmark was killed): nothing it printed is used.
    """
    tail = stderr_tail(stderr)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        raise RejectedError(
            f"target '{target}': the runner was killed by signal {name}; "
            f"no result recorded. stderr tail: {tail}",
            "crashed", f"the runtime crashed (exit {returncode}): {tail}",
        )
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) and returncode == 1:  # a native abort while loading
        raise RejectedError(f"target '{target}': the runtime crashed (exit 1) without an answer; "
                            f"stderr tail: {tail}", "crashed", f"the runtime crashed (exit 1): {tail}")
    if not isinstance(answer, dict):
        raise TargetError(
            f"target '{target}': the runner exited {returncode} without a JSON answer; "
            f"no result recorded. stderr tail: {tail}"
        )
    if not answer.get("ok") or returncode != 0:
        error = answer.get("error") or {}
        message = (f"target '{target}': {error.get('message', f'runner exited {returncode}')} "
                   f"[{error.get('type', 'error')}]; stderr tail: {tail}")
        if error.get("type") in REJECTIONS:
            raise RejectedError(message, error["type"], str(error.get("message", "")))
        raise TargetError(message)
    return answer


class LocalTarget:
    """This machine; `connection.python` picks the interpreter (default: the one running us)."""

    def __init__(self, profile: TargetProfile):
        self.profile = profile
        self.python = profile.connection.python or sys.executable

    def run(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one request in a fresh runner process."""
        if self.profile.runtime.tflite_backend != "auto" and str(request["model"]).endswith(".tflite"):
            request = {"backend": self.profile.runtime.tflite_backend, **request}
        request = {**request, "model": str(Path(request["model"]).resolve())}
        if request.get("inputs"):
            request["inputs"] = str(Path(request["inputs"]).resolve())
        command = [self.python, str(RUNNER_PATH), "-"]
        try:
            completed = subprocess.run(
                command,
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except (FileNotFoundError, PermissionError) as e:
            raise TargetError(
                f"target '{self.profile.name}': python executable not usable: {self.python} "
                f"({type(e).__name__}); fix connection.python in the target profile"
            ) from e
        except subprocess.TimeoutExpired as e:
            raise TargetError(
                f"target '{self.profile.name}': the runner did not finish within {timeout:g} s "
                "(raise bench.timeout_seconds, or lower max_seconds); no result recorded. "
                f"stderr tail: {stderr_tail(e.stderr)}"
            ) from e
        return parse_runner_output(self.profile.name, completed.stdout, completed.stderr, completed.returncode)

    def infer(self, artifact: Path, inputs: dict[str, np.ndarray],
              timeout: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The runner's answer and the artifact's outputs for `inputs` (artifact layout)."""
        return infer_through_files(self, artifact, inputs, timeout)

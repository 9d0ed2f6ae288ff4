"""Run the device runner on this machine, with any Python executable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..config import TargetProfile
from ..errors import TargetError

RUNNER_PATH = Path(__file__).resolve().parent.parent / "device" / "runner.py"


def parse_runner_output(
    target: str, completed_stdout: str, stderr: str, returncode: int
) -> dict[str, Any]:
    """The runner's JSON answer, or a TargetError that quotes what went wrong."""
    tail = "\n".join(stderr.strip().splitlines()[-8:])
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        raise TargetError(
            f"target '{target}': the runner was killed by signal {name}; "
            f"no result recorded. stderr tail: {tail or '(empty)'}"
        )
    lines = [line for line in completed_stdout.strip().splitlines() if line.startswith("{")]
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise TargetError(
            f"target '{target}': the runner exited {returncode} without a JSON answer; "
            f"stderr tail: {tail or '(empty)'}"
        )
    if not answer.get("ok"):
        error = answer.get("error", {})
        raise TargetError(
            f"target '{target}': {error.get('message', 'runner failed')} "
            f"[{error.get('type', 'error')}]" + (f"; stderr tail: {tail}" if tail and returncode != 3 else "")
        )
    return answer


class LocalTarget:
    def __init__(self, profile: TargetProfile):
        self.profile = profile
        self.python = profile.connection.python or sys.executable

    def run(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one request in a fresh runner process."""
        if self.profile.runtime.tflite_backend != "auto" and str(request["model"]).endswith(".tflite"):
            request = {"backend": self.profile.runtime.tflite_backend, **request}
        request = {**request, "model": str(Path(request["model"]).resolve())}
        command = [self.python, str(RUNNER_PATH), "-"]
        try:
            completed = subprocess.run(
                command,
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except FileNotFoundError as e:
            raise TargetError(
                f"target '{self.profile.name}': python executable not found: {self.python}; "
                "fix connection.python in the target profile"
            ) from e
        except subprocess.TimeoutExpired as e:
            raise TargetError(
                f"target '{self.profile.name}': the runner did not finish within {timeout:g} s "
                "(raise bench.timeout_seconds, or lower max_seconds); no result recorded"
            ) from e
        return parse_runner_output(self.profile.name, completed.stdout, completed.stderr, completed.returncode)

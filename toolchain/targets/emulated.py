"""An emulated Raspberry Pi: the device runner under qemu-aarch64-static with the Pi's own Python.

Latency measured here is the emulator's, hundreds of times slower than the board:
every answer is marked `timing: emulated` and never stands for a device figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import TargetProfile
from ..emulator.run import run_runner
from ..emulator.stack import BOARDS, Stack, default_cache_dir, runtime_for
from ..errors import TargetError
from .infer import REJECTIONS, RejectedError, infer_through_files


class EmulatedTarget:
    """`connection.board` picks the QEMU CPU and /proc/cpuinfo; `runtime.tflite_backend` the site."""

    def __init__(self, profile: TargetProfile, cache_dir: Path | None = None):
        self.profile = profile
        self.board = str(profile.connection.board)  # the profile's validation guarantees a known board
        self.stack = Stack(Path(cache_dir or default_cache_dir()).resolve())

    def run(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        model = Path(request["model"]).resolve()
        request = {**request, "model": str(model)}
        if request.get("inputs"):
            request["inputs"] = str(Path(request["inputs"]).resolve())
        runtime = runtime_for(model, self.profile.runtime.tflite_backend)
        self.stack.require(self.board, runtime)
        run = run_runner(self.stack, self.board, runtime, request, timeout)
        failure = run.failure()
        if failure is not None:
            kind = "crashed" if failure["kind"] == "crash" else failure["kind"]
            message = f"target '{self.profile.name}': {failure['message']}"
            if kind in REJECTIONS:
                raise RejectedError(message, kind, failure["message"])
            raise TargetError(message)
        answer = dict(run.answer or {})
        answer["timing"] = "emulated"
        answer["environment"] = {**answer.get("environment", {}), "emulated": {
            "board": self.board, "qemu_cpu": BOARDS[self.board].qemu_cpu, "runtime": runtime,
            "note": "latency under QEMU user-mode emulation; not a device figure",
        }}
        return answer

    def infer(self, artifact: Path, inputs: dict[str, np.ndarray],
              timeout: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return infer_through_files(self, artifact, inputs, timeout)

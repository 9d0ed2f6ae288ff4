"""`infer` on any target: run an artifact on inputs with the target's own runtime, get its outputs.

Beside `run` (one runner request), every target kind offers `infer(artifact, inputs, timeout)`:
the inputs go to the runner as an .npz, the outputs come back as arrays. A runtime that
rejects the artifact raises a RejectedError (a TargetError) that carries the runner's error
type, so a device check can record it as a verdict instead of a setup failure.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TargetError

# runner error types that mean "this runtime rejects this artifact" (others: setup problems)
REJECTIONS = ("load_failed", "inference_failed", "crashed")


class RejectedError(TargetError):
    """The target's runtime refused the artifact (load or inference failed, or it crashed)."""

    def __init__(self, message: str, kind: str, reason: str):
        super().__init__(message)
        self.kind = kind
        self.reason = reason


def read_outputs(data: bytes | Path) -> dict[str, np.ndarray]:
    import io

    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(source, allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files}


def infer_through_files(target: Any, artifact: Path, inputs: dict[str, np.ndarray],
                        timeout: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """For targets that share this machine's filesystem (local, emulated): (answer, outputs)."""
    with tempfile.TemporaryDirectory(prefix="edge-toolchain-infer-") as work:
        inputs_file, outputs_file = Path(work) / "inputs.npz", Path(work) / "outputs.npz"
        np.savez(inputs_file, **inputs)
        answer = target.run({"model": str(Path(artifact).resolve()), "mode": "infer",
                             "inputs": str(inputs_file), "outputs": str(outputs_file)}, timeout)
        return answer, read_outputs(outputs_file)

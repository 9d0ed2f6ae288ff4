"""Candidate builds as units of work: each candidate's build and verify, here or on a Ray worker.

In process (the default), a build runs in the driver with the loaded model, as before. With the
Ray executor a build is a `RemoteUnit`: the worker gets the model file and one .npz blob
(calibration and evaluation data, the Keras reference outputs) by content, sha256-checked,
builds and verifies the candidate in a private temp folder and returns the verify result and the
candidate's bytes. The driver checks them, puts the file in place atomically and caches it under
the same key as an in-process build, so the two share the cache. Benchmarks stay in the driver
(they hold device leases).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..remote_units import Placement, dataset_arrays, dataset_from, load_model_bytes, read_arrays, write_arrays
from ..steps.base import RemoteUnit, Unit


@dataclass
class CandidateBuild:
    """One candidate to build: `unit.spec` is the Candidate, `unit.outputs[0]` its file in OUT/candidates."""

    unit: Unit
    index: int  # its place in the search's candidate list
    record: dict[str, Any]  # what optimize.json says of it before it is built
    lane: str | None = None


@dataclass
class CandidateWork:
    """How an executor builds a candidate: here (`__call__`), or on a worker from plain specs (`remote`)."""

    inputs: Any  # search.SearchInputs
    out_dir: Path
    budget: Any  # search.Budget
    clock: Any  # search.Clock
    progress: Any
    placement: Placement | None = None
    stage: Any = field(default_factory=lambda: SimpleNamespace(name="optimize"))  # names the executor's events
    _scratch: Path | None = None

    def __call__(self, build: CandidateBuild) -> dict[str, Any]:
        from .search import _build_result

        if self.clock.spent():
            return {"verdict": "not-tried", "why": f"--time-budget of {self.clock.budget_s:g} s spent"}
        self.progress(f"{build.unit.label}: building and verifying")
        return _build_result(self.inputs, build.unit.spec, build.unit.outputs[0], self.budget)

    def remote(self, build: CandidateBuild) -> RemoteUnit | None:
        """The build as a worker runs it (None when it runs here: no placement, or the time budget is spent)."""
        if self.placement is None or self.clock.spent():
            return None
        self.progress(f"{build.unit.label}: building and verifying on the cluster")
        spec = {"candidate": build.unit.spec, "file": build.unit.outputs[0].name, "budget": self.budget,
                "model_name": self.inputs.model_name, "model_sha256": self.inputs.model_sha256,
                "model_suffix": self.placement.model.suffix, "trust": self.placement.trust,
                "names": {"calibration": list(self.inputs.calibration.inputs),
                          "evaluation": list(self.inputs.evaluation.inputs),
                          "reference": list(self.inputs.reference)},
                "sources": {"calibration": self.inputs.calibration.source,
                            "evaluation": self.inputs.evaluation.source}}
        return RemoteUnit(build_unit, spec, inputs={"model": self.placement.model, "data": self._data_blob()},
                          outputs={"candidate": self._incoming(build)}, cpus=self.placement.cpus,
                          memory_bytes=self.placement.memory_bytes)

    def settle(self, build: CandidateBuild, result: dict[str, Any]) -> None:
        """A file a worker returned goes in place (one atomic rename); a failed build's empty answer goes."""
        incoming = self._incoming(build) if self._scratch is not None else None
        if incoming is None or not incoming.exists():
            return
        if result["verdict"] in ("build-failed", "not-tried"):
            incoming.unlink()
        else:
            os.replace(incoming, build.unit.outputs[0])

    def cleanup(self) -> None:
        import shutil

        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _incoming(self, build: CandidateBuild) -> Path:
        return self._scratch_dir() / build.unit.outputs[0].name

    def _scratch_dir(self) -> Path:
        """OUT/candidates/.incoming-*: returned files land beside their final place (the rename is atomic)."""
        if self._scratch is None:
            folder = self.out_dir / "candidates"
            folder.mkdir(parents=True, exist_ok=True)
            self._scratch = Path(tempfile.mkdtemp(prefix=".incoming-", dir=folder))
        return self._scratch

    def _data_blob(self) -> Path:
        """The data and the Keras reference outputs, written once per search."""
        blob = self._scratch_dir() / "search-data.npz"
        if not blob.exists():
            reference = {f"reference.{i}": value for i, value in enumerate(self.inputs.reference.values())}
            write_arrays(blob, {**dataset_arrays("calibration", self.inputs.calibration),
                                **dataset_arrays("evaluation", self.inputs.evaluation), **reference})
        return blob


def build_unit(spec: dict[str, Any], inputs: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """On a worker: build and verify one candidate; return its verify result and its bytes (empty if it failed)."""
    from .search import SearchInputs, _build_result

    arrays = read_arrays(inputs["data"])
    names, sources = spec["names"], spec["sources"]
    with tempfile.TemporaryDirectory(prefix="edge-toolchain-unit-") as work:
        folder = Path(work)
        model = load_model_bytes(inputs["model"], folder / f"model{spec['model_suffix']}", spec["trust"])
        search_inputs = SearchInputs(
            model, spec["model_sha256"],
            dataset_from(arrays, "calibration", names["calibration"], sources["calibration"]),
            dataset_from(arrays, "evaluation", names["evaluation"], sources["evaluation"]),
            {name: arrays[f"reference.{i}"] for i, name in enumerate(names["reference"])}, spec["model_name"])
        path = folder / "candidates" / spec["file"]
        result = _build_result(search_inputs, spec["candidate"], path, spec["budget"])
        built = path.read_bytes() if result["verdict"] != "build-failed" else b""
        return result, {"candidate": built}

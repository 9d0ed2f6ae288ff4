"""What a stage is to the pipeline loop, and the run state stages read and fill.

A stage object declares: whether it runs (`enabled`), what it checks before the run
directory is locked (`prepare`, writes nothing), its units of work (`units`: each with the
cache key of everything its result depends on), how to run one unit (`run_unit`, returning
a JSON-able result) and how its results join the run (`finish`: manifest records, result
files, failures). The loop (pipeline.py) does cache lookup and replay, `--only`/`--force`,
progress and `--log-json`, manifest stage records and failure handling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset


@dataclass
class Unit:
    """One independent piece of work of a stage.

    `key` is the content hash of its inputs (None: never cached); `outputs` are the files it
    writes (recorded in its cache record by sha256); `lane` groups units that must not run
    at the same time (one benchmark target); `spec` is what `run_unit` needs, plain values.
    """

    label: str
    key: str | None = None
    spec: Any = None
    outputs: list[Path] = field(default_factory=list)
    lane: str | None = None
    what: str = ""  # how a missing cache entry names it under --only


@dataclass
class RemoteUnit:
    """A unit as another process (a Ray worker) runs it: plain values plus input files by content.

    `function(spec, inputs)` is a module-level function: `inputs` maps names to the bytes of
    the files in `inputs` here; it returns `(result, outputs)`, `outputs` mapping names to
    bytes that the driver checks (sha256) and writes atomically to `outputs` here.
    """

    function: Any
    spec: Any
    inputs: dict[str, Path] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    cpus: float = 1.0
    memory_bytes: int = 0  # 0: no memory request


@dataclass
class Done:
    unit: Unit
    result: Any
    cached: bool


class Stage:
    """Base stage: one uncached unit, no --only name, always enabled."""

    name: str = ""  # progress, --log-json and manifest stage records
    only: str | None = None  # the name --only knows it by (None: not selectable)
    cache_name: str = ""  # folder of its cache records (default: `only`)
    per_unit_log: bool = False  # one progress line per unit instead of one per stage
    result_type: Any = None  # the typed record of a unit's result (records.py), JSON in the cache

    def enabled(self, run: RunState) -> bool:
        return True

    def label(self, run: RunState) -> str:
        return ""

    def prepare(self, run: RunState) -> None:
        """Before the run directory is locked: validate and plan; never write anything."""

    def units(self, run: RunState) -> list[Unit]:
        return [Unit(self.label(run))]

    def run_unit(self, run: RunState, unit: Unit) -> Any:
        raise NotImplementedError

    def remote_unit(self, run: RunState, unit: Unit) -> RemoteUnit | None:
        """The unit as plain specs for a worker elsewhere (None: it runs in the driver)."""
        return None

    def finish(self, run: RunState, done: list[Done]) -> None:
        """Join the units' results to the run: records, result files; raise for failures."""

    def from_cache(self, raw: Any) -> Any:
        """A cached unit result as its typed record; None when it does not fit (then it runs again)."""
        if self.result_type is None:
            return raw
        from pydantic import ValidationError

        try:
            return self.result_type.model_validate(raw)
        except ValidationError:
            return None

    def cleanup(self, run: RunState) -> None:
        """Always called once the stage is over (also after a failure): remove scratch files."""


@dataclass
class ArtifactPlan:
    """One artifact the run exports: where, which format and recipe, its export cache key."""

    path: Path
    format: str
    recipe: str
    key: str
    cached: bool = False


@dataclass
class RunState:
    """Everything the stages of one run share (JSON leaves at the edges: manifest, result files)."""

    config: Any
    run_dir: Path
    manifest: dict[str, Any]
    context: Any  # pipeline.RunContext: cache, lock, --only, target profiles
    log: Any  # pipeline.StageLog: progress lines and the manifest's stage records
    model: Any = None
    source_key: str = ""
    truncation: Any = None
    run_data: Any = None
    data: Dataset | None = None  # evaluation data (None: random inputs)
    artifacts: list[ArtifactPlan] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # manifest artifact records by name
    documents: dict[str, Any] = field(default_factory=dict)  # verify, bench, budgets, estimates
    report: Path | None = None
    memo: dict[str, Any] = field(default_factory=dict)  # values computed once per run (Keras reference)

    @property
    def only(self) -> str | None:
        return self.context.only

    def mode(self, stage: Stage) -> str:
        return self.context.mode(stage.only) if stage.only else "run"

    def lookup(self, stage: Stage, key: str | None) -> Any:
        if key is None:
            return None
        return self.context.lookup(stage.cache_name or stage.only or stage.name, key)

    def write_document(self, name: str, document: Any) -> None:
        """`<name>.json` from a typed document; the run keeps the typed one and its JSON (for readers)."""
        from ..fileio import atomic_write_json

        self.memo[f"{name}_document"] = document
        self.documents[name] = document.to_json()
        atomic_write_json(self.run_dir / f"{name}.json", self.documents[name])
        self.manifest["files"][name] = f"{name}.json"

    def sample(self, count: int) -> Dataset:
        """The first `count` evaluation samples, or seeded random inputs when there is no data."""
        if self.data is not None:
            return self.data.head(count)
        return random_dataset(self.model, count)


def random_dataset(model: Any, count: int) -> Dataset:
    from ..keras_io import input_signature

    rng = np.random.default_rng(0)
    inputs = {
        spec.name: rng.uniform(0, 1, size=(count, *[d or 1 for d in spec.shape])).astype(spec.dtype)
        for spec in input_signature(model)
    }
    return Dataset(inputs, None, "random", ["no evaluation data configured: random inputs in [0, 1)"])

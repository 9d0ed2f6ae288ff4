"""Truncate stage: cut (and retrain the head of) the model before the lock, save it after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import RunState, Stage, Unit


class TruncateStage(Stage):
    name = "save truncated model"

    def enabled(self, run: RunState) -> bool:
        return run.config.truncate is not None

    def prepare(self, run: RunState) -> None:
        """Validated before the run directory is locked: a bad cut point writes nothing."""
        from ..stages.truncate import truncate_from_config

        config = run.config
        with run.log.stage("truncate", "and train the head" if config.truncate.train else ""):
            run.truncation = truncate_from_config(run.model, config.truncate, parent_sha256=run.source_key,
                                                  trust=config.model.trust)
        run.model, run.source_key = run.truncation.model, run.truncation.key

    def units(self, run: RunState) -> list[Unit]:
        path = run.run_dir / "models" / f"{run.config.model_name}.truncated.keras"
        return [Unit("", spec=path, outputs=[path])]

    def run_unit(self, run: RunState, unit: Unit) -> dict[str, Any]:
        from ..stages.truncate import save_truncated

        return save_truncated(run.truncation, unit.spec, run.manifest["source_model"]["sha256"])

    def finish(self, run: RunState, done: list[Any]) -> None:
        saved = done[0].result
        saved["path"] = str(Path(saved["path"]).relative_to(run.run_dir))
        run.manifest["models"] = [saved]


class DataStage(Stage):
    """Calibration and evaluation data, checked against the model before any conversion."""

    name = "load data"

    def prepare(self, run: RunState) -> None:
        from ..data import Dataset, RunData, prepare_run_data
        from ..keras_io import input_signature
        from ..recipes import is_calibrated

        config = run.config
        needs = any(is_calibrated(fmt, recipe) for fmt in config.export.formats
                    for recipe in getattr(config.export, fmt).recipes)
        sources = [s for s in (config.data.eval, config.data.calibration.source) if s]
        if not sources and not needs:
            run.run_data = RunData(None, None, {"calibration": None, "evaluation": None, "split": None})
        else:
            with run.log.stage("load data", ", ".join(Path(s).name for s in sources) or "random calibration"):
                run.run_data = prepare_run_data(config.data, input_signature(run.model), needs_calibration=needs)
        data = run.run_data.evaluation
        if data is not None and run.truncation is not None and not run.truncation.keeps_labels:
            data = Dataset(data.inputs, None, data.source, [*data.notes, "labels not used: the truncated model "
                                                            "outputs features (no classes head)"])
        run.data = data
        run.manifest["data"] = run.run_data.record

    def units(self, run: RunState) -> list[Unit]:
        return []  # all of its work happens before the lock

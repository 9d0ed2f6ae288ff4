"""The pipeline's stages, in run order. Adding a stage: its module, and one line here.

`steps/<name>.py` holds the stage object the pipeline loop runs (its cache key, units,
how it joins the run); `stages/<name>.py` holds the work itself, usable on its own.
"""

from __future__ import annotations

from .base import ArtifactPlan, Done, RunState, Stage, Unit
from .bench import BenchStage
from .compat import CompatStage
from .export import ExportStage
from .summary import BudgetsStage, EstimateStage, ReportStage
from .truncate import DataStage, TruncateStage
from .verify import VerifyStage

STAGES: list[Stage] = [
    TruncateStage(),
    DataStage(),
    ExportStage(),
    VerifyStage(),
    CompatStage(),
    BenchStage(),
    BudgetsStage(),
    EstimateStage(),
    ReportStage(),
]


def only_names(stages: list[Stage] | None = None) -> tuple[str, ...]:
    """The stages `--only` can pick, in run order."""
    return tuple(s.only for s in (STAGES if stages is None else stages) if s.only)


__all__ = ["STAGES", "ArtifactPlan", "Done", "RunState", "Stage", "Unit", "only_names"]

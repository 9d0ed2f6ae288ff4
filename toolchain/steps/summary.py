"""Budgets, estimate and report stages: documents computed from the run's records."""

from __future__ import annotations

from typing import Any

from ..records import BudgetsDocument
from .base import RunState, Stage


class BudgetsStage(Stage):
    name = "budgets"
    result_type = BudgetsDocument

    def run_unit(self, run: RunState, unit: Any) -> BudgetsDocument:
        from ..budgets import evaluate_budgets, profile_limits
        from ..config import find_profile

        config = run.config
        target_budgets = {t: profile_limits(find_profile(t, run.context.profile_dirs)) for t in config.bench.targets}
        return BudgetsDocument.model_validate(evaluate_budgets(run.manifest, config.budgets, target_budgets))

    def finish(self, run: RunState, done: list[Any]) -> None:
        run.write_document("budgets", done[0].result)


class EstimateStage(Stage):
    name = "estimate"

    def label(self, run: RunState) -> str:
        return "unmeasured targets"

    def run_unit(self, run: RunState, unit: Any) -> dict[str, Any]:
        from ..config import find_profile
        from ..estimate import write_estimates

        config = run.config
        # emulated timing says nothing about the board: those targets keep their estimate
        measured = [t for t in config.bench.targets
                    if find_profile(t, run.context.profile_dirs).connection.kind != "emulated"
                    ] if config.bench.enabled else []
        return write_estimates(run.run_dir, run.model, run.manifest["artifacts"], config.export.batch_size,
                               measured, run.context.profile_dirs)

    def finish(self, run: RunState, done: list[Any]) -> None:
        run.documents["estimates"] = done[0].result
        run.manifest["files"]["estimates"] = "estimates.json"


class ReportStage(Stage):
    name = "report"
    only = "report"

    def enabled(self, run: RunState) -> bool:
        return run.config.report.enabled

    def run_unit(self, run: RunState, unit: Any) -> Any:
        from ..stages.report import RunDocuments
        from ..stages.report_html import write_reports

        run.manifest["status"] = "complete"
        run.manifest["files"]["report"] = "report/report.md"
        run.manifest["files"]["report_html"] = "report/report.html"
        report, _ = write_reports(RunDocuments(run.run_dir, run.manifest, run.documents.get("bench"),
                                               run.documents["budgets"], run.documents["estimates"]))
        return report

    def finish(self, run: RunState, done: list[Any]) -> None:
        run.report = done[0].result

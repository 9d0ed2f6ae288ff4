"""Device check stage: every artifact in each export target's own runtime (local, SSH or emulated)."""

from __future__ import annotations

from typing import Any

from .base import ArtifactPlan, Done, RunState, Stage, Unit


class CompatStage(Stage):
    name = "compat"

    def enabled(self, run: RunState) -> bool:
        return bool(run.config.export.targets)

    def label(self, run: RunState) -> str:
        return f"{len(run.artifacts)} artifact(s) on {', '.join(run.config.export.targets)}"

    def units(self, run: RunState) -> list[Unit]:
        return [Unit(a.path.name, spec=a) for a in run.artifacts]  # not cached: it checks the targets now

    def run_unit(self, run: RunState, unit: Unit) -> dict[str, Any]:
        from ..compare import whole_batches
        from ..config import profile_by_name_or_path
        from ..emulator.gate import gate_profile
        from ..stages.compat import SAMPLES, check_compat
        from ..stages.verify import run_artifact

        plan: ArtifactPlan = unit.spec
        batch = run.records[plan.path.name]["inputs"][0]["shape"][0] or 1
        inputs = whole_batches(run.sample(SAMPLES).inputs, batch)
        host = run_artifact(plan.path, inputs)
        results = {}
        for name in run.config.export.targets:
            profile = profile_by_name_or_path(name)
            if profile.connection.kind == "emulated":
                results[profile.name] = gate_profile(plan.path, profile, inputs, host, recipe=plan.recipe,
                                                     golden_dir=run.run_dir / "golden")
            else:
                results[profile.name] = check_compat(plan.path, profile, inputs, host, recipe=plan.recipe)
        return results

    def finish(self, run: RunState, done: list[Done]) -> None:
        from ..stages.compat import raise_on_incompatible

        verify_doc = run.memo.get("verify_document")
        for item in done:
            name = item.unit.spec.path.name
            run.records[name]["compat"] = item.result
            if verify_doc is not None and name in verify_doc.artifacts:
                verify_doc.artifacts[name].compat = item.result
        if verify_doc is not None:
            run.write_document("verify", verify_doc)
        for item in done:
            raise_on_incompatible(item.unit.spec.path.name, item.result)

"""Export stage: one unit per format x recipe, each cached by its source model, recipe and settings."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..cache import content_view
from ..recipes import RECIPES, is_calibrated
from .base import ArtifactPlan, Done, RunState, Stage, Unit


class ExportStage(Stage):
    name = "export"
    only = "export"
    per_unit_log = True

    def prepare(self, run: RunState) -> None:
        """Plan every artifact and its cache key (nothing is written yet)."""
        config, cache = run.config, run.context.cache
        settings = export_settings(config)
        run.artifacts = []
        for fmt in config.export.formats:
            for recipe in getattr(config.export, fmt).recipes:
                path = run.run_dir / "artifacts" / f"{config.model_name}.{recipe}.{fmt}"
                key = cache.key("export", source=run.source_key, format=fmt, recipe=recipe, export=settings,
                                data=content_view(config.data) if is_calibrated(fmt, recipe) else None)
                run.artifacts.append(ArtifactPlan(path, fmt, recipe, key))

    def units(self, run: RunState) -> list[Unit]:
        return [Unit(f"{a.format} {a.recipe}", key=a.key, spec=a, outputs=[a.path], what=a.path.name)
                for a in run.artifacts]

    def run_unit(self, run: RunState, unit: Unit) -> None:
        from ..export import ExportOptions, export_model

        plan: ArtifactPlan = unit.spec
        options = ExportOptions.from_config(run.config, plan.format, plan.recipe)
        export_model(run.model, plan.path, options, calibration=run.run_data.calibration,
                     metadata=provenance(run.manifest, plan.recipe), float_onnx=self._float_onnx(run, plan))

    def remote_unit(self, run: RunState, unit: Unit) -> Any:
        from ..remote_units import export_remote

        return export_remote(run, unit)

    def _float_onnx(self, run: RunState, plan: ArtifactPlan) -> Path | None:
        """The fp32 ONNX file the other ONNX recipes quantize: the fp32 artifact, else one scratch copy."""
        if plan.format != "onnx" or plan.recipe == "fp32":
            return None
        name = f"{run.config.model_name}.fp32.onnx"
        artifact = plan.path.with_name(name)
        if "fp32" in run.config.export.onnx.recipes and artifact.exists():
            return artifact
        if "scratch" not in run.memo:
            run.memo["scratch"] = Path(tempfile.mkdtemp(prefix=".quantize-", dir=run.run_dir))
        return run.memo["scratch"] / name

    def finish(self, run: RunState, done: list[Done]) -> None:
        from ..artifact_info import describe
        from ..budgets import check_release_candidate

        check_release_candidate(run.config.budgets, [d.unit.spec.path.name for d in done])
        parent = run.manifest["models"][-1]["sha256"] if run.manifest.get("models") else \
            run.manifest["source_model"]["sha256"]
        for item in done:
            plan: ArtifactPlan = item.unit.spec
            plan.cached = item.cached
            record = artifact_record(run, plan, describe(plan.path), parent)
            run.manifest["artifacts"].append(record)
            run.records[plan.path.name] = record

    def cleanup(self, run: RunState) -> None:
        scratch = run.memo.pop("scratch", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def artifact_record(run: RunState, plan: ArtifactPlan, info: dict[str, Any], parent: str) -> dict[str, Any]:
    record = {
        "name": plan.path.name,
        "path": str(plan.path.relative_to(run.run_dir)),
        "format": plan.format,
        "recipe": plan.recipe,
        "bytes": info["bytes"],
        "sha256": info["sha256"],
        "parent": parent,
        "inputs": info["inputs"],
        "outputs": info["outputs"],
        "ops": info["ops"],
        "verify": None,
        "bench": {},
        "cached": {"export": plan.cached},
    }
    if plan.format == "onnx":
        record["opset"] = info["opset"]
    record["quantization"] = quantization_record(run.config, plan.format, plan.recipe, run.run_data)
    return record


def export_settings(config: Any) -> Any:
    """[export] as an export's cache key sees it: which formats and recipes run does not change one artifact."""
    settings = content_view(config.export.model_dump(mode="json", exclude={"formats"}))
    for fmt in ("tflite", "onnx"):
        if isinstance(settings.get(fmt), dict):
            settings[fmt].pop("recipes", None)
    return settings


def provenance(manifest: dict[str, Any], recipe: str) -> dict[str, str]:
    return {
        "edge_toolchain_version": manifest["toolchain_version"],
        "source_model_sha256": manifest["source_model"]["sha256"],
        "recipe": recipe,
    }


def quantization_record(config: Any, fmt: str, recipe: str, run_data: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"recipe": recipe}
    if is_calibrated(fmt, recipe):
        cal = run_data.record.get("calibration") or {}
        record["calibration"] = {"source": cal.get("source"), "samples": cal.get("samples"),
                                 "random": cal.get("random", False)}
        if run_data.record.get("warning"):
            record["warning"] = run_data.record["warning"]
    if fmt == "onnx" and recipe == "int8":
        record["per_channel"] = config.export.onnx.per_channel
        record["calibration_method"] = config.export.onnx.calibration_method
    keep = getattr(config.export, fmt).keep_float
    record["keep_float"] = list(keep) if RECIPES[fmt, recipe].keep_float_applies else []
    return record

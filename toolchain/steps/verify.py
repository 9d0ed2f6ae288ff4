"""Verify stage: one unit per artifact, compared with the Keras model on the same samples."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..cache import content_view, file_digest
from ..fileio import atomic_write_json
from ..recipes import RECIPES
from ..records import VERIFY_SCHEMA_VERSION, VerifyDocument, VerifyResult
from .base import ArtifactPlan, Done, RunState, Stage, Unit

RESULT_SCHEMA_VERSION = VERIFY_SCHEMA_VERSION
RANDOM_SAMPLES = 16  # without evaluation data: seeded random inputs


class VerifyStage(Stage):
    name = "verify"
    only = "verify"
    result_type = VerifyResult

    def enabled(self, run: RunState) -> bool:
        return run.config.verify.enabled

    def label(self, run: RunState) -> str:
        return f"{len(run.artifacts)} artifact(s)"

    def units(self, run: RunState) -> list[Unit]:
        return [Unit(a.path.name, key=verify_key(run, a), spec=a, what=a.path.name) for a in run.artifacts]

    def run_unit(self, run: RunState, unit: Unit) -> VerifyResult:
        from ..stages.verify import verify_artifact

        plan: ArtifactPlan = unit.spec
        sample = self._sample(run)
        return VerifyResult.model_validate(verify_artifact(plan.path, self._reference(run, sample), sample,
                                                           tolerance(run.config, plan)))

    def remote_unit(self, run: RunState, unit: Unit) -> Any:
        from ..remote_units import verify_remote

        sample = self._sample(run)
        return verify_remote(run, unit, self._reference(run, sample), sample, tolerance(run.config, unit.spec))

    def _reference(self, run: RunState, sample: Any) -> Any:
        if "reference" not in run.memo:  # the Keras model runs only when some artifact is not cached
            from ..keras_io import run_keras

            run.memo["reference"] = run_keras(run.model, sample.inputs)
        return run.memo["reference"]

    def _sample(self, run: RunState) -> Any:
        if "verify_sample" not in run.memo:
            run.memo["verify_sample"] = run.data.head(run.config.verify.samples) if run.data else \
                run.sample(RANDOM_SAMPLES)
        return run.memo["verify_sample"]

    def finish(self, run: RunState, done: list[Done]) -> None:
        from ..stages.verify import raise_on_failures

        results: dict[str, VerifyResult] = {d.unit.spec.path.name: d.result for d in done}
        for item in done:
            record = run.records[item.unit.spec.path.name]
            record["cached"]["verify"] = item.cached
            as_json = item.result.to_json()
            record["verify"] = {"verdict": as_json["verdict"], "failures": as_json["failures"],
                                "outputs": as_json["outputs"]}
        sample = self._sample(run)
        manifest, record = run.manifest, run.run_data.record
        document = VerifyDocument(
            schema_version=VERIFY_SCHEMA_VERSION,
            reference=manifest["models"][-1]["path"] if run.truncation else manifest["source_model"]["path"],
            data=sample.source, samples=len(sample),
            notes=sample.notes + ([record["warning"]] if record.get("warning") else []),
            calibration=record, artifacts=results,
        )
        layer_reports = layer_error_reports(run, [d.unit.spec for d in done], results)
        for artifact_name, report_path in layer_reports.items():
            run.records[artifact_name]["verify"]["layer_report"] = report_path
        run.write_document("verify", document)
        raise_on_failures({name: r.to_json() for name, r in results.items()}, layer_reports)



def tolerance(config: Any, plan: ArtifactPlan) -> Any:
    from ..compare import tolerance_for

    overrides = config.verify.tolerances.get(plan.recipe)
    return tolerance_for(plan.recipe, overrides.model_dump() if overrides else None, plan.format)


def verify_key(run: RunState, plan: ArtifactPlan) -> str:
    config = run.config
    return run.context.cache.key(
        "verify", artifact=file_digest(plan.path), source=run.manifest["source_model"]["sha256"],
        recipe=plan.recipe, tolerance=vars(tolerance(config, plan)), verify=content_view(config.verify),
        data=content_view(config.data))


def layer_error_reports(run: RunState, artifacts: list[ArtifactPlan],
                        results: dict[str, VerifyResult]) -> dict[str, str]:
    """For each int8 artifact that failed verification: its worst layers, in quant-debug/."""
    failed = [a for a in artifacts
              if RECIPES[a.format, a.recipe].layer_report and results[a.path.name].verdict != "pass"]
    if not failed or run.run_data.calibration is None:
        return {}
    reports: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=".quant-debug-", dir=run.run_dir) as work:
        float_onnx = _float_onnx(run, failed, Path(work))
        for plan in failed:
            report = _layer_report(run, plan, float_onnx)
            relative = str(report.relative_to(run.run_dir))
            results[plan.path.name].layer_report = relative
            reports[plan.path.name] = relative
    return reports


def _float_onnx(run: RunState, failed: list[ArtifactPlan], work: Path) -> Path:
    from ..stages.export_onnx import export_onnx

    config = run.config
    float_onnx = run.run_dir / "artifacts" / f"{config.model_name}.fp32.onnx"
    if any(a.format == "onnx" for a in failed) and not float_onnx.exists():
        batch = None if config.export.dynamic_batch else config.export.batch_size
        float_onnx = export_onnx(run.model, work / "float.onnx", batch_size=batch,
                                 opset=config.export.onnx.opset, nchw=config.export.onnx.nchw)
    return float_onnx


def _layer_report(run: RunState, plan: ArtifactPlan, float_onnx: Path) -> Path:
    from ..stages.export_tflite import tflite_layer_errors
    from ..stages.quantize_onnx import onnx_layer_errors

    config = run.config
    batch = None if config.export.dynamic_batch else config.export.batch_size
    sample = run.run_data.calibration.head(32)
    if plan.format == "tflite":
        layers = tflite_layer_errors(run.model, sample, batch)
        tool = "tf.lite.experimental.QuantizationDebugger"
        metric = "error_in_steps: RMS(float - quantized) / scale, worst first"
    else:
        layers = onnx_layer_errors(float_onnx, plan.path, sample, batch)
        tool = "onnxruntime.quantization.qdq_loss_debug"
        metric = "snr_db of each activation vs the float model, worst (lowest) first"
    report = run.run_dir / "quant-debug" / f"{plan.path.name}.layers.json"
    atomic_write_json(report, {"schema_version": RESULT_SCHEMA_VERSION, "artifact": plan.path.name,
                               "recipe": plan.recipe, "tool": tool, "metric": metric,
                               "samples": len(sample), "worst_layers": layers})
    return report

"""fp32 ONNX -> fp16, dynamic-range int8, or static int8 (QDQ) through onnxruntime.quantization.

Dynamic and static quantization start from onnxruntime's own pre-processing
(`quant_pre_process`: symbolic shape inference and graph optimisation), as its
documentation asks, so the quantizer sees fused ops and known shapes.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from ..data import CalibrationReader, Dataset
from ..errors import ConfigError, DataError, StageError
from ..fileio import atomic_output
from ..recipes import RECIPES, is_calibrated, recipe_names

RECIPE_NOTES = {r.name: r.notes for r in RECIPES.values() if r.format == "onnx" and r.name != "fp32"}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def quantize_onnx(
    float_model: str | Path,
    filepath: str | Path,
    *,
    recipe: str,
    calibration: Dataset | None = None,
    batch_size: int | None = 1,
    per_channel: bool = True,
    calibration_method: str = "minmax",
    keep_float: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the `recipe` version of the fp32 ONNX file `float_model` to `filepath`."""
    filepath = Path(filepath)
    _check_arguments(filepath, recipe, calibration, calibration_method, keep_float)
    import onnx

    source = onnx.load(str(float_model), load_external_data=False)
    if calibration is not None:
        calibration = channels_first(calibration, nchw_inputs(source))
    model = _convert(Path(float_model), recipe, calibration, batch_size, per_channel, calibration_method,
                     keep_float or [])
    inherited = {p.key: p.value for p in source.metadata_props if p.key != "onnx.quant.pre_process"}
    _set_metadata(model, {**inherited, **(metadata or {}), "recipe": recipe})
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise StageError(f"ONNX {recipe} quantization produced an invalid model: {e}") from e
    with atomic_output(filepath) as tmp:
        onnx.save(model, str(tmp))
    return filepath


def _check_arguments(filepath: Path, recipe: str, calibration: Dataset | None, calibration_method: str,
                     keep_float: list[str] | None) -> None:
    if filepath.suffix != ".onnx":
        raise ConfigError(f"ONNX output path must end with .onnx, got {filepath}")
    if recipe not in recipe_names("onnx") or recipe == "fp32":
        raise ConfigError(
            f"ONNX quantization recipe must be one of {', '.join(r for r in recipe_names('onnx') if r != 'fp32')}, "
            f"got {recipe!r}"
        )
    if calibration_method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"unknown calibration method {calibration_method!r}; choose one of {', '.join(CALIBRATION_METHODS)}"
        )
    if is_calibrated("onnx", recipe) and calibration is None:
        raise DataError(f"ONNX recipe {recipe!r} needs calibration data; set [data.calibration] source")
    refused = RECIPES["onnx", recipe].keep_float_refused
    if keep_float and refused:
        raise ConfigError(refused)


def _convert(float_model: Path, recipe: str, calibration: Dataset | None, batch_size: int | None,
             per_channel: bool, calibration_method: str, keep_float: list[str]) -> Any:
    """The converted model in memory; a converter failure is a StageError quoting its first line."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="quantize-onnx.") as work:
        try:
            if recipe == "fp16":
                return _to_fp16(onnx.load(str(float_model)))
            return _quantize(float_model, Path(work), recipe, calibration, batch_size, per_channel,
                             calibration_method, keep_float)
        except (ConfigError, DataError):
            raise
        except Exception as e:
            text = str(e).strip()
            raise StageError(
                f"ONNX {recipe} quantization of {float_model.name} failed: "
                f"{text.splitlines()[0][:400] if text else type(e).__name__}"
            ) from e


def nchw_inputs(model: Any) -> list[str]:
    """Inputs the export transposed to channels-first (recorded in the file's metadata)."""
    from ..artifact_info import NCHW_INPUTS_KEY

    value = {p.key: p.value for p in model.metadata_props}.get(NCHW_INPUTS_KEY, "")
    return [name for name in value.split(",") if name]


def channels_first(dataset: Dataset, names: list[str]) -> Dataset:
    """Calibration data is in the Keras layout (NHWC); an NCHW export takes NCHW."""
    if not names:
        return dataset
    inputs = {k: (v.transpose(0, 3, 1, 2).copy() if k in names and v.ndim == 4 else v)
              for k, v in dataset.inputs.items()}
    return Dataset(inputs, dataset.labels, dataset.source, list(dataset.notes))


def _to_fp16(model: Any) -> Any:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    # keep_io_types: inputs and outputs stay float32, so every caller (verify, runner,
    # application code) feeds the same arrays as for fp32; casts sit at the edges.
    converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
    # the converter appends the input casts at the end of the node list; onnx.checker
    # (and some runtimes) require topological order
    converted.topological_sort()
    return converted.model


def _quantize(float_model: Path, work_dir: Path, recipe: str, calibration: Dataset | None,
              batch_size: int | None, per_channel: bool, method: str, keep_float: list[str]) -> Any:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    prepared = work_dir / "prepared.onnx"
    quant_pre_process(str(float_model), str(prepared))
    excluded = nodes_to_exclude(onnx.load(str(prepared)), keep_float)
    output = work_dir / f"{recipe}.onnx"
    if recipe == "dynamic":
        quantize_dynamic(str(prepared), str(output), weight_type=QuantType.QInt8,
                         per_channel=per_channel, nodes_to_exclude=excluded)
    else:
        reader = CalibrationReader(calibration, batch_size or 1)

        class Reader(CalibrationDataReader):
            def get_next(self) -> dict | None:
                return reader.get_next()

            def rewind(self) -> None:
                reader.rewind()

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        quantize_static(
            str(prepared), str(output), Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=methods[method],
            nodes_to_exclude=excluded,
            # symmetric int8 weights (zero point 0) as int8 kernels expect; activations
            # asymmetric so ReLU outputs use the whole int8 range
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    return onnx.load(str(output))


def nodes_to_exclude(model: Any, layers: list[str]) -> list[str]:
    """ONNX node names (tf2onnx keeps the Keras layer scope) belonging to the named layers."""
    if not layers:
        return []
    names = [node.name for node in model.graph.node]
    found, missing = [], []
    for layer in layers:
        pattern = re.compile(re.escape(layer) + r"(_\d+)?")
        matches = [n for n in names if any(pattern.fullmatch(part) for part in n.split("/"))]
        (found.extend(matches) if matches else missing.append(layer))
    if missing:
        scopes = sorted({n.split("/")[1] for n in names if n.count("/") >= 2})
        raise ConfigError(
            f"keep_float: no ONNX node belongs to layer {missing[0]!r} "
            f"(layer scopes in the graph: {', '.join(scopes[:20]) or 'none'})"
        )
    return found


def _set_metadata(model: Any, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)


def onnx_layer_errors(float_model: str | Path, quantized_model: str | Path, calibration: Dataset,
                      batch_size: int | None = 1, worst: int = 10) -> list[dict[str, Any]]:
    """Per-tensor error of a QDQ model against its float model (onnxruntime's qdq_loss_debug).

    `snr_db` compares the quantized model's activation with the float model's at the same
    tensor (lower is worse); `qdq_snr_db` isolates the error of quantizing that tensor alone.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    calibration = channels_first(calibration, nchw_inputs(onnx.load(str(float_model), load_external_data=False)))
    reader = CalibrationReader(calibration, batch_size or 1)

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict | None:
            return reader.get_next()

        def rewind(self) -> None:
            reader.rewind()

    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="qdq-debug.") as work:
        prepared = str(Path(work) / "prepared.onnx")
        float_aug = str(Path(work) / "float.onnx")
        qdq_aug = str(Path(work) / "qdq.onnx")
        quant_pre_process(str(float_model), prepared)  # the graph the quantizer saw: same tensor names
        modify_model_output_intermediate_tensors(prepared, float_aug)
        modify_model_output_intermediate_tensors(str(quantized_model), qdq_aug)
        float_acts = collect_activations(float_aug, Reader())
        reader.rewind()
        qdq_acts = collect_activations(qdq_aug, Reader())
    matched = create_activation_matching(qdq_acts, float_acts)
    for match in matched.values():
        match.setdefault("float", None)  # a tensor only the QDQ graph has: qdq error only
    errors = compute_activation_error(matched)
    rows = [
        {"tensor": name, "snr_db": float(err.get("xmodel_err", float("nan"))),
         "qdq_snr_db": float(err.get("qdq_err", float("nan")))}
        for name, err in errors.items()
    ]
    rows.sort(key=lambda r: r["snr_db"] if r["snr_db"] == r["snr_db"] else float("inf"))
    return rows[:worst]

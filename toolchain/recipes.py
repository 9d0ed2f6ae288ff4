"""The recipe registry: one entry per (format, recipe), read by everything that knows recipes.

Config validation, export, verify, the device check, the emulator gate, the report, the
demo and the docs table all read these entries. Adding a recipe is one `Recipe(...)` entry
here plus its converter code (stages/export_tflite.py or stages/quantize_onnx.py).

Tolerances come in two kinds, each with the reason for its numbers:
- `tolerance`: the artifact vs the Keras model (verify);
- `device_tolerance`: the same artifact on another runtime (a target's own Python and
  runtime, an SSH device, the emulated Pi) vs this machine's runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

FORMATS = ("tflite", "onnx")

# ---- tolerances vs the Keras model (verify) ----------------------------------------------
# fp32: the converters fuse ops (conv+bias+activation) and use other GEMM kernels, which
# reorders float additions; measured differences are ~1e-6 of the output scale. 1e-4 of the
# output scale leaves two orders of headroom, while a wrong op or weight gives errors near 1.
# Cosine 0.9999 and top-1 agreement 99% catch the same bugs on classifiers whose outputs are
# near a tie (a tie may flip on a 1e-6 difference, hence not 100%).
FP32_WHY = ("fused kernels reorder float sums: ~1e-6 of the output scale measured; 1e-4 leaves two "
            "orders of headroom while a wrong op or weight gives errors near 1")
FP32 = {"max_abs_error": 1e-4, "min_cosine": 0.9999, "min_top1_agreement": 0.99}
# Quantized recipes are never compared element-wise (a quantization step is ~1/256 of a
# tensor's range, so max error says little); they get cosine, top-1 agreement and, with
# labels, the accuracy drop vs Keras fp32, which is what a deployment cares about.
# fp16: 11-bit mantissas give ~5e-4 relative error per weight; TFLite dequantizes fp16
# weights to float32 at load, ONNX computes in float16, so errors reach ~1e-3 of the output
# scale; 1e-2 leaves headroom, cosine 0.999 and 98% agreement allow near-tie flips, and a
# 0.5 pt accuracy drop is a real regression for a recipe sold as lossless.
FP16_WHY = ("11-bit mantissas: ~1e-3 of the output scale; 1e-2 leaves headroom, 0.5 pt accuracy drop is a "
            "real regression for a recipe sold as lossless")
FP16 = {"max_abs_error": 1e-2, "min_cosine": 0.999, "min_top1_agreement": 0.98, "max_accuracy_drop": 0.005}
# dynamic: int8 weights, activations re-quantized per inference; measured cosine >= 0.999 on
# the demo digits CNN, so 0.99 flags a broken layer but not rounding.
DYNAMIC_WHY = "measured cosine >= 0.999 on the demo digits CNN: 0.99 flags a broken layer, not rounding"
DYNAMIC = {"min_cosine": 0.99, "min_top1_agreement": 0.95, "max_accuracy_drop": 0.01}
# int8 / int8-float-io: the budget is 1.0 pt on TFLite, 1.5 pt on ONNX (QDQ keeps a
# float-input Quantize and per-tensor activation scales chosen by ORT's calibrator).
# min_cosine is the worst single sample: on the demo digits CNN one near-tie softmax sample
# reaches 0.93 under ONNX QDQ with top-1 unchanged (mean 0.9996), while a wrong input scale
# or zero point gives ~0.1-0.5 on most samples; 0.9 separates the two. 90% agreement allows
# random-weight models' near-tie outputs and still catches such mistakes (agreement near chance).
INT8_WHY = ("worst-sample cosine 0.93 measured on a near-tie sample vs 0.1-0.5 for a wrong scale or zero "
            "point; accuracy budget 1 pt")
INT8 = {"min_cosine": 0.9, "min_top1_agreement": 0.9, "max_accuracy_drop": 0.01}
ONNX_INT8_WHY = INT8_WHY.replace("1 pt", "1.5 pt (QDQ keeps a float-input Quantize and per-tensor scales)")
ONNX_INT8 = {**INT8, "max_accuracy_drop": 0.015}
# int16x8: 16-bit activations are ~256x finer than int8: cosine 0.999, 0.5 pt.
INT16X8_WHY = "16-bit activations are ~256x finer than int8"
INT16X8 = {"min_cosine": 0.999, "min_top1_agreement": 0.98, "max_accuracy_drop": 0.005}

# ---- tolerances of the same artifact on another runtime (device check, emulator gate) -----
# fp32: both run XNNPACK or plain kernels with other vector widths and fused kernels: float
# sums reorder, measured differences are ~1e-7 of the output scale; 1e-4 keeps verify's headroom.
DEVICE_FLOAT_WHY = "other kernels reorder float sums: ~1e-7 of the output scale measured, 1e-4 keeps headroom"
DEVICE_FLOAT = {"max_abs_error": 1e-4, "min_cosine": 0.9999, "min_top1_agreement": 0.99}
DEVICE_FP16 = {"max_abs_error": 1e-3, "min_cosine": 0.9999, "min_top1_agreement": 0.99}
# Quantized: the x86 and aarch64 int8 kernels round requantization differently. Measured on
# the demo's int8 digits CNN, tflite-runtime 2.14 aarch64 vs the host: 199 of 200 samples
# identical, one near-tie 16 LSB apart (0.0625 of a softmax output, cosine 0.9906) whose
# top-1 flips, so 1 of 8 check samples may flip. A wrong scale, zero point or kernel gives
# cosines far below 0.9; 0.1 of the output scale, cosine 0.97 and 75% agreement pass the
# rounding and still catch those.
DEVICE_QUANTIZED_WHY = ("x86 and aarch64 int8 kernels round requantization differently: one near-tie "
                        "sample 16 LSB apart (cosine 0.9906) measured; a wrong scale gives cosines far below 0.9")
DEVICE_QUANTIZED = {"max_abs_error": 0.1, "min_cosine": 0.97, "min_top1_agreement": 0.75}


@dataclass(frozen=True)
class Recipe:
    """What one recipe of one format is: its calibration needs, keep_float rule and tolerances."""

    format: str
    name: str
    notes: str
    converter: str  # the converter settings, as the docs table shows them
    tolerance: dict[str, float]
    tolerance_why: str
    device_tolerance: dict[str, float] = field(default_factory=lambda: dict(DEVICE_QUANTIZED))
    device_tolerance_why: str = DEVICE_QUANTIZED_WHY
    calibrated: bool = False  # activation ranges come from calibration data
    keep_float_applies: bool = False  # export.<format>.keep_float layers stay in float
    keep_float_refused: str | None = None  # why keep_float is an error with this recipe (None: not refused)
    layer_report: bool = False  # a failed verify writes a per-layer error report (quant-debug/)

    @property
    def key(self) -> tuple[str, str]:
        return (self.format, self.name)


def _entries() -> list[Recipe]:
    float_device = {"device_tolerance": DEVICE_FLOAT, "device_tolerance_why": DEVICE_FLOAT_WHY}
    fp16_device = {"device_tolerance": DEVICE_FP16, "device_tolerance_why": "float16 rounding of weights"}
    return [
        Recipe("tflite", "fp32", "float32 weights and activations", "no optimizations",
               FP32, FP32_WHY, **float_device),
        Recipe("tflite", "fp16", "float16 weights, dequantized to float32 at load (half the file, float32 compute)",
               "optimizations=DEFAULT, supported_types=[float16]", FP16, FP16_WHY, **fp16_device),
        Recipe("tflite", "dynamic", "int8 weights, activations quantized on the fly per inference (no calibration)",
               "optimizations=DEFAULT", DYNAMIC, DYNAMIC_WHY),
        Recipe("tflite", "int8", "full integer: int8 weights and activations, int8 input and output tensors",
               "representative_dataset, supported_ops=[TFLITE_BUILTINS_INT8], int8 input/output",
               INT8, INT8_WHY, calibrated=True, layer_report=True,
               keep_float_refused="selective quantization (TFLite's quantization debugger) keeps float "
                                  "input/output; use recipe 'int8-float-io' for a partly-float model"),
        Recipe("tflite", "int8-float-io",
               "full integer inside, float32 input and output (quantize/dequantize ops at the edges)",
               "representative_dataset, supported_ops=[TFLITE_BUILTINS_INT8], float32 input/output",
               INT8, INT8_WHY, calibrated=True, keep_float_applies=True, layer_report=True),
        Recipe("tflite", "int16x8", "int16 activations, int8 weights (more accurate than int8, fewer fast kernels)",
               "representative_dataset, supported_ops=[EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]",
               INT16X8, INT16X8_WHY, calibrated=True,
               keep_float_refused="TFLite's selective quantization supports int8 only; use 'int8-float-io'"),
        Recipe("onnx", "fp32", "float32 (tf2onnx conversion)", "tf2onnx, frozen constants",
               FP32, FP32_WHY, **float_device),
        Recipe("onnx", "fp16",
               "float16 weights and compute; float32 input/output (keep_io_types) so callers feed float32",
               "convert_float_to_float16(keep_io_types=True)", FP16, FP16_WHY, **fp16_device,
               keep_float_refused="keep_float applies to the int8 recipes ('dynamic', 'int8'), not to 'fp16'"),
        Recipe("onnx", "dynamic",
               "int8 weights; activations quantized on the fly per inference (MatMulInteger/ConvInteger)",
               "quantize_dynamic(weight_type=QInt8)", DYNAMIC, DYNAMIC_WHY, keep_float_applies=True),
        Recipe("onnx", "int8", "static QDQ: int8 weights (per channel by default) and activations from calibration; "
               "float32 input/output",
               "quantize_static(QDQ, QInt8, per_channel, calibration_method)", ONNX_INT8, ONNX_INT8_WHY,
               calibrated=True, keep_float_applies=True, layer_report=True),
    ]


RECIPES: dict[tuple[str, str], Recipe] = {r.key: r for r in _entries()}  # add entries with register()


def recipe_names(fmt: str) -> tuple[str, ...]:
    """The recipes of one format, in registry order."""
    return tuple(name for (f, name) in RECIPES if f == fmt)


def all_recipe_names() -> tuple[str, ...]:
    """Every recipe name of any format, in registry order, once each."""
    return tuple(dict.fromkeys(name for (_, name) in RECIPES))


def calibrated_names(fmt: str) -> tuple[str, ...]:
    return tuple(r.name for r in RECIPES.values() if r.format == fmt and r.calibrated)


def get_recipe(fmt: str, name: str) -> Recipe | None:
    return RECIPES.get((fmt, name))


def is_calibrated(fmt: str, name: str) -> bool:
    entry = RECIPES.get((fmt, name))
    return bool(entry and entry.calibrated)


def register(recipe: Recipe) -> Recipe:
    """Add an entry (plugins, tests); its converter code must exist in the matching export module."""
    if recipe.format not in FORMATS:
        raise ConfigError(f"recipe {recipe.name!r}: format must be one of {', '.join(FORMATS)}")
    RECIPES[recipe.key] = recipe
    return recipe


def unregister(fmt: str, name: str) -> None:
    RECIPES.pop((fmt, name), None)


def docs_table() -> str:
    """The recipe table of the docs, generated from the registry."""
    rows = ["| format | recipe | calibrated | keep_float | verify tolerance | what it is |",
            "|---|---|---|---|---|---|"]
    for r in RECIPES.values():
        keep = "yes" if r.keep_float_applies else ("refused" if r.keep_float_refused else "n/a")
        tolerance = ", ".join(f"{k}={v:g}" for k, v in r.tolerance.items())
        rows.append(f"| {r.format} | {r.name} | {'yes' if r.calibrated else 'no'} | {keep} | {tolerance} | "
                    f"{r.notes} |")
    return "\n".join(rows)


def describe(fmt: str, name: str) -> dict[str, Any]:
    """A plain record of one entry (report, docs)."""
    r = RECIPES[(fmt, name)]
    return {"format": r.format, "recipe": r.name, "notes": r.notes, "calibrated": r.calibrated,
            "keep_float_applies": r.keep_float_applies, "tolerance": dict(r.tolerance),
            "tolerance_why": r.tolerance_why}

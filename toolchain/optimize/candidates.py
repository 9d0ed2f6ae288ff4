"""The candidates the optimizer tries: the recipes plus the converter knobs that change speed.

A candidate is plain data (format, recipe, knobs); `build_candidate` turns it into a file
through the same exporters as `edge-toolchain export`. Knobs that need the model (which
layers to keep in float) are resolved by `candidates_for`, so each candidate's settings,
and with them its cache key, are explicit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data import Dataset
from ..errors import ConfigError
from .rewrite import apply_rewrite, hard_swish_layers

INT8_CLASS = ("dynamic", "int8", "int8-float-io")  # recipes with int8 weights or activations
WORST_LAYERS = "@worst-int8-error:3"  # keep_float entry resolved at build time from the calibration data


@dataclass(frozen=True)
class Candidate:
    """One artifact to try: `name` is unique within a search and names its file."""

    name: str
    format: str
    recipe: str
    keep_float: tuple[str, ...] = ()
    knobs: dict[str, Any] = field(default_factory=dict)  # ONNX quantizer settings (quantize_onnx.QUANT_KNOBS)
    rewrite: str | None = None  # a function-preserving model rewrite before conversion (rewrite.py)
    why: str = ""
    session_options: dict[str, Any] = field(default_factory=dict)  # onnxruntime's, as the runner takes them
    shares_file: str | None = None  # the candidate whose file this one runs (it differs in session options only)
    derived_from: str | None = None  # the slow candidate whose profile suggested this one

    @property
    def int8_class(self) -> bool:
        return self.recipe in INT8_CLASS

    @property
    def baseline(self) -> bool:
        """A format's plain fp32: what no recommendation may be slower than."""
        return self.recipe == "fp32" and not self.session_options and self.rewrite is None

    def file_settings(self) -> dict[str, Any]:
        """What decides the file's bytes: its build cache key."""
        return {"format": self.format, "recipe": self.recipe, "keep_float": list(self.keep_float),
                "knobs": dict(self.knobs), "rewrite": self.rewrite}

    def settings(self) -> dict[str, Any]:
        """What the candidate is, as its benchmark cache key and optimize.json see it."""
        return {**self.file_settings(), "session_options": dict(self.session_options)}


def hard_swish_and_se_layers(model: Any) -> list[str]:
    """Layers of hard-swish activations and squeeze-excite gates: int8 kernels that XNNPACK may not take."""
    found = []
    for layer in model.layers:
        activation = getattr(getattr(layer, "activation", None), "__name__", "")
        if activation in ("hard_swish", "hard_silu", "hard_sigmoid") or type(layer).__name__ == "Multiply":
            found.append(layer.name)
    return found


def tflite_candidates(model: Any) -> list[Candidate]:
    found = [
        Candidate("tflite-fp32", "tflite", "fp32", why="the float baseline"),
        Candidate("tflite-fp16", "tflite", "fp16", why="half the file, float32 compute"),
        Candidate("tflite-dynamic", "tflite", "dynamic", why="int8 weights, float activations"),
        Candidate("tflite-int8", "tflite", "int8-float-io", why="full int8 inside, float input/output"),
    ]
    keep = tuple(hard_swish_and_se_layers(model))
    if keep:
        found.append(Candidate("tflite-int8-float-hswish-se", "tflite", "int8-float-io", keep_float=keep,
                               why="int8 with hard-swish and squeeze-excite layers in float: XNNPACK does "
                                   "not take int8 HARD_SWISH"))
    found.append(Candidate("tflite-int8-float-worst3", "tflite", "int8-float-io", keep_float=(WORST_LAYERS,),
                           why="int8, the 3 layers of largest int8 error (TFLite's quantization debugger) in float"))
    if hard_swish_layers(model):
        found.append(Candidate("tflite-int8-hswish-as-mul", "tflite", "int8-float-io", rewrite="hard_swish_as_mul",
                               why="int8 with hard-swish written as (x/6)*relu6(x+3): not re-fused into "
                                   "HARD_SWISH, so XNNPACK takes the whole graph"))
    return found


ONNX_INT8_VARIANTS: list[tuple[str, dict[str, Any], bool, str]] = [
    # (name suffix, knobs, per_channel, why)
    ("int8", {}, True, "static QDQ, S8S8, per channel (the int8 recipe)"),
    ("int8-per-tensor", {}, False, "per-tensor weight scales: fewer DequantizeLinear, simpler kernels"),
    ("int8-u8s8", {"activation_type": "uint8"}, True, "uint8 activations: the x86 U8S8 kernels (VPMADDUBSW)"),
    ("int8-u8s8-reduce-range", {"activation_type": "uint8", "reduce_range": True}, True,
     "7-bit weights: no VPMADDUBSW saturation on CPUs without VNNI"),
    ("int8-conv-matmul-add", {"op_types": ["Conv", "MatMul", "Gemm", "Add"]}, True,
     "quantize only the ops with fast int8 kernels; no Q/DQ pairs around HardSwish/Sigmoid/Mul"),
    ("int8-qoperator", {"activation_type": "uint8", "quant_format": "qoperator"}, True,
     "QOperator (QLinearConv...) instead of QDQ"),
]


def onnx_candidates() -> list[Candidate]:
    found = [
        Candidate("onnx-fp32", "onnx", "fp32", why="the float baseline"),
        Candidate("onnx-fp16", "onnx", "fp16", why="float16 weights and compute"),
        Candidate("onnx-dynamic", "onnx", "dynamic", why="int8 weights, activations quantized per inference"),
    ]
    for suffix, knobs, per_channel, why in ONNX_INT8_VARIANTS:
        found.append(Candidate(f"onnx-{suffix}", "onnx", "int8",
                               knobs={**knobs, "per_channel": per_channel}, why=why))
    return found


# onnxruntime session options worth a measurement on an edge CPU (docs/optimize.md has the figures):
# (name suffix, session options, fewest threads where they can matter, why)
SESSION_VARIANTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("no-spin", {"allow_spinning": False}, 2,
     "intra-op threads sleep instead of spinning when idle: frees the cores the app shares, may cost latency"),
]
SESSION_BASES = ("onnx-fp32", "onnx-int8")  # the files tried with other session options


def session_candidates(found: list[Candidate], threads: int) -> list[Candidate]:
    """The same files as SESSION_BASES run with other session options (never built again)."""
    variants = []
    for base in (c for c in found if c.name in SESSION_BASES):
        for suffix, options, min_threads, why in SESSION_VARIANTS:
            if threads >= min_threads:
                variants.append(replace(base, name=f"{base.name}-{suffix}", session_options=dict(options),
                                        shares_file=base.name, why=f"{base.name}'s file; {why}"))
    return variants


def candidates_for(model: Any, formats: list[str], only: list[str] | None = None,
                   threads: int = 1) -> list[Candidate]:
    """Every candidate of `formats`, the fp32 baselines first; `only` picks some by name (the
    baselines stay, and the file a chosen session-option variant runs)."""
    found: list[Candidate] = []
    for fmt in formats:
        if fmt == "tflite":
            found += tflite_candidates(model)
        elif fmt == "onnx":
            found += onnx_candidates()
            found += session_candidates(found, threads)
        else:
            raise ConfigError(f"--formats: unknown format {fmt!r}; choose from tflite, onnx")
    if only:
        found = _chosen(found, only)
    found.sort(key=lambda c: not c.baseline)
    return found


def _chosen(found: list[Candidate], only: list[str]) -> list[Candidate]:
    """The candidates named, the baselines, and the files the chosen session-option variants run."""
    known = [c.name for c in found]
    unknown = [name for name in only if name not in known]
    if unknown:
        hint = next((f" (the -{suffix} candidates need --threads >= {least})"
                     for suffix, _, least, _ in SESSION_VARIANTS if unknown[0].endswith(f"-{suffix}")), "")
        raise ConfigError(f"--candidates: no candidate named {unknown[0]!r}{hint}; known: {', '.join(known)}")
    needed = set(only) | {c.shares_file for c in found if c.name in only and c.shares_file}
    return [c for c in found if c.name in needed or c.baseline]


def worst_int8_layers(model: Any, calibration: Dataset, count: int) -> list[str]:
    """The Keras layers owning the TFLite ops of largest int8 error (in quantization steps), worst first."""
    from ..stages.export_tflite import _belongs_to, tflite_layer_errors

    names = [layer.name for layer in model.layers if layer.weights or type(layer).__name__ == "Activation"]
    found: list[str] = []
    for row in tflite_layer_errors(model, calibration, 1, worst=50):
        owner = next((name for name in names if _belongs_to(row["layer"], name)), None)
        if owner and owner not in found:
            found.append(owner)
        if len(found) == count:
            break
    return found


def build_candidate(model: Any, candidate: Candidate, path: Path, calibration: Dataset,
                    float_onnx: Path) -> Path:
    """Write the candidate's file (atomically, by the format's exporter)."""
    from ..stages.export_onnx import export_onnx
    from ..stages.export_tflite import export_tflite
    from ..stages.quantize_onnx import quantize_onnx

    metadata = {"recipe": candidate.recipe, "optimize_candidate": candidate.name}
    keep = list(candidate.keep_float) or None
    if keep == [WORST_LAYERS]:
        keep = worst_int8_layers(model, calibration, 3) or None
    calibrated = calibration if candidate.recipe in ("int8", "int8-float-io") else None
    model = apply_rewrite(model, candidate.rewrite)
    if candidate.format == "tflite":
        return export_tflite(model, path, recipe=candidate.recipe, calibration=calibrated, keep_float=keep,
                             metadata=metadata)
    if candidate.recipe == "fp32":
        return export_onnx(model, path, recipe="fp32", metadata=metadata)
    if not float_onnx.exists():
        export_onnx(model, float_onnx, recipe="fp32", metadata={"recipe": "fp32"})
    knobs = dict(candidate.knobs)
    per_channel = knobs.pop("per_channel", True)
    return quantize_onnx(float_onnx, path, recipe=candidate.recipe, calibration=calibrated,
                         per_channel=per_channel, keep_float=keep, metadata=metadata, knobs=knobs or None)

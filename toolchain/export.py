"""One export path for the CLI (`edge-toolchain export`), the pipeline and the Python API.

`ExportOptions` holds every export setting; `export_model` turns a Keras model into one
artifact of one recipe. ONNX fp16/dynamic/int8 start from an fp32 ONNX conversion: an
existing one when given (the pipeline's fp32 artifact), else one made in `work_dir`.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DEFAULT_ONNX_OPSET
from .data import Dataset
from .errors import ConfigError, DataError
from .recipes import FORMATS, RECIPES, recipe_names

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class ExportOptions:
    """Every export setting; ONNX-only and TFLite-only ones are refused for the other format."""

    format: str
    recipe: str = "fp32"
    batch_size: int | None = 1  # None: dynamic batch dimension
    opset: int = DEFAULT_ONNX_OPSET  # ONNX
    nchw: bool = False  # ONNX: 4-D inputs channels-first
    allow_flex: bool = False  # TFLite: Flex (TF Select) ops
    keep_float: tuple[str, ...] = field(default_factory=tuple)  # Keras layers left in float
    per_channel: bool = True  # ONNX int8
    calibration_method: str = "minmax"  # ONNX int8

    def check(self) -> None:
        """A one-line error for a setting that does not apply; nothing is converted before this."""
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.recipe not in recipe_names(self.format):
            raise ConfigError(f"unknown {self.format} recipe {self.recipe!r}; choose one of "
                              f"{', '.join(recipe_names(self.format))}")
        onnx_only = {"--nchw": (self.nchw, " (TFLite kernels are channels-last)"),
                     "--opset": (self.opset != DEFAULT_ONNX_OPSET, ""),
                     "--no-per-channel": (not self.per_channel, " (its int8 recipe)"),
                     "--calibration-method": (self.calibration_method != "minmax", " (its int8 recipe)")}
        for flag, (used, why) in onnx_only.items():
            if used and self.format != "onnx":
                raise ConfigError(f"{flag} applies to ONNX only{why}")
        if self.allow_flex and self.format != "tflite":
            raise ConfigError("--allow-flex applies to TFLite only")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, "
                              f"got {self.calibration_method!r}")
        self._check_keep_float()

    def _check_keep_float(self) -> None:
        entry = RECIPES[self.format, self.recipe]
        if self.keep_float and entry.keep_float_refused:
            raise ConfigError(f"--keep-float cannot be applied to {self.format} recipe {self.recipe!r}: "
                              f"{entry.keep_float_refused}")
        if self.keep_float and not entry.keep_float_applies:
            raise ConfigError(f"--keep-float does not apply to {self.format} recipe {self.recipe!r}: it has no "
                              "quantized layers to keep in float")

    @property
    def calibrated(self) -> bool:
        return RECIPES[self.format, self.recipe].calibrated

    @classmethod
    def from_config(cls, config: Any, fmt: str, recipe: str) -> ExportOptions:
        """The options of one artifact of a pipeline config ([export] and its format's section)."""
        section = getattr(config.export, fmt)
        keep = tuple(section.keep_float) if RECIPES[fmt, recipe].keep_float_applies else ()
        onnx = config.export.onnx
        return cls(fmt, recipe, None if config.export.dynamic_batch else config.export.batch_size,
                   opset=onnx.opset, nchw=onnx.nchw and fmt == "onnx",
                   allow_flex=config.export.tflite.allow_flex and fmt == "tflite", keep_float=keep,
                   per_channel=onnx.per_channel or fmt != "onnx",
                   calibration_method=onnx.calibration_method if fmt == "onnx" else "minmax")


def export_model(
    model: Any,
    path: Path,
    options: ExportOptions,
    *,
    calibration: Dataset | None = None,
    metadata: dict[str, str] | None = None,
    float_onnx: Path | None = None,
) -> Path:
    """Write one artifact of `options.recipe` to `path` (atomically, by the format's exporter).

    `float_onnx`: where the fp32 ONNX conversion of the same model is, or is to be kept for
    the next ONNX recipe (converted there when missing); None: a temporary one.
    """
    from .stages.export_onnx import export_onnx
    from .stages.export_tflite import export_tflite
    from .stages.quantize_onnx import quantize_onnx

    options.check()
    if options.calibrated and calibration is None:
        raise DataError(f"{options.format} recipe {options.recipe!r} needs calibration data: set "
                        "[data.calibration] source, or pass --data DATA.npz")
    keep = list(options.keep_float) or None
    if options.format == "tflite":
        return export_tflite(model, path, recipe=options.recipe, batch_size=options.batch_size,
                             calibration=calibration if options.calibrated else None, keep_float=keep,
                             metadata=metadata, allow_flex=options.allow_flex)
    if options.recipe == "fp32":
        return export_onnx(model, path, recipe="fp32", batch_size=options.batch_size, opset=options.opset,
                           metadata=metadata, nchw=options.nchw)
    with contextlib.ExitStack() as scratch:
        if float_onnx is None:
            folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent))
            float_onnx = Path(folder) / "float.onnx"
        if not float_onnx.exists():
            export_onnx(model, float_onnx, recipe="fp32", batch_size=options.batch_size, opset=options.opset,
                        metadata={**(metadata or {}), "recipe": "fp32"}, nchw=options.nchw)
        return quantize_onnx(float_onnx, path, recipe=options.recipe,
                             calibration=calibration if options.calibrated else None,
                             batch_size=options.batch_size, per_channel=options.per_channel,
                             calibration_method=options.calibration_method, keep_float=keep, metadata=metadata)

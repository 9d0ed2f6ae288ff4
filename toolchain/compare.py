"""One comparator, one tolerance table, one way to batch samples.

Used by verify (artifact vs the Keras model), the device check (the same artifact on a
target's own runtime: local Python, SSH device) and the emulator gate (the emulated Pi).
The tolerances live in the recipe registry (recipes.py) with the reason for each number.
Checks names, then shapes, then values; every failing output is collected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import ConfigError
from .recipes import RECIPES, all_recipe_names

Against = Literal["reference", "host"]


@dataclass
class Tolerance:
    max_abs_error: float | None = None  # relative to max(1, max |reference|) per output
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None  # vs the Keras model on labelled data, 0.01 = 1 pt

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


def tolerance_for(recipe: str, overrides: dict[str, Any] | None = None, fmt: str | None = None,
                  *, against: Against = "reference") -> Tolerance:
    """The registry's tolerance for `recipe` (of `fmt`; TFLite's when not given), then `overrides`.

    `against="reference"`: artifact vs the Keras model (verify); `"host"`: the same artifact
    on another runtime vs this machine's (device check, emulator gate).
    """
    entry = RECIPES.get((fmt, recipe)) if fmt else None
    if entry is None:
        entry = next((r for r in RECIPES.values() if r.name == recipe), None)
    if entry is None:
        raise ConfigError(f"no default tolerances for recipe {recipe!r}; known: {', '.join(all_recipe_names())}")
    values = dict(entry.tolerance if against == "reference" else entry.device_tolerance)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Tolerance(**values)


# ---- batching -------------------------------------------------------------------------------

def sample_count(arrays: dict[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0


def whole_batches(arrays: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Pad to a multiple of `batch` by repeating the last sample; `trim` drops the padding again.

    Fixed-batch artifacts take whole batches only; this is the one place that makes them.
    """
    count = sample_count(arrays)
    missing = -count % max(batch, 1)
    if not missing or not count:
        return dict(arrays)
    return {k: np.concatenate([v, np.repeat(v[-1:], missing, axis=0)]) for k, v in arrays.items()}


def trim(arrays: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {k: v[:count] for k, v in arrays.items()}


def batches(arrays: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """Consecutive whole batches of `arrays` (padded, see whole_batches)."""
    padded = whole_batches(arrays, batch)
    total = sample_count(padded)
    step = max(batch, 1)
    return [{k: v[start:start + step] for k, v in padded.items()} for start in range(0, total, step)]


# ---- the comparator -------------------------------------------------------------------------

def compare_outputs(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    tolerance: Tolerance,
    labels: np.ndarray | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Per-output metrics and the list of failures (names, then shapes, then values)."""
    failures = _name_failures(reference, candidate)
    metrics: dict[str, Any] = {}
    first = next(iter(reference), None)
    for name, ref in reference.items():
        if name not in candidate:
            continue
        got = candidate[name]
        if got.shape != ref.shape:
            failures.append(f"output '{name}': shape {list(got.shape)} != reference {list(ref.shape)}")
            continue
        entry, output_failures = _compare_one(name, ref, got, tolerance, labels if name == first else None)
        metrics[name] = entry
        failures += output_failures
    return metrics, failures


def _name_failures(reference: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    failures = [f"output '{n}' is missing from the artifact (it has {sorted(candidate)})"
                for n in reference if n not in candidate]
    return failures + [f"artifact has an unexpected output '{n}'" for n in candidate if n not in reference]


def _compare_one(name: str, ref: np.ndarray, got: np.ndarray, tolerance: Tolerance,
                 labels: np.ndarray | None) -> tuple[dict[str, Any], list[str]]:
    ref64 = ref.astype(np.float64).reshape(len(ref), -1)
    got64 = got.astype(np.float64).reshape(len(got), -1)
    if not np.all(np.isfinite(got64)):
        bad = int(got64.size - np.count_nonzero(np.isfinite(got64)))
        return ({"samples": int(len(ref)), "non_finite_values": bad},
                [f"output '{name}': {bad} NaN/inf values in the artifact's output"])
    entry = _value_metrics(ref64, got64)
    if ref64.shape[1] > 1 and ref.ndim == 2:  # a classifier: scores per class
        entry |= _class_metrics(ref64, got64, labels)
    return entry, _tolerance_failures(name, entry, tolerance)


def _value_metrics(ref64: np.ndarray, got64: np.ndarray) -> dict[str, Any]:
    diff = np.abs(ref64 - got64)
    scale = max(1.0, float(np.max(np.abs(ref64))) if ref64.size else 1.0)
    norms = np.linalg.norm(ref64, axis=1) * np.linalg.norm(got64, axis=1)
    dots = np.sum(ref64 * got64, axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 1.0)
    return {
        "samples": int(len(ref64)),
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "normalized_max_error": float(diff.max() / scale) if diff.size else 0.0,
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "snr_db": _snr_db(ref64, got64),
    }


def _class_metrics(ref64: np.ndarray, got64: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    ref_top1 = ref64.argmax(axis=1)
    got_top1 = got64.argmax(axis=1)
    entry: dict[str, Any] = {"top1_agreement": float(np.mean(ref_top1 == got_top1))}
    if labels is None:
        return entry
    entry["accuracy_reference"] = float(np.mean(ref_top1 == labels))
    entry["accuracy"] = float(np.mean(got_top1 == labels))
    entry["accuracy_delta"] = entry["accuracy"] - entry["accuracy_reference"]
    if ref64.shape[1] > 5:
        entry["top5_accuracy_reference"] = _top5(ref64, labels)
        entry["top5_accuracy"] = _top5(got64, labels)
        entry["top5_accuracy_delta"] = entry["top5_accuracy"] - entry["top5_accuracy_reference"]
    return entry


def _tolerance_failures(name: str, entry: dict[str, Any], tolerance: Tolerance) -> list[str]:
    failures = []
    drop = tolerance.max_accuracy_drop
    if drop is not None and "accuracy_delta" in entry and -entry["accuracy_delta"] > drop + 1e-9:
        failures.append(
            f"output '{name}': accuracy {entry['accuracy'] * 100:.2f}% is "
            f"{-entry['accuracy_delta'] * 100:.2f} pt below the Keras model's "
            f"{entry['accuracy_reference'] * 100:.2f}% (allowed {drop * 100:g} pt)"
        )
    if tolerance.max_abs_error is not None and entry["normalized_max_error"] > tolerance.max_abs_error:
        failures.append(
            f"output '{name}': max error {entry['max_abs_error']:.3g} "
            f"({entry['normalized_max_error']:.3g} of the output scale) > {tolerance.max_abs_error:g}"
        )
    if tolerance.min_cosine is not None and entry["cosine_min"] < tolerance.min_cosine:
        failures.append(f"output '{name}': cosine similarity {entry['cosine_min']:.6f} < {tolerance.min_cosine:g}")
    agreement = entry.get("top1_agreement")
    if tolerance.min_top1_agreement is not None and agreement is not None and agreement < tolerance.min_top1_agreement:
        failures.append(f"output '{name}': top-1 agreement {agreement:.4f} < {tolerance.min_top1_agreement:g}")
    return failures


def _snr_db(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Signal-to-noise ratio of the artifact's output, in dB (None when exact)."""
    noise = float(np.sum((reference - candidate) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0 or signal == 0:
        return None
    return float(10 * np.log10(signal / noise))


def _top5(scores: np.ndarray, labels: np.ndarray) -> float:
    top5 = np.argpartition(-scores, 5, axis=1)[:, :5]
    return float(np.mean(np.any(top5 == labels[:, None], axis=1)))

"""Evaluation data: arrays keyed by model input name, checked against the model."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, count: int) -> Dataset:
        return Dataset(
            {k: v[:count] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[:count],
            self.source,
            list(self.notes),
        )


def load_npz(
    path: str | Path,
    input_specs: list[Any],
    *,
    labels_key: str | None = "y",
    limit: int | None = None,
) -> Dataset:
    """Read an .npz (or a single-input .npy) file and check it against the model's inputs.

    `input_specs` are keras_io.TensorInfo (name, shape without batch, dtype). A single-
    input model also accepts the array under the key 'x'.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz/.npy file ({e})") from e
    if isinstance(loaded, np.ndarray):
        if len(input_specs) != 1:
            raise DataError(
                f"{path}: a .npy file holds one array but the model has {len(input_specs)} "
                "inputs; use an .npz keyed by input name"
            )
        arrays = {input_specs[0].name: loaded}
    else:
        try:
            arrays = {k: loaded[k] for k in loaded.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"{path}: corrupt .npz file ({e})") from e

    inputs: dict[str, np.ndarray] = {}
    for spec in input_specs:
        key = spec.name if spec.name in arrays else ("x" if len(input_specs) == 1 else None)
        if key is None or key not in arrays:
            raise DataError(
                f"{path}: no array for model input '{spec.name}' "
                f"(found keys: {', '.join(sorted(arrays)) or 'none'}); key arrays by input name"
            )
        inputs[spec.name] = check_array(arrays[key], spec, f"{path}['{key}']")
    counts = {name: len(a) for name, a in inputs.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"{path}: inputs have different sample counts: {counts}")
    labels = None
    if labels_key and labels_key in arrays:
        labels = np.asarray(arrays[labels_key])
        if labels.ndim == 2 and labels.shape[1] > 1:
            labels = labels.argmax(axis=1)
        labels = labels.reshape(-1)
        if len(labels) != next(iter(counts.values())):
            raise DataError(
                f"{path}: {len(labels)} labels under '{labels_key}' for "
                f"{next(iter(counts.values()))} samples"
            )
        if labels.dtype.kind not in "iu":
            raise DataError(f"{path}: labels '{labels_key}' must be integer class ids, got {labels.dtype}")
    dataset = Dataset(inputs, labels, str(path))
    if limit is not None:
        dataset = dataset.head(limit)
    if len(dataset) == 0:
        raise DataError(f"{path}: holds no samples")
    return dataset


def check_array(array: np.ndarray, spec: Any, what: str) -> np.ndarray:
    """Shape, dtype and finiteness of one input array, with the fix in the message."""
    array = np.asarray(array)
    expected = tuple(spec.shape)
    if array.ndim != len(expected) + 1:
        raise DataError(
            f"{what}: shape {array.shape} does not fit input '{spec.name}' which takes "
            f"(N, {', '.join('?' if d is None else str(d) for d in expected)})"
        )
    for got, want in zip(array.shape[1:], expected, strict=True):
        if want is not None and got != want:
            raise DataError(
                f"{what}: shape {array.shape} does not fit input '{spec.name}' which takes "
                f"(N, {', '.join('?' if d is None else str(d) for d in expected)})"
            )
    want_dtype = np.dtype(spec.dtype)
    if array.dtype.kind not in "fiub":
        raise DataError(f"{what}: dtype {array.dtype} is not numeric; input '{spec.name}' takes {want_dtype}")
    if want_dtype.kind == "f" and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise DataError(f"{what}: contains {bad} NaN/inf values; clean the data before using it")
    if want_dtype.kind in "iu" and array.dtype.kind == "f":
        raise DataError(f"{what}: float data for integer input '{spec.name}' ({want_dtype})")
    return array.astype(want_dtype, copy=False)

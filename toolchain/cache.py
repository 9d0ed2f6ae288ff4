"""Stage-result cache: a stage whose inputs did not change is not run again.

A result is keyed by the sha256 of everything it depends on (input file hashes, the
stage's config, the recipe, tool versions) and stored as a small JSON record under
RUN_DIR/.cache/<stage>/<key>.json. The record is written atomically AFTER the stage's
outputs are in place and lists each output's path and sha256, so a run killed at any
point leaves either a complete record or none; a hit needs every listed output to exist
with the recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .fileio import atomic_write_json, sha256_file

CACHE_DIR = ".cache"
RECORD_VERSION = 1


@dataclass
class CacheRecord:
    stage: str
    key: str
    outputs: dict[str, str] = field(default_factory=dict)  # path relative to the run dir -> sha256
    result: Any = None


def fingerprint(value: Any) -> str:
    """sha256 of a canonical JSON form (pydantic models, paths and numpy scalars allowed)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), default=str)


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _plain(dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


_FILE_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str | None:
    """sha256 of a file, or of a folder's files (names and contents); None when missing."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    if path.is_dir():
        parts = []
        for child in sorted(path.rglob("*")):
            if child.is_file():
                parts.append((child.relative_to(path).as_posix(), file_digest(child)))
        return fingerprint(parts)
    memo = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_HASHES:
        _FILE_HASHES[memo] = sha256_file(path)
    return _FILE_HASHES[memo]


def path_digests(value: Any) -> dict[str, str | None]:
    """sha256 of every path named in a config section (files, folders), keyed by path.

    Paths are Path values or absolute path strings (resolved data sources).
    """
    found: dict[str, str | None] = {}

    def walk(item: Any) -> None:
        if isinstance(item, os.PathLike):
            found[os.fspath(item)] = file_digest(item)
        elif isinstance(item, str) and os.path.isabs(item) and os.path.exists(item):
            found[item] = file_digest(item)  # data sources are strings: a path or 'module:function'
        elif isinstance(item, dict):
            for v in item.values():
                walk(v)
        elif isinstance(item, (list, tuple)):
            for v in item:
                walk(v)
        elif hasattr(item, "model_fields"):
            for name in type(item).model_fields:
                walk(getattr(item, name))

    walk(value)
    return found


def content_view(value: Any) -> Any:
    """Plain JSON form of a config section with every path replaced by its content's sha256.

    Stage keys use it so that moving the input files elsewhere does not invalidate the cache.
    """

    def swap(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        if isinstance(item, str) and os.path.isabs(item) and os.path.exists(item):
            return {"sha256": file_digest(item)}
        return item

    return swap(_plain(value))


class StageCache:
    """Cache records of one run directory. With `force`, lookups miss but results are stored."""

    def __init__(self, run_dir: str | os.PathLike, *, force: bool = False,
                 tool_versions: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / CACHE_DIR
        self.force = force
        if tool_versions is None:
            from .manifest import tool_versions as current_versions

            tool_versions = current_versions()
        self.tool_versions = dict(tool_versions)

    def key(self, stage: str, **inputs: Any) -> str:
        return fingerprint({"stage": stage, "inputs": inputs, "tools": self.tool_versions,
                            "toolchain": __version__, "record_version": RECORD_VERSION})

    def _record_path(self, stage: str, key: str) -> Path:
        return self.folder / stage / f"{key}.json"

    def get(self, stage: str, key: str, *, force: bool | None = None) -> CacheRecord | None:
        """The record, if it exists and every output it lists is in place and unchanged."""
        if self.force if force is None else force:
            return None
        try:
            raw = json.loads(self._record_path(stage, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("key") != key or not isinstance(raw.get("outputs"), dict):
            return None
        for relative, digest in raw["outputs"].items():
            path = self.run_dir / relative
            if not path.is_file() or file_digest(path) != digest:
                return None
        return CacheRecord(stage, key, dict(raw["outputs"]), raw.get("result"))

    def put(self, stage: str, key: str, outputs: list[Path] | tuple[Path, ...] = (),
            result: Any = None) -> CacheRecord:
        """Record a finished stage. Call only after its outputs are in their final place."""
        digests = {}
        for output in outputs:
            output = Path(output)
            relative = output.resolve().relative_to(self.run_dir.resolve()).as_posix()
            digests[relative] = sha256_file(output)
        record = CacheRecord(stage, key, digests, result)
        atomic_write_json(self._record_path(stage, key), {
            "stage": stage,
            "key": key,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "outputs": digests,
            "result": result,
        })
        return record

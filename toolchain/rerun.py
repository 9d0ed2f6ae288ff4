"""Re-runs: `--only STAGE` and the whole-run cache record.

The whole-run record is keyed by the config, the hash of every file it names (model,
data, target profiles) and the tool versions. It lets an unchanged pipeline finish
without even loading Keras: the previous manifest is re-written with every stage marked
as served from the cache.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from .cache import StageCache, file_digest, path_digests
from .config import PipelineConfig, list_profiles
from .errors import InputError


def only_stages() -> tuple[str, ...]:
    """The stages `--only` can pick, in run order (from the registered stages, steps/__init__.py)."""
    from .steps import only_names

    return only_names()


def check_only(only: str | None) -> str | None:
    """Validate `--only`; stages before it come from the cache, stages after it are skipped."""
    names = only_stages()
    if only is None or only in names:
        return only
    close = difflib.get_close_matches(only, names, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise InputError(f"--only {only!r} is not a stage{hint}; choose one of {', '.join(names)}")


def stage_mode(only: str | None, stage: str) -> str:
    """'run', 'cached' (must come from the cache) or 'skip' for `stage` under `--only`."""
    if only is None or only == stage:
        return "run"
    names = only_stages()
    return "cached" if names.index(stage) < names.index(only) else "skip"


def missing_cached(only: str, stage: str, what: str, run_dir: Path) -> InputError:
    return InputError(
        f"--only {only} needs the {stage} result for {what}, which is not in the cache of {run_dir} "
        f"(inputs changed, or it never ran); run without --only first"
    )


def run_key(cache: StageCache, config: PipelineConfig, profiles: list[Any],
            profile_dirs: list[Path] | None = None) -> str:
    # where the run goes and where its units run do not change its results
    sections = {name: getattr(config, name) for name in type(config).model_fields
                if name not in ("output", "execution")}
    try:
        known_profiles = {name: file_digest(path) for name, path in list_profiles(profile_dirs).items()}
    except InputError:
        known_profiles = {}
    return cache.key(
        "run",
        config=sections,
        files=path_digests(sections),
        profiles=[p.model_dump(mode="json") for p in profiles],
        known_profiles=known_profiles,
    )


def replay_run(cache: StageCache, key: str) -> dict[str, Any] | None:
    """The previous complete manifest when nothing changed since it was written, else None."""
    if cache.get("run", key) is None:
        return None
    try:
        manifest = json.loads((cache.run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("status") != "complete":
        return None
    return manifest


def run_outputs(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    paths = [run_dir / "manifest.json"]
    paths += [run_dir / a["path"] for a in manifest.get("artifacts", [])]
    paths += [run_dir / f for f in manifest.get("files", {}).values() if f and (run_dir / f).is_file()]
    return paths


def store_run(cache: StageCache, key: str, manifest: dict[str, Any]) -> None:
    """Record a complete run; call after manifest.json is written."""
    cache.put("run", key, run_outputs(cache.run_dir, manifest))


def read_json(run_dir: Path, manifest: dict[str, Any], name: str) -> dict[str, Any] | None:
    relative = manifest.get("files", {}).get(name)
    if not relative:
        return None
    try:
        return json.loads((run_dir / relative).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

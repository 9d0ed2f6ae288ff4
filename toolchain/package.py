"""Release bundles: one reproducible .tar.gz per target, for flashing scripts.

A bundle `packages/<model>-<version>-<target>.tar.gz` holds one folder of the same name:

    manifest.json      what is inside and what it needs (schema: schemas/bundle.schema.json)
    SHA256SUMS         `sha256sum -c` format, for every other file
    models/<artifact>  the chosen artifact(s)

Same run + same options -> same bytes: entries sorted, mtimes fixed (SOURCE_DATE_EPOCH,
else `[package] source_date_epoch`, else the run's creation time), uid/gid 0 with empty
owner names, modes 0644/0755, gzip header without timestamp or file name.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from .budgets import budgets_from_manifest, evaluate_budgets, profile_limits
from .config import PackageSection, TargetProfile, _did_you_mean, find_profile
from .errors import BudgetError, BundleError, ConfigError, InputError
from .fileio import atomic_output, atomic_write_text, sha256_bytes, sha256_file
from .stages.report import load_run

BUNDLE_SCHEMA_VERSION = "1.0"
SUMS = "SHA256SUMS"
SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


@dataclass
class PackageResult:
    path: Path
    sha256: str
    artifacts: list[str]
    reason: str


def package_settings(manifest: dict[str, Any]) -> PackageSection:
    raw = (manifest.get("config") or {}).get("package", {})
    return PackageSection.model_validate(raw)


def source_date_epoch(manifest: dict[str, Any], settings: PackageSection) -> int:
    """SOURCE_DATE_EPOCH (reproducible-builds.org), else the config, else the run's creation time."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is not None:
        if not env.strip().isdigit():
            raise ConfigError(f"SOURCE_DATE_EPOCH must be a whole number of seconds, got {env!r}")
        return int(env)
    if settings.source_date_epoch is not None:
        return settings.source_date_epoch
    return int(datetime.fromisoformat(manifest["created_utc"]).timestamp())


def _runtime_requirements(artifact: dict[str, Any], profile: TargetProfile) -> dict[str, Any]:
    runtime = profile.runtime
    req: dict[str, Any] = {"format": artifact["format"], "arch": profile.hardware.arch}
    if artifact["format"] == "tflite":
        req["backend"] = (runtime.tflite_backend if runtime.tflite_backend != "auto"
                          else "any of ai_edge_litert, tflite_runtime, tensorflow.lite")
        req["backend_version"] = runtime.tflite_version
        req["ops"] = [op["name"] + (f" v{op['version']}" if "version" in op else "")
                      for op in artifact.get("ops", [])]
    else:
        req["backend"] = "onnxruntime"
        req["backend_version"] = runtime.onnxruntime_version
        req["opset"] = _onnx_opset(artifact)
        req["max_onnx_opset"] = runtime.max_onnx_opset
        req["ops"] = [op["name"] for op in artifact.get("ops", [])]
    req["python"] = ">=3.9 with numpy (for toolchain/device/runner.py)"
    req["threads"] = profile.threads
    return req


def _onnx_opset(artifact: dict[str, Any]) -> int | None:
    """The default-domain opset; the manifest records {domain: version}."""
    opset = artifact.get("opset")
    return opset.get("ai.onnx") if isinstance(opset, dict) else opset


def _incompatible(artifact: dict[str, Any], profile: TargetProfile) -> str | None:
    limit = profile.runtime.max_onnx_opset
    opset = _onnx_opset(artifact)
    if artifact["format"] == "onnx" and limit is not None and opset is not None and opset > limit:
        return f"ONNX opset {opset} > the target's max_onnx_opset {limit}"
    return None


def select_artifacts(
    manifest: dict[str, Any], profile: TargetProfile, requested: list[str] | None
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, dict[str, Any]]]:
    """(chosen artifact records, selection record, budget result per artifact) for one target."""
    evaluation = evaluate_budgets(manifest, budgets_from_manifest(manifest),
                                  {profile.name: profile_limits(profile)})
    verdicts = {r["artifact"]: r for r in evaluation["results"]}
    by_name = {a["name"]: a for a in manifest["artifacts"]}
    if requested:
        missing = [n for n in requested if n not in by_name]
        if missing:
            raise InputError(
                f"--artifact {missing[0]!r} is not an artifact of this run"
                f"{_did_you_mean(missing[0], sorted(by_name))}; artifacts: {', '.join(by_name)}"
            )
        chosen = [by_name[n] for n in dict.fromkeys(requested)]
        failing = [n for n in requested if not verdicts[n]["passed"]]
        reason = "chosen with --artifact" + (
            f" (fails budgets on {profile.name}: " + "; ".join(
                f for n in failing for f in verdicts[n]["failures"]) + ")" if failing else "")
        return chosen, {"mode": "explicit", "reason": reason}, verdicts

    rejected: dict[str, str] = {}
    candidates = []
    for a in manifest["artifacts"]:
        problem = _incompatible(a, profile)
        if problem:
            rejected[a["name"]] = problem
        elif (a.get("verify") or {}).get("verdict") == "fail":
            rejected[a["name"]] = "failed verification"
        elif not verdicts[a["name"]]["passed"]:
            rejected[a["name"]] = "; ".join(verdicts[a["name"]]["failures"])
        else:
            candidates.append(a)
    if not candidates:
        raise BudgetError(
            f"no artifact passes the budgets for target '{profile.name}': "
            + "; ".join(f"{n}: {why}" for n, why in rejected.items())
            + " (choose one anyway with --artifact NAME, or relax [budgets])"
        )

    def rank(a: dict[str, Any]) -> tuple[float, int, str]:
        p90 = verdicts[a["name"]]["values"]["p90_latency_ms"]
        return (p90 if p90 is not None else float("inf"), a["bytes"], a["name"])

    best = min(candidates, key=rank)
    p90 = verdicts[best["name"]]["values"]["p90_latency_ms"]
    if p90 is not None:
        why = (f"lowest p90 on {profile.name} ({p90:.3f} ms at {verdicts[best['name']]['threads']} "
               f"thread(s))")
    else:
        why = f"not benchmarked on {profile.name}; smallest file ({best['bytes']:,} bytes)"
    reason = (f"{best['name']}: passes the budgets for {profile.name} with the {why}, "
              f"best of {len(candidates)} passing artifact(s)")
    return [best], {"mode": "best-passing-budgets", "reason": reason, "rejected": rejected}, verdicts


def bundle_manifest(
    manifest: dict[str, Any], profile: TargetProfile, version: str, name: str,
    chosen: list[dict[str, Any]], selection: dict[str, Any], verdicts: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    source = manifest["source_model"]
    artifacts = []
    for a in chosen:
        verdict = verdicts[a["name"]]
        artifacts.append({
            "name": a["name"],
            "file": f"models/{a['name']}",
            "format": a["format"],
            "recipe": a["recipe"],
            "bytes": a["bytes"],
            "sha256": a["sha256"],
            "inputs": a["inputs"],
            "outputs": a["outputs"],
            "runtime_requirements": _runtime_requirements(a, profile),
            "verify": a.get("verify"),
            "bench": (a.get("bench") or {}).get(profile.name, []),
            "budgets": {"passed": verdict["passed"], "failures": verdict["failures"],
                        "checks": [c["reason"] for c in verdict["checks"]]},
        })
    return {
        "bundle_schema_version": BUNDLE_SCHEMA_VERSION,
        "name": name,
        "model": source.get("name") or Path(source["path"]).stem,
        "version": version,
        "toolchain_version": manifest["toolchain_version"],
        "target": {"name": profile.name, "description": profile.description, "arch": profile.hardware.arch,
                   "cores": profile.hardware.cores, "ram_mb": profile.hardware.ram_mb},
        "source_model": {"name": source.get("name") or Path(source["path"]).stem, "sha256": source["sha256"]},
        "run": {"created_utc": manifest["created_utc"], "config_sha256": manifest["config_sha256"]},
        "selection": selection,
        "primary": {"name": chosen[0]["name"], "file": f"models/{chosen[0]['name']}",
                    "sha256": chosen[0]["sha256"]},
        "artifacts": artifacts,
    }


def sha256sums(files: dict[str, bytes]) -> bytes:
    return "".join(f"{sha256_bytes(data)}  {name}\n" for name, data in sorted(files.items())).encode()


def deterministic_tar_gz(prefix: str, files: dict[str, bytes], mtime: int) -> bytes:
    """A .tar.gz of `files` under `prefix/`, byte-identical for identical input."""
    entries: dict[str, bytes | None] = {prefix: None}
    for name, data in files.items():
        parts = name.split("/")
        for i in range(1, len(parts)):
            entries[f"{prefix}/{'/'.join(parts[:i])}"] = None
        entries[f"{prefix}/{name}"] = data
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            data = entries[name]
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(tar_bytes.getvalue())
    return out.getvalue()


def update_packages_sums(folder: Path) -> Path:
    """packages/SHA256SUMS over every bundle in the folder, sorted by name."""
    lines = [f"{sha256_file(p)}  {p.name}\n" for p in sorted(folder.glob("*.tar.gz"))]
    path = folder / SUMS
    atomic_write_text(path, "".join(lines))
    path.chmod(0o644)
    return path


def package_run(
    run_dir: Path,
    target: str,
    artifacts: list[str] | None = None,
    version: str | None = None,
    profile_dirs: list[Path] | None = None,
) -> PackageResult:
    run_dir = Path(run_dir)
    docs = load_run(run_dir)
    manifest = docs.manifest
    settings = package_settings(manifest)
    version = version or settings.version
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", version):
        raise InputError(f"--version {version!r}: use letters, digits and . _ + - (e.g. 1.2.0)")
    profile = find_profile(target, profile_dirs)
    chosen, selection, verdicts = select_artifacts(manifest, profile, artifacts)
    model = manifest["source_model"].get("name") or Path(manifest["source_model"]["path"]).stem
    name = f"{model}-{version}-{profile.name}"

    files: dict[str, bytes] = {}
    for a in chosen:
        path = run_dir / a["path"]
        if not path.is_file():
            raise InputError(f"artifact {a['name']} is missing from {run_dir / 'artifacts'}; re-run the pipeline")
        data = path.read_bytes()
        if sha256_bytes(data) != a["sha256"]:
            raise BundleError(f"{path} does not match the sha256 in {run_dir / 'manifest.json'}: it changed "
                              "after the run; re-run the pipeline instead of packaging a modified file")
        files[f"models/{a['name']}"] = data
    doc = bundle_manifest(manifest, profile, version, name, chosen, selection, verdicts)
    files["manifest.json"] = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    files[SUMS] = sha256sums(files)
    data = deterministic_tar_gz(name, files, source_date_epoch(manifest, settings))

    folder = run_dir / "packages"
    bundle = folder / f"{name}.tar.gz"
    with atomic_output(bundle, suffix=".tar.gz") as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o644)
    update_packages_sums(folder)
    return PackageResult(bundle, sha256_bytes(data), [a["name"] for a in chosen], selection["reason"])


# ---- verify-bundle --------------------------------------------------------------

def _schema() -> dict[str, Any]:
    return json.loads(resources.files("toolchain").joinpath("schemas/bundle.schema.json").read_text())


def _read_members(path: Path) -> tuple[str, dict[str, bytes], list[str]]:
    """(top folder, relative file name -> bytes, problems with the archive's structure)."""
    problems: list[str] = []
    files: dict[str, bytes] = {}
    tops: set[str] = set()
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar.getmembers():
                name = member.name
                parts = name.split("/")
                if name.startswith("/") or ".." in parts or not name:
                    problems.append(f"unsafe path {name!r}")
                    continue
                tops.add(parts[0])
                if member.isdir():
                    continue
                if not member.isfile():
                    problems.append(f"{name!r} is not a regular file (links and devices are not allowed)")
                    continue
                if len(parts) < 2:
                    problems.append(f"{name!r} is outside the bundle's folder")
                    continue
                extracted = tar.extractfile(member)
                files["/".join(parts[1:])] = extracted.read() if extracted else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise BundleError(f"{path}: not a readable .tar.gz bundle ({e}); the file is damaged or incomplete") from e
    if len(tops) != 1:
        problems.append(f"expected one top folder, found {sorted(tops) or 'none'}")
    return (next(iter(tops)) if len(tops) == 1 else ""), files, problems


def verify_bundle(path: Path) -> dict[str, Any]:
    """Check a bundle's SHA256SUMS, its manifest (schema, artifact sizes and hashes) and, when
    a SHA256SUMS file beside it lists it, the bundle's own hash. Raises BundleError (exit 5)."""
    import jsonschema

    path = Path(path)
    if not path.is_file():
        raise InputError(f"bundle not found: {path}")
    top, files, problems = _read_members(path)
    if top and path.name != f"{top}.tar.gz":
        problems.append(f"the top folder {top!r} does not match the file name {path.name!r}")
    sums_text = files.get(SUMS)
    listed: dict[str, str] = {}
    if sums_text is None:
        problems.append(f"no {SUMS} in the bundle")
    else:
        for line in sums_text.decode("utf-8", "replace").splitlines():
            match = SUMS_LINE.match(line)
            if not match:
                problems.append(f"{SUMS}: malformed line {line!r}")
                continue
            listed[match.group(2)] = match.group(1)
    for name, digest in sorted(listed.items()):
        if name not in files:
            problems.append(f"{name} is listed in {SUMS} but missing")
        elif sha256_bytes(files[name]) != digest:
            problems.append(f"{name}: sha256 does not match {SUMS}")
    for name in sorted(set(files) - set(listed) - {SUMS}):
        problems.append(f"{name} is not listed in {SUMS}")

    doc: dict[str, Any] = {}
    if "manifest.json" not in files:
        problems.append("no manifest.json in the bundle")
    else:
        try:
            doc = json.loads(files["manifest.json"])
            jsonschema.validate(doc, _schema())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(f"manifest.json is not valid JSON: {e}")
            doc = {}
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
            problems.append(f"manifest.json breaks the bundle schema at {where}: {e.message}")
            doc = {}
        for a in doc.get("artifacts", []):
            data = files.get(a["file"])
            if data is None:
                problems.append(f"manifest.json names {a['file']}, which is not in the bundle")
            elif len(data) != a["bytes"] or sha256_bytes(data) != a["sha256"]:
                problems.append(f"{a['file']}: size or sha256 does not match manifest.json")
        if doc and doc.get("name") != top:
            problems.append(f"manifest.json name {doc.get('name')!r} does not match the folder {top!r}")

    outer = "no SHA256SUMS beside the bundle"
    sums_beside = path.parent / SUMS
    if sums_beside.is_file():
        entries = {}
        for line in sums_beside.read_text(encoding="utf-8", errors="replace").splitlines():
            match = SUMS_LINE.match(line)
            if match:
                entries[match.group(2)] = match.group(1)
        if path.name not in entries:
            outer = f"not listed in {sums_beside}"
        elif entries[path.name] != sha256_file(path):
            problems.append(f"the bundle's sha256 does not match {sums_beside}")
        else:
            outer = "ok"
    if problems:
        raise BundleError(f"bundle {path} failed verification: " + "; ".join(problems))
    return {"bundle": str(path), "sha256": sha256_file(path), "name": top, "files": len(files),
            "target": doc["target"]["name"], "version": doc["version"],
            "artifacts": [a["name"] for a in doc["artifacts"]], "outer_checksum": outer}

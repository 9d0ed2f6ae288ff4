"""Hostile release bundles: verify-bundle refuses them in one line, examples/flash.sh refuses them
before any ssh command, and installs on the device atomically (a real sshd plays the device)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from toolchain.cli import main

ROOT = Path(__file__).resolve().parent.parent
FLASH = ROOT / "examples" / "flash.sh"
TOP = "digits-1.2.0-local"
HOSTILE = "models/m';touch INJECTED-by-flash;'.tflite"


@pytest.fixture(scope="module")
def good_files(tmp_path_factory, demo_run) -> dict[str, bytes]:
    """The files of a real bundle of the demo run: relative name -> bytes."""
    run = tmp_path_factory.mktemp("security-run")
    shutil.copytree(demo_run, run, dirs_exist_ok=True, ignore=shutil.ignore_patterns("packages", "*.lock"))
    assert main(["package", str(run), "--target", "local", "--version", "1.2.0",
                 "--artifact", "digits.fp32.tflite"]) == 0
    with tarfile.open(run / "packages" / f"{TOP}.tar.gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _sums(files: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(files.items())
                   if n != "SHA256SUMS").encode()


def _pack(path: Path, members: list[tuple[str, bytes | None, int]]) -> Path:
    """A .tar.gz of (name under TOP, bytes or None for a folder, mode), in this order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(f"{TOP}/{name}".rstrip("/"))
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


def _bundle(folder: Path, files: dict[str, bytes], mode: int = 0o644) -> Path:
    """A bundle of `files` with a SHA256SUMS made consistent (as an attacker would)."""
    files = {**files, "SHA256SUMS": _sums(files)}
    members = [("", None, 0o755), ("models", None, 0o755)]
    members += [(n, d, mode if n.startswith("models/") else 0o644) for n, d in sorted(files.items())]
    return _pack(folder / f"{TOP}.tar.gz", members)


def _renamed(files: dict[str, bytes], new_file: str) -> dict[str, bytes]:
    """The model moved to `new_file`, with manifest.json pointing at it (consistent)."""
    files = dict(files)
    doc = json.loads(files["manifest.json"])
    old = doc["primary"]["file"]
    files[new_file] = files.pop(old)
    doc["primary"]["file"] = doc["artifacts"][0]["file"] = new_file
    files["manifest.json"] = json.dumps(doc).encode()
    return files


def _verify_error(capsys, bundle: Path) -> str:
    assert main(["verify-bundle", str(bundle)]) == 5
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_hostile_file_name_is_refused_by_verify_bundle(good_files, tmp_path, capsys):
    bundle = _bundle(tmp_path, _renamed(good_files, HOSTILE))
    err = _verify_error(capsys, bundle)
    assert f"unexpected member {f'{TOP}/{HOSTILE}'!r}" in err
    assert "letters, digits and . _ -" in err


def test_duplicate_members_are_refused(good_files, tmp_path, capsys):
    model = "models/digits.fp32.tflite"
    tampered = bytes(b ^ 0xFF for b in good_files[model][:64]) + good_files[model][64:]
    files = {**good_files, "SHA256SUMS": _sums(good_files)}
    members = [("", None, 0o755), ("models", None, 0o755), (model, tampered, 0o644)]
    members += [(n, d, 0o644) for n, d in sorted(files.items())]  # last copy: the original
    err = _verify_error(capsys, _pack(tmp_path / f"{TOP}.tar.gz", members))
    assert f"duplicate member '{TOP}/{model}'" in err


def test_setuid_member_is_refused(good_files, tmp_path, capsys):
    err = _verify_error(capsys, _bundle(tmp_path, good_files, mode=0o4755))
    assert f"'{TOP}/models/digits.fp32.tflite' has mode 4755: setuid" in err


def test_primary_outside_artifacts_is_refused(good_files, tmp_path, capsys):
    files = dict(good_files)
    files["models/other.tflite"] = b"not the verified model"
    doc = json.loads(files["manifest.json"])
    doc["primary"] = {"name": "other.tflite", "file": "models/other.tflite",
                      "sha256": hashlib.sha256(files["models/other.tflite"]).hexdigest()}
    files["manifest.json"] = json.dumps(doc).encode()
    err = _verify_error(capsys, _bundle(tmp_path, files))
    assert "manifest.json primary 'models/other.tflite' is not one of its artifacts[]" in err
    assert "manifest.json does not describe models/other.tflite" in err


def test_sparse_member_declaring_64_gib_is_refused_before_reading(good_files, tmp_path, capsys):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"{TOP}/models/big.tflite")
        info.size = 1
        info.pax_headers = {"GNU.sparse.map": f"{(64 << 30) - 1},1", "GNU.sparse.size": str(64 << 30)}
        tar.addfile(info, io.BytesIO(b"x"))
    bundle = tmp_path / f"{TOP}.tar.gz"
    bundle.write_bytes(gzip.compress(raw.getvalue()))
    err = _verify_error(capsys, bundle)
    assert f"bundle member '{TOP}/models/big.tflite' declares 68,719,476,736 bytes, over the" in err


def test_header_bombs_are_refused(tmp_path, capsys):
    # a plain member declaring 3 GiB (no data follows): refused from its header alone
    header = tarfile.TarInfo(f"{TOP}/models/huge.tflite")
    header.size = 3 << 30
    bundle = tmp_path / f"{TOP}.tar.gz"
    bundle.write_bytes(gzip.compress(header.tobuf(tarfile.GNU_FORMAT)))
    assert "declares 3,221,225,472 bytes" in _verify_error(capsys, bundle)
    # an extended (pax) header declaring 1 GiB: tarfile would read it in one call
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, 1 << 30
    bundle.write_bytes(gzip.compress(pax.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024))
    assert "a tar header asks to read 1,073,741,824 bytes at once" in _verify_error(capsys, bundle)


def test_too_many_members_are_refused(tmp_path, capsys):
    members = [("", None, 0o755), ("models", None, 0o755)]
    members += [(f"models/m{i}", b"", 0o644) for i in range(1000)]
    assert "more than 1000 members" in _verify_error(capsys, _pack(tmp_path / f"{TOP}.tar.gz", members))


# ---- examples/flash.sh against a real sshd "device" ------------------------------

HOST_TOOLS = ("sh", "tar", "gzip", "sed", "sort", "uniq", "head", "find", "wc", "tr", "mktemp", "basename", "rm",
              "mkdir", "cat")  # what flash.sh runs on the host besides ssh, jq/python3 and a sha256 tool

@pytest.fixture
def ssh_log(tmp_path) -> Path:
    """A folder put first on PATH whose `ssh` records each call's arguments, then runs the real ssh."""
    folder = tmp_path / "ssh-wrapper"
    folder.mkdir()
    log = folder / "calls.log"
    wrapper = folder / "ssh"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >>"{log}"\n'
                       f'printf "\\n\\0" >>"{log}"\nexec {shutil.which("ssh")} "$@"\n')
    wrapper.chmod(0o755)
    return log


def _flash(bundle: Path, ssh_server, tmp_path: Path, remote: Path, path_dirs: list[Path] = (),
           path: str | None = None) -> subprocess.CompletedProcess:
    config = ssh_server.write_ssh_config(tmp_path / "ssh_config", alias="device")
    search = ":".join([*(str(d) for d in path_dirs), path or os.environ["PATH"]])
    env = {**os.environ, "SSH_OPTS": f"-F {config}", "PATH": search}
    return subprocess.run(["sh", str(FLASH), str(bundle), "device", str(remote)], env=env,
                          capture_output=True, text=True, timeout=120)


def _calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [[a for a in call.split("\0") if a] for call in log.read_text().split("\n\0") if call.strip("\0")]


def test_flash_refuses_a_hostile_name_before_any_ssh(good_files, ssh_server, tmp_path, ssh_log):
    bundle = _bundle(tmp_path, _renamed(good_files, HOSTILE))  # consistent sums and manifest
    marker = Path(pwd.getpwnam(ssh_server.user).pw_dir) / "INJECTED-by-flash"
    marker.unlink(missing_ok=True)
    remote = tmp_path / "device" / "models"
    result = _flash(bundle, ssh_server, tmp_path, remote, [ssh_log.parent])
    assert result.returncode == 1
    assert f"unexpected member '{TOP}/{HOSTILE}'" in result.stderr
    assert _calls(ssh_log) == [], "no ssh command for a hostile bundle"
    assert not marker.exists(), "the injected command ran on the device"
    assert not remote.exists()


def test_flash_refuses_duplicates_and_primary_outside_artifacts(good_files, ssh_server, tmp_path, ssh_log):
    model = "models/digits.fp32.tflite"
    files = {**good_files, "SHA256SUMS": _sums(good_files)}
    members = [("", None, 0o755), ("models", None, 0o755), (model, b"evil", 0o644)]
    members += [(n, d, 0o644) for n, d in sorted(files.items())]
    bundle = _pack(tmp_path / f"{TOP}.tar.gz", members)
    result = _flash(bundle, ssh_server, tmp_path, tmp_path / "device", [ssh_log.parent])
    assert result.returncode == 1 and f"holds a member twice ({TOP}/{model})" in result.stderr

    files = dict(good_files)
    files["models/other.tflite"] = b"not the verified model"
    doc = json.loads(files["manifest.json"])
    doc["primary"] = {"name": "other.tflite", "file": "models/other.tflite",
                      "sha256": hashlib.sha256(files["models/other.tflite"]).hexdigest()}
    files["manifest.json"] = json.dumps(doc).encode()
    result = _flash(_bundle(tmp_path, files), ssh_server, tmp_path, tmp_path / "device", [ssh_log.parent])
    assert result.returncode == 1
    assert "primary models/other.tflite is not one of its artifacts" in result.stderr
    assert _calls(ssh_log) == [] and not (tmp_path / "device").exists()


def test_flash_runs_only_fixed_text_on_the_device(good_files, ssh_server, tmp_path, ssh_log):
    bundle = _bundle(tmp_path, good_files)
    remote = tmp_path / "device" / "models"
    result = _flash(bundle, ssh_server, tmp_path, remote, [ssh_log.parent])
    assert result.returncode == 0, result.stderr
    doc = json.loads(good_files["manifest.json"])
    assert (remote / "digits.fp32.tflite").read_bytes() == good_files["models/digits.fp32.tflite"]
    assert (remote / "manifest.json").read_bytes() == good_files["manifest.json"]
    assert not list(remote.glob(".*"))
    commands = [call[-1] for call in _calls(ssh_log)]
    assert len(commands) == 2  # the model, then manifest.json; data goes over stdin
    words = r"'([A-Za-z0-9._/+-]+)' '([A-Za-z0-9][A-Za-z0-9._-]*)' '([0-9a-f]{64})'$"
    fixed = {re.sub(words, "", c) for c in commands}
    assert len(fixed) == 1 and fixed.pop().startswith("exec sh -c '")
    assert [re.search(words, c).groups() for c in commands] == [
        (str(remote), "digits.fp32.tflite", doc["primary"]["sha256"]),
        (str(remote), "manifest.json", hashlib.sha256(good_files["manifest.json"]).hexdigest())]


def test_flash_installs_atomically_when_the_copy_breaks(good_files, ssh_server, tmp_path):
    remote = tmp_path / "device" / "models"
    assert _flash(_bundle(tmp_path, good_files), ssh_server, tmp_path, remote).returncode == 0
    before = {p.name: p.read_bytes() for p in remote.iterdir()}

    doc = json.loads(good_files["manifest.json"])
    doc["version"] = "1.2.1"
    newer = {**good_files, "manifest.json": json.dumps(doc).encode()}
    flaky = tmp_path / "flaky"  # an ssh whose first transfer is cut short, as on a dropped link
    flaky.mkdir()
    (flaky / "ssh").write_text(f'#!/bin/sh\nif [ ! -e "{flaky}/cut" ]; then touch "{flaky}/cut"\n'
                               f'  head -c 1000 | {shutil.which("ssh")} "$@"; exit $?\nfi\n'
                               f'exec {shutil.which("ssh")} "$@"\n')
    (flaky / "ssh").chmod(0o755)
    result = _flash(_bundle(tmp_path, newer), ssh_server, tmp_path, remote, [flaky])
    assert result.returncode == 3
    assert "digits.fp32.tflite arrived damaged" in result.stderr
    assert "the device keeps its previous files" in result.stderr
    assert {p.name: p.read_bytes() for p in remote.iterdir()} == before, "old model and manifest, no temp files"


def test_flash_works_without_gnu_sha256sum(good_files, ssh_server, tmp_path):
    """A macOS-like host: shasum -a 256 only (the device keeps its own tools)."""
    tools = tmp_path / "host-bin"
    tools.mkdir()
    for tool in (*HOST_TOOLS, "jq", "ssh", "shasum", "perl"):
        (tools / tool).symlink_to(shutil.which(tool))
    remote = tmp_path / "device"
    result = _flash(_bundle(tmp_path, good_files), ssh_server, tmp_path, remote, path=str(tools))
    assert result.returncode == 0, result.stderr
    assert (remote / "digits.fp32.tflite").read_bytes() == good_files["models/digits.fp32.tflite"]


def test_other_structure_problems_each_in_one_line(good_files, tmp_path, capsys):
    files = {**good_files, "SHA256SUMS": _sums(good_files)}
    base = [("", None, 0o755), ("models", None, 0o755)] + [(n, d, 0o644) for n, d in sorted(files.items())]
    bundle = tmp_path / f"{TOP}.tar.gz"
    assert "unexpected folder" in _verify_error(capsys, _pack(bundle, [*base, ("models/sub", None, 0o755)]))

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in base:
            info = tarfile.TarInfo(f"{TOP}/{name}".rstrip("/"))
            info.mode, info.type = mode, tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            info.size = 0 if data is None else len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
        link = tarfile.TarInfo(f"{TOP}/models/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        tar.addfile(tarfile.TarInfo("stray"), io.BytesIO(b""))
    bundle.write_bytes(gzip.compress(raw.getvalue()))
    err = _verify_error(capsys, bundle)
    assert f"'{TOP}/models/link' is not a regular file" in err and "'stray' is outside the bundle's folder" in err

    twice = {**good_files, "SHA256SUMS": _sums(good_files) * 2}
    members = [("", None, 0o755), ("models", None, 0o755)] + [(n, d, 0o644) for n, d in sorted(twice.items())]
    assert "SHA256SUMS lists 'manifest.json' twice" in _verify_error(capsys, _pack(bundle, members))

    doc = json.loads(good_files["manifest.json"])
    old = {**good_files, "manifest.json": json.dumps({**doc, "bundle_schema_version": "1.0"}).encode()}
    err = _verify_error(capsys, _bundle(tmp_path, old))
    assert "bundle schema '1.0'; this toolchain reads '2.0': re-package" in err
    doubled = {**good_files, "manifest.json": json.dumps({**doc, "artifacts": doc["artifacts"] * 2}).encode()}
    assert "lists the same artifact file twice" in _verify_error(capsys, _bundle(tmp_path, doubled))


def test_declared_sizes_add_up_to_a_bound(tmp_path, capsys):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3):  # sparse: 1.5 GiB declared each, one byte stored
            info = tarfile.TarInfo(f"{TOP}/models/part{i}")
            info.size = 1
            info.pax_headers = {"GNU.sparse.map": f"{(3 << 29) - 1},1", "GNU.sparse.size": str(3 << 29)}
            tar.addfile(info, io.BytesIO(b"x"))
    bundle = tmp_path / f"{TOP}.tar.gz"
    bundle.write_bytes(gzip.compress(raw.getvalue()))
    assert f"bundle files add up to more than 4,294,967,296 bytes at '{TOP}/models/part2'" in \
        _verify_error(capsys, bundle)


def _edit_run(run: Path, edit) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    edit(next(a for a in manifest["artifacts"] if a["name"] == "digits.fp32.tflite"))
    (run / "manifest.json").write_text(json.dumps(manifest))


def _gate_record(**fields) -> dict:
    """A gate record as the pipeline writes it (the real gate: test_package_for_a_pi_you_do_not_own)."""
    return {"raspberry-pi-4-emulated": {"board": "raspberry-pi-4", "qemu_cpu": "cortex-a72",
                                        "backend": "tflite_runtime", "backend_version": "2.14.0",
                                        "verdict": "pass", "summary": "loads and runs", **fields}}


def test_package_refuses_unsafe_names_from_the_run(run_copy, capsys):
    _edit_run(run_copy, lambda a: a.update(compat=_gate_record(golden="../../etc/passwd")))
    assert main(["package", str(run_copy), "--target", "raspberry-pi-4", "--artifact", "digits.fp32.tflite"]) == 2
    assert "golden file '../../etc/passwd' is not a plain golden/<name> path" in capsys.readouterr().err
    _edit_run(run_copy, lambda a: a.update(compat=_gate_record(verdict="fail", summary="Didn't find op")))
    assert main(["package", str(run_copy), "--target", "raspberry-pi-4"]) == 0
    assert not capsys.readouterr().out.startswith("chose: digits.fp32.tflite")
    doc = json.loads(tarfile.open(next((run_copy / "packages").glob("*.tar.gz"))).extractfile(
        "digits-0.0.0-raspberry-pi-4/manifest.json").read())
    rejected = doc["selection"]["rejected"]["digits.fp32.tflite"]
    assert rejected == "fails the emulator gate on raspberry-pi-4-emulated: Didn't find op"
    _edit_run(run_copy, lambda a: a.update(name="digits fp32.tflite"))
    assert main(["package", str(run_copy), "--target", "local", "--artifact", "digits fp32.tflite"]) == 2
    assert "artifact name 'digits fp32.tflite' is not safe in a bundle" in capsys.readouterr().err



def test_flash_works_with_busybox_host_tools(good_files, ssh_server, tmp_path):
    """A BusyBox host: its sh, tar, find, sha256sum...; python3 reads the manifest (no jq)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (apt-get install busybox)")
    tools = tmp_path / "host-bin"
    tools.mkdir()
    for tool in (*HOST_TOOLS, "sha256sum"):
        (tools / tool).symlink_to(busybox)
    (tools / "ssh").symlink_to(shutil.which("ssh"))
    (tools / "python3").symlink_to(sys.executable)
    remote = tmp_path / "device"
    result = _flash(_bundle(tmp_path, good_files), ssh_server, tmp_path, remote, path=str(tools))
    assert result.returncode == 0, result.stderr
    assert (remote / "manifest.json").read_bytes() == good_files["manifest.json"]
    result = _flash(_bundle(tmp_path, _renamed(good_files, HOSTILE)), ssh_server, tmp_path, remote, path=str(tools))
    assert result.returncode == 1 and "unexpected member" in result.stderr


def test_package_checks_the_bytes_it_packs(run_copy, capsys):
    model = run_copy / "artifacts" / "digits.fp32.tflite"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF  # same size: only the hash taken while packing can tell
    model.write_bytes(bytes(data))
    assert main(["package", str(run_copy), "--target", "local", "--artifact", "digits.fp32.tflite"]) == 5
    assert "digits.fp32.tflite does not match the sha256" in capsys.readouterr().err
    assert not list((run_copy / "packages").glob("*")), "no bundle and no temp file left behind"

    _edit_run(run_copy, lambda a: a.update(path="../../outside.tflite"))
    assert main(["package", str(run_copy), "--target", "local", "--artifact", "digits.fp32.tflite"]) == 2
    assert "artifact path '../../outside.tflite' leaves the run directory" in capsys.readouterr().err

    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["source_model"] = {**manifest["source_model"], "name": None, "path": "/models/my model.keras"}
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["package", str(run_copy), "--target", "local"]) == 2
    assert "bundle name 'my model-0.0.0-local' (model-version-target) is not a plain file name" in \
        capsys.readouterr().err


def test_class_names_and_preprocessing_go_into_the_bundle(run_copy, tmp_path, capsys):
    names = tmp_path / "names.txt"
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    names.write_text("\n".join(digits) + "\n\n")
    args = ["package", str(run_copy), "--target", "local", "--artifact", "digits.fp32.tflite", "--class-names"]
    assert main([*args, str(names)]) == 0
    with tarfile.open(run_copy / "packages" / "digits-0.0.0-local.tar.gz") as tar:
        doc = json.loads(tar.extractfile("digits-0.0.0-local/manifest.json").read())
    assert doc["preprocessing"]["class_names"] == digits
    assert doc["preprocessing"]["value_range"] == [0.0, 1.0] and doc["preprocessing"]["image_folder"] is None
    assert doc["artifacts"][0]["input_layout"] == {"image": "NHWC"}
    capsys.readouterr()

    for content, message in [
        ("\n".join(digits[:9]), "has 9 name(s), but output 'probs' scores 10 classes"),
        ("zero\n\ntwo", "line 2 is empty or holds control characters"),
        (b"\xff\xfe", "not a UTF-8 text file"),
        (b"x" * ((1 << 20) + 1), "over 1,048,576 bytes"),
    ]:
        if isinstance(content, str):
            names.write_text(content)
        else:
            names.write_bytes(content)
        assert main([*args, str(names)]) == 2
        assert message in capsys.readouterr().err
    assert main([*args, str(tmp_path / "none.txt")]) == 2
    assert "none.txt: no such file" in capsys.readouterr().err

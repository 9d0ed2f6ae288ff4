"""Build and describe the cached emulated Raspberry Pi stack.

Layout of the cache folder (EDGE_TOOLCHAIN_CACHE, default ~/.cache/edge-toolchain, + /emulator):

    debs/                   the .deb files fetched with `apt-get download` (kept: re-setup is offline)
    qemu/qemu-aarch64-static  from Debian's qemu-user-static (only this binary is kept)
    rootfs/                 the arm64 .debs of python3.11 and its libraries, unpacked with `dpkg -x`
    boards/<board>/         what QEMU's -L sees: links into rootfs/ plus the board's proc/cpuinfo
    site/<runtime>/         the device's Python packages, `pip install --target` for aarch64 cp311
    stack.json              what was built, with versions, sizes and setup time

Nothing runs maintainer scripts, registers binfmt handlers or needs root once the arm64
package lists are present (`dpkg --add-architecture arm64 && apt-get update`, done by setup
when it runs as root).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingDependencyError, StageError
from ..fileio import atomic_write_json

STACK_VERSION = 1
PYTHON_VERSION = "3.11"  # Debian bookworm's, as on Raspberry Pi OS bookworm

# python3.11 and the shared libraries it and the runtime wheels load (bookworm names).
# A fixed list rather than a dependency walk: the walk drags in perl, systemd and friends.
ARM64_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libssl3", "libffi8",
    "libbz2-1.0", "liblzma5", "libsqlite3-0", "libcrypt1", "libuuid1", "libtinfo6",
    "libncursesw6", "libreadline8", "libnsl2", "libtirpc3", "libgssapi-krb5-2", "libkrb5-3",
    "libk5crypto3", "libkrb5support0", "libcom-err2", "libkeyutils1", "libdb5.3",
)
ALL_PACKAGES = ("media-types",)  # Architecture: all
QEMU_PACKAGE = "qemu-user-static"


@dataclass(frozen=True)
class Board:
    """A Raspberry Pi model as QEMU presents it: the CPU model and a /proc/cpuinfo like the board's."""

    name: str
    qemu_cpu: str
    cpu_part: str
    model: str
    revision: str
    hardware: str


BOARDS: dict[str, Board] = {
    # QEMU's default `max` CPU exposes features no Pi has (SVE, dot product on the A72...) and
    # the runtimes pick other int8 kernels on it, so each board names its real core.
    "raspberry-pi-4": Board("raspberry-pi-4", "cortex-a72", "0xd08", "Raspberry Pi 4 Model B Rev 1.4",
                            "c03114", "BCM2835"),
    "raspberry-pi-5": Board("raspberry-pi-5", "cortex-a76", "0xd0b", "Raspberry Pi 5 Model B Rev 1.0",
                            "d04170", "BCM2835"),
}


@dataclass(frozen=True)
class Runtime:
    """One site folder of device packages; each runtime is tested alone, as on a device."""

    name: str
    backend: str  # the runner's backend name for .tflite files
    packages: tuple[str, ...]


RUNTIMES: dict[str, Runtime] = {
    # Raspberry Pi images' legacy interpreter: last release 2.14, needs numpy < 2.
    "tflite_runtime": Runtime("tflite_runtime", "tflite_runtime", ("numpy<2", "tflite-runtime==2.14.0")),
    # The maintained interpreter, with onnxruntime for .onnx artifacts.
    "ai_edge_litert": Runtime("ai_edge_litert", "ai_edge_litert", ("ai-edge-litert", "onnxruntime")),
}

def runtime_for(artifact: Path, tflite_backend: str) -> str:
    """The emulated site that runs this artifact: onnxruntime lives with ai-edge-litert."""
    if artifact.suffix == ".onnx":
        return "ai_edge_litert"
    if tflite_backend in RUNTIMES:
        return tflite_backend
    return "tflite_runtime"  # what Raspberry Pi images run when the profile does not say


# Wheel platform tags a bookworm arm64 Python accepts (glibc 2.36). pip --platform matches
# exact tags only: tflite-runtime 2.14 is tagged manylinux_2_34, ai-edge-litert 2.x manylinux_2_27.
WHEEL_PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)))


def default_cache_dir() -> Path:
    root = os.environ.get("EDGE_TOOLCHAIN_CACHE")
    if root:
        return Path(root).expanduser() / "emulator"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edge-toolchain" / "emulator"


@dataclass(frozen=True)
class Stack:
    root: Path

    @property
    def qemu(self) -> Path:
        return self.root / "qemu" / "qemu-aarch64-static"

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def python(self) -> Path:
        return self.rootfs / "usr" / "bin" / f"python{PYTHON_VERSION}"

    def board_root(self, board: str) -> Path:
        return self.root / "boards" / board

    def site(self, runtime: str) -> Path:
        return self.root / "site" / runtime

    def has_base(self) -> bool:
        return self.qemu.is_file() and self.python.is_file()

    def has_board(self, board: str) -> bool:
        return (self.board_root(board) / "proc" / "cpuinfo").is_file()

    def has_runtime(self, runtime: str) -> bool:
        return (self.site(runtime) / ".complete").is_file()

    def require(self, board: str, runtime: str) -> None:
        """Raise with the setup command to run when a part of the stack is missing."""
        if board not in BOARDS:
            raise InputError(f"no emulated board '{board}'; choose one of {', '.join(BOARDS)}")
        if runtime not in RUNTIMES:
            raise InputError(f"no emulated runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")
        if not (self.has_base() and self.has_board(board) and self.has_runtime(runtime)):
            raise MissingDependencyError(
                f"the emulated {board} stack with {runtime} is not built in {self.root}; run "
                f"`edge-toolchain emulator setup --target {board} --cache-dir {self.root}`"
            )


# ---- setup -------------------------------------------------------------------

@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(command: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    except FileNotFoundError as e:
        raise MissingDependencyError(
            f"{what}: `{command[0]}` not found; the emulator needs a Debian/Ubuntu host with apt-get and dpkg"
        ) from e
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise StageError(f"{what} failed (exit {done.returncode}): {tail}")
    return done


def _ensure_arm64_lists(log: Callable[[str], None]) -> None:
    arches = _run(["dpkg", "--print-foreign-architectures"], "listing dpkg architectures").stdout.split()
    if "arm64" in arches:
        return
    if os.geteuid() != 0:
        raise MissingDependencyError(
            "apt has no arm64 package lists; run once as root: "
            "`dpkg --add-architecture arm64 && apt-get update`, then re-run `edge-toolchain emulator setup`"
        )
    log("adding the arm64 architecture to dpkg and updating apt lists")
    _run(["dpkg", "--add-architecture", "arm64"], "dpkg --add-architecture arm64")
    _run(["apt-get", "update", "-qq"], "apt-get update")


def _download(debs: Path, names: list[str], log: Callable[[str], None]) -> None:
    missing = [n for n in names if not list(debs.glob(f"{n.split(':')[0]}_*.deb"))]
    if not missing:
        return
    log(f"apt-get download {len(missing)} package(s)")
    debs.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download.", dir=debs))
    try:
        os.chmod(staging, 0o755)
        _run(["apt-get", "download", *missing], "apt-get download", cwd=staging)
        for file in staging.glob("*.deb"):
            file.rename(debs / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _deb(debs: Path, name: str) -> Path:
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        raise StageError(f"apt-get download left no .deb for {name} in {debs}")
    return found[-1]


def _build_base(stack: Stack, log: Callable[[str], None]) -> None:
    _ensure_arm64_lists(log)
    debs = stack.root / "debs"
    _download(debs, [QEMU_PACKAGE, *(f"{p}:arm64" for p in ARM64_PACKAGES), *ALL_PACKAGES], log)
    if not stack.qemu.is_file():
        log("unpacking qemu-aarch64-static")
        scratch = Path(tempfile.mkdtemp(prefix=".qemu.", dir=stack.root))
        try:
            _run(["dpkg", "-x", str(_deb(debs, QEMU_PACKAGE)), str(scratch)], "dpkg -x qemu-user-static")
            stack.qemu.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(scratch / "usr" / "bin" / "qemu-aarch64-static"), stack.qemu)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if not stack.python.is_file():
        log(f"unpacking {len(ARM64_PACKAGES) + len(ALL_PACKAGES)} arm64 packages into the rootfs")
        scratch = Path(tempfile.mkdtemp(prefix=".rootfs.", dir=stack.root))
        try:
            for name in (*ARM64_PACKAGES, *ALL_PACKAGES):
                _run(["dpkg", "-x", str(_deb(debs, name)), str(scratch)], f"dpkg -x {name}")
            shutil.rmtree(stack.rootfs, ignore_errors=True)
            scratch.rename(stack.rootfs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def cpuinfo_text(board: Board, cores: int = 4) -> str:
    """A /proc/cpuinfo as the board's kernel writes it (arm64 format)."""
    blocks = [
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        f"CPU part\t: {board.cpu_part}\nCPU revision\t: 3\n"
        for i in range(cores)
    ]
    board_lines = f"Hardware\t: {board.hardware}\nRevision\t: {board.revision}\nModel\t\t: {board.model}\n"
    return "\n".join(blocks) + "\n" + board_lines


def _build_board(stack: Stack, board: Board) -> None:
    """QEMU -L takes one prefix: the board folder links to the shared rootfs and adds its cpuinfo."""
    folder = stack.board_root(board.name)
    scratch = Path(tempfile.mkdtemp(prefix=f".{board.name}.", dir=stack.root))
    try:
        for entry in sorted(stack.rootfs.iterdir()):
            (scratch / entry.name).symlink_to(os.path.relpath(entry, folder))
        (scratch / "proc").mkdir()
        (scratch / "proc" / "cpuinfo").write_text(cpuinfo_text(board))
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        scratch.rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build_site(stack: Stack, runtime: Runtime, log: Callable[[str], None]) -> None:
    log(f"pip install --target for aarch64 cp311: {' '.join(runtime.packages)}")
    target = stack.site(runtime.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{runtime.name}.", dir=target.parent))
    platforms = [arg for tag in WHEEL_PLATFORMS for arg in ("--platform", tag)]
    try:
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "--no-warn-conflicts", "--target", str(scratch), "--only-binary=:all:", *platforms,
              "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311",
              *runtime.packages], f"pip install of {runtime.name} for aarch64")
        (scratch / ".complete").write_text(json.dumps(_dist_versions(scratch)))
        shutil.rmtree(target, ignore_errors=True)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _dist_versions(site: Path) -> dict[str, str]:
    versions = {}
    for info in site.glob("*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        versions[name.lower().replace("_", "-")] = version
    return dict(sorted(versions.items()))


def setup_stack(
    cache_dir: Path | None = None,
    boards: list[str] | None = None,
    runtimes: list[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Build what is missing (under a file lock, each part renamed into place when complete)."""
    stack = Stack(Path(cache_dir or default_cache_dir()).resolve())
    boards = boards or list(BOARDS)
    runtimes = runtimes or list(RUNTIMES)
    for name in boards:
        if name not in BOARDS:
            raise InputError(f"no emulated board '{name}'; choose one of {', '.join(BOARDS)}")
    started = time.perf_counter()
    with _locked(stack.root):
        built = []
        if not stack.has_base():
            _build_base(stack, log)
            built.append("base")
        for name in boards:
            if not stack.has_board(name):
                _build_board(stack, BOARDS[name])
                built.append(name)
        for name in runtimes:
            if not stack.has_runtime(name):
                _build_site(stack, RUNTIMES[name], log)
                built.append(name)
        state = stack_status(stack.root)
        state["last_setup"] = {"built": built, "seconds": round(time.perf_counter() - started, 1)}
        atomic_write_json(stack.root / "stack.json", state)
    return state


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total


def stack_status(cache_dir: Path | None = None) -> dict[str, Any]:
    """What is built in the cache folder (no network, no emulation)."""
    stack = Stack(Path(cache_dir or default_cache_dir()).resolve())
    qemu_version = None
    if stack.qemu.is_file():
        done = subprocess.run([str(stack.qemu), "--version"], capture_output=True, text=True)
        qemu_version = done.stdout.splitlines()[0] if done.stdout else None
    runtimes = {}
    for name in RUNTIMES:
        site = stack.site(name)
        runtimes[name] = {
            "ready": stack.has_runtime(name),
            "packages": json.loads((site / ".complete").read_text()) if stack.has_runtime(name) else {},
            "megabytes": round(_folder_bytes(site) / 1e6, 1) if site.is_dir() else 0.0,
        }
    return {
        "stack_version": STACK_VERSION,
        "cache_dir": str(stack.root),
        "qemu": {"path": str(stack.qemu), "ready": stack.qemu.is_file(), "version": qemu_version},
        "python": {"path": str(stack.python), "ready": stack.python.is_file(), "version": PYTHON_VERSION,
                   "rootfs_megabytes": round(_folder_bytes(stack.rootfs) / 1e6, 1) if stack.rootfs.is_dir() else 0.0},
        "boards": {name: {"ready": stack.has_board(name), "qemu_cpu": board.qemu_cpu, "model": board.model}
                   for name, board in BOARDS.items()},
        "runtimes": runtimes,
    }

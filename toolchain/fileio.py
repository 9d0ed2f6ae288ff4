"""Atomic writes and hashing: no reader ever sees a half-written output."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError, StageError, ToolchainError
from .interrupt import raise_if_interrupted

# errno values that mean a path the user gave is wrong (bad input), not that a stage failed
_BAD_PATH_ERRNOS = {
    errno.ENOENT: "does not exist",
    errno.ENOTDIR: "a part of it is not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EEXIST: "already exists",
}
MAX_SHOWN_PATH = 200  # characters of a path echoed in an error line
# Zip members (.keras models, .npz data) are checked against these before anything is inflated.
BOMB_FLOOR_BYTES = 256 * 2**20  # members above this size ...
MAX_EXPANSION = 100  # ... may not expand more than this (weights and data barely compress; Keras agrees)
MAX_DEFLATE_RATIO = 1032  # DEFLATE's ceiling: a member declaring more is lying about its size


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success.

    The temp file lives in the same folder so the final rename is atomic. On any
    exception the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        raise_if_interrupted()  # a Ctrl-C swallowed during the work must not publish its result
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise os_error(e, path) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def zip_size_problem(path: Path, archive: Any) -> str | None:
    """What is wrong with a zip's declared member sizes (checked against the file), or None."""
    import zipfile

    file_bytes = path.stat().st_size
    for info in archive.infolist():
        name = repr(info.filename[:80])
        if info.header_offset + info.compress_size > file_bytes:
            return (f"member {name} claims {info.compress_size:,} bytes past the end of the "
                    f"{file_bytes:,}-byte file")
        stored_lie = info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size
        if stored_lie or info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
            return (f"member {name} declares {info.file_size:,} bytes from {info.compress_size:,} stored; "
                    "the zip header lies about sizes")
        if info.file_size > BOMB_FLOOR_BYTES and info.file_size > MAX_EXPANSION * info.compress_size:
            return (f"member {name} is a decompression bomb: it inflates {info.compress_size:,} bytes "
                    f"to {info.file_size:,}")
    return None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None if unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


# ---- operating-system errors as one-line errors ------------------------------------------

def shown_path(path: Any) -> str:
    """A path for an error line: a 10 MB name is cut, not echoed whole."""
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    return text if len(text) <= MAX_SHOWN_PATH else f"{text[:MAX_SHOWN_PATH]}... ({len(text):,} characters)"


def free_space(path: str | os.PathLike) -> str:
    """Free space on the file system holding `path` (or its nearest existing folder)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown free space"
    return f"{free:,} bytes free" if free < 2**20 else f"{free / 2**20:,.1f} MiB free"


def os_error(error: OSError, path: str | os.PathLike | None = None) -> ToolchainError:
    """The ToolchainError for an OSError: full disk is a stage failure (exit 4), a bad path bad input (2)."""
    where = path if path is not None else (error.filename or "")
    shown = shown_path(where) if where != "" else "(unnamed file)"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StageError(f"no space left on the device writing {shown} ({free_space(where or '.')}); "
                          "free some space or write the run elsewhere (--out)")
    if error.errno == errno.ENAMETOOLONG:
        longest = max((len(part) for part in Path(os.fsdecode(where)).parts), default=0)
        return InputError(f"file name too long: {shown} (a part has {longest} characters; file systems allow "
                          "255 bytes per name and 4096 per path); use a shorter name")
    if error.errno == errno.ELOOP:
        return InputError(f"{shown}: symbolic link loop (too many levels of links); point it at a real path")
    if error.errno in _BAD_PATH_ERRNOS:
        return InputError(f"{shown}: {_BAD_PATH_ERRNOS[error.errno]} ({error.strerror})")
    name = errno.errorcode.get(error.errno or 0, "no errno")
    return StageError(f"{shown}: {error.strerror or error} ({name}); check the disk and the path")


def symlink_loop_error(error: RuntimeError) -> InputError | None:
    """Python 3.11's Path.resolve() reports a symlink loop as RuntimeError, not OSError(ELOOP)."""
    message = str(error)
    if not message.startswith("Symlink loop"):
        return None
    looped = message.removeprefix("Symlink loop from ").strip("'")
    return InputError(f"{shown_path(looped)}: symbolic link loop; point it at a real path")

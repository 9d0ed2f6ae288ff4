"""Run the device runner on a device over SSH, with the system OpenSSH client.

Using `ssh` itself (not a Python SSH library) means ~/.ssh/config, agents, jump hosts and
known_hosts work exactly as they do in the user's shell. Every call is an argument list
(never a shell on this side); the one remote command is a fixed `sh -c` script whose
user-supplied parts (python path, temp dir) are quoted with shlex.

Per benchmark: upload runner + artifact (+ inputs) as a tar stream into a private
`mktemp -d` folder, check their sha256 on the device, run the runner under `timeout`,
and remove the folder afterwards, also when anything failed.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TargetProfile
from ..errors import ConfigError, TargetError
from ..fileio import sha256_bytes
from .infer import read_outputs
from .local import RUNNER_PATH, parse_runner_output, stderr_tail

# ssh exits 255 for its own failures; only these mean "could not connect", worth a retry.
CONNECT_FAILURES = (
    "ssh: connect to host",
    "kex_exchange_identification",
    "during banner exchange",
    "Connection refused",
    "Connection timed out",
    "Network is unreachable",
    "No route to host",
    "Connection reset by peer",
)
HOST_KEY_FAILURES = ("Host key verification failed",)
AUTH_FAILURES = ("Permission denied",)
TEMP_DIR_PATTERN = re.compile(r"^/[A-Za-z0-9_./-]*/edge-toolchain\.[A-Za-z0-9]+$")

UPLOAD_SCRIPT = """
umask 077
d=$(mktemp -d "${TMPDIR:-/tmp}/edge-toolchain.XXXXXXXXXX") || exit 94
echo "$d"
tar -xf - -C "$d" || { rm -rf -- "$d"; exit 95; }
"""

# $1 folder, $2 python, $3 timeout seconds, $4 the SHA256SUMS text
RUN_SCRIPT = """
cd "$1" || exit 97
if command -v sha256sum >/dev/null 2>&1; then
    printf '%s' "$4" | sha256sum -c --quiet - >&2 || exit 98
elif command -v shasum >/dev/null 2>&1; then
    printf '%s' "$4" | shasum -a 256 -c -s - >&2 || exit 98
else
    echo "neither sha256sum nor shasum is installed on the device" >&2; exit 98
fi
if command -v timeout >/dev/null 2>&1; then
    timeout -k 5 "$3" "$2" runner.py request.json
else
    "$2" runner.py request.json
fi
exit $?
"""

CLEANUP_SCRIPT = 'rm -rf -- "$1"'
# $1 folder: the outputs an infer request wrote there (a fixed name, never a user string)
FETCH_SCRIPT = 'cat -- "$1/outputs.npz"'


class SSHTarget:
    """One device reached with `ssh`; safe to use from one thread per target."""

    def __init__(self, profile: TargetProfile, sleep: Callable[[float], None] = time.sleep):
        self.profile = profile
        self.connection = profile.connection
        self.python = self.connection.python or "python3"
        self._sleep = sleep

    # ---- ssh plumbing ----------------------------------------------------------

    def ssh_argv(self, script: str, *args: str) -> list[str]:
        """argv for `sh -c SCRIPT sh ARGS...` on the device (every remote word quoted)."""
        c = self.connection
        argv = ["ssh"]
        if c.ssh_config is not None:
            argv += ["-F", str(c.ssh_config)]
        argv += [
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, round(c.connect_timeout_seconds))}",
            "-o", "StrictHostKeyChecking=" + ("accept-new" if c.accept_new_host_key else "yes"),
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
            "-o", "LogLevel=ERROR",
        ]
        if c.known_hosts is not None:
            argv += ["-o", f"UserKnownHostsFile={self._option_path(c.known_hosts, 'known_hosts')}"]
        if c.identity is not None:  # not `-i`: ssh expands % and ${...} in identity paths too
            argv += ["-o", f"IdentityFile={self._option_path(c.identity, 'identity')}", "-o", "IdentitiesOnly=yes"]
        if c.port is not None:
            argv += ["-p", str(c.port)]
        if c.user is not None:
            argv += ["-l", c.user]
        remote = " ".join(shlex.quote(word) for word in ("sh", "-c", script, "sh", *args))
        argv += ["--", str(c.host), remote]
        return argv

    def _option_path(self, path: Path, what: str) -> str:
        """A path as one `-o` option value: ssh splits values at spaces and expands % and ${...}."""
        text = str(path)
        if any(c in text for c in '"\\') or "${" in text or not text.isprintable():
            raise ConfigError(
                f"target '{self.profile.name}': {what} path {text[:200]!r} has a character ssh cannot "
                "take in an option value (a double quote, backslash, '${' or a control character); "
                "rename or move the file"
            )
        return '"' + text.replace("%", "%%") + '"'

    @property
    def where(self) -> str:
        c = self.connection
        return f"{c.user + '@' if c.user else ''}{c.host}{':' + str(c.port) if c.port else ''}"

    def _ssh(self, step: str, script: str, *args: str, stdin: bytes | None = None,
             timeout: float) -> subprocess.CompletedProcess:
        """Run one ssh call; retry with backoff when (and only when) it could not connect."""
        attempts = self.connection.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                done = subprocess.run(self.ssh_argv(script, *args), input=stdin or b"",
                                      capture_output=True, timeout=timeout)
            except FileNotFoundError as e:
                raise TargetError(
                    f"target '{self.profile.name}': the OpenSSH client `ssh` is not installed on this "
                    "machine (apt-get install openssh-client)"
                ) from e
            except subprocess.TimeoutExpired as e:
                raise TargetError(
                    f"target '{self.profile.name}': {step} on {self.where} did not finish within "
                    f"{timeout:g} s; no result recorded. stderr tail: {stderr_tail(e.stderr)}"
                ) from e
            stderr = done.stderr.decode(errors="replace")
            if done.returncode != 255:
                return done
            self._raise_unless_connect_failure(step, stderr)
            if attempt == attempts:
                raise TargetError(
                    f"target '{self.profile.name}': cannot connect to {self.where} over ssh "
                    f"({attempts} attempt(s), connect timeout {self.connection.connect_timeout_seconds:g} s); "
                    "check that the device is on and connection.host/port are right. "
                    f"ssh said: {stderr_tail(stderr)}"
                )
            self._sleep(min(2.0 ** (attempt - 1), 8.0))
        raise AssertionError("unreachable")

    def _raise_unless_connect_failure(self, step: str, stderr: str) -> None:
        tail = stderr_tail(stderr)
        name = self.profile.name
        if "has changed and you have requested strict checking" in stderr or "HAS CHANGED" in stderr:
            raise TargetError(
                f"target '{name}': ssh refused {self.where}: its host key has changed since it was recorded "
                "in known_hosts (the device was re-imaged, or someone is in the middle). Verify the new key, "
                "then remove the old one with ssh-keygen -R HOST (accept_new_host_key never overrides a "
                f"changed key). ssh said: {tail}"
            )
        if any(p in stderr for p in HOST_KEY_FAILURES):
            raise TargetError(
                f"target '{name}': ssh refused the host key of {self.where}: it is not in known_hosts. "
                "Add it after checking its fingerprint (ssh-keyscan), or, for a new device, set "
                f"connection.accept_new_host_key = true. ssh said: {tail}"
            )
        if any(p in stderr for p in AUTH_FAILURES):
            raise TargetError(
                f"target '{name}': ssh login to {self.where} was refused (BatchMode: keys only, no "
                f"passwords); check connection.user and connection.identity. ssh said: {tail}"
            )
        if "Could not resolve hostname" in stderr:
            raise TargetError(
                f"target '{name}': unknown host '{self.connection.host}' (not in DNS, /etc/hosts or "
                f"the ssh config); fix connection.host. ssh said: {tail}"
            )
        if not any(p in stderr for p in CONNECT_FAILURES):
            raise TargetError(
                f"target '{name}': ssh failed during {step} on {self.where} (exit 255, the connection "
                f"broke or ssh rejected its options); no result recorded. ssh said: {tail}"
            )

    # ---- one benchmark -----------------------------------------------------------

    def run(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Upload, check, run and clean up; the runner's JSON answer or a TargetError."""
        answer, _ = self._run_and_fetch(request, timeout, fetch=False)
        return answer

    def infer(self, artifact: Path, inputs: dict[str, np.ndarray],
              timeout: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Run `artifact` on `inputs` on the device; the runner's answer and the outputs it wrote."""
        with tempfile.TemporaryDirectory(prefix="edge-toolchain-infer-") as work:
            inputs_file = Path(work) / "inputs.npz"
            np.savez(inputs_file, **inputs)
            request = {"model": str(artifact), "mode": "infer", "inputs": str(inputs_file),
                       "outputs": "outputs.npz"}
            answer, outputs = self._run_and_fetch(request, timeout, fetch=True)
        return answer, read_outputs(outputs or b"")

    def _run_and_fetch(self, request: dict[str, Any], timeout: float,
                       fetch: bool) -> tuple[dict[str, Any], bytes | None]:
        if self.profile.runtime.tflite_backend != "auto" and str(request["model"]).endswith(".tflite"):
            request = {"backend": self.profile.runtime.tflite_backend, **request}
        files = self.payload(request)
        folder = self.upload(files)
        try:
            answer = self.execute(folder, files, timeout)
            return answer, self.download(folder) if fetch else None
        finally:
            self._cleanup(folder)

    def download(self, folder: str) -> bytes:
        """The outputs.npz an infer request wrote into `folder` on the device."""
        done = self._ssh("download", FETCH_SCRIPT, folder, timeout=self._connect_budget + 120)
        if done.returncode != 0 or not done.stdout:
            raise TargetError(
                f"target '{self.profile.name}': the runner answered but its outputs could not be read back "
                f"from {self.where} (exit {done.returncode}). stderr tail: {stderr_tail(done.stderr)}"
            )
        return done.stdout

    @property
    def _connect_budget(self) -> float:
        return self.connection.connect_timeout_seconds * (self.connection.retries + 1) + 30

    def payload(self, request: dict[str, Any]) -> dict[str, bytes]:
        """The files to upload: runner, artifact, inputs, and the request naming them."""
        model = Path(request["model"])
        files = {"runner.py": RUNNER_PATH.read_bytes(), f"model{model.suffix}": model.read_bytes()}
        request = {**request, "model": f"model{model.suffix}"}
        if request.get("inputs"):
            files["inputs.npz"] = Path(request["inputs"]).read_bytes()
            request["inputs"] = "inputs.npz"
        files["request.json"] = json.dumps(request).encode()
        return files

    def upload(self, files: dict[str, bytes]) -> str:
        """Unpack `files` into a new private temp folder on the device; returns its path."""
        payload = _tar(files)
        # generous for slow links: 2 minutes plus one second per 100 kB
        done = self._ssh("upload", UPLOAD_SCRIPT, stdin=payload,
                         timeout=self._connect_budget + 120 + len(payload) / 1e5)
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        folder = lines[0] if lines else ""
        if done.returncode != 0 or not TEMP_DIR_PATTERN.match(folder):
            self._cleanup(folder)
            raise TargetError(
                f"target '{self.profile.name}': could not create a temp folder or unpack the upload on "
                f"{self.where} (exit {done.returncode}; is $TMPDIR or /tmp writable and not full?). "
                f"stderr tail: {stderr_tail(done.stderr)}"
            )
        return folder

    def execute(self, folder: str, files: dict[str, bytes], timeout: float) -> dict[str, Any]:
        """Check the uploaded files' sha256 on the device, then run the runner there."""
        sums = "".join(f"{sha256_bytes(data)}  {name}\n" for name, data in files.items())
        done = self._ssh("benchmark", RUN_SCRIPT, folder, self.python, f"{timeout:g}", sums,
                         timeout=timeout + self._connect_budget)
        name, code = self.profile.name, done.returncode
        stdout = done.stdout.decode(errors="replace")
        stderr = done.stderr.decode(errors="replace")
        problems = {
            97: "the upload folder vanished before the run",
            98: "the uploaded files could not be verified on the device (sha256 mismatch: transfer "
                "corrupted or files changed; or no sha256sum/shasum there); nothing was run",
            124: f"the runner did not finish within {timeout:g} s on the device and was stopped "
                 "(raise bench.timeout_seconds, or lower max_seconds); no result recorded",
            126: f"the device's python '{self.python}' is not executable; fix connection.python",
            127: f"the device has no python at '{self.python}'; fix connection.python in the target profile",
        }
        if code in problems:
            raise TargetError(f"target '{name}': {problems[code]}. stderr tail: {stderr_tail(stderr)}")
        if 128 < code < 255:
            return parse_runner_output(name, stdout, stderr, -(code - 128))
        return parse_runner_output(name, stdout, stderr, code)

    def _cleanup(self, folder: str) -> None:
        """Best effort: a cleanup failure must not hide the benchmark's own result or error."""
        if not TEMP_DIR_PATTERN.match(folder):
            return
        try:
            self._ssh("cleanup", CLEANUP_SCRIPT, folder, timeout=self._connect_budget)
        except TargetError:
            pass


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()

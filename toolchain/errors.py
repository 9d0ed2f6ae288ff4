"""Error classes. Each carries the process exit code the CLI returns for it.

Exit codes (documented in docs/exit-codes.md):
  1  unexpected internal error (a bug: please report it with --debug output)
  2  bad input: configuration, command-line values, model or data files
  3  a required dependency is missing
  4  a stage failed (conversion, training, report writing)
  5  verification failed: an artifact does not match its Keras model, or a release
     bundle fails its checksums or manifest (verify-bundle)
  6  a benchmark target failed or could not be reached (also: an emulated check that timed out)
  7  a budget was exceeded
  8  the run directory is locked by another run
130  interrupted (Ctrl-C); nothing half-written is kept

Operating-system errors are mapped too (fileio.os_error): a full disk is a stage failure (4),
a path the OS refuses (too long, a symlink loop, no permission) is bad input (2).
"""

from __future__ import annotations


class ToolchainError(Exception):
    """Base class: a one-line message that names what is wrong and what to do."""

    exit_code = 1


class InputError(ToolchainError):
    """A file or value the user gave us is missing, malformed or inconsistent."""

    exit_code = 2


class ConfigError(InputError):
    """The pipeline config or a target profile is invalid."""


class ModelLoadError(InputError):
    """A model file is missing, corrupt, or refused by safe loading."""


class DataError(InputError):
    """Calibration or evaluation data is missing or does not fit the model."""


class MissingDependencyError(ToolchainError):
    exit_code = 3


class StageError(ToolchainError):
    """A pipeline stage failed (converter error, report error, ...)."""

    exit_code = 4


class ParityError(ToolchainError):
    """An artifact's outputs do not match the reference model."""

    exit_code = 5

    def __init__(self, message: str, failures: list[str] | None = None):
        super().__init__(message)
        self.failures = failures or []


class TargetError(ToolchainError):
    """A benchmark target failed or could not be reached."""

    exit_code = 6


class BundleError(ToolchainError):
    """A release bundle is damaged or tampered with: checksums or manifest do not match."""

    exit_code = 5


class BudgetError(ToolchainError):
    exit_code = 7


class RunLockedError(ToolchainError):
    """Another process holds the run directory's lock."""

    exit_code = 8

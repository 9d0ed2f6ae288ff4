"""edge-toolchain: take a trained Keras model to edge devices.

The public Python API (see toolchain/api.py and docs/python-api.md):

    import toolchain
    toolchain.inspect("model.keras")["layers"]
    toolchain.export("model.keras", "model.int8.tflite", recipe="int8", data={"pixels": x})
    toolchain.verify("model.int8.tflite", "model.keras", {"pixels": x, "y": y})
    toolchain.bench("model.int8.tflite", "local")
    run = toolchain.run("pipeline.toml"); run.artifacts

Importing the package is cheap: TensorFlow loads only when a function needs it.
"""

import sys as _sys
import types as _types

__version__ = "0.1.0"

# name -> the module that defines it; each is imported on first use
_PUBLIC = {
    "export": "api",
    "verify": "api",
    "bench": "api",
    "inspect": "api",
    "truncate": "api",
    "sweep": "api",
    "run": "api",
    "load_run": "api",
    "Run": "api",
    "ToolchainError": "errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    """Lazy public API: `toolchain.export` imports toolchain.api on first use, Keras only when it runs."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'toolchain' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(_types.ModuleType):
    """Keeps a public function when a submodule of the same name loads.

    Importing the submodule toolchain/sweep.py would otherwise bind `toolchain.sweep` to
    that module, hiding the function `toolchain.sweep`; submodules stay in sys.modules.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _PUBLIC and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

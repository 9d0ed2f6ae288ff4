"""edge-toolchain: take a trained Keras model to edge devices.

Importing the package is cheap: TensorFlow loads only when a function needs it.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "truncate"]


def __getattr__(name: str):
    """Lazy public API: `toolchain.truncate` imports its module (and Keras) on first use."""
    if name == "truncate":
        from .stages.truncate import truncate

        return truncate
    raise AttributeError(f"module 'toolchain' has no attribute {name!r}")

"""edge-toolchain: take a trained Keras model to edge devices.

Importing the package is cheap: TensorFlow loads only when a function needs it.
"""

__version__ = "0.1.0"

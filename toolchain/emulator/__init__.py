"""A Raspberry Pi without a Pi: the Pi's own aarch64 runtime stack under QEMU user-mode emulation.

stack.py builds and describes the cached stack, run.py runs the device runner in it,
gate.py loads and invokes artifacts there and compares them with the host.
"""

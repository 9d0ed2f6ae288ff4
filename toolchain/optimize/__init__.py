"""`edge-toolchain optimize`: the fastest artifact that meets an accuracy budget on each target, by measuring.

candidates.py: what is tried (recipes plus converter knobs); search.py: build, verify,
benchmark and prune, cached per candidate; explain.py: why a measured candidate is slow.
"""

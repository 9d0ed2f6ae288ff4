"""Why one artifact is slower than another: moved into the toolchain (toolchain/optimize/explain.py)."""

from toolchain.optimize.explain import PROFILE_SCRIPT, explain, explain_artifact, op_counts, summary

__all__ = ["PROFILE_SCRIPT", "explain", "explain_artifact", "op_counts", "summary"]

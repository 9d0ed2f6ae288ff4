"""Cyclomatic complexity gate (radon): no function in toolchain/ above MAX_COMPLEXITY.

`make lint` runs this script; tests/test_complexity.py runs it in the suite. Functions
written before the rule are listed in ALLOWED with their complexity at the time: they
may only get simpler, and an entry must go once its function is at or under the limit
(or is gone), so the list only shrinks.

    python tests/complexity.py          # exit 1 and one line per problem
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

MAX_COMPLEXITY = 15
ROOT = Path(__file__).resolve().parent.parent

# "path:qualified.name": complexity when the rule came in (2026-12-01); lower these, never raise them
ALLOWED: dict[str, int] = {}


def _functions(blocks: list, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(qualified name, complexity) of every function, method and closure; classes are not functions.

    radon lists methods beside their class (named Class.method) and closures inside their function.
    """
    for block in blocks:
        if hasattr(block, "methods"):  # a class: its figure sums its methods, listed on their own
            continue
        name = prefix + block.fullname
        yield name, block.complexity
        yield from _functions(block.closures, name + ".")


def measure(package: Path = ROOT / "toolchain") -> dict[str, int]:
    """Complexity of every function in the package, keyed like ALLOWED."""
    from radon.complexity import cc_visit

    found = {}
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package.parent).as_posix()
        for name, complexity in _functions(cc_visit(path.read_text(encoding="utf-8"))):
            found[f"{where}:{name}"] = complexity
    return found


def problems(found: dict[str, int], allowed: dict[str, int] = ALLOWED, limit: int = MAX_COMPLEXITY) -> list[str]:
    """One line per function over the limit (or over its allowance) and per stale allowance."""
    lines = []
    for key, complexity in sorted(found.items()):
        allowance = allowed.get(key)
        if complexity > limit and allowance is None:
            lines.append(f"{key} has cyclomatic complexity {complexity} (limit {limit}): split it by what "
                         "its parts decide")
        elif allowance is not None and complexity > allowance:
            lines.append(f"{key} grew to complexity {complexity} (allowed {allowance} while it waits to be "
                         f"split; limit {limit}): make it simpler, do not raise its entry")
    for key in sorted(allowed):
        if found.get(key, 0) <= limit:
            state = "is gone" if key not in found else f"is now {found[key]}, within the limit {limit}"
            lines.append(f"{key} {state}: remove its entry from ALLOWED in tests/complexity.py")
    return lines


def main() -> int:
    lines = problems(measure())
    for line in lines:
        print(line)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())

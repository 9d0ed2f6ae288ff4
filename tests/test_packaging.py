"""The wheel ships every subpackage: an installed (not editable) toolchain must not miss one."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "toolchain").rglob("__init__.py")}
    missing = sorted(found - listed)
    assert not missing, f"add {', '.join(missing)} to [tool.setuptools] packages in pyproject.toml"

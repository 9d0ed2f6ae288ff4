"""The documentation: generated pages up to date, the site builds strictly, README stays a front door."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _generator()


def test_generated_pages_are_up_to_date():
    assert generate.stale_pages() == [], "run `python docs/generate.py` and commit docs/reference/"


def test_config_reference_has_every_key_of_every_section():
    from pydantic import BaseModel

    from toolchain.config import PipelineConfig, TargetProfile

    page = generate.config_page()

    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            assert re.search(rf"^\| `{name}` \|", page, re.M), f"{model.__name__}.{name} is missing"
            nested = generate._section_of(field.annotation)
            if nested is not None:
                walk(nested[0])

    walk(PipelineConfig)
    walk(TargetProfile)
    assert "| `opset` | integer | `17` | ≥ 13, ≤ 21 |" in page
    assert '| `kind` | "local" \\| "ssh" \\| "emulated" \\| "fleet" | `"local"` |' in page
    assert "| `path` | path | **required** |  | .keras or .h5, loaded in safe mode |" in page  # from the example


def test_recipes_table_lists_every_recipe_with_its_tolerance():
    from toolchain.config import ONNX_RECIPES, TFLITE_RECIPES

    rows = generate.recipe_rows()
    assert [(r.format, r.name) for r in rows] == (
        [("tflite", r) for r in TFLITE_RECIPES] + [("onnx", r) for r in ONNX_RECIPES])
    page = generate.recipes_page()
    assert "| onnx | `int8` | cosine ≥ 0.9, top-1 agreement ≥ 0.9, accuracy drop ≤ 0.015 |" in page
    assert "| tflite | `fp16` | max abs error ≤ 0.01," in page
    assert "| tflite | `int8` |" in page and "refused: selective quantization" in page  # keep_float and why


def test_example_comments_are_read_with_sections_and_continuations(tmp_path):
    example = tmp_path / "example.toml"
    example.write_text(
        '[data]\n'
        'eval = "x.npz"   # arrays by input name,\n'
        '                 # or an image folder\n'
        '# [data.preprocess]   # image folders only\n'
        '# size = [8, 8]       # [height, width]\n'
        'release = "a # b"\n'
        '[verify.tolerances.fp32]\n'
        'min_cosine = 0.9  # worst sample\n')
    assert generate.example_comments(example) == {
        ("data", "eval"): "arrays by input name, or an image folder",
        ("data.preprocess", ""): "image folders only",
        ("data.preprocess", "size"): "[height, width]",
        ("verify.tolerances.<recipe>", "min_cosine"): "worst sample",
    }


def test_a_stale_page_stops_the_docs_build(monkeypatch):
    from mkdocs.exceptions import PluginError

    monkeypatch.setattr(generate, "recipes_page", lambda: "# Recipes\n\nsomething new\n")
    assert generate.stale_pages() == ["reference/recipes.md"]
    with pytest.raises(PluginError, match=r"stale generated page\(s\) reference/recipes.md: run "
                                          r"`python docs/generate.py`"):
        generate.on_pre_build({})


def test_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("material", reason="the docs extra: pip install -e '.[docs]' (make docs does)")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "reference" / "config" / "index.html").is_file()
    results = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    benchmarks = (tmp_path / "benchmarks" / "index.html").read_text()
    assert all(f'href="results/{p.stem}/"' in benchmarks for p in results)


def test_readme_is_a_short_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for heading in ("## Install", "## Your own model", "## Commands", "## Running the tests"):
        assert heading in readme, heading
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), f"README links to a missing page {link}"

"""Typed records: verify.json and bench.json schemas are generated from them and match real runs."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import ValidationError

from toolchain.records import PIPELINE_DOCUMENTS, SCHEMAS, BenchRecord, VerifyResult, json_schema, schema_path


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_shipped_schemas_are_generated_from_the_records(name):
    shipped = json.loads(schema_path(name).read_text())
    assert shipped == json_schema(name), f"run `python -m toolchain.records` to regenerate {name}.schema.json"


def test_demo_run_documents_validate_against_their_schemas(demo_run):
    for name in PIPELINE_DOCUMENTS:
        document = json.loads((demo_run / f"{name}.json").read_text())
        jsonschema.validate(document, json.loads(schema_path(name).read_text()))
        assert SCHEMAS[name].model_validate(document).to_json() == document  # typed and back, unchanged


def test_records_refuse_wrong_shapes():
    with pytest.raises(ValidationError, match="verdict"):
        VerifyResult.model_validate({"verdict": "maybe", "failures": [], "outputs": {}})
    with pytest.raises(ValidationError, match="latency_ms"):
        BenchRecord.model_validate({"artifact": "a"})
    broken = {"schema_version": "1.0", "results": [{"artifact": "a"}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(schema_path("bench").read_text()))

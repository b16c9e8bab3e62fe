"""docs/spec.schema.json accepts every valid spec shipped or documented and
refuses specs of the wrong shape, as `shardplan check` does."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

import shardplan as sp
from conftest import REPO, SPECS

SCHEMA = json.loads((REPO / "docs" / "spec.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)


def test_the_schema_is_a_draft_7_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def documented_specs():
    """The YAML blocks of docs/spec.md that are whole specs and valid."""
    out = []
    text = (REPO / "docs" / "spec.md").read_text()
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S)):
        try:
            doc = yaml.safe_load(block)
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict) and "version" in doc:
            out.append((f"spec.md block {i + 1}", block, doc))
    return out


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_specs_are_valid(path):
    errors = [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def test_documented_valid_specs_are_valid(tmp_path):
    checked = 0
    for name, text, doc in documented_specs():
        f = tmp_path / "spec.yaml"
        f.write_text(text)
        if any(d.is_error for d in sp.check(f)):
            continue
        errors = [f"{list(e.path)}: {e.message}" for e in VALIDATOR.iter_errors(doc)]
        assert errors == [], name
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("code", ["unknown_field", "missing_field", "wrong_type", "version", "unknown_dtype"])
def test_shape_faults_are_refused(code):
    doc = yaml.safe_load((SPECS / "invalid" / f"{code}.yaml").read_text())
    assert list(VALIDATOR.iter_errors(doc)), f"the schema accepts specs/invalid/{code}.yaml"

"""``check`` returns the diagnostics ``shardplan check`` prints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import shardplan as sp
from conftest import SPECS

INVALID = sorted((SPECS / "invalid").glob("*.yaml"))


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_each_invalid_spec_has_its_code(path):
    diags = sp.check(path)
    assert any(d.code == f"shardplan::spec::{path.stem}" for d in diags), [str(d) for d in diags]
    for d in diags:
        assert d.file == str(path) and d.line >= 1 and d.column >= 1 and d.help
        assert d.severity in ("error", "warning")


def test_the_same_diagnostics_as_the_cli():
    files = [str(p) for p in INVALID[:8]]
    cli = subprocess.run(
        [sys.executable, "-m", "shardplan._cli", "check", "--format", "json", *files],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1
    theirs = json.loads(cli.stdout)["diagnostics"]
    ours = sp.check(files)
    assert [
        {
            "code": d.code,
            "severity": d.severity,
            "message": d.message,
            "file": d.file,
            "line": d.line,
            "column": d.column,
            "help": d.help,
        }
        for d in ours
    ] == theirs


def test_bundled_specs_have_no_errors():
    diags = sp.check(sorted(SPECS.glob("*.yaml")))
    assert [str(d) for d in diags if d.is_error] == []

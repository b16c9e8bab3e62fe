"""Shared helpers: where the repository, its fixtures and ../shared are."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[3]
SPECS = REPO / "specs"
FIXTURE_CASES = REPO / "crates" / "shardplan" / "tests" / "it" / "fixtures" / "mindspore"
SHARED = REPO.parent / "shared"


def is_ci() -> bool:
    return os.environ.get("CI") in ("true", "1")


def shared_dir(sub: str) -> Path | None:
    """``../shared/<sub>`` when it exists. Missing, it fails under CI
    (``CI=true``) and is skipped elsewhere, saying what is missing."""
    d = SHARED / sub
    if d.is_dir():
        return d
    message = f"{d} is missing: the copy of shared/ beside the clone holds these cases"
    if is_ci():
        pytest.fail(message + " (required under CI)")
    return None


def case_dirs(root: Path) -> List[Path]:
    return sorted(p for p in root.iterdir() if (p / "case.json").is_file())


def read_case(d: Path) -> dict:
    return json.loads((d / "case.json").read_text())

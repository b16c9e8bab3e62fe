"""The ``shardplan`` command the wheel installs is the CLI crate's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import shardplan as sp
from conftest import SPECS


def command() -> str:
    """The installed entry point, beside the interpreter (a venv's bin)."""
    beside = Path(sys.executable).parent / "shardplan"
    found = str(beside) if beside.exists() else shutil.which("shardplan")
    assert found, "the package installs a `shardplan` command"
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([command(), *args], capture_output=True, text=True)


def test_version_is_the_package_version():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"shardplan {sp.__version__}"


def test_exit_statuses_pass_through():
    assert run("plan", str(SPECS / "tiny-model.yaml")).returncode == 0
    bad = run("check", str(SPECS / "invalid" / "unknown_axis.yaml"))
    assert bad.returncode == 1
    assert "unknown_axis" in bad.stdout + bad.stderr
    assert run("no-such-command").returncode == 2

#!/usr/bin/env bash
# Every test: the Rust workspace's, then the Python package's. The Python
# side gets a virtual environment of its own (.venv, or $SHARDPLAN_VENV)
# with maturin, pytest, numpy, ml_dtypes, safetensors and hypothesis, and
# the package built into it from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace

venv="${SHARDPLAN_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r bindings/python/requirements-test.txt
# Builds the extension in release mode into target/ (incremental) and
# installs the package, with its `shardplan` command, into the venv.
VIRTUAL_ENV="$(cd "$venv" && pwd)" "$venv/bin/maturin" develop --release --quiet \
    --manifest-path bindings/python/Cargo.toml
"$venv/bin/python" -m pytest -q bindings/python/tests "$@"

#!/usr/bin/env bash
# Every test: the Rust workspace's, then the Python package's. A virtual
# environment of the project's own (.venv, or $SHARDPLAN_VENV) gets maturin,
# pytest, numpy, ml_dtypes, safetensors, hypothesis and torch (for the DCP
# and DTensor checks; a large download, once), then the package built into
# it from this checkout. The Rust tests that check files with Python's own
# readers use that environment's interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SHARDPLAN_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r bindings/python/requirements-test.txt
SHARDPLAN_PYTHON="$(cd "$venv" && pwd)/bin/python" cargo test --workspace
# The embedding example (built by the tests above) must also run.
cargo run --quiet -p shardplan --example embed > /dev/null

# Builds the extension in release mode into target/ (incremental) and
# installs the package, with its `shardplan` command, into the venv.
VIRTUAL_ENV="$(cd "$venv" && pwd)" "$venv/bin/maturin" develop --release --quiet \
    --manifest-path bindings/python/Cargo.toml
"$venv/bin/python" -m pytest -q bindings/python/tests "$@"

"""The ``shardplan`` command installed with the package."""

from __future__ import annotations

import sys

from . import _shardplan


def main() -> None:
    """Runs the command line in ``sys.argv`` and exits with its status."""
    sys.stdout.flush()
    sys.exit(_shardplan.run_cli(["shardplan", *sys.argv[1:]]))


if __name__ == "__main__":
    main()

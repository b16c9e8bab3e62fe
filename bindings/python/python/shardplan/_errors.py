"""The exceptions of shardplan, and the diagnostics of ``check``.

Every exception is a :class:`Error` and carries a stable ``code`` (the
Rust library's, listed in docs/errors.md), a ``help`` saying how to fix the
input, and where known the ``file``, ``line`` and ``column`` or the
``tensor`` and ``rank`` at fault.
"""

from __future__ import annotations

from dataclasses import dataclass as _dataclass

# The exception classes are made by the extension (src/exceptions.rs), so
# that the errors it raises and the ones Python raises are the same classes.
from ._shardplan import (
    CheckpointError,
    DeriveError,
    Error,
    FileError,
    LayoutError,
    PlanDefect,
    PlanError,
    PlanFileError,
    ReshardError,
    SpecError,
    StrategyError,
    StrategyFileError,
    UsageError,
)

__all__ = [
    "CheckpointError",
    "DeriveError",
    "Diagnostic",
    "Error",
    "FileError",
    "LayoutError",
    "PlanDefect",
    "PlanError",
    "PlanFileError",
    "ReshardError",
    "ShardplanWarning",
    "SpecError",
    "StrategyError",
    "StrategyFileError",
    "UsageError",
]


class ShardplanWarning(UserWarning):
    """What shardplan does that a user may not expect (MindSpore's rules
    for parameters missing from a strategy)."""


@_dataclass(frozen=True)
class Diagnostic:
    """One problem found in a spec file."""

    code: str
    """Stable code, e.g. ``shardplan::spec::unknown_axis``."""
    severity: str
    """``"error"`` or ``"warning"``."""
    message: str
    """What is wrong, naming the tensor, rule or axis involved."""
    file: str
    """The file as given."""
    line: int
    """1-based line."""
    column: int
    """1-based column."""
    help: str
    """How to fix it."""

    @property
    def is_error(self) -> bool:
        """True for errors, as opposed to warnings."""
        return self.severity == "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}[{self.code}]: {self.message}"


del annotations  # the __future__ import binds it

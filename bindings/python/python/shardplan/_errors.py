"""The exceptions of shardplan, and the diagnostics of ``check``.

Every exception is a :class:`Error` and carries a stable ``code`` (the
Rust library's, listed in docs/errors.md), a ``help`` saying how to fix the
input, and where known the ``file``, ``line`` and ``column`` or the
``tensor`` and ``rank`` at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


class Error(Exception):
    """Base class of every error shardplan raises."""

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        help: Optional[str] = None,
        file: Optional[str] = None,
        line: Optional[int] = None,
        column: Optional[int] = None,
        tensor: Optional[str] = None,
        rank: Optional[int] = None,
        diagnostics: Sequence["Diagnostic"] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.help = help
        self.file = file
        self.line = line
        self.column = column
        self.tensor = tensor
        self.rank = rank
        self.diagnostics = list(diagnostics)

    def __str__(self) -> str:
        text = self.message
        if self.code:
            text = f"[{self.code}] {text}"
        if self.help:
            text = f"{text}\n  help: {self.help}"
        return text


class UsageError(Error, ValueError):
    """An argument of a shardplan function that it cannot use."""


class FileError(Error, OSError):
    """A file that cannot be read or written."""


class SpecError(Error):
    """A spec with errors; ``diagnostics`` lists every one."""


class LayoutError(Error):
    """A mesh, layout or notation that breaks an invariant."""


class StrategyError(Error):
    """A strategy whose tensors and layouts disagree."""


class DeriveError(Error):
    """An inference layout that cannot be derived."""


class PlanError(Error):
    """Two strategies that cannot be planned between."""


class PlanDefect(Error):
    """A plan that does not move the source to the destination exactly."""


class PlanFileError(Error):
    """A JSON plan file that cannot be read."""


class CheckpointError(Error):
    """A checkpoint that is unreadable, truncated or corrupt."""


class StrategyFileError(Error):
    """A MindSpore strategy file that cannot be read."""


class ReshardError(Error):
    """Checkpoints and strategies that disagree with each other."""


class ShardplanWarning(UserWarning):
    """What shardplan does that a user may not expect (MindSpore's rules
    for parameters missing from a strategy)."""


@dataclass(frozen=True)
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

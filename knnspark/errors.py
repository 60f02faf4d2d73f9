"""Exception types users catch. Every message says what is wrong, how much of it, and what to do."""

from __future__ import annotations

__all__ = ["ConfigError", "InputError", "KnnsparkError", "OutputError"]


class KnnsparkError(Exception):
    """Base class of every error knnspark raises on purpose."""


class ConfigError(KnnsparkError, ValueError):
    """A parameter or config file value is invalid."""


class InputError(KnnsparkError, ValueError):
    """The input table cannot be used as it is (missing column, bad type, invalid rows).

    Attributes
    ----------
    check : str
        Machine-readable name of the failed check, e.g. ``"nan_element"`` or ``"duplicate_id"``.
    n_rows : int
        How many rows fail the check (0 for schema problems).
    examples : list
        A few offending ids.
    """

    def __init__(self, message: str, *, check: str, n_rows: int = 0, examples: list | None = None):
        super().__init__(message)
        self.check = check
        self.n_rows = n_rows
        self.examples = list(examples or [])


class OutputError(KnnsparkError):
    """The output location cannot be written as asked (e.g. it exists and the mode is ``error``)."""

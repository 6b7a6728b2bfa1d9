"""Errors that reach users. Each names the file or URL at fault and says what to do.

They subclass the builtin they refine, so ``except ValueError`` and friends keep working.
"""

from __future__ import annotations


class CloudmicError(Exception):
    """Base of every error cloudmic raises on purpose."""


class SourceError(CloudmicError, ValueError):
    """The source data does not match its published layout (missing pair, bad TIFF, ...)."""

    def __init__(self, path: object, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{self.path}: {problem}\n  what to do: {fix}")

    def __reduce__(self):  # survives the trip back from a dask worker
        return (type(self), (self.path, self.problem, self.fix))


class ManifestError(CloudmicError, ValueError):
    """A manifest YAML is missing a field, has an unknown one, or a wrong value."""


class StoreError(CloudmicError, OSError):
    """The destination or source store cannot be reached, read or written."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """Nothing is published at the URL."""

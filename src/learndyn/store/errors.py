"""The run store's errors: every store problem reaches the user as one line."""

from __future__ import annotations


class StoreError(Exception):
    """A run-store problem, explained in one line (bad file, missing run, lock timeout, ...)."""


class StoreReadOnlyError(StoreError, PermissionError):
    """A write to a store this process cannot write (read-only file system, no permission)."""


class RunNotFoundError(StoreError, LookupError):
    """No run (or sweep) matches the reference, or a prefix matches several."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name when the message is empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class RunTakenError(StoreError):
    """A run to continue is not resumable any more: another process took it (a concurrent sweep or
    ``learndyn resume``) or it finished."""

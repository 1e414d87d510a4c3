"""The one base of every failure a user can fix (a bad catalog, a missing or broken input file, a
setting that does not fit the data). The command line catches `UwavError` once and prints its
message on one line with exit status 2; anything else is a bug and keeps its traceback.

Subclasses live beside the code that raises them (`CatalogError` in `catalog`, `MediaError` in
`media.decode`, ...); a subclass that used to derive from a built-in error keeps it as a second
base, so `except ValueError` in callers still works. `InvalidInputError` and `MissingInputError`
are here because many modules raise them.
"""

from __future__ import annotations


def error_line(error: BaseException) -> str:
    """An error as one line: its type, then its message with every run of whitespace one space."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class UwavError(Exception):
    """A user-caused failure; the message names the file, key or video at fault."""


class StageError(UwavError, RuntimeError):
    """A stage that cannot run; the message says which input is missing or wrong."""


class InvalidInputError(UwavError, ValueError):
    """An input file, argument or setting whose content is wrong (a table without its columns, a
    checkpoint of the wrong kind, a setting the data cannot meet)."""


class MissingInputError(UwavError, FileNotFoundError):
    """An input file or folder that does not exist, or lacks a file it must hold."""

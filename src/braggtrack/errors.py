"""User-facing errors.

Every problem caused by the user's input (a missing file, a file that is not what its
name claims, a nonsense option) is raised as :class:`BraggTrackError` (or a subclass)
with a one-line message that names the file and the problem.  The command line catches
exactly these, prints ``error: <message>`` on stderr and exits with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BraggTrackError(Exception):
    """A problem with the user's input or options, with a one-line message."""

    exit_code = 2


class InputFileError(BraggTrackError):
    """A file that cannot be read, or is not what it claims to be."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class FrameReadError(InputFileError):
    """One frame of an otherwise readable series could not be read."""

    def __init__(self, path: object, index: int, problem: str) -> None:
        self.index = int(index)
        self.reason = problem  # without the "frame N:" prefix, for tables
        super().__init__(path, f"frame {index}: {problem}")


class OptionError(BraggTrackError):
    """An option value that makes no sense (negative threshold, even patch size, ...)."""


class ModelError(BraggTrackError):
    """A model file that cannot be loaded safely or does not match its checksum."""

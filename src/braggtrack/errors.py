"""User-facing errors.

Every problem caused by the user's input (a missing file, a file that is not what its
name claims, a nonsense option) is raised as :class:`BraggTrackError` (or a subclass)
with a one-line message that names the file and the problem.  The command line catches
exactly these, prints ``error: <message>`` on stderr and exits with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math
import numbers


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


def checked_number(
    value: object, name: str, *, integer: bool = False, low: float = -math.inf,
    high: float = math.inf, low_open: bool = False, high_open: bool = False,
) -> float:
    """``value`` as a finite float (an int when ``integer``) within ``low .. high``, or a
    one-line :class:`OptionError` naming ``name``.

    Written as one positive test (finite and inside) because NaN fails every comparison:
    ``lr <= 0`` once let ``lr=nan`` through to a traceback, and ``lr=inf`` trained a model of
    NaN weights. Strings are refused rather than parsed: ``search_range="5"`` is a mistake in
    the caller's code, and parsing it would hide the next one (``"5px"``). Booleans are refused
    too (``True`` is 1 to Python, never to a user).

    Parameters
    ----------
    value : object
        The option as given.
    name : str
        Its name in the message (the command-line flag where there is one).
    integer : bool
        Also require a whole number; the result is then an ``int``.
    low, high : float
        Bounds of the accepted interval (default: none).
    low_open, high_open : bool
        Exclude the bound itself.

    Returns
    -------
    float or int

    Raises
    ------
    OptionError
        Not a real number, not finite, not whole where ``integer``, or out of bounds.

    Examples
    --------
    >>> checked_number(3.0, "memory", integer=True, low=0)
    3
    >>> checked_number(float("nan"), "--lr", low=0, low_open=True)
    Traceback (most recent call last):
    ...
    braggtrack.errors.OptionError: --lr must be a finite number > 0, got nan
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if ok else math.nan
    inside = (
        math.isfinite(number)
        and (not integer or number == round(number))
        and (number > low if low_open else number >= low)
        and (number < high if high_open else number <= high)
    )
    if not inside:
        kind = "an integer" if integer else "a finite number"
        if high == math.inf and low == -math.inf:
            bounds = ""
        elif high == math.inf:
            bounds = f" {'>' if low_open else '>='} {low:g}"
        elif low == -math.inf:
            bounds = f" {'<' if high_open else '<='} {high:g}"
        else:
            bounds = (f" in {'(' if low_open else '['}{low:g}, {high:g}"
                      f"{')' if high_open else ']'}")
        raise OptionError(f"{name} must be {kind}{bounds}, got {value!r}")
    return int(round(number)) if integer else number

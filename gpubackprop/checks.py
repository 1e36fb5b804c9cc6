"""Argument checks shared by every public entry point.

Each helper raises before any work starts, with a message that names the
argument, what was expected and what came.
"""
import difflib
import numbers

import numpy as np


def unknown_choice(argument, given, allowed):
    """A ValueError for an unknown string option, with a 'did you mean'."""
    msg = f"unknown {argument} {given!r}; expected one of {sorted(allowed)}"
    close = difflib.get_close_matches(str(given).lower(), list(allowed), n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return ValueError(msg)


def choice(argument, given, allowed):
    """Check a string option against `allowed`; returns the canonical lowercase name."""
    if not isinstance(given, str):
        raise TypeError(f"{argument} must be a string, one of {sorted(allowed)}; "
                        f"got {type(given).__name__}")
    key = given.lower().replace("-", "_")
    if key not in allowed:
        raise unknown_choice(argument, given, allowed)
    return key


def positive_int(argument, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{argument} must be an integer >= {minimum}; got {value}")
    return int(value)


def real(argument, value, low=None, high=None, low_open=False, high_open=False):
    """A finite real number within [low, high] (ends open where asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument} must be a real number; got {value!r}")
    value = float(value)
    bad = not np.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        rng = _bounds(low, high, low_open, high_open)
        raise ValueError(f"{argument} must be a finite number{rng}; got {value}")
    return value


def _bounds(low, high, low_open, high_open):
    """' > 0', ' >= 0 and < 1', '' (no bounds): the range in words."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return (" " + " and ".join(parts)) if parts else ""


def dtype_name(argument, dtype):
    """float32 or float64, as a canonical string."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{argument} must be 'float32' or 'float64'; got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"{argument} must be 'float32' or 'float64'; got {dt.name!r}")
    return dt.name


def boolean(argument, value, allow_none=False):
    """True or False (numpy bools too); None too where allowed."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        allowed = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"{argument} must be {allowed}; got {value!r}")
    return bool(value)

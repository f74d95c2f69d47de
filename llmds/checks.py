"""Argument checks shared by the structures, so every one rejects bad values the same way."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from llmds.errors import InvalidInputError


def integer_argument(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as a plain int in [minimum, maximum], or an InvalidInputError saying what to pass.

    Booleans are refused (``True`` is an int to Python, never a size); numpy integers are
    accepted and converted.
    """
    if isinstance(value, bool | np.bool_):
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidInputError(
            f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})."
        ) from None
    if number < minimum or (maximum is not None and number > maximum):
        allowed = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise InvalidInputError(f"{name} must be an integer {allowed}, got {number}.")
    return number

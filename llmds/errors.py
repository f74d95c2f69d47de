"""Errors the toolkit reports to users as a clear message instead of a traceback.

Every error raised for bad input derives from :class:`LlmdsError`. The message names the
problem and, where there is one, the fix. The CLI turns these into a one-line message and a
non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LlmdsError(Exception):
    """Base class of errors caused by input, data or environment, not by a bug."""

    exit_code = 2


class InvalidInputError(LlmdsError, ValueError):
    """An argument or an input array is unusable (wrong shape, NaN, out of range, ...)."""


class DatasetError(LlmdsError):
    """A dataset is missing, malformed or fails its checksum."""


class CorruptIndexError(LlmdsError):
    """A saved structure cannot be loaded: missing files, wrong version or checksum mismatch."""


class NotAvailableError(LlmdsError):
    """An optional package needed for this operation is not installed."""

    exit_code = 3

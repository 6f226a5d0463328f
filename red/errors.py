"""Errors raised by the edit library.

Every error says what is wrong *and* how to fix it, because the people who hit
these are usually running a scheduled job and read only the last log line.
"""
from __future__ import annotations


class RedError(Exception):
    """Base class for all redflow edit-library errors."""


class UnknownArchitectureError(RedError):
    """The model's type is not in the architecture table and no explicit targets were given."""


class EditConfigError(RedError, ValueError):
    """An edit configuration that cannot be applied to this model."""


class EditMismatchError(RedError):
    """An edit file was trained on a different base model (shape, type or weights)."""


class EditFileError(RedError):
    """An edit file is unreadable, truncated, tampered with, or of an unknown format."""


class MergeError(RedError):
    """An edit cannot be folded into the base weights (or exported) without losing information."""

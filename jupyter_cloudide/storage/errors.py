"""Exceptions raised by the metadata store; handlers map them to HTTP 404/403/409/500."""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "ForbiddenError",
    "NotFoundError",
    "SchemaTooNewError",
    "StorageError",
]


class StorageError(Exception):
    """Any failure of the metadata store (messages never contain a database password)."""


class NotFoundError(StorageError):
    """The record does not exist, or is not visible to the caller (existence is not leaked)."""


class ForbiddenError(StorageError):
    """The caller may see the record but is not allowed to perform this action on it."""


class ConflictError(StorageError):
    """The record is not in a state that allows the change (already decided, hash mismatch)."""


class SchemaTooNewError(StorageError):
    """The database carries a schema revision this code does not know; it is left untouched."""

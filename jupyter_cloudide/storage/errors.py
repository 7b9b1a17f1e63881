"""Exceptions raised by the metadata store.

They sit in the package's one exception tree (:mod:`jupyter_cloudide.errors`), so the gateway
maps them to 404/403/409/503 without knowing about storage. Messages never contain a
database password.
"""

from __future__ import annotations

from .. import errors

__all__ = [
    "ConflictError",
    "ForbiddenError",
    "NotFoundError",
    "SchemaTooNewError",
    "StorageError",
]


class StorageError(errors.CloudIDEError):
    """Any failure of the metadata store: the database is unreachable or misbehaving."""

    status = 503
    code = "storage_error"


class NotFoundError(StorageError, errors.NotFoundError):
    """The record does not exist, or is not visible to the caller (existence is not leaked)."""

    status = 404
    code = "not_found"


class ForbiddenError(StorageError, errors.ForbiddenError):
    """The caller may see the record but is not allowed to perform this action on it."""

    status = 403
    code = "forbidden"


class ConflictError(StorageError, errors.ConflictError):
    """The record is not in a state that allows the change (already decided, hash mismatch)."""

    status = 409
    code = "conflict"


class SchemaTooNewError(StorageError):
    """The database carries a schema revision this code does not know; it is left untouched."""

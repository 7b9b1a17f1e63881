"""Storage layer: the metadata store (conversations, approvals, usage ledger, API keys).

``MetadataStore`` works on SQLite (default) and PostgreSQL; see :mod:`.db`.
"""

from __future__ import annotations

from .db import (
    API_KEY_PREFIX,
    ApiKeyRecord,
    ApprovalRecord,
    ConversationRecord,
    MessageRecord,
    MetadataStore,
    UsageEventIn,
    UsageEventRecord,
    arguments_hash,
    head_revision,
    normalize_url,
)
from .errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    SchemaTooNewError,
    StorageError,
)

__all__ = [
    "API_KEY_PREFIX",
    "ApiKeyRecord",
    "ApprovalRecord",
    "ConflictError",
    "ConversationRecord",
    "ForbiddenError",
    "MessageRecord",
    "MetadataStore",
    "NotFoundError",
    "SchemaTooNewError",
    "StorageError",
    "UsageEventIn",
    "UsageEventRecord",
    "arguments_hash",
    "head_revision",
    "normalize_url",
]

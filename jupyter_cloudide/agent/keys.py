"""API keys for ``cloudide/v1``, as the REST API and ``jupyter cloudide token`` manage them.

A key is minted once (the plaintext is shown once and never stored: the metadata store keeps
its sha256), belongs to one user, may be scoped to model globs (``gpt-*``), may expire, and may
allow the agent model to auto-approve tool calls that would otherwise ask.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from ..errors import InvalidInputError, NotFoundError

_DURATION = re.compile(r"([0-9]{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: the longest lifetime a key may be given (~10 years)
MAX_LIFETIME = timedelta(days=3660)
MODEL_GLOB = re.compile(r"[A-Za-z0-9*?._:/@+\[\]-]{1,256}")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``3600s`` → a timedelta (400 naming ``expires``)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidInputError("expires: a duration such as 30d, 12h, 90m or 2w",
                                field="expires")
    delta = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if not timedelta(0) < delta <= MAX_LIFETIME:
        raise InvalidInputError("expires: between 1 second and 3660 days", field="expires")
    return delta


def check_models(models: Sequence[str]) -> list[str]:
    out = []
    for i, glob in enumerate(models):
        if not isinstance(glob, str) or not MODEL_GLOB.fullmatch(glob):
            raise InvalidInputError(f"models[{i}]: a model id or glob", field=f"models[{i}]")
        out.append(glob)
    return out


def key_json(record: Any, now: datetime | None = None) -> dict[str, Any]:
    """A key's metadata for clients (never the secret or its hash)."""
    now = now or datetime.now(timezone.utc)
    state = "active"
    if record.revoked_at is not None:
        state = "revoked"
    elif record.expires_at is not None and record.expires_at <= now:
        state = "expired"

    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {"id": record.id, "name": record.name, "prefix": record.prefix,
            "models": list(record.models), "allow_auto_approve": record.allow_auto_approve,
            "state": state, "created_at": iso(record.created_at),
            "expires_at": iso(record.expires_at), "revoked_at": iso(record.revoked_at),
            "last_used_at": iso(record.last_used_at)}


def create(store: Any, user: str, *, name: str = "", models: Sequence[str] = (),
           expires: str | None = None, allow_auto_approve: bool = False
           ) -> tuple[str, dict[str, Any]]:
    """Mint a key (blocking: call it on the store's thread). Returns (plaintext, metadata)."""
    expires_at = None
    if expires:
        expires_at = datetime.now(timezone.utc) + parse_duration(expires)
    plaintext, record = store.create_api_key(user, name, check_models(models), expires_at,
                                             allow_auto_approve)
    return plaintext, key_json(record)


def listing(store: Any, user: str) -> list[dict[str, Any]]:
    now = datetime.now(timezone.utc)
    return [key_json(r, now) for r in store.list_api_keys(user)]


def revoke(store: Any, user: str, key_id: str) -> None:
    """Revoke one of the user's keys; 404 for a missing, foreign or already revoked one."""
    if not store.revoke_api_key(key_id, user):
        raise NotFoundError("no active API key of yours with that id")

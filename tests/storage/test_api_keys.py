"""API keys: plaintext shown once and never stored; verification, revocation, expiry."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from jupyter_cloudide.storage import API_KEY_PREFIX, MetadataStore
from jupyter_cloudide.storage.db import _sha256_hex


def _all_cells(store: MetadataStore) -> list[str]:
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).all()
    return [str(value) for row in rows for value in row]


def test_create_returns_plaintext_once_and_stores_only_the_hash(store: MetadataStore) -> None:
    plaintext, record = store.create_api_key("alice", "laptop", models=["gpt-4o", "claude"])
    assert plaintext.startswith(API_KEY_PREFIX)
    assert len(plaintext) > 40
    assert record.prefix == plaintext[:8]
    assert record.models == ("gpt-4o", "claude")
    assert record.allow_auto_approve is False
    assert record.revoked_at is None and record.last_used_at is None
    assert not hasattr(record, "key_hash")

    cells = _all_cells(store)
    secret_part = plaintext[len(API_KEY_PREFIX) :]
    assert all(plaintext not in cell and secret_part not in cell for cell in cells)
    assert _sha256_hex(plaintext) in cells

    other, _ = store.create_api_key("alice", "second")
    assert other != plaintext


def test_verify_accepts_the_key_and_updates_last_used(store: MetadataStore) -> None:
    plaintext, record = store.create_api_key("alice", "ci", allow_auto_approve=True)
    verified = store.verify_api_key(plaintext)
    assert verified is not None
    assert verified.id == record.id
    assert verified.user == "alice"
    assert verified.allow_auto_approve is True
    assert verified.last_used_at is not None
    listed = {k.id: k for k in store.list_api_keys("alice")}
    assert listed[record.id].last_used_at is not None


def test_wrong_keys_are_rejected(store: MetadataStore) -> None:
    plaintext, _ = store.create_api_key("alice", "k")
    assert store.verify_api_key(plaintext[:-1]) is None
    assert store.verify_api_key(plaintext + "x") is None
    assert store.verify_api_key(_sha256_hex(plaintext)) is None  # the hash is not a key
    assert store.verify_api_key("") is None
    assert store.verify_api_key(API_KEY_PREFIX + "x" * 5000) is None


def test_revoked_keys_are_rejected(store: MetadataStore) -> None:
    plaintext, record = store.create_api_key("alice", "k")
    assert store.revoke_api_key(record.id, "mallory") is False  # not theirs
    assert store.verify_api_key(plaintext) is not None
    assert store.revoke_api_key(record.id, "alice") is True
    assert store.revoke_api_key(record.id, "alice") is False  # already revoked
    assert store.revoke_api_key("no-such-key", "alice") is False
    assert store.verify_api_key(plaintext) is None
    (listed,) = store.list_api_keys("alice")
    assert listed.revoked_at is not None


def test_expired_keys_are_rejected(store: MetadataStore) -> None:
    now = datetime.now(timezone.utc)
    expired, _ = store.create_api_key("alice", "old", expires_at=now - timedelta(seconds=1))
    live, record = store.create_api_key("alice", "new", expires_at=now + timedelta(hours=1))
    assert store.verify_api_key(expired) is None
    verified = store.verify_api_key(live)
    assert verified is not None
    assert verified.expires_at == record.expires_at


def test_list_is_per_user_and_scope_check(store: MetadataStore) -> None:
    _, a = store.create_api_key("alice", "a", models=["gpt-4o"])
    _, b = store.create_api_key("alice", "b")
    store.create_api_key("bob", "c")
    assert [k.id for k in store.list_api_keys("alice")] == [a.id, b.id]
    assert [k.name for k in store.list_api_keys("bob")] == ["c"]
    assert a.allows_model("gpt-4o") and not a.allows_model("claude")
    assert b.allows_model("anything")

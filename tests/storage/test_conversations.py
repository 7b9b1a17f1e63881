"""Conversations and messages: round trips, ordering, ownership, cascade delete."""

from __future__ import annotations

from datetime import timezone

import pytest
from sqlalchemy import text

from jupyter_cloudide.storage import MetadataStore, NotFoundError


def test_conversation_round_trip(store: MetadataStore) -> None:
    conv = store.create_conversation("alice", "First chat", model="gpt-4o")
    assert conv.owner == "alice"
    assert conv.title == "First chat"
    assert conv.model == "gpt-4o"
    assert conv.status == "active"
    assert conv.created_at.tzinfo is not None
    assert conv.created_at.utcoffset() == timezone.utc.utcoffset(None)

    fetched = store.get_conversation(conv.id, "alice")
    assert fetched == conv

    updated = store.update_conversation(conv.id, "alice", title="Renamed", status="archived")
    assert (updated.title, updated.status, updated.model) == ("Renamed", "archived", "gpt-4o")
    assert updated.updated_at >= conv.updated_at


def test_list_conversations_is_per_owner_newest_first(store: MetadataStore) -> None:
    first = store.create_conversation("alice", "one")
    second = store.create_conversation("alice", "two")
    store.create_conversation("bob", "bob's")
    store.add_message(first.id, "alice", "t1", "user", "bump")  # first is now most recent

    listed = store.list_conversations("alice")
    assert [c.id for c in listed] == [first.id, second.id]
    assert [c.id for c in store.list_conversations("alice", limit=1)] == [first.id]
    assert [c.title for c in store.list_conversations("bob")] == ["bob's"]
    assert store.list_conversations("carol") == []


def test_messages_round_trip_in_order(store: MetadataStore) -> None:
    conv = store.create_conversation("alice", "chat")
    contents = [
        "plain text",
        {"text": "structured", "parts": [1, 2, {"x": None}]},
        [{"type": "tool_call", "name": "read_file", "arguments": {"path": "a.py"}}],
    ]
    for i, content in enumerate(contents):
        store.add_message(
            conv.id,
            "alice",
            f"turn-{i}",
            "user" if i % 2 == 0 else "assistant",
            content,
            tokens_in=10 * i,
            tokens_out=None if i == 0 else i,
        )
    messages = store.list_messages(conv.id, "alice")
    assert [m.content for m in messages] == contents
    assert [m.turn_id for m in messages] == ["turn-0", "turn-1", "turn-2"]
    assert [m.role for m in messages] == ["user", "assistant", "user"]
    assert [m.tokens_in for m in messages] == [0, 10, 20]
    assert [m.tokens_out for m in messages] == [None, 1, 2]
    assert all(m.conversation_id == conv.id for m in messages)
    assert all(m.created_at.tzinfo is not None for m in messages)
    assert store.get_conversation(conv.id, "alice").updated_at == messages[-1].created_at


def test_other_users_cannot_see_or_touch_a_conversation(store: MetadataStore) -> None:
    conv = store.create_conversation("alice", "secret")
    store.add_message(conv.id, "alice", "t1", "user", "private")

    with pytest.raises(NotFoundError) as other:
        store.get_conversation(conv.id, "mallory")
    with pytest.raises(NotFoundError) as missing:
        store.get_conversation("00000000-0000-0000-0000-000000000000", "mallory")
    # Same message whether the conversation exists or not: existence is not leaked.
    assert str(other.value) == str(missing.value)

    with pytest.raises(NotFoundError):
        store.list_messages(conv.id, "mallory")
    with pytest.raises(NotFoundError):
        store.add_message(conv.id, "mallory", "t2", "user", "injected")
    with pytest.raises(NotFoundError):
        store.update_conversation(conv.id, "mallory", title="pwned")
    with pytest.raises(NotFoundError):
        store.delete_conversation(conv.id, "mallory")
    with pytest.raises(NotFoundError):
        store.create_approval(conv.id, "mallory", "execute_code", {"code": "1"})

    assert [m.content for m in store.list_messages(conv.id, "alice")] == ["private"]
    assert store.get_conversation(conv.id, "alice").title == "secret"


def test_delete_cascades_to_messages_and_approvals(store: MetadataStore) -> None:
    conv = store.create_conversation("alice", "doomed")
    store.add_message(conv.id, "alice", "t1", "user", "x")
    store.create_approval(conv.id, "alice", "write_file", {"path": "a"})
    keep = store.create_conversation("alice", "kept")
    store.add_message(keep.id, "alice", "t1", "user", "y")

    store.delete_conversation(conv.id, "alice")

    with pytest.raises(NotFoundError):
        store.get_conversation(conv.id, "alice")
    with store.engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM messages WHERE conversation_id = :c"), {"c": conv.id}
            ).scalar_one()
            == 0
        )
        assert (
            conn.execute(
                text("SELECT count(*) FROM approvals WHERE conversation_id = :c"), {"c": conv.id}
            ).scalar_one()
            == 0
        )
    assert len(store.list_messages(keep.id, "alice")) == 1


def test_invalid_input_is_rejected(store: MetadataStore) -> None:
    with pytest.raises(ValueError):
        store.create_conversation("", "no owner")
    conv = store.create_conversation("alice", "x")
    with pytest.raises(ValueError):
        store.add_message(conv.id, "alice", "", "user", "no turn")

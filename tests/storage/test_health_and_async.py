"""Health, password hygiene (health, errors, logs) and the asyncio facade."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import traceback

import pytest

from jupyter_cloudide.storage import (
    ConversationRecord,
    MetadataStore,
    NotFoundError,
    StorageError,
    normalize_url,
)

SECRET = "Sup3r-s3cret-pw"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_health_ok(store: MetadataStore) -> None:
    health = store.health()
    assert health["state"] == "ok"
    assert health["dialect"] in ("sqlite", "postgresql")
    assert health["schema"] == store.schema_version
    password = normalize_url(store.display_url).password
    assert password in (None, "***")


@pytest.mark.postgres
def test_password_never_in_health_repr_or_logs(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    password = normalize_url(postgres_url).password
    assert password
    caplog.set_level(logging.DEBUG)
    with MetadataStore(postgres_url) as store:
        assert password not in repr(store.health())
        assert password not in repr(store)
        assert password not in store.display_url
        store.create_conversation("alice", "x")
    assert password not in caplog.text


def test_unreachable_database_error_hides_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://cloudide:{SECRET}@127.0.0.1:{_closed_port()}/cloudide"
    store = MetadataStore(url)
    try:
        health = store.health()
        assert health["state"] == "error"
        assert SECRET not in repr(health)
        with pytest.raises(StorageError) as info:
            store.open()
        assert SECRET not in str(info.value)
        rendered = "".join(traceback.format_exception(info.value))
        assert SECRET not in rendered
        assert "cloudide" in str(info.value)  # still says which database
    finally:
        store.close()
    assert SECRET not in caplog.text


def test_invalid_url_error_hides_password() -> None:
    with pytest.raises(StorageError) as info:
        MetadataStore(f"postgresql://u:{SECRET}@host:notaport/db")
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_closed_store(db_url: str) -> None:
    store = MetadataStore(db_url).open()
    store.close()
    store.close()  # idempotent
    assert store.health()["state"] == "error"
    with pytest.raises(StorageError):
        store.list_conversations("alice")


async def test_async_facade(store: MetadataStore) -> None:
    conv = await store.call("create_conversation", "alice", "async chat", model="m")
    assert isinstance(conv, ConversationRecord)
    listed = await store.call(store.list_conversations, "alice")
    assert [c.id for c in listed] == [conv.id]

    thread_name = await store.call(lambda: threading.current_thread().name)
    assert thread_name.startswith("cloudide-db")
    assert thread_name != threading.current_thread().name

    with pytest.raises(NotFoundError):
        await store.call("get_conversation", conv.id, "mallory")
    with pytest.raises(AttributeError):
        await store.call("_tx")
    with pytest.raises(AttributeError):
        await store.call("no_such_method")

    # The loop stays responsive while the store works: many calls run concurrently.
    results = await asyncio.gather(
        *(store.call("add_message", conv.id, "alice", f"t{i}", "user", i) for i in range(10))
    )
    assert len({m.id for m in results}) == 10
    assert sorted(m.content for m in await store.call("list_messages", conv.id, "alice")) == list(
        range(10)
    )


async def test_async_facade_after_close(db_url: str) -> None:
    store = MetadataStore(db_url)
    await store.call("open")
    assert store.schema_version is not None
    store.close()
    with pytest.raises(StorageError):
        await store.call("list_conversations", "alice")

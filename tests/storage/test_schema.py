"""Schema management: upgrade to head, no-op re-open, refusal of unknown revisions, pragmas."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from jupyter_cloudide.storage import (
    MetadataStore,
    SchemaTooNewError,
    StorageError,
    head_revision,
    normalize_url,
)
from jupyter_cloudide.storage.db import MIGRATIONS_DIR
from jupyter_cloudide.storage.models import Base

TABLES = {"conversations", "messages", "approvals", "usage_ledger", "usage_daily", "api_keys"}


@contextmanager
def raw_engine(url: str) -> Iterator[Engine]:
    engine = create_engine(normalize_url(url))
    try:
        yield engine
    finally:
        engine.dispose()


def test_migrations_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()
    assert MIGRATIONS_DIR.parent.name == "storage"
    # the head is the newest migration file (each one revises the one before it)
    newest = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))[-1]
    assert head_revision() == newest.split("_", 1)[0]
    assert (MIGRATIONS_DIR / "versions" / "0002_usage_daily.py").is_file()


def test_fresh_database_is_upgraded_to_head(db_url: str) -> None:
    with MetadataStore(db_url) as store:
        assert store.schema_version == head_revision()
        assert store.health()["schema"] == head_revision()
    with raw_engine(db_url) as engine:
        names = set(inspect(engine).get_table_names())
        assert names >= TABLES | {"alembic_version"}
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head_revision()
        ledger = inspect(engine)
        uniques = {tuple(u["column_names"]) for u in ledger.get_unique_constraints("usage_ledger")}
        indexes = {tuple(i["column_names"]) for i in ledger.get_indexes("usage_ledger")}
        assert ("event_id",) in uniques | indexes
        assert ("user", "occurred_at") in indexes
        assert ("conversation_id",) in {
            tuple(i["column_names"]) for i in ledger.get_indexes("messages")
        }


def test_models_match_migrations(store: MetadataStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_reopen_at_head_is_a_noop_that_keeps_data(db_url: str) -> None:
    with MetadataStore(db_url) as store:
        conv = store.create_conversation("alice", "keep me")
        store.add_message(conv.id, "alice", "t1", "user", "hello")
    for _ in range(2):
        with MetadataStore(db_url) as store:
            assert store.schema_version == head_revision()
            assert [c.id for c in store.list_conversations("alice")] == [conv.id]
            assert [m.content for m in store.list_messages(conv.id, "alice")] == ["hello"]


def test_unknown_newer_revision_is_refused_and_left_untouched(db_url: str) -> None:
    with MetadataStore(db_url) as store:
        conv = store.create_conversation("alice", "from the future")
    with raw_engine(db_url) as engine, engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))

    store = MetadataStore(db_url)
    try:
        with pytest.raises(SchemaTooNewError, match="9999_future"):
            store.open()
        assert isinstance(SchemaTooNewError("x"), StorageError)
    finally:
        store.close()

    with raw_engine(db_url) as engine, engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == (
            "9999_future"
        )
        assert conn.execute(text("SELECT id FROM conversations")).scalar_one() == conv.id


def test_sqlite_pragmas_and_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "meta.db"
    with MetadataStore(f"sqlite:///{path}") as store:
        assert path.parent.is_dir()
        assert store.dialect == "sqlite"
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() > 0
    assert path.is_file()


def test_sqlite_in_memory_works() -> None:
    with MetadataStore("sqlite://") as store:
        conv = store.create_conversation("alice", "ephemeral")
        assert store.get_conversation(conv.id, "alice").title == "ephemeral"


def test_postgres_urls_are_rewritten_to_psycopg() -> None:
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_unsupported_dialect_is_refused() -> None:
    with pytest.raises(StorageError, match="unsupported"):
        MetadataStore("mysql://u:p@h/db")


def test_plain_postgresql_scheme_works_unchanged(db_url: str) -> None:
    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    with MetadataStore(url) as store:
        assert store.health()["state"] == "ok"
        assert store.create_conversation("alice", "x").owner == "alice"

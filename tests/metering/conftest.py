"""Fixtures of the metering tests: a metadata store on a real SQLite file or a fresh database
on the suite's PostgreSQL server (tests/services.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_cloudide.storage import MetadataStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    yield request.getfixturevalue("postgres_url")


@pytest.fixture
def ledger_store(ledger_db_url: str) -> Iterator[MetadataStore]:
    """An opened store on that database, closed after the test."""
    store = MetadataStore(ledger_db_url).open()
    try:
        yield store
    finally:
        store.close()

"""Fixtures for the metadata store: a real SQLite file or a fresh database on the suite's
PostgreSQL server (tests/services.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_cloudide.storage import MetadataStore


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file in a new folder, or a fresh PG database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'dir' / 'cloudide.db'}"
        return
    yield request.getfixturevalue("postgres_url")


@pytest.fixture
def store(db_url: str) -> Iterator[MetadataStore]:
    """An opened metadata store on a fresh database, closed after the test."""
    metadata_store = MetadataStore(db_url).open()
    try:
        yield metadata_store
    finally:
        metadata_store.close()

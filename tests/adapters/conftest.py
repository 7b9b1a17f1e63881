"""Shared by the adapter tests: a fresh WebSocket model service per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ws_model_service import WsModelService


@pytest.fixture
def service() -> Iterator[WsModelService]:
    with WsModelService() as running:
        yield running

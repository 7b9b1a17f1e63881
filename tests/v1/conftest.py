"""The /v1 API's tests: a real Jupyter server (pytest-jupyter, awkward base URL) whose only
model provider is the fake upstream, called by real clients over real sockets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from fake_upstream import FakeUpstream, agent_config
from v1_testing import MODELS

# litellm fetches a model cost map from the internet at import unless told not to
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def cloudide_config(upstream: FakeUpstream) -> dict[str, Any]:
    return agent_config(upstream, models=MODELS, discover_models=False,
                        index_embedder="openai", index_embedding_model="fake-embedding",
                        index_embedding_base_url=upstream.openai_base_url,
                        index_embedding_api_key=upstream.api_key, index_enabled=False,
                        warm_pool_size=0)


@pytest.fixture
def v1_url(cloudide: Any, http_server_client: Any, jp_http_port: int, jp_base_url: str) -> str:
    """The API's base URL on a started server (the HTTP server listens once a test asks for
    pytest-jupyter's client)."""
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}cloudide/v1"


@pytest.fixture
def server_token(jp_serverapp: Any) -> str:
    return str(jp_serverapp.identity_provider.token)

"""Shared fixtures: a real Jupyter server (pytest-jupyter) with jupyter_cloudide loaded.

The base URL is deliberately awkward (``/a%40b/``) to flush out URL-joining bugs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytest_jupyter.jupyter_server", "services"]


@pytest.fixture
def jp_base_url() -> str:
    return "/a%40b/"


@pytest.fixture
def cloudide_config() -> dict[str, Any]:
    """Per-test overrides of CloudIDEApp traitlets (override this fixture in a module)."""
    return {}


@pytest.fixture
def server_config() -> dict[str, Any]:
    """Per-test overrides of ServerApp traitlets (e.g. identity_provider_class)."""
    return {}


@pytest.fixture
def jp_server_config(
    tmp_path: Path, cloudide_config: dict[str, Any], server_config: dict[str, Any]
) -> dict[str, Any]:
    return {
        "ServerApp": {
            # terminals fails to load under allow_unauthenticated_access=False; not ours
            "jpserver_extensions": {"jupyter_cloudide": True, "jupyter_server_terminals": False},
            # Every handler must authenticate; jupyter_server enforces it for all routes.
            "allow_unauthenticated_access": False,
            **server_config,
        },
        # No warm pool unless a test asks: each pool kernel is a process to start and stop.
        # No index build at start either (it loads the embedding model); index tests ask.
        "CloudIDEApp": {"data_dir": str(tmp_path / "cloudide-data"), "warm_pool_size": 0,
                        "index_on_start": False, **cloudide_config},
    }


@pytest.fixture
def cloudide(jp_serverapp: Any, jp_asyncio_loop: Any) -> Any:
    """The started extension app (pytest-jupyter does not run the async start hooks).

    Sync on purpose: the server lives on pytest-jupyter's loop, and server tests are plain
    ``async def`` tests that pytest-jupyter runs on that same loop.
    """
    from jupyter_cloudide.app import CloudIDEApp

    manager = jp_serverapp.extension_manager
    app = next(
        point.app
        for ext in manager.extensions.values()
        for point in ext.extension_points.values()
        if isinstance(point.app, CloudIDEApp)
    )

    async def start() -> None:
        await manager.start_extension("jupyter_cloudide")
        if app.db_url:
            with contextlib.suppress(Exception):  # tests of a failing store read health
                await app.metadata_store()

    jp_asyncio_loop.run_until_complete(start())
    return app

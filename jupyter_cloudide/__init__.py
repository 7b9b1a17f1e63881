"""jupyter_cloudide: a cloud AI IDE built out of Jupyter Server and JupyterLab 4.

This module stays import-light on purpose: jupyter_server imports it at start-up to find
the extension points, so nothing heavy (SDKs, LanceDB, SQLAlchemy) may be imported here.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["__version__"]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-cloudide"}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import CloudIDEApp

    return [{"module": "jupyter_cloudide.app", "app": CloudIDEApp}]

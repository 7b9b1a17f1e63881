"""Reading workspace files for the index through the server's ContentsManager.

Going through the ContentsManager (not ``open()``) means the index reads exactly what the user
could open in JupyterLab, with the same root confinement and hidden-file rules, and works for
any ContentsManager that keeps a local root. Its errors (missing, binary refused, permission)
just mean "skip this file" to the indexer.
"""

from __future__ import annotations

from typing import Any

from jupyter_core.utils import ensure_async

from .indexer import Content, Reader


def contents_reader(contents_manager: Any) -> Reader:
    """An ``async read(path)`` for the indexer: text, a notebook dict, or None."""

    async def read(path: str) -> Content:
        if path.endswith(".ipynb"):
            model = await ensure_async(
                contents_manager.get(path, content=True, type="notebook"))
            notebook = model.get("content")
            return dict(notebook) if isinstance(notebook, dict) else None
        model = await ensure_async(
            contents_manager.get(path, content=True, type="file", format="text"))
        text = model.get("content")
        return text if isinstance(text, str) else None

    return read

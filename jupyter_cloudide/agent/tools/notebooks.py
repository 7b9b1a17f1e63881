"""Notebook tools: read a notebook as cells, and edit, insert or delete cells by id.

Cells are addressed by their nbformat id (stable across inserts and deletes, unlike an index).
Notebooks older than nbformat 4.5 have no ids; their cells are shown as ``index-N`` and may be
addressed that way, and the first insert upgrades the notebook to 4.5 with real ids (it has to:
a 4.4 notebook cannot hold the new cell's id).

Checkpoints: ``edit_cell`` keeps the cell's previous source (``kind="cell"``); ``insert_cell``
and ``delete_cell`` change the notebook's structure, so they keep the whole previous notebook
JSON (``kind="file"``, None when insert_cell created the notebook) - restoring it is an exact
undo.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import nbformat

from .base import Tool, ToolContext, ToolError, ToolKind, ToolResult
from .contents import checkpoint, cm_get, cm_save, ensure_parent_dirs, stat, unified_diff
from .outputs import joined, reduce_outputs
from .paths import confine_for

__all__ = ["DeleteCellTool", "EditCellTool", "InsertCellTool", "ReadNotebookTool"]

NOTEBOOK_PATH = {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": r"\.ipynb$",
                 "description": "Notebook path relative to the workspace root (ends with "
                                ".ipynb)."}
CELL_ID = {"type": "string", "minLength": 1, "maxLength": 128,
           "description": "The cell's id, as read_notebook shows it."}
_SOURCE = {"type": "string", "maxLength": 1_000_000}
_OUTPUT_CHARS = 1500
_PSEUDO_ID = "index-"
#: nbformat is untyped; one Any-typed handle keeps mypy strict everywhere else
_nbformat: Any = nbformat


def new_cell_id() -> str:
    """A fresh cell id in nbformat's own style (8 hex characters)."""
    return uuid.uuid4().hex[:8]


def _notebook_path(ctx: ToolContext, path: str) -> str:
    api = confine_for(ctx, path)
    if not api.endswith(".ipynb"):
        raise ToolError(f"{api!r} is not a notebook (.ipynb); use read_file / edit_file")
    return api


async def load_notebook(ctx: ToolContext, path: str) -> Any:
    """The notebook at ``path`` (nbformat v4 NotebookNode) or ToolError."""
    model = await stat(ctx, path)
    if model is None:
        raise ToolError(f"notebook {path!r} does not exist")
    if model.get("type") != "notebook":
        raise ToolError(f"{path!r} is not a notebook")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbformat validation warnings are the user's business
        full = await cm_get(ctx, path, content=True, type="notebook")
    notebook = full.get("content")
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise ToolError(f"{path!r} is not a readable notebook")
    return notebook


async def save_notebook(ctx: ToolContext, path: str, notebook: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await cm_save(ctx, {"type": "notebook", "content": notebook}, path)


def cell_id_of(cell: Any, index: int) -> str:
    """The id shown to the model: the nbformat id, or ``index-N`` for pre-4.5 notebooks."""
    raw = cell.get("id") if isinstance(cell, dict) else None
    return raw if isinstance(raw, str) and raw else f"{_PSEUDO_ID}{index}"


def find_cell(notebook: Any, cell_id: str, path: str) -> tuple[int, Any]:
    """The index and cell with ``cell_id``, or ToolError listing a few valid ids."""
    cells = notebook["cells"]
    for index, cell in enumerate(cells):
        if cell_id_of(cell, index) == cell_id:
            return index, cell
    known = ", ".join(cell_id_of(c, i) for i, c in enumerate(cells[:20]))
    more = ", ..." if len(cells) > 20 else ""
    raise ToolError(f"no cell with id {cell_id[:128]!r} in {path!r}; call read_notebook for "
                    f"the current ids (first ones: {known or 'the notebook is empty'}{more})")


async def raw_notebook(ctx: ToolContext, path: str) -> str:
    """The notebook file's exact text, for an undo that restores it byte for byte."""
    model = await cm_get(ctx, path, content=True, type="file", format="text")
    content = model.get("content")
    if not isinstance(content, str):
        raise ToolError(f"{path!r} cannot be read as text")
    return content


class ReadNotebookTool(Tool):
    name = "read_notebook"
    description = (
        "Read a Jupyter notebook: every cell with its id, index, type and source, and the "
        "outputs of code cells in short form (text heads, DataFrame columns, errors; images "
        "as placeholders). Use the ids with edit_cell, insert_cell, delete_cell and run_cell.")
    kind = ToolKind.READ
    parameters = {
        "type": "object",
        "properties": {"path": NOTEBOOK_PATH},
        "required": ["path"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        path = _notebook_path(ctx, args["path"])
        notebook = await load_notebook(ctx, path)
        cells = notebook["cells"]
        metadata = notebook.get("metadata") or {}
        kernelspec = metadata.get("kernelspec") if isinstance(metadata, dict) else None
        kernel = kernelspec.get("name") if isinstance(kernelspec, dict) else None
        lines = [f"# {path}: {len(cells)} cells" + (f", kernel {kernel}" if kernel else "")]
        summary: list[dict[str, Any]] = []
        for index, cell in enumerate(cells):
            if not isinstance(cell, dict):
                continue
            cell_id = cell_id_of(cell, index)
            cell_type = str(cell.get("cell_type", "?"))
            header = f"\n## cell {index} id={cell_id} type={cell_type}"
            count = cell.get("execution_count")
            if cell_type == "code" and count is not None:
                header += f" execution_count={count}"
            lines.append(header)
            source = joined(cell.get("source"))
            lines.append(source if source.strip() else "(empty)")
            if cell_type == "code":
                outputs = cell.get("outputs")
                text = reduce_outputs(outputs if isinstance(outputs, list) else [],
                                      max_chars=_OUTPUT_CHARS)
                if text.strip():
                    lines.append("### outputs")
                    lines.append(text)
            summary.append({"id": cell_id, "index": index, "cell_type": cell_type})
        return ToolResult(ok=True, content="\n".join(lines),
                          data={"path": path, "cells": summary})


class EditCellTool(Tool):
    name = "edit_cell"
    description = "Replace the whole source of one notebook cell, found by its id."
    kind = ToolKind.WRITE
    parameters = {
        "type": "object",
        "properties": {
            "path": NOTEBOOK_PATH,
            "cell_id": CELL_ID,
            "source": {**_SOURCE, "description": "The complete new source of the cell."},
        },
        "required": ["path", "cell_id", "source"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        path = _notebook_path(ctx, args["path"])
        notebook = await load_notebook(ctx, path)
        cell_id: str = args["cell_id"]
        index, cell = find_cell(notebook, cell_id, path)
        previous = joined(cell.get("source"))
        source: str = args["source"]
        if previous == source:
            return ToolResult(ok=True, content=f"cell {cell_id} already has this source; "
                              "nothing written.", data={"path": path, "cell_id": cell_id})
        cell["source"] = source
        await save_notebook(ctx, path, notebook)
        diff = unified_diff(path, previous, source, label=f"{path}#{cell_id}")
        checkpoints, note = checkpoint(path, previous, kind="cell", cell_id=cell_id)
        content = f"Edited cell {cell_id} (index {index}) of {path!r}."
        if cell.get("cell_type") == "code" and cell.get("outputs"):
            content += " Its outputs are from the old source until it is run again."
        data: dict[str, Any] = {"path": path, "cell_id": cell_id, "index": index}
        if diff is not None:
            data["diff"] = diff
        if note:
            content += f" Note: {note}."
            data["checkpoint_note"] = note
        return ToolResult(ok=True, content=content, data=data, checkpoints=checkpoints)


def _upgrade_for_ids(notebook: Any) -> bool:
    """Give a pre-4.5 notebook real cell ids (needed before a new cell with an id fits)."""
    if notebook.get("nbformat") == 4 and int(notebook.get("nbformat_minor", 0)) >= 5:
        return False
    used: set[str] = set()
    for cell in notebook["cells"]:
        new_id = new_cell_id()
        while new_id in used:
            new_id = new_cell_id()
        used.add(new_id)
        if isinstance(cell, dict):
            cell["id"] = new_id
    notebook["nbformat"], notebook["nbformat_minor"] = 4, 5
    return True


class InsertCellTool(Tool):
    name = "insert_cell"
    description = (
        "Insert a new code or markdown cell into a notebook, after the cell with id "
        "after_cell_id (omit it to insert at the top). Creates the notebook if it does not "
        "exist. Returns the new cell's id.")
    kind = ToolKind.WRITE
    parameters = {
        "type": "object",
        "properties": {
            "path": NOTEBOOK_PATH,
            # null is accepted too: models often send it for "none"
            "after_cell_id": {**CELL_ID, "type": ["string", "null"],
                              "description": "Insert after this cell; omit (or null) to "
                                             "insert at the top."},
            "cell_type": {"type": "string", "enum": ["code", "markdown"]},
            "source": {**_SOURCE, "description": "The new cell's source."},
        },
        "required": ["path", "cell_type", "source"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        path = _notebook_path(ctx, args["path"])
        after = args.get("after_cell_id")
        source: str = args["source"]
        new_cell = (_nbformat.v4.new_code_cell(source) if args["cell_type"] == "code"
                    else _nbformat.v4.new_markdown_cell(source))
        created = await stat(ctx, path) is None
        if created:
            if after is not None:
                raise ToolError(f"notebook {path!r} does not exist; omit after_cell_id to "
                                "create it with this cell")
            notebook: Any = _nbformat.v4.new_notebook(cells=[new_cell])
            previous: str | None = None
            index = 0
            upgraded = False
            await ensure_parent_dirs(ctx, path)
        else:
            notebook = await load_notebook(ctx, path)
            previous = await raw_notebook(ctx, path)
            index = 0 if after is None else find_cell(notebook, after, path)[0] + 1
            upgraded = _upgrade_for_ids(notebook)
            existing = {c.get("id") for c in notebook["cells"] if isinstance(c, dict)}
            while new_cell["id"] in existing:
                new_cell["id"] = new_cell_id()
            notebook["cells"].insert(index, new_cell)
        await save_notebook(ctx, path, notebook)
        cell_id = str(new_cell["id"])
        checkpoints, note = checkpoint(path, previous)
        content = (f"{'Created' if created else 'Updated'} {path!r}: inserted a "
                   f"{args['cell_type']} cell with id {cell_id} at index {index}.")
        if upgraded:
            content += (" The notebook was upgraded to nbformat 4.5, so every cell got a new "
                        "id; call read_notebook before addressing other cells.")
        data: dict[str, Any] = {"path": path, "cell_id": cell_id, "index": index,
                                "created": created,
                                "diff": unified_diff(path, "", source,
                                                     label=f"{path}#{cell_id}") or ""}
        if note:
            content += f" Note: {note}."
            data["checkpoint_note"] = note
        return ToolResult(ok=True, content=content, data=data, checkpoints=checkpoints)


class DeleteCellTool(Tool):
    name = "delete_cell"
    description = "Delete one notebook cell, found by its id."
    kind = ToolKind.WRITE
    parameters = {
        "type": "object",
        "properties": {"path": NOTEBOOK_PATH, "cell_id": CELL_ID},
        "required": ["path", "cell_id"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        path = _notebook_path(ctx, args["path"])
        notebook = await load_notebook(ctx, path)
        cell_id: str = args["cell_id"]
        index, cell = find_cell(notebook, cell_id, path)
        previous = await raw_notebook(ctx, path)
        del notebook["cells"][index]
        await save_notebook(ctx, path, notebook)
        checkpoints, note = checkpoint(path, previous)
        source = joined(cell.get("source"))
        content = (f"Deleted {cell.get('cell_type', 'the')} cell {cell_id} (index {index}) "
                   f"from {path!r}.")
        data: dict[str, Any] = {
            "path": path, "cell_id": cell_id, "index": index,
            "diff": unified_diff(path, source, "", label=f"{path}#{cell_id}") or "",
        }
        if note:
            content += f" Note: {note}."
            data["checkpoint_note"] = note
        return ToolResult(ok=True, content=content, data=data, checkpoints=checkpoints)

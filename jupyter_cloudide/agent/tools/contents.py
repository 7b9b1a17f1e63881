"""ContentsManager access for the tools: errors mapped to messages, checkpoints, diffs.

Files are read and written through jupyter_server's ContentsManager, never ``open()``: the
agent then sees and changes exactly what the user sees in JupyterLab, with the same root,
hidden-file rules, save hooks and checkpoints, and the code works for ContentsManagers that
do not keep files on a local disk. Paths reaching here have been through
:func:`~.paths.confine`.

The ContentsManager raises tornado's ``HTTPError``; we read its ``status_code`` rather than
import tornado, and never pass its message on (it can contain the absolute server path).
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Literal

from jupyter_core.utils import ensure_async

from .base import Checkpoint, ToolContext, ToolError

log = logging.getLogger(__name__)

#: previous content above this is not kept for undo (the result says so)
MAX_CHECKPOINT_BYTES = 1024 * 1024
#: files above this are not read whole into the server for the agent
MAX_READ_BYTES = 10 * 1024 * 1024
#: diffs are computed only below these sizes (difflib is superlinear on big, changed files)
MAX_DIFF_CHARS = 2 * 1024 * 1024
MAX_DIFF_LINES = 20_000


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def cm_error(exc: Exception, action: str, path: str) -> ToolError:
    """A ContentsManager failure as a message for the model (the original goes to the log)."""
    status = _status(exc)
    log.debug("contents manager %s %r failed: %r", action, path, exc)
    if status == 404:
        return ToolError(f"{path!r} does not exist")
    if status == 403:
        return ToolError(f"permission denied: cannot {action} {path!r}")
    if status == 400:
        return ToolError(f"cannot {action} {path!r}: the server refused it (wrong type, "
                         "not UTF-8 text, or a hidden path)")
    return ToolError(f"cannot {action} {path!r}")


async def cm_get(ctx: ToolContext, path: str, **kwargs: Any) -> dict[str, Any]:
    """``contents_manager.get`` with errors mapped."""
    try:
        model: dict[str, Any] = await ensure_async(ctx.contents_manager.get(path, **kwargs))
    except ToolError:
        raise
    except Exception as exc:
        raise cm_error(exc, "read", path) from None
    return model


async def cm_save(ctx: ToolContext, model: dict[str, Any], path: str) -> dict[str, Any]:
    """``contents_manager.save`` with errors mapped."""
    try:
        saved: dict[str, Any] = await ensure_async(ctx.contents_manager.save(model, path))
    except Exception as exc:
        raise cm_error(exc, "save", path) from None
    return saved


async def exists(ctx: ToolContext, path: str) -> str | None:
    """``"file"``, ``"directory"`` or None; a path the manager cannot stat counts as missing."""
    cm = ctx.contents_manager
    try:
        if await ensure_async(cm.file_exists(path)):
            return "file"
        if await ensure_async(cm.dir_exists(path)):
            return "directory"
    except Exception as exc:
        log.debug("contents manager exists %r failed: %r", path, exc)
    return None


async def ensure_parent_dirs(ctx: ToolContext, path: str) -> None:
    """Create the missing folders above ``path`` (the ContentsManager does not on save)."""
    parts = path.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        folder = "/".join(parts[:depth])
        kind = await exists(ctx, folder)
        if kind == "directory":
            continue
        if kind == "file":
            raise ToolError(f"cannot create {path!r}: {folder!r} is a file")
        await cm_save(ctx, {"type": "directory"}, folder)


async def stat(ctx: ToolContext, path: str) -> dict[str, Any] | None:
    """The model without content (type, size), or None when the path does not exist."""
    try:
        model: dict[str, Any] = await ensure_async(ctx.contents_manager.get(path, content=False))
    except Exception as exc:
        if _status(exc) == 404:
            return None
        raise cm_error(exc, "read", path) from None
    return model


async def read_text(ctx: ToolContext, path: str, *, missing_ok: bool = False) -> str | None:
    """A text file's content; None when it does not exist and ``missing_ok``.

    Notebooks, folders, binary and oversized files are refused with a message that says
    which tool to use instead.
    """
    model = await stat(ctx, path)
    if model is None:
        if missing_ok:
            return None
        raise ToolError(f"{path!r} does not exist")
    kind = model.get("type")
    if kind == "directory":
        raise ToolError(f"{path!r} is a folder; use list_files")
    if kind == "notebook":
        raise ToolError(f"{path!r} is a notebook; use read_notebook and the cell tools")
    size = model.get("size")
    if isinstance(size, int) and size > MAX_READ_BYTES:
        raise ToolError(f"{path!r} is {size} bytes, above the {MAX_READ_BYTES}-byte limit "
                        "for agent file access")
    try:
        full: dict[str, Any] = await ensure_async(
            ctx.contents_manager.get(path, content=True, type="file", format="text"))
    except Exception as exc:
        if _status(exc) == 400:
            raise ToolError(f"{path!r} is not a UTF-8 text file (binary?); it cannot be read "
                            "or edited as text") from None
        raise cm_error(exc, "read", path) from None
    content = full.get("content")
    if not isinstance(content, str):
        raise ToolError(f"{path!r} is not a text file")
    return content


def checkpoint(path: str, previous: str | None, *, kind: Literal["file", "cell"] = "file",
               cell_id: str | None = None) -> tuple[list[Checkpoint], str | None]:
    """The checkpoint list for a write, and a note when the previous content was too large
    to keep (the write still happens; the user is told that undo is not available)."""
    if previous is not None and len(previous.encode("utf-8", "surrogatepass")) \
            > MAX_CHECKPOINT_BYTES:
        return [], (f"no undo checkpoint kept: the previous content is over "
                    f"{MAX_CHECKPOINT_BYTES} bytes")
    return [Checkpoint(path=path, kind=kind, previous=previous, cell_id=cell_id)], None


def unified_diff(path: str, old: str | None, new: str | None, *,
                 label: str | None = None) -> str | None:
    """A unified diff of a change, or None when the texts are too large to diff cheaply."""
    old_text, new_text = old or "", new or ""
    if len(old_text) + len(new_text) > MAX_DIFF_CHARS:
        return None
    old_lines = old_text.splitlines(keepends=True)
    new_lines = new_text.splitlines(keepends=True)
    if len(old_lines) + len(new_lines) > MAX_DIFF_LINES:
        return None
    name = label or path
    diff = difflib.unified_diff(
        old_lines, new_lines,
        fromfile="/dev/null" if old is None else f"a/{name}",
        tofile="/dev/null" if new is None else f"b/{name}",
    )
    # A last line without "\n" would run into the next hunk header.
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in diff)


def diff_stats(diff: str | None) -> tuple[int, int]:
    """Lines added and removed according to a unified diff."""
    if not diff:
        return 0, 0
    added = removed = 0
    in_hunk = False
    for line in diff.splitlines():
        if line.startswith("@@"):
            in_hunk = True
        elif in_hunk and line.startswith("+"):
            added += 1
        elif in_hunk and line.startswith("-"):
            removed += 1
    return added, removed

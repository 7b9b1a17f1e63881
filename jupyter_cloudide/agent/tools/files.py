"""File tools: list, read, write and edit files through the ContentsManager.

Every path goes through :func:`~.paths.confine_for` first. Writes return the previous content
as a checkpoint (for undo) and a unified diff (for the UI); edits are exact string
replacements, which the model gets right far more often than line numbers or patches.
"""

from __future__ import annotations

import re
import warnings
from collections import deque
from typing import Any

import nbformat

from .base import Tool, ToolContext, ToolError, ToolKind, ToolResult
from .contents import (
    MAX_READ_BYTES,
    checkpoint,
    cm_get,
    cm_save,
    diff_stats,
    ensure_parent_dirs,
    read_text,
    stat,
    unified_diff,
)
from .notebooks import new_cell_id
from .paths import confine_for, is_listable, local_root, real_path

__all__ = ["EditFileTool", "ListFilesTool", "ReadFileTool", "WriteFileTool"]

_PATH = {"type": "string", "minLength": 1, "maxLength": 4096,
         "description": "Path relative to the workspace root, '/'-separated."}
_MAX_WRITE_CHARS = 5_000_000
_MAX_LINE_CHARS = 2000
_MAX_DEPTH = 20
_NEWLINE = re.compile(r"\r\n|\r|\n")
_nbformat: Any = nbformat  # untyped library


def _split_lines(text: str) -> list[str]:
    """Lines as editors number them (``str.splitlines`` also breaks on form feeds)."""
    if not text:
        return []
    lines = _NEWLINE.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


class ListFilesTool(Tool):
    name = "list_files"
    description = (
        "List files and folders in the workspace. Returns one entry per line: folders end "
        "with '/', files show their size. Hidden files and secret files (.env, keys) are "
        "never listed.")
    kind = ToolKind.READ
    parameters = {
        "type": "object",
        "properties": {
            "path": {**_PATH, "minLength": 0,
                     "description": "Folder relative to the workspace root ('' or omitted: "
                                    "the root)."},
            "recursive": {"type": "boolean",
                          "description": "Also list the contents of sub-folders."},
            "max_entries": {"type": "integer", "minimum": 1, "maximum": 2000,
                            "description": "Stop after this many entries (default 200)."},
        },
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        folder = confine_for(ctx, args.get("path", ""), allow_root=True)
        limit = int(args.get("max_entries", 200))
        recursive = bool(args.get("recursive", False))
        model = await stat(ctx, folder)
        if model is None:
            raise ToolError(f"folder {folder or '.'!r} does not exist")
        if model.get("type") != "directory":
            raise ToolError(f"{folder!r} is a file, not a folder; use read_file or "
                            "read_notebook")
        root = local_root(ctx.contents_manager)
        seen: set[str] = set()
        entries: list[dict[str, Any]] = []
        hidden = 0
        truncated = False
        queue: deque[tuple[str, int]] = deque([(folder, 0)])
        while queue and not truncated:
            current, depth = queue.popleft()
            real = real_path(root, current) if root is not None else current
            if real in seen:  # a folder symlink back up the tree
                continue
            seen.add(real)
            listing = await cm_get(ctx, current, content=True, type="directory")
            children = sorted(listing.get("content") or [], key=lambda m: str(m.get("name")))
            for child in children:
                path = str(child.get("path", "")).strip("/")
                if not is_listable(ctx, path):
                    hidden += 1
                    continue
                if len(entries) >= limit:
                    truncated = True
                    break
                kind = str(child.get("type", "file"))
                entries.append({"path": path, "type": kind, "size": child.get("size")})
                if recursive and kind == "directory" and depth + 1 < _MAX_DEPTH:
                    queue.append((path, depth + 1))
        lines = [f"Contents of {folder or '.'!r} ({_plural(len(entries), 'entry')}"
                 f"{', recursive' if recursive else ''}):"]
        for entry in entries:
            if entry["type"] == "directory":
                lines.append(f"{entry['path']}/")
            elif isinstance(entry["size"], int):
                extra = "notebook, " if entry["type"] == "notebook" else ""
                lines.append(f"{entry['path']}  ({extra}{entry['size']} bytes)")
            else:
                lines.append(entry["path"])
        if not entries:
            lines.append("(empty)")
        if hidden:
            lines.append(f"[{_plural(hidden, 'hidden or protected entry')} not shown]")
        if truncated:
            lines.append(f"[listing stopped at max_entries={limit}; list a sub-folder or "
                         "raise max_entries]")
        return ToolResult(ok=True, content="\n".join(lines),
                          data={"path": folder, "entries": entries, "truncated": truncated})


class ReadFileTool(Tool):
    name = "read_file"
    description = (
        "Read a text file. Returns numbered lines ('  12\\tcode'); use start_line/end_line "
        "for a range of a long file. For notebooks use read_notebook.")
    kind = ToolKind.READ
    parameters = {
        "type": "object",
        "properties": {
            "path": _PATH,
            "start_line": {"type": "integer", "minimum": 1,
                           "description": "First line to return (1-based, default 1)."},
            "end_line": {"type": "integer", "minimum": 1,
                         "description": "Last line to return (inclusive, default: the end)."},
        },
        "required": ["path"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        path = confine_for(ctx, args["path"])
        if path.endswith(".ipynb"):
            raise ToolError(f"{path!r} is a notebook; use read_notebook")
        text = await read_text(ctx, path)
        assert text is not None
        lines = _split_lines(text)
        total = len(lines)
        start = int(args.get("start_line", 1))
        end = min(int(args.get("end_line", total)), total)
        if total == 0:
            return ToolResult(ok=True, content=f"{path!r} is empty.",
                              data={"path": path, "total_lines": 0})
        if start > total:
            raise ToolError(f"start_line {start} is past the end of {path!r} "
                            f"({_plural(total, 'line')})")
        if end < start:
            raise ToolError(f"end_line {end} is before start_line {start}")
        # Stop at the budget ourselves, so the model learns where to continue rather than
        # getting a head and a tail with a hole in the middle.
        budget = max(ctx.result_budget_chars - 300, 1000)
        out: list[str] = []
        used = 0
        last = start - 1
        for number in range(start, end + 1):
            line = lines[number - 1]
            if len(line) > _MAX_LINE_CHARS:
                line = line[:_MAX_LINE_CHARS] + f" [... line cut at {_MAX_LINE_CHARS} chars]"
            rendered = f"{number:>6}\t{line}"
            if out and used + len(rendered) + 1 > budget:
                break
            out.append(rendered)
            used += len(rendered) + 1
            last = number
        header = f"{path} (lines {start}-{last} of {total})"
        body = "\n".join([header, *out])
        if last < end:
            body += (f"\n[stopped at line {last} to fit the result budget; call read_file "
                     f"with start_line={last + 1} to continue]")
        return ToolResult(ok=True, content=body,
                          data={"path": path, "start_line": start, "end_line": last,
                                "total_lines": total})


def _notebook_from_text(content: str) -> Any:
    """The notebook a write_file content describes, or ToolError (never a half-valid file)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbformat warns on missing ids; we add them
            notebook = _nbformat.reads(content, as_version=4)
            if notebook.get("nbformat_minor", 0) >= 5:
                for cell in notebook.cells:
                    if not cell.get("id"):
                        cell["id"] = new_cell_id()
            _nbformat.validate(notebook)
    except Exception as exc:
        message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ToolError(f"content is not a valid nbformat 4 notebook: {message}. Write "
                        "notebooks with insert_cell/edit_cell instead") from None
    return notebook


class WriteFileTool(Tool):
    name = "write_file"
    description = (
        "Create a file or overwrite it with the given content (missing folders are created). "
        "Prefer edit_file for changes to an existing file. For a .ipynb path the content must "
        "be a complete nbformat 4 notebook JSON.")
    kind = ToolKind.WRITE
    parameters = {
        "type": "object",
        "properties": {
            "path": _PATH,
            "content": {"type": "string", "maxLength": _MAX_WRITE_CHARS,
                        "description": "The complete new content of the file."},
        },
        "required": ["path", "content"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        path = confine_for(ctx, args["path"])
        content: str = args["content"]
        notebook = _notebook_from_text(content) if path.endswith(".ipynb") else None
        existing = await stat(ctx, path)
        if existing is not None and existing.get("type") == "directory":
            raise ToolError(f"{path!r} is a folder")
        previous: str | None = None
        if existing is not None:
            previous = await _raw_text(ctx, path)
            if previous == content:
                return ToolResult(ok=True, content=f"{path!r} already has this content; "
                                  "nothing written.", data={"path": path, "diff": ""})
        else:
            await ensure_parent_dirs(ctx, path)
        if notebook is not None:
            await cm_save(ctx, {"type": "notebook", "content": notebook}, path)
        else:
            await cm_save(ctx, {"type": "file", "format": "text", "content": content}, path)
        return _write_result(path, previous, content, created=existing is None)


async def _raw_text(ctx: ToolContext, path: str) -> str:
    """The exact current text of a file (notebooks as their JSON), for checkpoints."""
    model = await stat(ctx, path)
    size = model.get("size") if model else None
    if isinstance(size, int) and size > MAX_READ_BYTES:
        raise ToolError(f"{path!r} is {size} bytes, above the {MAX_READ_BYTES}-byte limit "
                        "for agent file access")
    if model is not None and model.get("type") == "notebook":
        raw = await cm_get(ctx, path, content=True, type="file", format="text")
        content = raw.get("content")
        if isinstance(content, str):
            return content
        raise ToolError(f"{path!r} cannot be read as text")
    text = await read_text(ctx, path)
    assert text is not None
    return text


def _write_result(path: str, previous: str | None, new: str, *, created: bool,
                  verb: str | None = None) -> ToolResult:
    diff = unified_diff(path, previous, new)
    checkpoints, note = checkpoint(path, previous)
    added, removed = diff_stats(diff)
    if created:
        summary = f"Created {path!r} ({_plural(len(_split_lines(new)), 'line')})."
    else:
        summary = f"{verb or 'Updated'} {path!r}: +{added} -{removed} lines."
    data: dict[str, Any] = {"path": path, "created": created}
    if diff is None:
        summary += " (The change is too large to show as a diff.)"
        data["diff_omitted"] = True
    else:
        data["diff"] = diff
    if note:
        summary += f" Note: {note}."
        data["checkpoint_note"] = note
    return ToolResult(ok=True, content=summary, data=data, checkpoints=checkpoints)


class EditFileTool(Tool):
    name = "edit_file"
    description = (
        "Replace an exact string in a text file. old_string must match the file exactly "
        "(whitespace and indentation included) and exactly expected_replacements times "
        "(default 1); include enough surrounding lines to make it unique. For notebooks use "
        "edit_cell.")
    kind = ToolKind.WRITE
    parameters = {
        "type": "object",
        "properties": {
            "path": _PATH,
            "old_string": {"type": "string", "minLength": 1, "maxLength": _MAX_WRITE_CHARS,
                           "description": "The exact text to replace."},
            "new_string": {"type": "string", "maxLength": _MAX_WRITE_CHARS,
                           "description": "The text to put in its place."},
            "expected_replacements": {"type": "integer", "minimum": 1, "maximum": 10_000,
                                      "description": "How many occurrences to replace "
                                                     "(default 1)."},
        },
        "required": ["path", "old_string", "new_string"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        path = confine_for(ctx, args["path"])
        if path.endswith(".ipynb"):
            raise ToolError(f"{path!r} is a notebook; use edit_cell, insert_cell or "
                            "delete_cell")
        old: str = args["old_string"]
        new: str = args["new_string"]
        expected = int(args.get("expected_replacements", 1))
        if old == new:
            raise ToolError("old_string and new_string are identical; nothing to change")
        text = await read_text(ctx, path)
        assert text is not None
        count = text.count(old)
        if count == 0 and "\r\n" in text and "\r\n" not in old and "\n" in old:
            # The file has Windows line endings; the model writes "\n".
            old, new = old.replace("\n", "\r\n"), new.replace("\n", "\r\n")
            count = text.count(old)
        if count == 0:
            raise ToolError(f"old_string not found in {path!r}; read the file again and copy "
                            "the exact text, including whitespace and indentation")
        if count > expected:
            raise ToolError(f"old_string matches {count} times in {path!r}; give more context "
                            "so it matches exactly where you mean (or set "
                            f"expected_replacements to {count} to replace every one)")
        if count < expected:
            raise ToolError(f"old_string matches {count} times in {path!r}, not the "
                            f"expected {expected}")
        updated = text.replace(old, new)
        if text.strip() and not updated.strip():
            raise ToolError(f"this edit would leave {path!r} empty; refusing (use write_file "
                            "if the file really should be emptied)")
        await cm_save(ctx, {"type": "file", "format": "text", "content": updated}, path)
        return _write_result(path, text, updated, created=False, verb="Edited")

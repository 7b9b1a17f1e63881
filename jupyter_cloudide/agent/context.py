"""What goes into a turn's prompt besides the conversation: the user's attached context (the
active notebook, cell, selection, a file) and workspace chunks retrieved for the message.

The client says *what* is attached; the server reads it. A ``chat.send`` context item is
``{kind, path?, cell_id?, start_line?, end_line?, title?, text?}``:

* ``selection`` - ``text`` is what the user selected (``path`` says where, if anywhere);
* ``cell`` - a notebook cell by ``path`` + ``cell_id``: its source and short outputs (an
  error's traceback included: "fix this" needs it);
* ``notebook`` - the whole notebook at ``path``, compactly; with ``cell_id``, the cells nearest
  that (active) cell come first when it has to be cut;
* ``file`` - a text file at ``path``, optionally lines ``start_line``-``end_line``;
* anything with ``text`` and no known kind - plain text the client attached.

When an item carries ``text`` the client's text wins: it is what the user sees, unsaved edits
included. Otherwise the server reads the saved file through the ContentsManager, confined like
every tool path - so a context item can never read what ``read_file`` could not. An item that
cannot be read (missing, refused) is reported, not fatal.

Retrieval searches the user's own semantic index with the message text and adds the best
chunks that the attached items do not already cover. It is best-effort and bounded in time:
an index still building or switched off only means no retrieved chunks.

Every block is redacted like a tool result (the server token, provider keys, credential
shapes): a key in a notebook's output or a selected line never reaches the model.

Blocks are ranked (selection, cell, file, notebook, then retrieved by relevance); the prompt
engine (:func:`.prompt.fit`) decides per model call how many fit in the window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .providers.base import within
from .tools.base import ToolContext, ToolError
from .tools.contents import read_text
from .tools.notebooks import cell_id_of, find_cell, load_notebook
from .tools.outputs import joined, reduce_outputs
from .tools.paths import confine_for, is_listable
from .tools.redact import redactor

log = logging.getLogger(__name__)

__all__ = ["ContextBlock", "gather"]

#: priority of each kind: lower goes into the prompt first
PRIORITY = {"selection": 0, "cell": 1, "text": 1, "file": 2, "notebook": 3, "retrieved": 4}
#: characters read for one block at most (the prompt engine cuts further to the window)
MAX_BLOCK_CHARS = 200_000
_OUTPUT_CHARS = 1500


@dataclass
class ContextBlock:
    """One piece of context as the model will read it, or why it could not be had."""

    kind: str
    title: str
    text: str = ""
    path: str | None = None
    cell_id: str | None = None
    #: the relevance score, for retrieved chunks
    score: float | None = None
    #: set when the item could not be read: it is reported, not sent
    error: str | None = None
    #: for a notebook: the index of the active cell (cutting keeps its neighbours)
    focus: int | None = None

    @property
    def priority(self) -> int:
        """Lower goes into the prompt first; retrieved chunks keep their relevance order (the
        sort is stable and they arrive ranked)."""
        return PRIORITY.get(self.kind, 1)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "title": self.title}
        if self.path:
            out["path"] = self.path
        if self.error:
            out["error"] = self.error
        return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def render_cell(cell: Any, index: int, *, outputs: bool = True) -> str:
    """A cell as the model reads it: a header with its id, the source, short outputs."""
    cell_type = str(cell.get("cell_type", "?")) if isinstance(cell, dict) else "?"
    lines = [f"# cell {index} id={cell_id_of(cell, index)} type={cell_type}"]
    source = joined(cell.get("source")) if isinstance(cell, dict) else ""
    lines.append(source if source.strip() else "(empty)")
    if outputs and cell_type == "code" and isinstance(cell.get("outputs"), list):
        text = reduce_outputs(cell["outputs"], max_chars=_OUTPUT_CHARS)
        if text.strip():
            lines.append("# outputs")
            lines.append(text)
    return "\n".join(lines)


async def _resolve(ctx: ToolContext, item: dict[str, Any]) -> ContextBlock:
    kind = str(item.get("kind") or "text")
    text = item.get("text")
    path_arg = item.get("path")
    cell_id = item.get("cell_id")
    title = str(item.get("title") or "")
    if kind not in PRIORITY or kind == "retrieved":
        kind = "text"
    if kind in ("text", "selection") or (isinstance(text, str) and not path_arg):
        where = f" in {path_arg}" if isinstance(path_arg, str) and path_arg else ""
        return ContextBlock(kind=kind, title=title or f"{kind}{where}",
                            text=str(text or "")[:MAX_BLOCK_CHARS],
                            path=path_arg if isinstance(path_arg, str) else None)
    if not isinstance(path_arg, str) or not path_arg:
        return ContextBlock(kind=kind, title=title or kind, error="no path given")
    try:
        path = confine_for(ctx, path_arg)
        if isinstance(text, str):
            # the client's view (unsaved edits included) of a place we may read
            return ContextBlock(kind=kind, title=title or f"{kind} {path}",
                                text=text[:MAX_BLOCK_CHARS], path=path,
                                cell_id=cell_id if isinstance(cell_id, str) else None)
        if kind == "file":
            content = await read_text(ctx, path) or ""
            lines = content.splitlines()
            start, end = _int(item.get("start_line")), _int(item.get("end_line"))
            if start is not None or end is not None:
                first = max(1, start or 1)
                last = min(len(lines), end or len(lines))
                body = "\n".join(lines[first - 1:last])
                return ContextBlock(kind=kind, title=title or f"{path}:{first}-{last}",
                                    text=body[:MAX_BLOCK_CHARS], path=path)
            return ContextBlock(kind=kind, title=title or path,
                                text=content[:MAX_BLOCK_CHARS], path=path)
        notebook = await load_notebook(ctx, path)
        if kind == "cell":
            if not isinstance(cell_id, str) or not cell_id:
                raise ToolError("a cell item needs cell_id")
            index, cell = find_cell(notebook, cell_id, path)
            return ContextBlock(kind=kind, title=title or f"cell {index} of {path}",
                                text=render_cell(cell, index)[:MAX_BLOCK_CHARS], path=path,
                                cell_id=cell_id)
        cells = notebook["cells"]
        focus = None
        if isinstance(cell_id, str):
            focus = next((i for i, c in enumerate(cells) if cell_id_of(c, i) == cell_id), None)
        body = "\n\n".join(render_cell(c, i) for i, c in enumerate(cells)
                           if isinstance(c, dict))
        return ContextBlock(kind="notebook", title=title or f"notebook {path}",
                            text=body[:MAX_BLOCK_CHARS], path=path, focus=focus,
                            cell_id=cell_id if isinstance(cell_id, str) else None)
    except ToolError as exc:
        return ContextBlock(kind=kind, title=title or f"{kind} {path_arg[:200]}",
                            error=exc.message)


async def retrieve(ctx: ToolContext, query: str, *, k: int, covered: set[str],
                   timeout_s: float) -> tuple[list[ContextBlock], str | None]:
    """The index's best chunks for ``query`` not in ``covered`` paths; or why there are
    none (a note for the prompt report)."""
    if k <= 0 or ctx.index is None or not query.strip():
        return [], None if k <= 0 else "the semantic index is off"
    try:
        answer = await within(
            ctx.index.search(ctx.user, query[:2000], k=k + len(covered), with_text=True,
                             wait_s=min(timeout_s, 1.0)), timeout_s)
    except asyncio.TimeoutError:
        return [], "the index did not answer in time"
    except Exception as exc:  # never fail a turn over retrieval
        log.warning("retrieval for the prompt failed: %r", exc)
        return [], "the index could not be searched"
    hits = answer.get("results") if isinstance(answer, dict) else None
    blocks: list[ContextBlock] = []
    for hit in hits or []:
        path = str(hit.get("path", ""))
        if path in covered or not is_listable(ctx, path):
            continue
        where = f"{path}:{hit.get('start_line')}-{hit.get('end_line')}"
        if hit.get("symbol"):
            where += f" ({hit['symbol']})"
        blocks.append(ContextBlock(kind="retrieved", title=where,
                                   text=str(hit.get("text") or hit.get("snippet") or ""),
                                   path=path, score=_score(hit.get("score")),
                                   cell_id=hit.get("cell_id")))
        if len(blocks) >= k:
            break
    if not blocks:
        index = answer.get("index") if isinstance(answer, dict) else None
        if isinstance(index, dict) and not index.get("complete", True):
            return [], "the index is still being built"
    return blocks, None


def _score(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


async def gather(ctx: ToolContext | None, items: Sequence[dict[str, Any]], query: str, *,
                 retrieve_k: int = 5, timeout_s: float = 3.0
                 ) -> tuple[list[ContextBlock], list[dict[str, Any]]]:
    """Every attached item resolved, plus retrieved chunks; ranked. Also notes for the prompt
    report (e.g. why nothing was retrieved)."""
    if ctx is None:
        blocks = [ContextBlock(kind=str(i.get("kind") or "text"),
                               title=str(i.get("title") or i.get("kind") or "context"),
                               text=str(i.get("text") or "")) for i in items]
        return blocks, []
    blocks = list(await asyncio.gather(*(_resolve(ctx, dict(i)) for i in items)))
    covered = {b.path for b in blocks
               if b.path and not b.error and b.kind in ("notebook", "file")}
    notes: list[dict[str, Any]] = []
    retrieved, why = await retrieve(ctx, query, k=retrieve_k, covered=covered,
                                    timeout_s=timeout_s)
    if why:
        notes.append({"kind": "retrieval", "note": why})
    blocks.extend(retrieved)
    # the same rule as for tool results: no secret reaches the model through context either
    clean = redactor(ctx.secrets)
    for block in blocks:
        if block.text:
            block.text = clean(block.text)
    blocks.sort(key=lambda b: b.priority)
    return blocks, notes

"""Undoing a turn: put back what its tools changed, from the checkpoints they recorded.

Each write tool stores the previous content of what it touched (a whole file, or one cell's
source) in its tool message. Undo applies them newest first, so a file edited twice in one
turn ends as it was before the turn; a file the turn created is deleted. Paths go through the
same confinement as the tools (a tampered checkpoint cannot point outside the root), and
writes go through the ContentsManager, so JupyterLab sees them like any save.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_core.utils import ensure_async

from ..errors import ConflictError, InvalidInputError, NotFoundError
from .tools.base import ToolContext, ToolError
from .tools.paths import confine_for


async def undo_turn(store: Any, ctx: ToolContext, conversation_id: str, turn_id: str
                    ) -> dict[str, Any]:
    records = await store.call(store.list_messages, conversation_id, ctx.user)
    of_turn = [r for r in records if r.turn_id == turn_id]
    if not of_turn:
        raise NotFoundError("no such turn in this conversation")
    if any(r.role == "undo" for r in of_turn):
        raise ConflictError("this turn was already undone")
    checkpoints = [cp for r in of_turn if r.role == "tool" and isinstance(r.content, dict)
                   for cp in r.content.get("checkpoints") or ()]
    if not checkpoints:
        raise NotFoundError("this turn changed nothing that can be undone")
    cm = ctx.contents_manager
    restored: list[dict[str, Any]] = []
    for cp in reversed(checkpoints):
        try:
            path = confine_for(ctx, str(cp.get("path", "")))
        except ToolError as exc:
            raise InvalidInputError(f"checkpoint path refused: {exc}") from exc
        previous = cp.get("previous")
        if cp.get("kind") == "cell":
            model = await ensure_async(cm.get(path, content=True, type="notebook"))
            notebook = model["content"]
            cell = next((c for c in notebook.get("cells", ())
                         if c.get("id") == cp.get("cell_id")), None)
            if cell is None:
                raise ConflictError(f"cell {cp.get('cell_id')} of {path} no longer exists")
            cell["source"] = previous or ""
            await ensure_async(cm.save({"type": "notebook", "format": "json",
                                        "content": notebook}, path))
            restored.append({"path": path, "cell_id": cp.get("cell_id"), "action": "cell"})
        elif previous is None:
            await ensure_async(cm.delete(path))
            restored.append({"path": path, "action": "deleted"})
        elif path.endswith(".ipynb"):
            await ensure_async(cm.save({"type": "notebook", "format": "json",
                                        "content": json.loads(previous)}, path))
            restored.append({"path": path, "action": "restored"})
        else:
            await ensure_async(cm.save({"type": "file", "format": "text",
                                        "content": previous}, path))
            restored.append({"path": path, "action": "restored"})
    await store.call(store.add_message, conversation_id, ctx.user, turn_id, "undo",
                     {"restored": restored})
    return {"conversation_id": conversation_id, "turn_id": turn_id, "restored": restored}

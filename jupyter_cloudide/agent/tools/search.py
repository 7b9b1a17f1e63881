"""search_codebase: the semantic index (vectors + BM25) as a tool.

Searches go through :meth:`IndexService.search` with the conversation's user, so the agent
sees exactly that user's index and nothing else; ``path_glob`` is handed to the index's own
filter, which escapes it (a glob cannot change the query). Hits come back compact - where
(``path:start-end``, symbol or cell) and a short snippet - because the model will read the
file it wants with read_file anyway.
"""

from __future__ import annotations

from typing import Any

from .base import Tool, ToolContext, ToolError, ToolKind, ToolResult
from .paths import is_listable

__all__ = ["SearchCodebaseTool", "format_hits"]

_SNIPPET_LINES = 12
_SNIPPET_LINE_CHARS = 200


def _snippet(text: str) -> str:
    lines = text.splitlines()
    shown = [line if len(line) <= _SNIPPET_LINE_CHARS else line[:_SNIPPET_LINE_CHARS] + "..."
             for line in lines[:_SNIPPET_LINES]]
    if len(lines) > _SNIPPET_LINES:
        shown.append(f"... ({len(lines) - _SNIPPET_LINES} more lines)")
    return "\n".join("    " + line for line in shown)


def format_hits(query: str, hits: list[dict[str, Any]]) -> str:
    """Search hits as the model reads them: a numbered list of locations with snippets."""
    if not hits:
        return f"No results for {query[:200]!r}."
    lines = [f"{len(hits)} results for {query[:200]!r}:"]
    for number, hit in enumerate(hits, start=1):
        where = f"{hit.get('path')}:{hit.get('start_line')}-{hit.get('end_line')}"
        details = []
        if hit.get("symbol"):
            details.append(str(hit["symbol"]))
        if hit.get("cell_id") is not None:
            details.append(f"cell id={hit['cell_id']}")
        score = hit.get("score")
        if isinstance(score, int | float):
            details.append(f"score {score:.3f}")
        suffix = f" ({', '.join(details)})" if details else ""
        lines.append(f"{number}. {where}{suffix}")
        snippet = hit.get("snippet")
        if isinstance(snippet, str) and snippet.strip():
            lines.append(_snippet(snippet))
    return "\n".join(lines)


class SearchCodebaseTool(Tool):
    name = "search_codebase"
    description = (
        "Search the workspace (code, notebooks, docs) by meaning and keywords. Returns "
        "path:lines with a snippet for each hit; read the file for the full context.")
    kind = ToolKind.READ
    parameters = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 2000,
                      "description": "What to look for, in words or code."},
            "k": {"type": "integer", "minimum": 1, "maximum": 20,
                  "description": "Number of results (default 8)."},
            "path_glob": {"type": "string", "minLength": 1, "maxLength": 500,
                          "pattern": r"^[^\x00]+$",
                          "description": "Only paths matching this glob, e.g. 'src/**/*.py'."},
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        if ctx.index is None:
            raise ToolError("semantic search is not available on this server; use "
                            "list_files and read_file")
        query: str = args["query"]
        if not query.strip():
            raise ToolError("query is blank")
        try:
            answer = await ctx.index.search(ctx.user, query, k=int(args.get("k", 8)),
                                            path_glob=args.get("path_glob"))
        except ValueError as exc:  # the index's own filter validation (user-safe messages)
            raise ToolError(f"invalid search: {str(exc)[:200]}") from None
        raw = answer.get("results") if isinstance(answer, dict) else None
        # The index follows the same deny list, but a file can become protected after it was
        # indexed (a new .gitignore does not matter here; a rename to .env does).
        hits = [hit for hit in (raw or []) if isinstance(hit, dict)
                and is_listable(ctx, str(hit.get("path", "")))]
        content = format_hits(query, hits)
        index = answer.get("index") if isinstance(answer, dict) else None
        if not hits and isinstance(index, dict) and not index.get("complete", True):
            content += f" (The index is still being built: {index.get('state', 'unknown')}.)"
        return ToolResult(ok=True, content=content,
                          data={"query": query, "results": hits})

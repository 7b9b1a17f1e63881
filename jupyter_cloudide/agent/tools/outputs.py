"""Notebook and kernel outputs as short text for the model.

Outputs tell the model what code did, but their raw form is mostly noise for it: base64
images, full HTML tables, ANSI colour codes, thousand-line logs. So text keeps a head and a
tail (the end of a log is where the error is), a DataFrame shows its columns next to its text
form, an error shows ``ename: evalue`` and the last lines of its traceback, and an image
becomes a placeholder naming its type. Same idea as the index's reduction
(:mod:`jupyter_cloudide.storage.chunking`), with more room: the model is debugging, not
embedding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ...executor.execute import ExecuteResult
from ...storage.chunking import _table_columns  # the same DataFrame header parser as the index
from .truncate import truncate

__all__ = ["joined", "reduce_output", "reduce_outputs", "strip_ansi", "summarize_result"]

# CSI sequences (colours, cursor moves), OSC sequences (titles, hyperlinks), two-byte escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
_MAX_COLUMNS = 50


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (IPython tracebacks are coloured)."""
    return _ANSI.sub("", text) if "\x1b" in text else text


def joined(value: object) -> str:
    """nbformat multiline strings (a str or a list of str) as one str."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(item for item in value if isinstance(item, str))
    return ""


def _text(value: str, max_chars: int) -> str:
    return truncate(strip_ansi(value).rstrip("\n"), max_chars)


def _rich(data: object, max_chars: int) -> str:
    """A display_data / execute_result bundle in a few lines."""
    if not isinstance(data, dict):
        return ""
    parts: list[str] = []
    images = sorted(mime for mime in data if isinstance(mime, str) and mime.startswith("image/"))
    parts.extend(f"[{mime} output]" for mime in images)
    html = joined(data.get("text/html"))
    if "<table" in html[:10_000].lower():
        columns = _table_columns(html)
        if columns:
            more = ", ..." if len(columns) > _MAX_COLUMNS else ""
            parts.append(f"DataFrame columns: {', '.join(columns[:_MAX_COLUMNS])}{more}")
    for mime in ("text/plain", "text/markdown", "text/latex", "application/json"):
        if mime in data:
            value = data[mime]
            text = joined(value) if not isinstance(value, dict) else str(value)
            if text.strip():
                parts.append(_text(text, max_chars))
                break
    else:
        if not parts:
            shown = ", ".join(sorted(str(mime) for mime in data)[:5])
            if shown:
                parts.append(f"[{shown} output]")
    return "\n".join(parts)


def reduce_output(output: object, *, max_chars: int = 2000, traceback_lines: int = 8) -> str:
    """One nbformat output as text for the model ("" for what carries nothing)."""
    if not isinstance(output, dict):
        return ""
    kind = output.get("output_type")
    if kind == "stream":
        text = _text(joined(output.get("text")), max_chars)
        if output.get("name") == "stderr" and text.strip():
            return f"[stderr]\n{text}"
        return text
    if kind in ("execute_result", "display_data", "update_display_data"):
        return _rich(output.get("data"), max_chars)
    if kind == "error":
        name = str(output.get("ename") or "Error")
        value = strip_ansi(str(output.get("evalue") or ""))
        lines: list[str] = []
        frames = output.get("traceback")
        if isinstance(frames, list):
            for frame in frames:
                if isinstance(frame, str):
                    lines.extend(strip_ansi(frame).splitlines())
        tail = [line for line in lines if line.strip()][-traceback_lines:]
        head = f"{name}: {value}" if value else name
        if tail:
            return truncate(head + "\nTraceback (last lines):\n" + "\n".join(tail), max_chars)
        return truncate(head, max_chars)
    return ""


def reduce_outputs(outputs: Iterable[object], *, max_chars: int = 2000,
                   traceback_lines: int = 8) -> str:
    """A cell's or a run's outputs, one reduced output per block."""
    reduced = (reduce_output(o, max_chars=max_chars, traceback_lines=traceback_lines)
               for o in outputs)
    return "\n".join(text for text in reduced if text.strip())


_STATUS_TEXT = {
    "ok": "ok",
    "error": "error (the code raised an exception)",
    "timeout": "timeout (the code ran past its time limit and was interrupted)",
    "interrupted": "interrupted",
    "dead": "the kernel died",
}


def summarize_result(result: ExecuteResult, *, max_chars: int = 8000) -> str:
    """An execution result as the model reads it: status, count, reduced outputs."""
    lines = [f"status: {_STATUS_TEXT.get(result.status, result.status)}"]
    if result.execution_count is not None:
        lines.append(f"execution_count: {result.execution_count}")
    if result.restarted:
        lines.append("the kernel was restarted: its variables and imports are gone")
    if result.message:
        lines.append(f"note: {strip_ansi(result.message)}")
    if result.truncated:
        lines.append("note: the output was cut by the server's output cap")
    text = reduce_outputs(result.outputs, max_chars=max_chars)
    lines.append(f"outputs:\n{text}" if text.strip() else "outputs: (none)")
    return "\n".join(lines)


def outputs_for_ui(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The raw outputs for the UI (it renders images itself); a shallow copy."""
    return [dict(output) for output in outputs]

"""Turning iopub messages into nbformat outputs, under caps.

An execution may print 50 MB or flood thousands of messages; the server must neither hold
that in memory nor forward it. The collector keeps outputs up to ``max_bytes`` and
``max_messages``, then only counts what it drops, and closes with a visible truncation
marker. Consecutive stream text of the same name is merged, as notebooks show it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]


def output_from_message(msg_type: str, content: JsonDict) -> JsonDict | None:
    """The nbformat output for one iopub message, or None when it is not an output."""
    if msg_type == "stream":
        return {"output_type": "stream", "name": content.get("name", "stdout"),
                "text": content.get("text", "")}
    if msg_type in ("display_data", "update_display_data"):
        return {"output_type": "display_data", "data": content.get("data", {}),
                "metadata": content.get("metadata", {})}
    if msg_type == "execute_result":
        return {"output_type": "execute_result", "data": content.get("data", {}),
                "metadata": content.get("metadata", {}),
                "execution_count": content.get("execution_count")}
    if msg_type == "error":
        return {"output_type": "error", "ename": content.get("ename", ""),
                "evalue": content.get("evalue", ""),
                "traceback": list(content.get("traceback", []))}
    return None


def _size(output: JsonDict) -> int:
    if output["output_type"] == "stream":
        return len(output["text"].encode("utf-8", "replace"))
    return len(json.dumps(output, default=str))


@dataclass
class OutputCollector:
    """Outputs of one execution, bounded in bytes and in messages."""

    max_bytes: int = 1024 * 1024
    max_messages: int = 2000
    outputs: list[JsonDict] = field(default_factory=list)
    kept_bytes: int = 0
    kept_messages: int = 0
    dropped_bytes: int = 0
    dropped_messages: int = 0

    @property
    def truncated(self) -> bool:
        return self.dropped_messages > 0

    def add(self, output: JsonDict) -> JsonDict | None:
        """Keep ``output`` if it fits; returns what to forward (None when dropped).

        A stream chunk that only partly fits is cut at the byte budget, so the user still
        sees the beginning of a huge print.
        """
        size = _size(output)
        if self.truncated or self.kept_messages >= self.max_messages:
            self._drop(size)
            return None
        room = self.max_bytes - self.kept_bytes
        if size > room:
            if output["output_type"] != "stream" or room <= 0:
                self._drop(size)
                return None
            head = output["text"].encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
            self.dropped_bytes += size - len(head.encode("utf-8"))
            self.dropped_messages += 1
            output = {**output, "text": head}
            size = len(head.encode("utf-8"))
        self.kept_bytes += size
        self.kept_messages += 1
        self._append(output)
        return output

    def _drop(self, size: int) -> None:
        self.dropped_bytes += size
        self.dropped_messages += 1

    def _append(self, output: JsonDict) -> None:
        last = self.outputs[-1] if self.outputs else None
        if (last is not None and output["output_type"] == "stream"
                and last["output_type"] == "stream" and last["name"] == output["name"]):
            last["text"] += output["text"]
        else:
            self.outputs.append(dict(output))

    def marker(self) -> JsonDict | None:
        """The visible truncation notice, once truncation happened."""
        if not self.truncated:
            return None
        return {
            "output_type": "stream",
            "name": "stderr",
            "text": (f"\n[output truncated by jupyter_cloudide: {self.dropped_bytes} more bytes"
                     f" in {self.dropped_messages} messages were not kept]\n"),
        }

    def final_outputs(self) -> list[JsonDict]:
        marker = self.marker()
        return [*self.outputs, marker] if marker else list(self.outputs)


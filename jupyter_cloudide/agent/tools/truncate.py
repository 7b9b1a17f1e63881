"""Fitting tool results into the model's context: keep the head and the tail, mark the cut.

Both ends matter: the head says what a file or an output is, the tail holds the last lines of
a long run (the error, the final numbers). The marker tells the model exactly how much it did
not see, so it can ask for a range instead of guessing.
"""

from __future__ import annotations

__all__ = ["truncate"]

_HEAD_SHARE = 2 / 3
#: how far back (as a share of a part) a cut may move to land on a line boundary
_LINE_SLACK = 0.2


def _marker(omitted: int) -> str:
    return f"\n[... {omitted} characters omitted ...]\n"


def truncate(text: str, budget: int) -> str:
    """``text`` if it fits in ``budget`` characters, else its head and tail around a marker.

    The result is never longer than ``budget``. Cuts move to a line boundary when one is
    close, so the model does not see half a line at the seam. A budget too small to hold the
    marker gets a plain prefix (a misconfiguration, not worth a special format).
    """
    if budget <= 0:
        return ""
    if len(text) <= budget:
        return text
    room = budget - len(_marker(len(text)))  # the longest marker this text can need
    if room < 2:
        return text[:budget]
    head_len = int(room * _HEAD_SHARE)
    tail_len = room - head_len
    head = text[:head_len]
    newline = head.rfind("\n")
    if newline >= 0 and head_len - newline <= head_len * _LINE_SLACK:
        head = head[: newline + 1]
    tail = text[len(text) - tail_len :]
    newline = tail.find("\n")
    if 0 <= newline <= tail_len * _LINE_SLACK:
        tail = tail[newline + 1 :]
    head = head.rstrip("\n")  # the marker brings its own line breaks
    omitted = len(text) - len(head) - len(tail)
    return head + _marker(omitted) + tail

"""Wire formats of the ``cloudide/v1`` API: each module parses its format's requests into the
agent's vocabulary (:class:`..api.ApiChatRequest`) and encodes :class:`..api.ApiService`'s
events and errors back into it. No tornado here: the gateway's handlers only move bytes."""

from __future__ import annotations

import math

from ..providers.base import ProviderError


def provider_failure(exc: ProviderError) -> tuple[int, str, str, dict[str, str]]:
    """A failed model call as every wire format reports it: (status, kind, message, headers);
    each format renders it in its own error shape (and may name the status its SDKs expect)."""
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    kind = exc.kind
    if kind == "rate_limited":
        return 429, kind, f"the model provider is rate limiting: {exc.message}", headers
    if kind == "overloaded":
        return 503, kind, f"the model provider is overloaded: {exc.message}", headers
    if kind == "timeout":
        return 504, kind, exc.message, headers
    if kind == "bad_request":
        return 400, kind, exc.message, headers
    if kind == "auth":  # our credentials for the upstream, not the client's
        return 502, kind, "the model provider refused this server's credentials", {}
    return 502, kind, f"model error ({kind}): {exc.message}", headers

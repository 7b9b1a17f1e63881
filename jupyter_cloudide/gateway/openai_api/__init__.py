"""``cloudide/v1``: the OpenAI-compatible API (an Anthropic Messages handler can sit beside
these, reusing the bearer auth of ``auth.py`` and the SSE and error plumbing of ``base.py``)."""

"""Wire formats of the ``cloudide/v1`` API: each module parses its format's requests into the
agent's vocabulary (:class:`..api.ApiChatRequest`) and encodes :class:`..api.ApiService`'s
events and errors back into it. No tornado here: the gateway's handlers only move bytes."""

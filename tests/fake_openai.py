"""A local server speaking the OpenAI wire protocol, for tests driven by the real `openai` SDK.

Only what a test needs is implemented; every request is recorded so tests can assert what was
sent (and that no secret was). Start it with ``FakeOpenAI()`` (a context manager).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

API_KEY = "sk-test-fake-key"


def fake_vector(text: str, dim: int) -> list[float]:
    """Deterministic per text; texts sharing words get similar vectors (bag of hashed words),
    so retrieval through this server is meaningful, not random."""
    vector = np.zeros(dim, dtype=np.float32)
    for word in text.lower().split():
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "big") % dim] += 1.0
    norm = float(np.linalg.norm(vector)) or 1.0
    return [float(x) for x in vector / norm]


class FakeOpenAI:
    """``/v1/embeddings``; 401 without the right bearer key; ``fail_next`` forces 500s."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                      "body": body})
                if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                    self._send(401, {"error": {"message": "Incorrect API key provided",
                                               "type": "invalid_request_error",
                                               "code": "invalid_api_key"}})
                    return
                if fake.fail_next:
                    fake.fail_next -= 1
                    self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                    return
                if self.path != "/v1/embeddings":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = [{"object": "embedding", "index": i,
                         "embedding": fake_vector(text, fake.dim)}
                        for i, text in enumerate(inputs)]
                data.reverse()  # the API does not promise order; clients must use `index`
                self._send(200, {"object": "list", "data": data, "model": body["model"],
                                 "usage": {"prompt_tokens": 1, "total_tokens": 1}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

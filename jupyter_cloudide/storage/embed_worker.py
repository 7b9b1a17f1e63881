"""The embedded model in a child process, started on demand and gone after an idle period.

Why a process: torch, transformers and the model take ~650 MB of private memory once loaded
(measured: 216 MB for ``import torch`` alone). A JupyterHub runs one server per user; keeping
that resident in every server for an index that is busy a few minutes a day is the wrong
trade. The child exits after ``idle_timeout_s`` without work and the memory goes with it; the
next save or search starts it again (~3 s). It also keeps the model's import and start-up off
the server's GIL.

Protocol on the child's stdin/stdout: a request is a 4-byte big-endian length plus a JSON
object ``{"op": "embed", "texts": [...]}`` or ``{"op": "dim"}``; a reply is a length plus a
JSON header (``{"ok": true, "rows": n, "dim": d}`` or ``{"ok": false, "error": "..."}``)
followed, for embeddings, by ``rows * dim`` little-endian float32 values.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

from .embeddings import EmbedderError, LocalEmbedder, Vectors

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
#: a request or reply header above this is a protocol error, not something to allocate
_MAX_JSON = 256 * 1024 * 1024


def _write(stream: IO[bytes], payload: dict[str, Any], body: bytes = b"") -> None:
    data = json.dumps(payload).encode("utf-8", "surrogatepass")
    stream.write(_HEADER.pack(len(data)) + data + body)
    stream.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError("embedding worker closed the pipe")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read(stream: IO[bytes]) -> dict[str, Any]:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    if size > _MAX_JSON:
        raise EmbedderError(f"embedding worker: message of {size} bytes")
    message: dict[str, Any] = json.loads(_read_exact(stream, size))
    return message


class ProcessEmbedder:
    """A :class:`LocalEmbedder` run in a child process (same id: same vectors)."""

    def __init__(self, local: LocalEmbedder, *, idle_timeout_s: float = 600.0,
                 start_timeout_s: float = 120.0) -> None:
        self.local = local
        self.id = local.id
        self.idle_timeout_s = idle_timeout_s
        self.start_timeout_s = start_timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dim: int | None = None
        self._last_used = time.monotonic()
        self._reaper: threading.Thread | None = None
        self._closed = False
        #: child processes started so far (observability and tests)
        self.starts = 0

    # -- the Embedder protocol ------------------------------------------------------------

    @property
    def dim(self) -> int:
        if self._dim is None:
            header, _ = self._call({"op": "dim"})
            self._dim = int(header["dim"])
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        header, body = self._call({"op": "embed", "texts": list(texts)})
        rows, dim = int(header["rows"]), int(header["dim"])
        vectors: Vectors = np.frombuffer(body, dtype="<f4").reshape(rows, dim).copy()
        return vectors

    def embed_query(self, text: str) -> Vectors:
        vector: Vectors = self.embed([text])[0]
        return vector

    # -- the child --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _call(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        with self._lock:
            if self._closed:
                raise EmbedderError("embedder closed")
            proc = self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _write(proc.stdin, request)
                header = _read(proc.stdout)
                body = b""
                if header.get("ok") and "rows" in header:
                    body = _read_exact(proc.stdout, int(header["rows"]) * int(header["dim"]) * 4)
            except (OSError, EOFError, ValueError) as exc:
                self._kill()
                raise EmbedderError(f"embedding worker died ({type(exc).__name__})") from exc
            finally:
                self._last_used = time.monotonic()
        if not header.get("ok"):
            raise EmbedderError(str(header.get("error", "embedding failed")))
        return header, body

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc
            log.warning("embedding worker exited with %s; starting a new one",
                        self._proc.returncode)
            self._kill()  # reaps it and closes its pipes
        config = {"model_path": self.local.model_path, "max_tokens": self.local.max_tokens,
                  "quantize": self.local.quantize, "batch_size": self.local.batch_size,
                  "threads": self.local.threads}
        env = {**os.environ, "CLOUDIDE_EMBEDDER": json.dumps(config)}
        # stderr goes to the server's log; stdin/stdout are the protocol
        self._proc = subprocess.Popen(  # our own module, our interpreter
            [sys.executable, "-m", "jupyter_cloudide.storage.embed_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self.starts += 1
        log.info("embedding worker started (pid %d)", self._proc.pid)
        if self._reaper is None and self.idle_timeout_s > 0:
            self._reaper = threading.Thread(target=self._reap_idle, daemon=True,
                                            name="cloudide-embedder-reaper")
            self._reaper.start()
        return self._proc

    def _reap_idle(self) -> None:
        while not self._closed:
            time.sleep(min(30.0, max(0.05, self.idle_timeout_s / 4)))
            if not self._lock.acquire(blocking=False):
                continue  # busy: not idle
            try:
                idle = time.monotonic() - self._last_used
                if self.running and idle >= self.idle_timeout_s:
                    log.info("embedding worker idle for %.0f s: stopping it", idle)
                    self._stop_child()
            finally:
                self._lock.release()

    def _stop_child(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the child exits on its own
            proc.wait(timeout=5)
        except Exception:
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop_child()


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    config = json.loads(os.environ.get("CLOUDIDE_EMBEDDER", "{}"))
    embedder = LocalEmbedder(**config)
    while True:
        try:
            request = _read(stdin)
        except EOFError:
            return
        try:
            if request.get("op") == "dim":
                _write(stdout, {"ok": True, "dim": embedder.dim})
                continue
            vectors = np.ascontiguousarray(embedder.embed(request["texts"]), dtype="<f4")
            _write(stdout, {"ok": True, "rows": int(vectors.shape[0]),
                            "dim": int(vectors.shape[1])}, vectors.tobytes())
        except Exception as exc:
            _write(stdout, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _serve(sys.stdin.buffer, sys.stdout.buffer)

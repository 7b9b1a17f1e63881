"""The indexing service: keeps each user's semantic index fresh and answers searches.

One :class:`UserIndex` per user, created on first use (the server owner's at start-up). Each has
a worker task that runs *passes*; what a pass does is merged from requests that arrived while
the previous one ran (a full scan, a rebuild, single paths saved or renamed through the
ContentsManager, folders deleted), so a burst of saves makes one pass, not one per save.

A pass: list candidate files (a scan of the root, or just the paths an event named) → compare
mtime and size with the ``files`` table → read changed files through ``reader`` (the app passes
one that goes through the ContentsManager) → compare content hashes → chunk → reuse vectors of
unchanged chunks, embed the rest → write. Everything that blocks (scan, chunking, LanceDB,
the model) runs in one writer thread shared by all users; searches use their own small pool so
they never wait behind an indexing batch. The event loop only awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .chunking import Chunk, chunk_file, chunk_notebook
from .embeddings import Embedder
from .index import (
    FileState,
    FileUpdate,
    SearchFilter,
    SemanticIndex,
    embedding_input,
    embedding_key,
)
from .workspace import FileEntry, WorkspaceRules, check_path, looks_binary, scan

log = logging.getLogger(__name__)

T = TypeVar("T")
#: a file's content as the reader returns it: text, a notebook dict, or None (unreadable)
Content = str | dict[str, Any] | None
Reader = Callable[[str], Awaitable[Content]]
OnProgress = Callable[[str, dict[str, Any]], None]
PROGRESS_INTERVAL_S = 0.25


@dataclass(frozen=True)
class IndexSettings:
    """Everything the app's traitlets decide about indexing."""

    root_dir: str
    data_dir: Path
    rules: WorkspaceRules = field(default_factory=WorkspaceRules)
    max_lines: int = 60
    overlap: int = 8
    #: chunks gathered before one embed + write; bigger batches embed faster, smaller ones
    #: show progress sooner
    batch_chunks: int = 128
    scan_interval_s: float = 60.0
    optimize_every: int = 50
    search_threads: int = 2


def content_hash(content: str | dict[str, Any]) -> str:
    """Notebooks hash their canonical JSON: the same notebook read from disk or through the
    ContentsManager (which normalises it) hashes the same."""
    text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def user_folder(user: str) -> str:
    """A folder name for a user name: readable, but distinct users never collide."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", user)[:40].strip(".") or "user"
    return f"{slug}-{hashlib.sha256(user.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


@dataclass
class _Job:
    """What the next pass must do; requests merge into it while a pass runs."""

    rebuild: bool = False
    scan: bool = False
    paths: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    removed_dirs: set[str] = field(default_factory=set)

    def empty(self) -> bool:
        return not (self.rebuild or self.scan or self.paths or self.removed or self.removed_dirs)


@dataclass
class _Pending:
    entry: FileEntry
    content: str | dict[str, Any]
    digest: str
    #: the index had this file before, so its unchanged chunks have stored vectors
    known: bool = False


class UserIndex:
    """One user's index, its worker task and its progress."""

    def __init__(self, user: str, index: SemanticIndex) -> None:
        self.user = user
        self.index = index
        self.job = _Job()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.opened = False
        #: set once the index is open (or opening failed): searches wait for it
        self.ready = asyncio.Event()
        #: set while no pass runs and none is queued
        self.idle = asyncio.Event()
        self.idle.set()
        self.cancel = False
        self.state = "idle"
        self.error: str | None = None
        self.progress: dict[str, Any] = {}
        self.counts: dict[str, int] = {"chunks": 0, "files": 0}
        self.last_pass: dict[str, Any] | None = None
        self.passes = 0
        self._last_emit = 0.0

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state, "embedder": self.index.embedder.id,
            "complete": self.opened and self.index.complete, **self.counts,
        }
        if self.progress:
            out["progress"] = dict(self.progress)
        if self.error:
            out["error"] = self.error
        if self.last_pass:
            out["last_pass"] = dict(self.last_pass)
        return out


class IndexService:
    """Per-user indexes over one workspace."""

    def __init__(self, settings: IndexSettings, embedder: Embedder, reader: Reader, *,
                 on_progress: OnProgress | None = None) -> None:
        self.settings = settings
        self.embedder = embedder
        self.reader = reader
        self.on_progress = on_progress
        self._users: dict[str, UserIndex] = {}
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="cloudide-index")
        self._searchers = ThreadPoolExecutor(max(2, settings.search_threads),
                                             thread_name_prefix="cloudide-search")
        # A search runs its vector and BM25 halves at once, on a pool of their own: on the
        # searchers' pool, searches occupying every thread would wait for halves that can
        # never start (a deadlock two concurrent searches reached).
        self._halves = ThreadPoolExecutor(2 * max(2, settings.search_threads),
                                          thread_name_prefix="cloudide-search-half")
        self._scan_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, users: list[str]) -> None:
        """Build (or bring up to date) the indexes of ``users`` in the background, then scan
        every ``scan_interval_s`` for files changed outside Jupyter."""
        for user in users:
            self.request(user, scan=True)
        if self._scan_task is None and self.settings.scan_interval_s > 0:
            self._scan_task = asyncio.create_task(self._scan_loop(), name="cloudide-index-scan")

    async def close(self) -> None:
        self._closed = True
        tasks = [u.task for u in self._users.values() if u.task is not None]
        for ui in self._users.values():
            ui.cancel = True
        if self._scan_task is not None:
            tasks.append(self._scan_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        # a batch already in the writer thread finishes (it is one atomic LanceDB commit)
        await asyncio.get_running_loop().run_in_executor(None, self._writer.shutdown)
        self._searchers.shutdown(wait=False, cancel_futures=True)
        self._halves.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.embedder, "close", None)
        if close is not None:  # an embedder's child process
            await asyncio.to_thread(close)

    def user_index(self, user: str) -> UserIndex:
        ui = self._users.get(user)
        if ui is None:
            directory = self.settings.data_dir / user_folder(user)
            ui = self._users[user] = UserIndex(user, SemanticIndex(directory, self.embedder))
            ui.task = asyncio.create_task(self._worker(ui), name=f"cloudide-index-{user[:40]}")
        return ui

    def folder_sizes(self) -> dict[str, int]:
        """Bytes on disk of each user's index folder (blocking: a walk of the folder), for
        the usage ledger's index-size rows; users without an index this run are left out."""
        sizes: dict[str, int] = {}
        for user in list(self._users):
            total = 0
            for folder, _dirs, files in os.walk(self.settings.data_dir / user_folder(user)):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.stat(os.path.join(folder, name)).st_size
            sizes[user] = total
        return sizes

    def request(self, user: str, *, scan: bool = False, rebuild: bool = False,
                paths: list[str] | None = None) -> UserIndex:
        """Ask for a pass; returns at once."""
        ui = self.user_index(user)
        ui.job.scan |= scan or rebuild
        ui.job.rebuild |= rebuild
        ui.job.paths.update(paths or ())
        if rebuild:
            ui.cancel = True  # stop a running pass: its work is about to be thrown away
        self._queued(ui)
        return ui

    @staticmethod
    def _queued(ui: UserIndex) -> None:
        if ui.state == "idle":
            ui.state = "queued"
        ui.idle.clear()
        ui.wake.set()

    def status(self, user: str) -> dict[str, Any]:
        ui = self._users.get(user)
        if ui is None:
            return {"state": "not_started", "embedder": self.embedder.id, "chunks": 0,
                    "files": 0, "complete": False}
        return ui.status()

    async def wait_idle(self, user: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the user's index has no pass running or queued (tests, CLI, bench)."""
        ui = self.user_index(user)
        await asyncio.wait_for(ui.idle.wait(), timeout)
        return ui.status()

    # -- events from the ContentsManager ---------------------------------------------------

    def on_contents_event(self, data: dict[str, Any]) -> None:
        """jupyter_server's contents_service events (save, rename, copy, delete, ...): the
        files are shared by every user of the server, so every open index follows."""
        action = data.get("action")
        path = str(data.get("path") or "").strip("/")
        source = str(data.get("source_path") or "").strip("/")
        if not path or action == "get":
            return
        for ui in list(self._users.values()):
            job = ui.job
            if action in ("save", "upload", "create", "copy"):
                job.paths.add(path)
            elif action == "rename":
                job.removed.add(source)
                job.removed_dirs.add(source)
                job.paths.add(path)
                job.scan = True  # a renamed folder: its files are found by the scan
            elif action == "delete":
                job.removed.add(path)
                job.removed_dirs.add(path)
            else:
                continue
            self._queued(ui)

    # -- searching -----------------------------------------------------------------------------

    async def search(self, user: str, query: str, *, k: int = 10, mode: str = "hybrid",
                     path_glob: str | None = None, languages: tuple[str, ...] = (),
                     with_text: bool = False, wait_s: float = 30.0) -> dict[str, Any]:
        """``with_text``: each hit also carries its whole chunk; ``wait_s``: how long a first
        search waits for the user's index to open."""
        ui = self.user_index(user)
        if not ui.opened:
            self.request(user, scan=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ui.ready.wait(), wait_s)
        if not ui.opened:
            return {"results": [], "index": ui.status()}
        where = SearchFilter(path_glob=path_glob, languages=languages)
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(
            self._searchers,
            partial(ui.index.search, query, k=k, mode=mode, where=where, pool=self._halves))
        return {"results": [hit.to_json(with_text) for hit in hits], "index": ui.status()}

    # -- the worker ----------------------------------------------------------------------------

    async def _scan_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.settings.scan_interval_s)
            for ui in list(self._users.values()):
                ui.job.scan = True
                self._queued(ui)  # not just wake: wait_idle must see the pass coming

    async def _worker(self, ui: UserIndex) -> None:
        while not self._closed:
            await ui.wake.wait()
            ui.wake.clear()
            job, ui.job = ui.job, _Job()
            if job.empty():
                self._settle(ui)
                continue
            ui.cancel = False
            try:
                await self._pass(ui, job)
                ui.error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("index of %s: pass failed", ui.user)
                ui.error = f"{type(exc).__name__}: {exc}"[:500]
                ui.state = "error"
                ui.ready.set()
                self._settle(ui)
                self._emit(ui, force=True)
                continue
            ui.state = "queued" if not ui.job.empty() else "idle"
            ui.progress = {}
            self._settle(ui)
            self._emit(ui, force=True)

    @staticmethod
    def _settle(ui: UserIndex) -> None:
        if ui.job.empty() and not ui.wake.is_set():
            ui.idle.set()

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _pass(self, ui: UserIndex, job: _Job) -> None:
        started = time.monotonic()
        ui.state = "building"
        if job.rebuild or not ui.opened:
            if job.rebuild:
                ui.opened = False
                ui.ready.clear()
                await self._in_writer(ui.index.wipe)
            outcome = await self._in_writer(ui.index.open)
            ui.opened = True
            ui.ready.set()
            if outcome != "opened":
                log.info("index of %s: %s", ui.user, outcome)
                job.scan = True
        index = ui.index
        known = await self._in_writer(index.file_states)
        removed = {p for p in job.removed if p in known}
        for folder in job.removed_dirs:
            removed.update(p for p in known if p.startswith(folder + "/"))
        candidates: list[FileEntry] = []
        if job.scan:
            result = await self._in_writer(scan, self.settings.root_dir, self.settings.rules)
            listed = {entry.path for entry in result.files}
            removed.update(p for p in known if p not in listed)
            candidates = result.files
        else:
            for path in sorted(job.paths):
                entry = await self._in_writer(self._entry, path)
                if entry is None:
                    if path in known:
                        removed.add(path)
                else:
                    candidates.append(entry)
        removed -= {entry.path for entry in candidates}
        if removed:
            await self._in_writer(index.remove, sorted(removed))
        changed = [e for e in candidates
                   if (state := known.get(e.path)) is None
                   or (state.mtime_ns, state.size) != (e.mtime_ns, e.size)]
        ui.progress = {"phase": "indexing", "files_total": len(changed), "files_done": 0,
                       "chunks_embedded": 0, "chunks_reused": 0}
        self._emit(ui, force=True)
        embedded, reused, failed = await self._index_files(ui, changed, known)
        if not ui.cancel:
            if job.scan and not index.complete:
                await self._in_writer(index.mark_complete)
            if job.scan or index.writes_since_optimize >= self.settings.optimize_every:
                await self._in_writer(index.optimize)
        ui.counts = await self._in_writer(index.counts)
        ui.passes += 1
        ui.last_pass = {
            "files_changed": len(changed), "files_removed": len(removed),
            "files_unreadable": failed, "chunks_embedded": embedded, "chunks_reused": reused,
            "seconds": round(time.monotonic() - started, 3), "cancelled": ui.cancel,
        }

    def _entry(self, path: str) -> FileEntry | None:
        """A FileEntry for one path if the rules allow it (the same rules as the scan)."""
        if check_path(self.settings.root_dir, path, self.settings.rules) is not None:
            return None
        try:
            stat = (Path(self.settings.root_dir) / path).stat()
        except OSError:
            return None
        return FileEntry(path, stat.st_mtime_ns, stat.st_size)

    async def _index_files(self, ui: UserIndex, changed: list[FileEntry],
                           known: dict[str, FileState]) -> tuple[int, int, int]:
        pending: list[_Pending] = []
        touched: list[FileState] = []
        size = 0
        embedded = reused = failed = 0
        for entry in changed:
            if ui.cancel or self._closed:
                break
            content = await self._read(entry.path)
            if content is None:
                failed += 1
                touched.append(FileState(entry.path, entry.mtime_ns, entry.size, "", 0))
            else:
                digest = content_hash(content)
                state = known.get(entry.path)
                if state is not None and state.content_hash == digest:
                    touched.append(FileState(entry.path, entry.mtime_ns, entry.size, digest,
                                             state.chunks))
                else:
                    pending.append(_Pending(entry, content, digest, known=state is not None))
                    size += max(1, _estimate_chunks(content, self.settings.max_lines))
            if size >= self.settings.batch_chunks or len(touched) >= 256:
                e, r = await self._flush(ui, pending, touched)
                embedded, reused = embedded + e, reused + r
                pending, touched, size = [], [], 0
            ui.progress["files_done"] = ui.progress.get("files_done", 0) + 1
            self._emit(ui)
        if pending or touched:
            e, r = await self._flush(ui, pending, touched)
            embedded, reused = embedded + e, reused + r
        return embedded, reused, failed

    async def _read(self, path: str) -> Content:
        try:
            content = await self.reader(path)
        except Exception as exc:  # gone meanwhile, permission, binary refused by the CM
            log.debug("index: cannot read %s: %s", path, exc)
            return None
        if isinstance(content, str) and looks_binary(content[:8192].encode("utf-8",
                                                                           "surrogatepass")):
            return None
        return content

    async def _flush(self, ui: UserIndex, pending: list[_Pending],
                     touched: list[FileState]) -> tuple[int, int]:
        embedded, reused = await self._in_writer(self._write_batch, ui.index, pending, touched)
        ui.progress["chunks_embedded"] = ui.progress.get("chunks_embedded", 0) + embedded
        ui.progress["chunks_reused"] = ui.progress.get("chunks_reused", 0) + reused
        self._emit(ui)
        return embedded, reused

    def _write_batch(self, index: SemanticIndex, pending: list[_Pending],
                     touched: list[FileState]) -> tuple[int, int]:
        """Writer thread: chunk, reuse or embed, write. Returns (embedded, reused)."""
        per_file: list[tuple[_Pending, list[Chunk], list[str], list[str]]] = []
        for item in pending:
            chunks = self._chunk(item)
            inputs = [embedding_input(c) for c in chunks]
            per_file.append((item, chunks, inputs, [embedding_key(t) for t in inputs]))
        all_keys = [k for _, _, _, keys in per_file for k in keys]
        # only files the index had can have stored vectors (a new file's chunks could match
        # another file's, but looking that up costs a scan per batch during a first build)
        lookup = [k for item, _, _, keys in per_file if item.known for k in keys]
        stored = index.vectors_for(lookup) if lookup else {}
        missing: dict[str, str] = {}
        for _, _, inputs, keys in per_file:
            for text, key in zip(inputs, keys, strict=True):
                if key not in stored:
                    missing.setdefault(key, text)
        if missing:
            vectors = self.embedder.embed(list(missing.values()))
            stored.update(zip(missing.keys(), vectors, strict=True))
        updates: list[FileUpdate] = []
        for item, chunks, _, keys in per_file:
            matrix = np.stack([stored[k] for k in keys]) if keys else \
                np.zeros((0, 1), dtype=np.float32)
            state = FileState(item.entry.path, item.entry.mtime_ns, item.entry.size,
                              item.digest, len(chunks))
            updates.append(FileUpdate(state, chunks, matrix, keys))
        updates.extend(FileUpdate(state, [], np.zeros((0, 1), dtype=np.float32), [])
                       for state in touched if state.content_hash == "")
        index.replace_files(updates)
        index.touch([s for s in touched if s.content_hash])
        return len(missing), len(all_keys) - len(missing)

    def _chunk(self, item: _Pending) -> list[Chunk]:
        settings = self.settings
        try:
            if isinstance(item.content, dict):
                return chunk_notebook(item.entry.path, item.content,
                                      max_lines=settings.max_lines, overlap=settings.overlap)
            return chunk_file(item.entry.path, item.content, max_lines=settings.max_lines,
                              overlap=settings.overlap)
        except Exception:  # a chunker bug must not stop the whole pass
            log.exception("index: cannot chunk %s", item.entry.path)
            return []

    def _emit(self, ui: UserIndex, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if not force and now - ui._last_emit < PROGRESS_INTERVAL_S:
            return
        ui._last_emit = now
        try:
            self.on_progress(ui.user, ui.status())
        except Exception:
            log.exception("index progress listener failed")


def _estimate_chunks(content: str | dict[str, Any], max_lines: int) -> int:
    if isinstance(content, dict):
        return len(content.get("cells") or ())
    return content.count("\n") // max(1, max_lines) + 1

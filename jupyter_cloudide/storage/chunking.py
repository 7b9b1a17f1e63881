"""Split workspace files into chunks for the semantic search index (vectors + BM25).

Why chunks look the way they do:

* **Size.** A chunk is at most ``max_lines`` lines (60 by default) and 8000 characters. Sixty
  lines is about one screen: small enough that an embedding still describes *one* thing and a
  search hit points somewhere useful, large enough that a typical function is one chunk. The
  character cap protects the embedder's context window from minified one-line files; windows
  also stop early when their characters run out, so line ranges stay honest and only a single
  huge line is ever cut.
* **Structure over windows.** Python is split along the AST (functions, classes, methods) and
  Markdown along headings, because a chunk that starts and ends at a natural boundary embeds
  better and can be shown as "``Foo.bar`` in ``pkg/mod.py``". Everything else gets line windows
  with ``overlap`` lines shared between neighbours, so a passage cut by a window boundary is
  still whole in one of the two windows.
* **Repeated headers.** When a function, method or section is too long and must be split, every
  later part starts with the function's signature (plus a ``class Name(bases):`` line for
  methods) or the section's heading, so each part is understandable and retrievable on its own.
  ``start_line``/``end_line`` still give the real lines of the part.
* **Reduced notebook outputs.** Outputs tell what a cell did (a DataFrame's columns, an error),
  which helps retrieval, but they are mostly noise for embeddings: base64 images, thousands of
  log lines, full HTML tables. So only a short head of text output, one line of column names for
  a DataFrame, and ``ename: evalue`` for errors are kept.

Everything here is pure and deterministic (same input, same chunks, in file order), so the index
can reuse the embedding of any chunk whose :attr:`Chunk.content_hash` did not change.
"""

from __future__ import annotations

import ast
import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, TypeAlias

__all__ = ["LANGUAGES", "Chunk", "chunk_file", "chunk_notebook", "language_of"]

_MAX_CHARS = 8000
"""Hard cap on a chunk's text; keeps one minified line from becoming a giant embedding input."""
_OUTPUT_LINES = 10
_OUTPUT_CHARS = 1000
_MAX_COLUMNS = 100
_OUTPUTS_SEPARATOR = "# --- outputs ---"
_IMAGE_MIMETYPES = frozenset({"image/png", "image/jpeg", "image/svg+xml"})

_NEWLINE = re.compile(r"\r\n|\r|\n")
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_HEADING_CLOSE = re.compile(r"(?:^|[ \t]+)#+$")

LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".pyw": "python",
    ".pyi": "python",
    ".ipynb": "notebook",
    ".md": "markdown",
    ".markdown": "markdown",
    ".r": "r",
    ".jl": "julia",
    ".sql": "sql",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".html": "html",
    ".htm": "html",
    ".css": "css",
    ".scss": "css",
    ".c": "c",
    ".h": "c",
    ".cpp": "cpp",
    ".cc": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".java": "java",
    ".go": "go",
    ".rs": "rust",
    ".scala": "scala",
    ".sc": "scala",
    ".txt": "text",
    ".rst": "rst",
    ".cfg": "ini",
    ".ini": "ini",
}


@dataclass(frozen=True)
class Chunk:
    """One piece of a file as indexed: embedded and full-text searched as a unit."""

    path: str
    language: str
    kind: str
    start_line: int
    end_line: int
    text: str
    symbol: str | None = None
    cell_id: str | None = None
    cell_index: int | None = None

    @property
    def content_hash(self) -> str:
        """Key for reusing embeddings: unchanged text means an unchanged vector."""
        # surrogatepass: notebook JSON may carry lone surrogates ("\ud800"), which plain UTF-8
        # refuses; the hash must never be the reason a file cannot be indexed.
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


def language_of(path: str) -> str:
    """The language the index records, from the extension alone (content is not sniffed)."""
    extension = posixpath.splitext(posixpath.basename(path))[1].lower()
    return LANGUAGES.get(extension, "text")


def chunk_file(
    path: str,
    text: str,
    *,
    max_lines: int = 60,
    overlap: int = 8,
    strip_docstrings: bool = False,
) -> list[Chunk]:
    """Chunk a file by its language; never raises on malformed content (it is user data).

    ``strip_docstrings`` only affects Python; it exists for retrieval benchmarks whose queries
    are the docstrings themselves.
    """
    _check_sizes(max_lines, overlap)
    text = text.removeprefix("\ufeff")
    language = language_of(path)
    if language == "notebook":
        try:
            notebook = json.loads(text)
        except (ValueError, RecursionError):
            return []
        if not isinstance(notebook, dict):
            return []
        return chunk_notebook(path, notebook, max_lines=max_lines, overlap=overlap)
    lines = _split_lines(text)
    if language == "python":
        return _chunk_python(path, text, lines, max_lines, overlap, strip_docstrings)
    if language == "markdown":
        return _chunk_markdown(path, lines, max_lines, overlap)
    return _chunk_lines(path, language, lines, max_lines, overlap)


def chunk_notebook(
    path: str, notebook: dict[str, Any], *, max_lines: int = 60, overlap: int = 8
) -> list[Chunk]:
    """Chunk a notebook cell by cell, so a hit can open the exact cell.

    Malformed notebooks (no ``cells`` list, odd cells) yield what can be salvaged, never raise.
    """
    _check_sizes(max_lines, overlap)
    if not isinstance(notebook, dict):
        return []
    cells = notebook.get("cells")
    if not isinstance(cells, list):
        return []
    kernel_language = _kernel_language(notebook.get("metadata"))
    chunks: list[Chunk] = []
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict):
            continue
        source = _joined(cell.get("source"))
        if not source.strip():
            continue
        cell_type = cell.get("cell_type")
        if cell_type == "code":
            language = kernel_language
            outputs = _reduce_outputs(cell.get("outputs"))
        else:
            language = "markdown" if cell_type == "markdown" else "text"
            outputs = ""
        raw_id = cell.get("id")
        cell_id = raw_id if isinstance(raw_id, str) else None
        doc = _Lines(_split_lines(source))
        windows = _windows(doc, _trim(doc, doc.all()), max_lines, overlap)
        for number, window in enumerate(windows):
            body = doc.render(window)
            if outputs and number == len(windows) - 1:
                # Outputs follow the code they came from, so they go with the last part only.
                body = f"{body}\n{_OUTPUTS_SEPARATOR}\n{outputs}"
            chunk = _chunk(path, language, "cell", window, body, cell_id=cell_id, cell_index=index)
            if chunk is not None:
                chunks.append(chunk)
    return chunks


# --- shared line machinery -------------------------------------------------------------------


def _check_sizes(max_lines: int, overlap: int) -> None:
    if max_lines < 1:
        raise ValueError(f"max_lines must be at least 1, not {max_lines}")
    if overlap < 0:
        raise ValueError(f"overlap must not be negative, not {overlap}")


def _split_lines(text: str) -> list[str]:
    """Lines as Python's tokenizer counts them (``str.splitlines`` also splits on form feeds
    and U+2028, which would shift every line number after them relative to the AST)."""
    if not text:
        return []
    lines = _NEWLINE.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


class _Lines:
    """A file's lines, with optional per-line replacements (stripped docstrings).

    Chunks are cut on the original line numbers and rendered through the replacements, so
    removing text never moves a line number.
    """

    def __init__(
        self, lines: Sequence[str], overrides: dict[int, str | None] | None = None
    ) -> None:
        self.lines = lines
        self.overrides: dict[int, str | None] = overrides or {}

    def all(self) -> list[int]:
        return list(range(1, len(self.lines) + 1))

    def raw(self, number: int) -> str:
        return self.lines[number - 1]

    def blank(self, number: int) -> bool:
        return not self.lines[number - 1].strip()

    def render(self, numbers: Iterable[int]) -> str:
        """The lines' text through the overrides, without blank lines at either end (a stripped
        docstring must not leave a hole at the top of a chunk)."""
        out: list[str] = []
        for number in numbers:
            line = self.overrides.get(number, self.lines[number - 1])
            if line is not None and (out or line.strip()):
                out.append(line)
        while out and not out[-1].strip():
            out.pop()
        return "\n".join(out)


def _trim(doc: _Lines, numbers: Sequence[int]) -> list[int]:
    """Drop blank lines at both ends: they carry nothing and would blur the line range."""
    lo, hi = 0, len(numbers)
    while lo < hi and doc.blank(numbers[lo]):
        lo += 1
    while hi > lo and doc.blank(numbers[hi - 1]):
        hi -= 1
    return list(numbers[lo:hi])


def _windows(
    doc: _Lines,
    numbers: Sequence[int],
    size: int,
    overlap: int,
    *,
    later_size: int | None = None,
    budget: int = _MAX_CHARS,
) -> list[list[int]]:
    """Cut ``numbers`` (line numbers, in order) into overlapping windows, each trimmed.

    A window ends at ``size`` lines (``later_size`` after the first, to leave room for a
    repeated header) or when the next line would exceed ``budget`` characters, whichever comes
    first; a window always holds at least one line. Overlap is given up where it would not fit
    next to the following line, so every window moves past the previous one and together they
    cover every line. Windows that trim to nothing are dropped.
    """
    later = size if later_size is None else max(1, later_size)
    budget = max(budget, 1)
    cost = [len(doc.raw(number)) + 1 for number in numbers]
    windows: list[list[int]] = []
    start, count = 0, len(numbers)
    first = True
    while start < count:
        limit = size if first else later
        end, chars = start, 0
        while end < count and end - start < limit:
            if end > start and chars + cost[end] > budget:
                break
            chars += cost[end]
            end += 1
        window = _trim(doc, numbers[start:end])
        if window:
            windows.append(window)
        if end >= count:
            break
        shared = min(overlap, end - start - 1, later - 1)
        while shared > 0 and (
            sum(cost[end - shared : end]) > budget // 4
            or sum(cost[end - shared : end]) + cost[end] > budget
        ):
            shared -= 1
        start = end - shared
        first = False
    return windows


def _chunk(
    path: str,
    language: str,
    kind: str,
    numbers: Sequence[int],
    text: str,
    *,
    symbol: str | None = None,
    cell_id: str | None = None,
    cell_index: int | None = None,
) -> Chunk | None:
    """Build a chunk, or None when its text is blank (nothing to embed or match)."""
    if not numbers or not text.strip():
        return None
    capped = text[:_MAX_CHARS]
    if not capped.strip():
        capped = text.strip()[:_MAX_CHARS]
    return Chunk(
        path=path,
        language=language,
        kind=kind,
        start_line=numbers[0],
        end_line=numbers[-1],
        text=capped,
        symbol=symbol,
        cell_id=cell_id,
        cell_index=cell_index,
    )


def _chunk_lines(
    path: str, language: str, lines: Sequence[str], max_lines: int, overlap: int, kind: str = "text"
) -> list[Chunk]:
    doc = _Lines(lines)
    chunks: list[Chunk] = []
    for window in _windows(doc, _trim(doc, doc.all()), max_lines, overlap):
        chunk = _chunk(path, language, kind, window, doc.render(window))
        if chunk is not None:
            chunks.append(chunk)
    return chunks


# --- Python ----------------------------------------------------------------------------------

_Def: TypeAlias = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
_DEF_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _chunk_python(
    path: str,
    text: str,
    lines: Sequence[str],
    max_lines: int,
    overlap: int,
    strip_docstrings: bool,
) -> list[Chunk]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        # Half-edited files are normal in an IDE; they still deserve to be searchable.
        return _chunk_lines(path, "python", lines, max_lines, overlap)
    doc = _Lines(lines, _docstring_overrides(tree, lines) if strip_docstrings else None)
    chunker = _PythonChunker(path, doc, max_lines, overlap)
    covered = [False] * (len(lines) + 2)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            chunker.definition(node, node.name, "function")
        elif isinstance(node, ast.ClassDef):
            chunker.klass(node)
        else:
            continue
        for number in range(_def_start(node, doc), _end(node) + 1):
            covered[number] = True
    # Module-level code (imports, constants, `if __name__ == ...`) in runs of consecutive lines.
    run: list[int] = []
    for number in [*doc.all(), len(lines) + 1]:
        if number <= len(lines) and not covered[number]:
            run.append(number)
            continue
        for window in _windows(doc, _trim(doc, run), max_lines, overlap):
            chunker.add("module", window, doc.render(window), None)
        run = []
    return sorted(chunker.chunks, key=lambda chunk: (chunk.start_line, chunk.end_line))


class _PythonChunker:
    def __init__(self, path: str, doc: _Lines, max_lines: int, overlap: int) -> None:
        self.path = path
        self.doc = doc
        self.max_lines = max_lines
        self.overlap = overlap
        self.chunks: list[Chunk] = []

    def add(self, kind: str, numbers: Sequence[int], text: str, symbol: str | None) -> None:
        chunk = _chunk(self.path, "python", kind, numbers, text, symbol=symbol)
        if chunk is not None:
            self.chunks.append(chunk)

    def definition(self, node: _Def, symbol: str, kind: str, context: str | None = None) -> None:
        """A function or method (or a nested class): one chunk, or parts that each repeat the
        signature so that a part from the middle of a long function still says whose it is."""
        doc = self.doc
        numbers = list(range(_def_start(node, doc), _end(node) + 1))
        prefix = f"{context}\n" if context else ""
        if len(numbers) <= self.max_lines:
            body = doc.render(numbers)
            if body:
                self.add(kind, numbers, prefix + body, symbol)
            return
        header_end = _header_end(node, doc)
        signature = doc.render(range(node.lineno, header_end + 1))
        signature_lines = header_end - node.lineno + 1
        repeat = prefix + signature + "\n"
        later_size = max(self.max_lines - signature_lines, self.max_lines // 2, 1)
        windows = _windows(
            doc,
            numbers,
            self.max_lines,
            self.overlap,
            later_size=later_size,
            budget=max(_MAX_CHARS - len(repeat), _MAX_CHARS // 2),
        )
        for index, window in enumerate(windows):
            body = doc.render(window)
            if not body:
                continue  # only a stripped docstring: a bare signature would be noise
            head = repeat if index > 0 and window[0] > header_end else prefix
            self.add(kind, window, head + body, symbol)

    def klass(self, node: ast.ClassDef) -> None:
        """A class: whole if it fits, else a header chunk plus one chunk per member.

        Members are methods and nested classes (no deeper recursion); each starts with a
        ``class Name(bases):`` line because a method alone does not say which class it is in.
        """
        doc = self.doc
        start, end = _def_start(node, doc), _end(node)
        if end - start + 1 <= self.max_lines:
            numbers = list(range(start, end + 1))
            self.add("class", numbers, doc.render(numbers), node.name)
            return
        context = _class_context(node)
        members: list[_Def] = [
            member
            for member in node.body
            if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
        in_member: set[int] = set()
        for member in members:
            in_member.update(range(_def_start(member, doc), _end(member) + 1))
        header: list[int] = []
        for number in range(start, end + 1):
            if number in in_member:
                continue
            if doc.blank(number) and header and doc.blank(header[-1]):
                continue  # collapse the blank lines left where members were cut out
            header.append(number)
        windows = _windows(
            doc, _trim(doc, header), self.max_lines, self.overlap, later_size=self.max_lines - 1
        )
        for index, window in enumerate(windows):
            body = doc.render(window)
            if body:
                head = f"{context}\n" if index > 0 else ""
                self.add("class", window, head + body, node.name)
        for member in members:
            kind = "class" if isinstance(member, ast.ClassDef) else "function"
            self.definition(member, f"{node.name}.{member.name}", kind, context)


def _end(node: ast.stmt) -> int:
    return node.end_lineno if node.end_lineno is not None else node.lineno


def _def_start(node: _Def, doc: _Lines) -> int:
    """First line of a definition including its decorators (where the ``@`` is)."""
    start = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
    # A decorator expression may start after its `@` line (`@\\` continuation, `@(\n...)`).
    while node.decorator_list and start > 1 and not doc.raw(start).lstrip().startswith("@"):
        start -= 1
    return start


def _header_end(node: _Def, doc: _Lines) -> int:
    """Last line of the ``def ...:`` / ``class ...:`` header (through the colon)."""
    first = node.body[0]
    line = doc.raw(first.lineno)
    indent = len(line) - len(line.lstrip())
    if first.lineno <= node.lineno or first.col_offset > len(line[:indent].encode("utf-8")):
        return first.lineno  # the body starts on the header's last line (`def f(): return 1`)
    body_start = _def_start(first, doc) if isinstance(first, _DEF_TYPES) else first.lineno
    end = body_start - 1
    while end > node.lineno and (doc.blank(end) or doc.raw(end).lstrip().startswith("#")):
        end -= 1  # comments between the colon and the first statement are not the header
    return end


def _class_context(node: ast.ClassDef) -> str:
    """``class Name(bases):`` on one line, even when the source spreads the bases out."""
    arguments = [ast.unparse(base) for base in node.bases]
    arguments += [ast.unparse(keyword) for keyword in node.keywords]
    return f"class {node.name}({', '.join(arguments)}):" if arguments else f"class {node.name}:"


def _docstring_overrides(tree: ast.Module, lines: Sequence[str]) -> dict[int, str | None]:
    """Line replacements that remove every module, class and function docstring.

    Works on columns, not whole lines, so ``def f(): \"\"\"doc\"\"\"`` keeps ``def f():``.
    """
    overrides: dict[int, str | None] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if not node.body:
            continue
        first = node.body[0]
        if not (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
            and first.end_lineno is not None
            and first.end_col_offset is not None
        ):
            continue
        top, bottom = first.lineno, first.end_lineno
        if any(number in overrides for number in range(top, bottom + 1)):
            continue
        head = lines[top - 1].encode("utf-8")[: first.col_offset].decode("utf-8", "replace")
        tail = lines[bottom - 1].encode("utf-8")[first.end_col_offset :].decode("utf-8", "replace")
        tail = re.sub(r"^\s*;\s*", "", tail)  # `"""doc"""; x = 1` keeps `x = 1`
        if not tail.strip():
            merged = head.rstrip()
        elif not head.strip():
            merged = head + tail
        else:
            merged = head.rstrip() + " " + tail
        overrides[top] = merged if merged.strip() else None
        for number in range(top + 1, bottom + 1):
            overrides[number] = None
    return overrides


# --- Markdown --------------------------------------------------------------------------------


def _chunk_markdown(path: str, lines: Sequence[str], max_lines: int, overlap: int) -> list[Chunk]:
    """Sections by ATX heading, each named by its heading path ("Install > From source")."""
    doc = _Lines(lines)
    headings: list[tuple[int, str]] = []  # (line, breadcrumb)
    trail: list[tuple[int, str]] = []  # (level, title) of the enclosing headings
    fence: tuple[str, int] | None = None
    for number, line in enumerate(lines, start=1):
        if fence is not None:
            char, length = fence
            stripped = line.strip()
            if (
                len(line) - len(line.lstrip(" ")) <= 3
                and len(stripped) >= length
                and stripped == char * len(stripped)
            ):
                fence = None
            continue
        opened = _FENCE_OPEN.match(line)
        if opened:
            marker = opened.group(1)
            if not (marker[0] == "`" and "`" in line[opened.end() :]):
                fence = (marker[0], len(marker))
                continue
        match = _HEADING.match(line)
        if not match:
            continue
        level = len(match.group(1))
        title = _HEADING_CLOSE.sub("", match.group(2) or "").strip()
        while trail and trail[-1][0] >= level:
            trail.pop()
        trail.append((level, title))
        headings.append((number, " > ".join(name for _, name in trail)))
    chunks: list[Chunk] = []
    starts = [number for number, _ in headings]
    bounds = [*starts, len(lines) + 1]
    if not starts or starts[0] > 1:
        preamble = list(range(1, bounds[0]))
        for window in _windows(doc, _trim(doc, preamble), max_lines, overlap):
            _append(chunks, _chunk(path, "markdown", "section", window, doc.render(window)))
    for (start, symbol), stop in zip(headings, bounds[1:], strict=True):
        heading = doc.raw(start)
        numbers = _trim(doc, range(start, stop))
        windows = _windows(
            doc,
            numbers,
            max_lines,
            overlap,
            later_size=max_lines - 1,
            budget=max(_MAX_CHARS - len(heading) - 1, _MAX_CHARS // 2),
        )
        for index, window in enumerate(windows):
            text = doc.render(window)
            if index > 0:
                text = f"{heading}\n{text}"
            _append(chunks, _chunk(path, "markdown", "section", window, text, symbol=symbol))
    return chunks


def _append(chunks: list[Chunk], chunk: Chunk | None) -> None:
    if chunk is not None:
        chunks.append(chunk)


# --- notebooks -------------------------------------------------------------------------------


def _kernel_language(metadata: object) -> str:
    if isinstance(metadata, dict):
        for key, field in (("kernelspec", "language"), ("language_info", "name")):
            section = metadata.get(key)
            if isinstance(section, dict):
                value = section.get(field)
                if isinstance(value, str) and value.strip():
                    return value.strip().lower()
    return "python"


def _joined(value: object) -> str:
    """nbformat multiline strings: a str, or a list of str (each with its own newline)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(part for part in value if isinstance(part, str))
    return ""


def _head(text: str) -> str:
    """The first lines of a text output: enough to see what happened, never a whole log."""
    lines = _split_lines(text)
    head = "\n".join(lines[:_OUTPUT_LINES])
    cut = len(lines) > _OUTPUT_LINES or len(head) > _OUTPUT_CHARS
    head = head[:_OUTPUT_CHARS].rstrip()
    return f"{head}\n..." if cut and head else head


def _reduce_outputs(outputs: object) -> str:
    if not isinstance(outputs, list):
        return ""
    reduced: list[str] = []
    for output in outputs:
        if not isinstance(output, dict):
            continue
        kind = output.get("output_type")
        text = ""
        if kind == "stream":
            text = _head(_joined(output.get("text")))
        elif kind in ("execute_result", "display_data"):
            text = _reduce_data(output.get("data"))
        elif kind == "error":
            name, value = output.get("ename"), output.get("evalue")
            if isinstance(name, str) and name:
                text = f"{name}: {value}" if isinstance(value, str) and value else name
        if text.strip():
            reduced.append(text)
    return "\n".join(reduced)


def _reduce_data(data: object) -> str:
    """A rich output in one or a few lines; images and other binary mimetypes are dropped."""
    if not isinstance(data, dict):
        return ""
    html = _joined(data.get("text/html"))
    if "<table" in html.lower():
        columns = _table_columns(html)
        if columns:
            shown = columns[:_MAX_COLUMNS]
            more = ", ..." if len(columns) > _MAX_COLUMNS else ""
            return f"DataFrame columns: {', '.join(shown)}{more}"
    if "text/plain" in data:
        return _head(_joined(data["text/plain"]))
    return ""


class _StopParsing(Exception):
    """Raised from the parser once the header row is read; the table body can be megabytes."""


class _HeaderRowParser(HTMLParser):
    """Collects the ``<th>`` texts of a table's first header row (pandas: the column names)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.columns: list[str] = []
        self.in_thead = False
        self.seen_thead = False
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "thead":
            self.in_thead = self.seen_thead = True
        elif tag == "th" and (self.in_thead or not self.seen_thead):
            self.cell = []

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "th" and self.cell is not None:
            self.columns.append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag in ("tr", "thead") and any(self.columns):
            raise _StopParsing
        elif tag == "thead":
            self.in_thead = False


def _table_columns(html: str) -> list[str]:
    parser = _HeaderRowParser()
    try:
        parser.feed(html)
        parser.close()
    except _StopParsing:
        pass
    # The first header cell of a DataFrame is the (usually unnamed) index: empty, dropped.
    return [column for column in parser.columns if column]

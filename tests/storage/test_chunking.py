"""Chunking of workspace files for the semantic index: structure, line ranges, size caps.

Line ranges are checked against the source everywhere, because a wrong range sends the user
(and the agent) to the wrong place in the file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_cloudide.storage.chunking import (
    LANGUAGES,
    Chunk,
    chunk_file,
    chunk_notebook,
    language_of,
)


def source_of(src: str, chunk: Chunk) -> str:
    """The lines a chunk claims to cover, straight from the source."""
    return "\n".join(src.split("\n")[chunk.start_line - 1 : chunk.end_line])


def by_symbol(chunks: list[Chunk]) -> dict[str | None, list[Chunk]]:
    out: dict[str | None, list[Chunk]] = {}
    for chunk in chunks:
        out.setdefault(chunk.symbol, []).append(chunk)
    return out


def assert_well_formed(chunks: list[Chunk], line_count: int) -> None:
    for chunk in chunks:
        assert chunk.text.strip()
        assert len(chunk.text) <= 8000
        assert 1 <= chunk.start_line <= chunk.end_line <= line_count


def assert_covers_non_blank(chunks: list[Chunk], lines: list[str]) -> None:
    covered: set[int] = set()
    for chunk in chunks:
        covered.update(range(chunk.start_line, chunk.end_line + 1))
    missing = [n for n, line in enumerate(lines, start=1) if line.strip() and n not in covered]
    assert not missing, f"lines not in any chunk: {missing}"


# --- language_of ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "language"),
    [
        ("pkg/mod.py", "python"),
        ("a.ipynb", "notebook"),
        ("README.md", "markdown"),
        ("analysis.R", "r"),
        ("x.jl", "julia"),
        ("q.sql", "sql"),
        ("app.min.js", "javascript"),
        ("src/index.ts", "typescript"),
        ("package.json", "json"),
        ("ci.yml", "yaml"),
        ("c.yaml", "yaml"),
        ("pyproject.toml", "toml"),
        ("run.sh", "shell"),
        ("page.html", "html"),
        ("style.css", "css"),
        ("m.c", "c"),
        ("m.cpp", "cpp"),
        ("M.java", "java"),
        ("main.go", "go"),
        ("lib.rs", "rust"),
        ("A.scala", "scala"),
        ("notes.txt", "text"),
        ("setup.cfg", "ini"),
        ("docs/index.rst", "rst"),
        ("Makefile", "text"),
        ("archive.weird", "text"),
        ("dir.py/file", "text"),
        (".bashrc", "text"),
    ],
)
def test_language_of(path: str, language: str) -> None:
    assert language_of(path) == language


def test_languages_keys_are_lowercase_extensions() -> None:
    assert all(key.startswith(".") and key == key.lower() for key in LANGUAGES)
    assert LANGUAGES[".py"] == "python"


def test_content_hash_is_sha256_of_text() -> None:
    chunk = Chunk(path="a.txt", language="text", kind="text", start_line=1, end_line=1, text="hé")
    assert chunk.content_hash == hashlib.sha256("hé".encode()).hexdigest()
    lone = Chunk(path="a", language="text", kind="text", start_line=1, end_line=1, text="\ud800")
    assert len(lone.content_hash) == 64  # notebooks can carry lone surrogates; must not raise


def test_invalid_sizes_raise() -> None:
    with pytest.raises(ValueError):
        chunk_file("a.txt", "x", max_lines=0)
    with pytest.raises(ValueError):
        chunk_file("a.txt", "x", overlap=-1)


# --- Python ----------------------------------------------------------------------------------

PY = '''"""Module doc."""
import os

X = 1


@decorator
@other(arg=1)
def f(a, b):
    """Doc f."""
    return a + b


async def g():
    await x


class Small(Base):
    """Small doc."""
    y = 2

    def m(self):
        return 1


if __name__ == "__main__":
    f(1, 2)
'''


def test_python_functions_classes_and_module_code() -> None:
    chunks = chunk_file("pkg/mod.py", PY)
    assert [(c.kind, c.symbol, c.start_line, c.end_line) for c in chunks] == [
        ("module", None, 1, 4),
        ("function", "f", 7, 11),
        ("function", "g", 14, 15),
        ("class", "Small", 18, 23),
        ("module", None, 26, 27),
    ]
    for chunk in chunks:
        assert chunk.path == "pkg/mod.py"
        assert chunk.language == "python"
        assert chunk.text == source_of(PY, chunk)
        assert chunk.cell_id is None
        assert chunk.cell_index is None
    module, f, g, _, main = chunks
    assert module.text.startswith('"""Module doc."""')  # the module docstring is in chunk 1
    assert f.text.startswith("@decorator\n@other(arg=1)\ndef f(a, b):")
    assert '"""Doc f."""' in f.text
    assert g.text.startswith("async def g():")
    assert main.text.startswith("if __name__")


def test_python_is_deterministic_and_ordered() -> None:
    first = chunk_file("m.py", PY, max_lines=5, overlap=2)
    assert first == chunk_file("m.py", PY, max_lines=5, overlap=2)
    starts = [chunk.start_line for chunk in first]
    assert starts == sorted(starts)


BIG_CLASS = (
    '''import abc


class Big(
    Base,
    metaclass=Meta,
):
    """Big doc."""

    attr = 1

    @property
    def p(self):
        """P doc."""
        return 1

    async def q(self):
        return 2

    class Inner:
        z = 1

    other = 2
'''
    + "\n".join(f"    c{i} = {i}" for i in range(10))
    + "\n"
)


def test_class_too_long_gives_header_and_member_chunks() -> None:
    chunks = chunk_file("big.py", BIG_CLASS, max_lines=12, overlap=2)
    symbols = by_symbol(chunks)
    context = "class Big(Base, metaclass=Meta):"

    (header, *header_rest) = symbols["Big"]
    assert header.kind == "class"
    assert header.start_line == 4
    assert header.text.startswith("class Big(\n    Base,")
    assert '"""Big doc."""' in header.text
    assert "attr = 1" in header.text
    assert "def p" not in header.text and "return 1" not in header.text
    assert "class Inner" not in header.text
    for part in header_rest:  # class attributes spill into more header parts, with context
        assert part.text.startswith(context + "\n")
    header_text = "\n".join([header.text, *(p.text.split("\n", 1)[1] for p in header_rest)])
    assert "other = 2" in header_text and "c9 = 9" in header_text

    (p,) = symbols["Big.p"]
    assert (p.kind, p.start_line, p.end_line) == ("function", 12, 15)
    assert p.text == context + "\n" + source_of(BIG_CLASS, p)
    assert p.text.split("\n")[1] == "    @property"  # decorator kept, indentation kept

    (q,) = symbols["Big.q"]
    assert (q.kind, q.start_line, q.end_line) == ("function", 17, 18)
    assert q.text == context + "\n" + source_of(BIG_CLASS, q)

    (inner,) = symbols["Big.Inner"]
    assert (inner.kind, inner.start_line, inner.end_line) == ("class", 20, 21)
    assert inner.text == context + "\n" + source_of(BIG_CLASS, inner)

    assert_covers_non_blank(chunks, BIG_CLASS.split("\n"))


def test_class_that_fits_is_one_chunk_with_its_methods() -> None:
    chunks = chunk_file("big.py", BIG_CLASS, max_lines=60)
    klass = [c for c in chunks if c.symbol == "Big"]
    assert len(klass) == 1
    assert (klass[0].start_line, klass[0].end_line) == (4, 33)
    assert klass[0].text == source_of(BIG_CLASS, klass[0])
    assert not any(c.symbol and "." in c.symbol for c in chunks)


def long_function(body_lines: int) -> str:
    body = "\n".join(f"    x{i} = {i}" for i in range(body_lines))
    return f"@cache\ndef long(\n    a: int,\n    b: int = 2,\n) -> int:\n    # first\n{body}\n"


def test_long_function_is_split_with_signature_repeated() -> None:
    max_lines, overlap = 20, 4
    src = long_function(80)
    signature = "def long(\n    a: int,\n    b: int = 2,\n) -> int:"
    parts = chunk_file("long.py", src, max_lines=max_lines, overlap=overlap)
    assert len(parts) > 3
    assert all(p.kind == "function" and p.symbol == "long" for p in parts)

    first, *rest = parts
    assert first.start_line == 1  # the decorator
    assert first.text == source_of(src, first)
    assert first.end_line - first.start_line + 1 == max_lines
    for part in rest:
        assert part.text.startswith(signature + "\n")
        assert "# first" not in part.text.split("\n", 5)[4]  # the header stops at the colon
        body = part.text[len(signature) + 1 :]
        assert body == source_of(src, part)  # the range is the real lines, not the signature
        assert len(part.text.split("\n")) <= max_lines
    for before, after in itertools.pairwise(parts):
        assert after.start_line == before.end_line - overlap + 1  # exactly `overlap` shared
    assert parts[-1].end_line == len(src.split("\n")) - 1
    assert_covers_non_blank(parts, src.split("\n"))


def test_long_method_parts_repeat_context_and_signature() -> None:
    body = "\n".join(f"        y{i} = {i}" for i in range(40))
    src = f"class K(object):\n    def run(self, n):\n{body}\n"
    parts = chunk_file("k.py", src, max_lines=15, overlap=3)
    methods = [p for p in parts if p.symbol == "K.run"]
    assert len(methods) > 2
    assert methods[0].text == "class K(object):\n" + source_of(src, methods[0])
    for part in methods[1:]:
        prefix = "class K(object):\n    def run(self, n):\n"
        assert part.text.startswith(prefix)
        assert part.text[len(prefix) :] == source_of(src, part)


def test_one_line_body_signature() -> None:
    src = "def f(a): return [\n" + ",\n".join(f"    {i}" for i in range(30)) + "\n]\n"
    parts = chunk_file("o.py", src, max_lines=10, overlap=2)
    assert len(parts) > 1
    for part in parts[1:]:
        assert part.text.startswith("def f(a): return [\n")


STRIP = '''"""Module doc
over two lines."""

import os


def f():
    """Find the answer."""
    return 42


def g(): """One-liner doc."""


class C:
    """Class doc."""

    def m(self):
        """Method doc.

        Long.
        """
        return "kept string"
'''


def test_strip_docstrings_keeps_code_and_line_numbers() -> None:
    plain = chunk_file("s.py", STRIP)
    stripped = chunk_file("s.py", STRIP, strip_docstrings=True)
    assert [(c.kind, c.symbol, c.start_line, c.end_line) for c in stripped] == [
        (c.kind, c.symbol, c.start_line, c.end_line) for c in plain
    ]
    text = "\n".join(c.text for c in stripped)
    for doc in ("Module doc", "over two lines", "Find the answer", "One-liner", "Class doc"):
        assert doc not in text
    assert "Method doc" not in text and "Long." not in text
    by = {c.symbol: c for c in stripped}
    assert by["f"].text == "def f():\n    return 42"
    assert by["g"].text == "def g():"
    assert by["C"].text == 'class C:\n\n    def m(self):\n        return "kept string"'
    assert stripped[0].text == "import os"
    assert stripped[0].start_line == 1  # the range still spans the (stripped) docstring


def test_strip_docstrings_drops_a_docstring_only_module_chunk() -> None:
    src = '"""Only a docstring."""\n\n\ndef f():\n    return 1\n'
    chunks = chunk_file("d.py", src, strip_docstrings=True)
    assert [(c.kind, c.symbol) for c in chunks] == [("function", "f")]


def test_syntax_error_falls_back_to_lines() -> None:
    src = "def broken(:\n    pass\n" + "\n".join(f"x{i} = {i}" for i in range(30)) + "\n"
    chunks = chunk_file("bad.py", src, max_lines=10, overlap=2)
    assert len(chunks) > 2
    assert all(c.language == "python" and c.kind == "text" for c in chunks)
    assert all(c.text == source_of(src, c) for c in chunks)
    assert_covers_non_blank(chunks, src.split("\n"))


def test_null_bytes_fall_back_to_lines() -> None:
    chunks = chunk_file("nul.py", "x = 1\x00\ny = 2\n")
    assert [(c.kind, c.start_line, c.end_line) for c in chunks] == [("text", 1, 2)]


def test_python_crlf_and_form_feed_line_numbers() -> None:
    src = "import os\r\n\x0cY = 2\r\n\r\ndef f():\r\n    return 1\r\n"
    (module, f) = chunk_file("w.py", src)
    assert (module.start_line, module.end_line) == (1, 2)
    assert (f.symbol, f.start_line, f.end_line) == ("f", 4, 5)
    assert f.text == "def f():\n    return 1"


def test_bom_and_empty_python() -> None:
    assert chunk_file("e.py", "") == []
    assert chunk_file("e.py", "\n\n   \n") == []
    (chunk,) = chunk_file("b.py", "\ufeffdef f():\n    pass\n")
    assert chunk.symbol == "f"


# --- notebooks -------------------------------------------------------------------------------

PANDAS_HTML = """<div>
<style scoped>
    .dataframe tbody tr th:only-of-type { vertical-align: middle; }
    .dataframe thead th { text-align: right; }
</style>
<table border="1" class="dataframe">
  <thead>
    <tr style="text-align: right;">
      <th></th>
      <th>name</th>
      <th>age</th>
      <th>home &amp; city</th>
    </tr>
  </thead>
  <tbody>
    <tr>
      <th>0</th>
      <td>Ann</td>
      <td>31</td>
      <td>Oslo</td>
    </tr>
  </tbody>
</table>
</div>"""

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def notebook(cells: list[dict[str, Any]], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": metadata or {}, "cells": cells}


def code(source: Any, outputs: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "cell_type": "code",
        "source": source,
        "outputs": outputs or [],
        "metadata": {},
        **extra,
    }


def markdown(source: Any, **extra: Any) -> dict[str, Any]:
    return {"cell_type": "markdown", "source": source, "metadata": {}, **extra}


def test_notebook_cells_ids_indexes_and_languages() -> None:
    nb = notebook(
        [
            markdown("# Title\n\nIntro.", id="md-1"),
            code("", id="empty"),
            code(["import pandas as pd\n", "df = pd.read_csv('x.csv')"], id="code-1"),
            code("   \n\t\n"),
            {"cell_type": "raw", "source": "raw text", "metadata": {}},
            code("print(1)"),
        ],
        metadata={"kernelspec": {"name": "ir", "language": "R"}},
    )
    chunks = chunk_file("work/analysis.ipynb", json.dumps(nb))
    assert chunks == chunk_notebook("work/analysis.ipynb", nb)
    assert [(c.cell_index, c.cell_id, c.language, c.kind) for c in chunks] == [
        (0, "md-1", "markdown", "cell"),
        (2, "code-1", "r", "cell"),
        (4, None, "text", "cell"),
        (5, None, "r", "cell"),
    ]
    assert chunks[0].text == "# Title\n\nIntro."
    assert (chunks[0].start_line, chunks[0].end_line) == (1, 3)
    assert chunks[1].text == "import pandas as pd\ndf = pd.read_csv('x.csv')"  # list joined
    assert (chunks[1].start_line, chunks[1].end_line) == (1, 2)
    assert all(c.path == "work/analysis.ipynb" for c in chunks)


@pytest.mark.parametrize(
    ("metadata", "language"),
    [
        ({}, "python"),
        ({"language_info": {"name": "julia"}}, "julia"),
        ({"kernelspec": {"language": "python"}, "language_info": {"name": "R"}}, "python"),
        ({"kernelspec": "garbage"}, "python"),
    ],
)
def test_notebook_kernel_language(metadata: dict[str, Any], language: str) -> None:
    (chunk,) = chunk_notebook("n.ipynb", notebook([code("x = 1")], metadata))
    assert chunk.language == language


def test_stream_output_keeps_only_the_head() -> None:
    log = "".join(f"line {i}\n" for i in range(50))
    outputs: list[Any] = [
        {"output_type": "stream", "name": "stdout", "text": log},
        {"output_type": "stream", "name": "stderr", "text": ["warn " * 500]},
    ]
    (chunk,) = chunk_notebook("n.ipynb", notebook([code("run()", outputs)]))
    source, separator, reduced = chunk.text.partition("\n# --- outputs ---\n")
    assert separator and source == "run()"
    assert "line 0\n" in reduced and "line 9" in reduced
    assert "line 10" not in reduced and "line 49" not in reduced
    assert reduced.count("warn") <= 1000 // len("warn ") + 1
    assert (chunk.start_line, chunk.end_line) == (1, 1)  # outputs never move the range


def test_dataframe_html_becomes_column_names() -> None:
    output = {
        "output_type": "execute_result",
        "execution_count": 1,
        "metadata": {},
        "data": {
            "text/html": PANDAS_HTML.splitlines(True),
            "text/plain": "   name  age\n0  Ann  31",
        },
    }
    (chunk,) = chunk_notebook("n.ipynb", notebook([code("df", [output])]))
    assert chunk.text == "df\n# --- outputs ---\nDataFrame columns: name, age, home & city"
    assert "<table" not in chunk.text and "Ann" not in chunk.text


def test_html_without_table_uses_text_plain_head() -> None:
    output = {
        "output_type": "display_data",
        "data": {"text/html": "<b>hi</b>", "text/plain": "\n".join(map(str, range(30)))},
    }
    (chunk,) = chunk_notebook("n.ipynb", notebook([code("show()", [output])]))
    reduced = chunk.text.split("# --- outputs ---\n")[1]
    assert reduced.split("\n")[:10] == [str(i) for i in range(10)]
    assert "<b>" not in reduced and "\n10\n" not in reduced and "29" not in reduced


def test_image_outputs_are_dropped() -> None:
    outputs = [
        {"output_type": "display_data", "data": {"image/png": PNG, "text/plain": "<Figure>"}},
        {"output_type": "display_data", "data": {"image/jpeg": PNG}},
        {"output_type": "display_data", "data": {"image/svg+xml": "<svg>" + PNG + "</svg>"}},
        {"output_type": "display_data", "data": {"application/vnd.custom+json": {"k": PNG}}},
    ]
    nb = notebook([code("plot()", outputs)])
    chunks = chunk_notebook("n.ipynb", nb)
    assert all(PNG not in c.text and "<svg" not in c.text for c in chunks)
    assert chunks[0].text == "plot()\n# --- outputs ---\n<Figure>"
    only_image = notebook([code("plot()", [outputs[1]])])
    assert chunk_notebook("n.ipynb", only_image)[0].text == "plot()"  # no empty separator


def test_error_output_is_name_and_value_only() -> None:
    output = {
        "output_type": "error",
        "ename": "ZeroDivisionError",
        "evalue": "division by zero",
        "traceback": ["\x1b[0;31mTraceback SECRET-FRAME\x1b[0m", "  File x, line 1"],
    }
    (chunk,) = chunk_notebook("n.ipynb", notebook([code("1/0", [output])]))
    assert chunk.text == "1/0\n# --- outputs ---\nZeroDivisionError: division by zero"


def test_long_cell_is_split_and_outputs_go_last() -> None:
    source = "\n".join(f"v{i} = {i}" for i in range(25))
    stream = {"output_type": "stream", "name": "stdout", "text": "done\n"}
    chunks = chunk_notebook(
        "n.ipynb", notebook([code(source, [stream], id="c")]), max_lines=10, overlap=2
    )
    assert [(c.start_line, c.end_line) for c in chunks] == [(1, 10), (9, 18), (17, 25)]
    for chunk in chunks:
        assert chunk.text.split("\n# --- outputs ---")[0] == source_of(source, chunk)
        assert (chunk.cell_id, chunk.cell_index) == ("c", 0)
    assert "# --- outputs ---" not in chunks[0].text + chunks[1].text
    assert chunks[-1].text.endswith("# --- outputs ---\ndone")


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "",
        "[1, 2]",
        '"cells"',
        '{"nbformat": 4}',
        '{"cells": "nope"}',
        "[" * 100_000,
    ],
)
def test_invalid_notebooks_give_no_chunks(text: str) -> None:
    assert chunk_file("broken.ipynb", text) == []


def test_malformed_cells_are_skipped() -> None:
    nb = {"cells": [None, 3, {"cell_type": "code", "source": 5}, code("ok", [None, {"x": 1}])]}
    chunks = chunk_notebook("n.ipynb", nb)
    assert [(c.cell_index, c.text) for c in chunks] == [(3, "ok")]


# --- Markdown --------------------------------------------------------------------------------

MD = """Preamble text.

# Project

Intro.

## Install

```bash
# not a heading
pip install x
```

### From source ###

~~~
## also not a heading
~~~

## Usage
Use it.
# Appendix
#not-a-heading
"""


def test_markdown_sections_and_breadcrumbs() -> None:
    chunks = chunk_file("docs/README.md", MD)
    assert [(c.symbol, c.start_line, c.end_line) for c in chunks] == [
        (None, 1, 1),
        ("Project", 3, 5),
        ("Project > Install", 7, 12),
        ("Project > Install > From source", 14, 18),
        ("Project > Usage", 20, 21),
        ("Appendix", 22, 23),
    ]
    for chunk in chunks:
        assert chunk.kind == "section" and chunk.language == "markdown"
        assert chunk.text == source_of(MD, chunk)
    assert "# not a heading" in chunks[2].text


def test_long_markdown_section_repeats_heading() -> None:
    body = "\n".join(f"Paragraph {i}." for i in range(30))
    src = f"# Guide\n\n## Long one\n{body}\n"
    chunks = chunk_file("g.md", src, max_lines=10, overlap=2)
    parts = [c for c in chunks if c.symbol == "Guide > Long one"]
    assert len(parts) > 2
    assert parts[0].text == source_of(src, parts[0])
    for part in parts[1:]:
        assert part.text.startswith("## Long one\n")
        assert part.text.removeprefix("## Long one\n") == source_of(src, part)
        assert len(part.text.split("\n")) <= 10
    assert_covers_non_blank(chunks, src.split("\n"))


# --- plain text ------------------------------------------------------------------------------


def test_text_windows_overlap_and_cover_everything() -> None:
    src = "\n".join(f"row {i}" for i in range(1, 101)) + "\n\n\n"
    chunks = chunk_file("data/rows.csv", src, max_lines=30, overlap=5)
    assert [(c.start_line, c.end_line) for c in chunks] == [
        (1, 30),
        (26, 55),
        (51, 80),
        (76, 100),
    ]
    assert all(c.kind == "text" and c.language == "text" for c in chunks)
    assert all(c.text == source_of(src, c) for c in chunks)
    assert not chunks[-1].text.endswith("\n")  # trailing blank lines trimmed


def test_whitespace_only_windows_are_dropped() -> None:
    src = "top\n" + "\n" * 50 + "   \n" * 20 + "bottom\n"
    chunks = chunk_file("gap.txt", src, max_lines=10, overlap=2)
    assert [(c.text, c.start_line, c.end_line) for c in chunks] == [
        ("top", 1, 1),
        ("bottom", 72, 72),
    ]


def test_empty_files_give_no_chunks() -> None:
    for path in ("a.txt", "a.md", "a.py", "a.json"):
        assert chunk_file(path, "") == []
        assert chunk_file(path, " \n\t\n") == []


@pytest.mark.parametrize("path", ["dist/app.min.js", "gen/blob.py", "notes.md", "x.txt"])
def test_minified_single_line_is_capped(path: str) -> None:
    src = 'x = "' + "a" * 100_000 + '"\n'
    chunks = chunk_file(path, src)
    assert len(chunks) == 1
    assert (chunks[0].start_line, chunks[0].end_line) == (1, 1)
    assert 0 < len(chunks[0].text) <= 8000


def test_long_lines_shrink_windows_instead_of_lying_about_ranges() -> None:
    src = "\n".join(f"{i:04d}" + "z" * 996 for i in range(40))
    chunks = chunk_file("wide.txt", src, max_lines=60, overlap=8)
    assert len(chunks) > 5
    assert all(c.text == source_of(src, c) and len(c.text) <= 8000 for c in chunks)
    assert_covers_non_blank(chunks, src.split("\n"))


def test_huge_notebook_cell_is_capped() -> None:
    (chunk,) = chunk_notebook("n.ipynb", notebook([code("y" * 50_000)]))
    assert len(chunk.text) == 8000


# --- properties ------------------------------------------------------------------------------

LINE = st.one_of(
    st.just(""),
    st.just("   "),
    st.sampled_from(["# Heading", "## Sub", "```", "~~~", "def f():", "    return 1", "@d"]),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=40),
)


@settings(max_examples=150, deadline=None, database=None)
@given(
    lines=st.lists(LINE, max_size=60),
    path=st.sampled_from(["a.txt", "a.md", "a.py", "a.js"]),
    max_lines=st.integers(1, 12),
    overlap=st.integers(0, 15),
    trailing_newline=st.booleans(),
)
def test_every_non_blank_line_is_in_some_chunk(
    lines: list[str], path: str, max_lines: int, overlap: int, trailing_newline: bool
) -> None:
    text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    chunks = chunk_file(path, text, max_lines=max_lines, overlap=overlap)
    file_lines = text.split("\n")
    if trailing_newline and lines:
        file_lines.pop()
    assert_well_formed(chunks, len(file_lines))
    assert_covers_non_blank(chunks, file_lines)
    assert chunks == chunk_file(path, text, max_lines=max_lines, overlap=overlap)


SNIPPETS = [
    "import os",
    "X = 1\n",
    '"""Doc."""',
    "def f(a):\n    '''Doc.'''\n    return a\n",
    "@dec\nasync def g(\n    b,\n):\n    x = 1\n\n    return b\n",
    "class A(B):\n    '''Doc.'''\n    z = 1\n\n    def m(self):\n        return 1\n\n"
    "    @staticmethod\n    def s():\n        pass\n    class In:\n        q = 2\n",
    "if __name__ == '__main__':\n    f(1)\n",
    "# a comment\n",
    "def long():\n" + "".join(f"    v{i} = {i}\n" for i in range(15)),
]


@settings(max_examples=100, deadline=None, database=None)
@given(
    parts=st.lists(st.sampled_from(SNIPPETS), max_size=8),
    max_lines=st.integers(1, 12),
    overlap=st.integers(0, 6),
    strip=st.booleans(),
)
def test_python_chunks_cover_the_file(
    parts: list[str], max_lines: int, overlap: int, strip: bool
) -> None:
    src = "\n\n".join(parts)
    chunks = chunk_file("gen.py", src, max_lines=max_lines, overlap=overlap, strip_docstrings=strip)
    lines = src.split("\n")
    assert_well_formed(chunks, len(lines))
    if not strip:
        assert_covers_non_blank(chunks, lines)
    for chunk in chunks:
        assert chunk.kind in {"function", "class", "module"}
        if not strip and chunk.kind == "function" and chunk.symbol and "." not in chunk.symbol:
            # top-level function parts: the range is real source, behind an optional signature
            assert chunk.text.endswith(source_of(src, chunk))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["cell_type", "source", "outputs", "output_type", "data", "text", "id"]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
CELL_TYPES = st.sampled_from(["code", "markdown", "raw", "other"])


@settings(max_examples=40, deadline=None, database=None)
@given(
    cells=st.lists(
        st.fixed_dictionaries(
            {"cell_type": CELL_TYPES, "source": JSON, "outputs": JSON, "id": JSON}
        ),
        max_size=5,
    ),
    metadata=JSON,
)
def test_odd_notebooks_never_raise(cells: list[dict[str, Any]], metadata: Any) -> None:
    nb = {"cells": cells, "metadata": metadata}
    chunks = chunk_file("odd.ipynb", json.dumps(nb), max_lines=3, overlap=1)
    for chunk in chunks:
        assert chunk.text.strip() and chunk.kind == "cell"
        assert chunk.cell_index is not None and 0 <= chunk.cell_index < len(cells)
        assert chunk.cell_id is None or isinstance(chunk.cell_id, str)

"""Which files of the Jupyter server's root directory the semantic search index may read.

The index must never show a user something Jupyter itself would not, so the rules mirror the
``ContentsManager``: ``allow_hidden`` (any path component starting with ``"."`` is hidden) and
``should_list`` (its ``hide_globs``, applied to every component's name). On top of that come the
project's own ``.gitignore`` files (what a developer already said is not source) and a deny list
of secrets. The deny list wins over everything - ``allow_hidden=True``, a ``!negation`` in a
``.gitignore``, a symlink with an innocent name - because an embedding of ``id_rsa`` sent to a
model provider cannot be taken back.

The tree is walked with :func:`os.scandir` and an explicit stack: ``scandir`` hands out the entry
type without a ``stat`` call, so ignored files cost no system call at all and indexable files
cost exactly one; the stack keeps hostile, very deep trees from exhausting Python's recursion
limit. Directory symlinks are never followed (no cycles, no escape from the root).

:func:`check_path` answers the same question for one path (a save or rename) by walking the
path's ancestors through the very same per-entry rules, so the two can never disagree.
"""

from __future__ import annotations

import codecs
import errno
import functools
import itertools
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

__all__ = [
    "DEFAULT_DENY",
    "FileEntry",
    "ScanResult",
    "WorkspaceRules",
    "check_path",
    "decode_text",
    "looks_binary",
    "scan",
]

DEFAULT_DENY: tuple[str, ...] = (
    # environment files and shell secrets
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    # keys and certificates
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.ppk",
    # credential stores of common tools
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".pgpass",
    ".git-credentials",
    ".htpasswd",
    "credentials",
    "credentials.*",
    "*credentials*.json",
    "*secret*",
    "*secrets*",
    "service-account*.json",
    "*.kdbx",
    ".aws/",
    ".ssh/",
    ".gnupg/",
    # a slash inside a gitignore pattern anchors it; "**/" makes these match at any depth
    "**/.docker/config.json",
    "**/.kube/config",
    # databases: whole tables of possibly personal data, and binary anyway
    "*.db",
    "*.sqlite",
    "*.sqlite3",
    "*.db-journal",
    "*.db-wal",
    "*.db-shm",
    "*.mdb",
    "*.accdb",
    # noise: never source, often huge (".git" without "/" also covers a worktree's .git file)
    ".git",
    "node_modules/",
    "__pycache__/",
    ".ipynb_checkpoints/",
    ".venv/",
    "venv/",
    ".tox/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
)

_GITIGNORE = ".gitignore"
_MAX_IGNORE_FILE_BYTES = 1_000_000  # a hostile multi-GB ".gitignore" must not be slurped
_SNIFF_BYTES = 8192
_CONTROL_RATIO = 0.3
# C0/C1 control characters except \b \t \n \f \r (which plain text legitimately contains).
_CONTROL_RE = re.compile("[\x00-\x07\x0b\x0e-\x1f\x7f-\x9f]")
# Tails of pathspec's regexes: "the file or directory" and "the directory" (a named group
# marks the directory slash). Patterns are compiled with DOTALL, which pathspec does not use,
# so a newline in a directory name cannot carry "a\nb/x.pem" past "*.pem".
_FILE_OR_DIR_TAIL_RE = re.compile(r"\(\?:\(\?P<\w+>/\)\|\$\)\Z")
_DIR_TAIL_RE = re.compile(r"\(\?P<\w+>/\)\Z")
_ALWAYS = re.compile(".*", re.DOTALL)
_MAX_PATTERNS = 10_000  # per pattern file; real ones have dozens
_ANY_DIR_PREFIX = "^(?:.+/)?"


@dataclass(frozen=True)
class WorkspaceRules:
    """What may be indexed; defaults match a stock Jupyter server.

    ``allow_hidden`` and ``should_list`` are meant to be the ``ContentsManager``'s, so that the
    index never holds what the file browser hides. ``extra_ignore`` (from configuration) applies
    even with ``use_gitignore=False`` and a ``.gitignore`` cannot negate it; it is reported as
    ``gitignored``. ``deny`` beats every other rule. ``max_files`` bounds the work (and the index
    size) on an unexpectedly huge root.
    """

    max_file_bytes: int = 1_000_000
    allow_hidden: bool = False
    deny: tuple[str, ...] = DEFAULT_DENY
    extra_ignore: tuple[str, ...] = ()
    use_gitignore: bool = True
    should_list: Callable[[str], bool] | None = None
    max_files: int = 200_000


@dataclass(frozen=True)
class FileEntry:
    """One indexable file; ``mtime_ns`` and ``size`` let the indexer skip unchanged files."""

    path: str
    mtime_ns: int
    size: int


@dataclass
class ScanResult:
    """The indexable files plus why the others were left out (shown to the user as counts).

    Besides the reasons of the rules, ``skipped`` may count ``symlink_dir`` (never followed)
    and ``invalid`` (a name with a backslash or undecodable bytes, which no API path can carry).
    Fifos, sockets and devices are not counted: they are not files anyone meant to index.
    """

    files: list[FileEntry]
    skipped: dict[str, int]
    truncated: bool


class _Matcher:
    """One gitignore pattern list, answering for a single path exactly as git does.

    pathspec's own matching answers "is this file or any of its parent directories matched",
    which is wrong for a walk that judges each directory on its own (``a/**`` would hide the
    directory ``a`` itself, so a nested ``!keep`` could never apply). So only pathspec's
    translation of each line is used, turned into a whole-path regex (``_translate``), and the
    last matching line wins - git's rule. A single combined regex answers the common "no line
    matches" case in one C-level call, which keeps a fifty-line deny list cheap on 20k files.
    """

    __slots__ = ("_patterns", "_prefilter")

    def __init__(self, lines: Iterable[str]) -> None:
        self._patterns: list[tuple[re.Pattern[str], bool]] = []
        floating: list[str] = []
        anchored: list[str] = []
        for line in itertools.islice(lines, _MAX_PATTERNS):
            translated = _translate(line)
            if translated is None:
                continue
            source, include = translated
            try:
                regex = re.compile(source, re.DOTALL)
            except (re.error, RecursionError, OverflowError, Warning):
                continue  # e.g. "[z-a]": git discards an invalid range too
            self._patterns.append((regex, include))
            if source.startswith(_ANY_DIR_PREFIX):
                floating.append(source[len(_ANY_DIR_PREFIX) :])
            else:
                anchored.append(source)
        self._patterns.reverse()
        branches = [f"(?:{source})" for source in anchored]
        if floating:
            # Sharing the "any parent directory" prefix makes a miss cost one try per "/".
            branches.append(_ANY_DIR_PREFIX + "(?:" + "|".join(f"(?:{s})" for s in floating) + ")")
        self._prefilter: re.Pattern[str] | None = None
        if branches:
            try:
                self._prefilter = re.compile("|".join(branches), re.DOTALL)
            except (re.error, RecursionError, OverflowError, Warning):
                self._prefilter = _ALWAYS  # correct, only slower: every line gets tried

    def check(self, key: str) -> bool | None:
        """True: ignored; False: re-included by a negation; None: no line matched.

        ``key`` is the path relative to the pattern file's directory, with a trailing "/" for
        a directory (directory-only patterns need to know).
        """
        if self._prefilter is None or self._prefilter.fullmatch(key) is None:
            return None
        for regex, include in self._patterns:
            if regex.fullmatch(key) is not None:
                return include
        return None


def _translate(line: str) -> tuple[str, bool] | None:
    """A gitignore line as a regex over a whole path, or None for blanks, comments, bad lines.

    pathspec's regexes are prefix matches whose tail says what may follow; each tail maps to
    the set of paths git matches (with a trailing "/" on a directory's key).
    """
    if "\x00" in line:
        return None
    try:
        source, include = GitIgnoreSpecPattern.pattern_to_regex(line)
    except ValueError:  # git skips a malformed line rather than failing
        return None
    if include is None or source is None:
        return None
    source = _quiet_sets(source)
    if source in (".", ".+"):  # "*", "**": everything
        return ".+", include
    if _DIR_TAIL_RE.fullmatch(source):  # "*/", "**/": every directory
        return ".+/", include
    if source == "/":  # "*/**": everything below a top-level directory
        return "[^/]+/.+", include
    tail = _FILE_OR_DIR_TAIL_RE.search(source)
    if tail is not None:  # "x": the file or directory x
        return source[: tail.start()] + "/?", include
    tail = _DIR_TAIL_RE.search(source)
    if tail is not None:
        if line.rstrip().endswith("/**/"):
            # pathspec folds "x/**/" into "x/"; git means the directories below x, not x.
            return source[: tail.start()] + "/.+/", include
        return source[: tail.start()] + "/", include  # "x/": the directory x
    if source.endswith("/"):  # "x/**": everything below x, but not x itself
        return source + ".+", include
    return source, include  # not produced by pathspec 1.x; a whole-path match is the safe reading


def _quiet_sets(source: str) -> str:
    """Escape what Python's re warns about inside ``[...]`` ("[[]", "[%--]", "[&&]").

    pathspec copies a glob's bracket expression verbatim; under pytest's "warnings are
    errors" (or any strict host) a FutureWarning would turn one odd .gitignore line into a
    failed scan. Escaping keeps the meaning.
    """
    if "[" not in source:
        return source
    out: list[str] = []
    index, end = 0, len(source)
    in_set = False
    previous = ""
    while index < end:
        char = source[index]
        if char == "\\" and index + 1 < end:
            out.append(source[index : index + 2])
            index += 2
            previous = ""
            continue
        index += 1
        if not in_set:
            out.append(char)
            if char == "[":
                in_set = True
                previous = ""
                if source.startswith("^", index):
                    out.append("^")
                    index += 1
                if source.startswith("]", index):  # a leading "]" is a literal
                    out.append("\\]")
                    index += 1
            continue
        if char == "]":
            in_set = False
            out.append(char)
        elif char in "[&~|" or (char == "-" and previous == "-"):
            out.append("\\" + char)
            previous = ""
        else:
            out.append(char)
            previous = char
    return "".join(out)


@functools.lru_cache(maxsize=256)
def _matcher(lines: tuple[str, ...]) -> _Matcher:
    """Compiled patterns, cached by content: check_path runs on every save."""
    return _Matcher(lines)


def _read_ignore_file(path: str) -> _Matcher | None:
    """Patterns of one .gitignore or info/exclude; unreadable or odd ones count as absent.

    O_NOFOLLOW because git does not follow a symlinked .gitignore either (and it could point
    anywhere); O_NONBLOCK because a FIFO named .gitignore would otherwise hang the scan.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(_MAX_IGNORE_FILE_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    lines = tuple(data.decode("utf-8", errors="replace").splitlines())
    return _matcher(lines) if lines else None


# (directory prefix relative to root with trailing "/", or "" for the root; its patterns)
_Layer = tuple[str, _Matcher]


class _Rules:
    """The rules of one scan or check, compiled once."""

    __slots__ = ("_deny", "_extra", "_rules", "root_real")

    def __init__(self, root_dir: str, rules: WorkspaceRules) -> None:
        self._rules = rules
        self._deny = _matcher(tuple(rules.deny))
        self._extra = _matcher(tuple(rules.extra_ignore))
        self.root_real = os.path.realpath(root_dir)

    @property
    def use_gitignore(self) -> bool:
        return self._rules.use_gitignore

    def base_layers(self, root_dir: str) -> tuple[_Layer, ...]:
        """info/exclude: root-relative patterns with less precedence than any .gitignore."""
        if not self._rules.use_gitignore:
            return ()
        exclude = _read_ignore_file(os.path.join(root_dir, ".git", "info", "exclude"))
        return () if exclude is None else (("", exclude),)

    def enter(self, layers: tuple[_Layer, ...], dir_path: str, rel_dir: str) -> tuple[_Layer, ...]:
        """The layers in force inside a directory: the parent's plus its own .gitignore."""
        matcher = _read_ignore_file(os.path.join(dir_path, _GITIGNORE))
        return layers if matcher is None else (*layers, (rel_dir, matcher))

    def reason(self, rel: str, name: str, is_dir: bool, layers: tuple[_Layer, ...]) -> str | None:
        """Why one entry is left out, judged on its name alone (its ancestors already passed)."""
        key = rel + "/" if is_dir else rel
        if self._deny.check(key):
            return "denied"
        rules = self._rules
        if not rules.allow_hidden and name.startswith("."):
            return "hidden"
        if rules.should_list is not None and not rules.should_list(name):
            return "unlisted"
        if self._extra.check(key):
            return "gitignored"
        # Deepest .gitignore first: the first file with a matching pattern decides, as in git.
        for base, matcher in reversed(layers):
            verdict = matcher.check(key[len(base) :])
            if verdict is not None:
                return "gitignored" if verdict else None
        return None

    def target_reason(self, path: str) -> str | None:
        """Where a file symlink really points: inside the root, and not at a denied file."""
        real = os.path.realpath(path)
        root = self.root_real
        if real == root:
            return "symlink_dir"
        prefix = root if root.endswith(os.sep) else root + os.sep
        if not real.startswith(prefix):
            return "symlink_outside"
        parts = real[len(prefix) :].split(os.sep)
        for depth in range(1, len(parts) + 1):
            key = "/".join(parts[:depth])
            if self._deny.check(key if depth == len(parts) else key + "/"):
                return "denied"
        return None

    def file_reason(self, path: str, is_link: bool, mode: int, size: int) -> str | None:
        """Checks that need the file itself; ``mode`` is the target's for a symlink."""
        if is_link:
            reason = self.target_reason(path)
            if reason is not None:
                return reason
            if stat.S_ISDIR(mode):
                return "symlink_dir"
        if not stat.S_ISREG(mode):
            return "not_file"
        if size > self._rules.max_file_bytes:
            return "too_large"
        return None


def _valid_name(name: str) -> bool:
    """Names an API path can carry unambiguously: no backslash, and representable in UTF-8."""
    if "\\" in name or "\x00" in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes surfaced by os.fsdecode as surrogates
        return False
    return True


def scan(root_dir: str, rules: WorkspaceRules) -> ScanResult:
    """List the indexable files under ``root_dir``; blocking, so run it in a thread.

    A directory that cannot be read is counted as ``unreadable`` rather than raised, and
    anything removed mid-scan is silently dropped: the root is a live, shared file system.
    A missing root raises, because that is a configuration error the caller must see.
    """
    if not stat.S_ISDIR(os.stat(root_dir).st_mode):  # FileNotFoundError when missing
        raise NotADirectoryError(errno.ENOTDIR, "workspace root is not a directory", root_dir)
    compiled = _Rules(root_dir, rules)
    files: list[FileEntry] = []
    skipped: dict[str, int] = {}
    truncated = False

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    stack: list[tuple[str, str, tuple[_Layer, ...]]] = [
        (root_dir, "", compiled.base_layers(root_dir))
    ]
    while stack and not truncated:
        dir_path, rel_dir, layers = stack.pop()
        try:
            with os.scandir(dir_path) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            skip("unreadable")
            continue
        if compiled.use_gitignore and any(entry.name == _GITIGNORE for entry in entries):
            layers = compiled.enter(layers, dir_path, rel_dir)
        subdirs: list[tuple[str, str, tuple[_Layer, ...]]] = []
        for entry in entries:
            name = entry.name
            if not _valid_name(name):
                skip("invalid")
                continue
            rel = rel_dir + name
            try:
                is_link = entry.is_symlink()
                is_dir = not is_link and entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            reason = compiled.reason(rel, name, is_dir, layers)
            if reason is None and is_dir:
                subdirs.append((entry.path, rel + "/", layers))
                continue
            if reason is None:
                try:
                    st = os.stat(entry.path) if is_link else entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed during the scan, or a dangling symlink
                except OSError:
                    reason = "unreadable"
                else:
                    reason = compiled.file_reason(entry.path, is_link, st.st_mode, st.st_size)
                    if reason is None:
                        if len(files) >= rules.max_files:
                            truncated = True
                            break
                        files.append(FileEntry(rel, st.st_mtime_ns, st.st_size))
                        continue
            if reason != "not_file":  # fifos, sockets, devices: not worth reporting
                skip(reason)
        stack.extend(reversed(subdirs))
    files.sort(key=lambda entry: entry.path)
    return ScanResult(files=files, skipped=skipped, truncated=truncated)


def _valid_api_path(api_path: object) -> bool:
    if not isinstance(api_path, str) or not api_path or api_path.startswith("/"):
        return False
    return all(part not in ("", ".", "..") and _valid_name(part) for part in api_path.split("/"))


def check_path(
    root_dir: str, api_path: str, rules: WorkspaceRules, *, size: int | None = None
) -> str | None:
    """None when ``api_path`` may be indexed, else the reason, exactly as :func:`scan` decides.

    Called on every save or rename, so it touches only the path's ancestors (and their
    .gitignore files) instead of scanning. ``size``, when the caller already knows it, replaces
    the file's size; the file is still stat-ed to learn whether it is a regular file.
    Beyond scan's reasons: ``invalid`` (not a safe relative API path), ``missing``,
    ``not_file`` (a directory, fifo, socket...) and ``symlink_dir`` (reached through or naming
    a directory symlink, which scan never follows).
    """
    if not _valid_api_path(api_path):
        return "invalid"
    compiled = _Rules(root_dir, rules)
    layers = compiled.base_layers(root_dir)
    parts = api_path.split("/")
    dir_path, rel_dir = root_dir, ""
    for depth, name in enumerate(parts, start=1):
        try:
            # Opening the directory mirrors scan: it lists only directories it can read.
            with os.scandir(dir_path):
                pass
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except OSError:
            return "unreadable"
        if compiled.use_gitignore:
            layers = compiled.enter(layers, dir_path, rel_dir)
        path = os.path.join(dir_path, name)
        rel = rel_dir + name
        try:
            lst = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except OSError:
            return "unreadable"
        is_link = stat.S_ISLNK(lst.st_mode)
        is_dir = stat.S_ISDIR(lst.st_mode)
        reason = compiled.reason(rel, name, is_dir, layers)
        if reason is not None:
            return reason
        if depth < len(parts):
            if is_link:
                return "symlink_dir"
            if not is_dir:
                return "missing"
            dir_path, rel_dir = path, rel + "/"
            continue
        if is_link:
            try:
                lst = os.stat(path)
            except FileNotFoundError:
                return "missing"
            except OSError:
                return "unreadable"
        return compiled.file_reason(
            path, is_link, lst.st_mode, lst.st_size if size is None else size
        )
    return "invalid"  # unreachable: a valid path has at least one part


def looks_binary(head: bytes) -> bool:
    """Whether content is not worth embedding, judged from its first bytes only.

    The head is usually cut at a fixed length, so a multi-byte character split at the end is
    not held against it.
    """
    if not head:
        return False
    if b"\x00" in head:
        return True
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return True
    if not text:
        return False
    return len(_CONTROL_RE.findall(text)) > _CONTROL_RATIO * len(text)


def decode_text(data: bytes) -> str | None:
    """The text to index, or None: only UTF-8 is accepted, guessing other codecs mangles code.

    A NUL anywhere (not only in the sniffed head) rejects the file too: no text store (nor
    PostgreSQL's ``text``) accepts it, and no source file contains one.
    """
    if looks_binary(data[:_SNIFF_BYTES]) or b"\x00" in data:
        return None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None

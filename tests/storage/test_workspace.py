"""Which files the semantic index may read: real trees on disk, no mocks.

The central property is that ``check_path`` (one path, on save) and ``scan`` (the whole root)
never disagree; the git comparison pins pathspec's translation to git's own answers.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import pytest

from jupyter_cloudide.storage.workspace import (
    DEFAULT_DENY,
    FileEntry,
    ScanResult,
    WorkspaceRules,
    check_path,
    decode_text,
    looks_binary,
    scan,
)

ALL_HIDDEN = WorkspaceRules(allow_hidden=True)


def make(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Create ``files`` (API path -> content) under ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def listed(result: ScanResult) -> list[str]:
    return [entry.path for entry in result.files]


def all_paths(root: Path) -> list[str]:
    """Every file and symlink under root (symlinked directories not followed)."""
    found: list[str] = []
    for dir_path, dir_names, file_names in os.walk(root):
        base = Path(dir_path)
        names = file_names + [d for d in dir_names if (base / d).is_symlink()]
        found.extend((base / name).relative_to(root).as_posix() for name in names)
    return sorted(found)


def assert_agrees(root: Path, rules: WorkspaceRules) -> ScanResult:
    """check_path(p) is None exactly for the files scan lists, for every path in the tree."""
    result = scan(str(root), rules)
    scanned = set(listed(result))
    verdicts = {rel: check_path(str(root), rel, rules) for rel in all_paths(root)}
    assert {rel for rel, reason in verdicts.items() if reason is None} == scanned, verdicts
    return result


# --- .gitignore -----------------------------------------------------------------------------


def test_nested_gitignore_negation_and_directory_patterns(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "*.log\n!keep.log\nbuild/\n/top_only.txt\n",
            "a.log": "",
            "keep.log": "",
            "build/out.py": "",
            "top_only.txt": "",
            "x.tmp": "",  # the nested "*.tmp" must not reach up here
            "sub/.gitignore": "!debug.log\n*.tmp\ncache/\n",
            "sub/debug.log": "",
            "sub/other.log": "",
            "sub/x.tmp": "",
            "sub/top_only.txt": "",  # "/top_only.txt" is anchored to the root
            "sub/cache/y.py": "",
            "sub/build/z.py": "",  # "build/" matches at any depth
            "files/build": "",  # ... but only directories
            "src/main.py": "",
        },
    )
    result = assert_agrees(tmp_path, WorkspaceRules())
    assert listed(result) == [
        "files/build",
        "keep.log",
        "src/main.py",
        "sub/debug.log",
        "sub/top_only.txt",
        "x.tmp",
    ]
    assert result.skipped == {"gitignored": 7, "hidden": 2}
    assert check_path(str(tmp_path), "sub/other.log", WorkspaceRules()) == "gitignored"
    assert check_path(str(tmp_path), "sub/cache/y.py", WorkspaceRules()) == "gitignored"


def test_gitignore_directory_rules_follow_git(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            # "gen/**" ignores what is inside gen, not gen: its own .gitignore still applies.
            ".gitignore": "gen/**\nout/\n!out/keep.txt\nlib/**/\n",
            "gen/.gitignore": "!keep.txt\n",
            "gen/keep.txt": "",
            "gen/other.txt": "",
            # An ignored directory is never entered, so nothing inside can be re-included.
            "out/keep.txt": "",
            # "lib/**/": the directories below lib, not lib's own files.
            "lib/top.py": "",
            "lib/pkg/inner.py": "",
        },
    )
    result = assert_agrees(tmp_path, WorkspaceRules())
    assert listed(result) == ["gen/keep.txt", "lib/top.py"]


def test_git_info_exclude(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".git/info/exclude": "*.bak\n",
            ".git/HEAD": "ref: refs/heads/main\n",
            "notes.bak": "",
            "deep/er/old.bak": "",
            "notes.md": "",
        },
    )
    assert listed(assert_agrees(tmp_path, ALL_HIDDEN)) == ["notes.md"]
    assert check_path(str(tmp_path), "deep/er/old.bak", WorkspaceRules()) == "gitignored"
    assert check_path(str(tmp_path), ".git/HEAD", ALL_HIDDEN) == "denied"
    without = WorkspaceRules(use_gitignore=False)
    assert listed(assert_agrees(tmp_path, without)) == ["deep/er/old.bak", "notes.bak", "notes.md"]


def test_use_gitignore_false_and_extra_ignore(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "*.log\n!data/\n!*.csv\n",
            "run.log": "",
            "table.csv": "",
            "data/rows.txt": "",
            "src/app.py": "",
        },
    )
    assert listed(scan(str(tmp_path), WorkspaceRules(use_gitignore=False))) == [
        "data/rows.txt",
        "run.log",
        "src/app.py",
        "table.csv",
    ]
    # Configuration wins over a .gitignore negation and works without .gitignore support.
    for use_gitignore in (True, False):
        rules = WorkspaceRules(extra_ignore=("*.csv", "data/"), use_gitignore=use_gitignore)
        result = assert_agrees(tmp_path, rules)
        assert "table.csv" not in listed(result)
        assert "data/rows.txt" not in listed(result)
        assert check_path(str(tmp_path), "data/rows.txt", rules) == "gitignored"
        assert "src/app.py" in listed(result)


def test_odd_gitignore_lines_are_skipped_not_fatal(tmp_path: Path) -> None:
    """Lines Python's re warns about or rejects must not fail a scan (warnings are errors)."""
    make(
        tmp_path,
        {
            ".gitignore": "[[]\n[z-a]\n\\\n[%--]x\n[&&]\n#comment\n\n*.log\n",
            "[": "",
            "&": "",
            "%x": "",
            "run.log": "",
            "kept.py": "",
        },
    )
    assert listed(assert_agrees(tmp_path, WorkspaceRules())) == ["kept.py"]


def test_gitignore_that_is_a_fifo_or_symlink_is_ignored(tmp_path: Path) -> None:
    root = make(tmp_path / "root", {"a.log": "", "sub/b.log": "", "pipe_dir/c.log": ""})
    (tmp_path / "patterns").write_text("*.log\n")
    (root / ".gitignore").symlink_to(tmp_path / "patterns")  # git does not follow it either
    os.mkfifo(root / "pipe_dir" / ".gitignore")  # would block a plain open() forever
    os.mkfifo(root / "fifo")  # not a file: skipped without being counted
    result = assert_agrees(root, WorkspaceRules())
    assert listed(result) == ["a.log", "pipe_dir/c.log", "sub/b.log"]
    assert "not_file" not in result.skipped
    assert check_path(str(root), "fifo", WorkspaceRules()) == "not_file"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")
def test_matches_git_ls_files(tmp_path: Path) -> None:
    """Same answer as git itself on a tree of tricky patterns."""
    make(
        tmp_path,
        {
            ".gitignore": "*.log\n!keep.log\nbuild/\n/doc\nd*/\na/**\n!a/b\n*/x.txt\n",
            "keep.log": "",
            "x.log": "",
            "doc": "",
            "deep/doc": "",
            "build/a.py": "",
            "src/build": "",
            "src/x.txt": "",
            "src/y/x.txt": "",
            "a/b": "",
            "a/c": "",
            "a/.gitignore": "!c\n",
            "q/.gitignore": "**/\n!keep/\n*\n!*.py\n",
            "q/top.py": "",
            "q/top.txt": "",
            "q/sub/z.py": "",
            "q/keep/z.py": "",
            "r/.gitignore": "x/**/\n[ab]?.txt\n\\#lit\n",
            "r/x/f.txt": "",
            "r/x/y/g.txt": "",
            "r/a1.txt": "",
            "r/c1.txt": "",
            "r/#lit": "",
            "sp ace/n\u00e4me.txt": "",
        },
    )
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env=env)
    out = subprocess.run(
        ["git", "-C", str(tmp_path), "ls-files", "-z", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        env=env,
    ).stdout
    expected = sorted(os.fsdecode(name) for name in out.split(b"\0") if name)
    rules = WorkspaceRules(allow_hidden=True, deny=(".git",))
    assert listed(assert_agrees(tmp_path, rules)) == expected


# --- hidden, deny ---------------------------------------------------------------------------


def test_hidden_files_and_directories(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".hidden.py": "",
            ".config/app.toml": "",
            "a/.cache/x.py": "",
            "a/visible.py": "",
            ".env": "SECRET=1",
            ".ssh/id_rsa": "key",
            ".ssh/config": "Host x",
        },
    )
    result = assert_agrees(tmp_path, WorkspaceRules())
    assert listed(result) == ["a/visible.py"]
    assert result.skipped == {"hidden": 3, "denied": 2}
    assert check_path(str(tmp_path), "a/.cache/x.py", WorkspaceRules()) == "hidden"

    result = assert_agrees(tmp_path, ALL_HIDDEN)
    assert listed(result) == [".config/app.toml", ".hidden.py", "a/.cache/x.py", "a/visible.py"]
    assert check_path(str(tmp_path), ".env", ALL_HIDDEN) == "denied"
    assert check_path(str(tmp_path), ".ssh/id_rsa", ALL_HIDDEN) == "denied"


DENIED_PATHS = [
    # environment
    ".env",
    ".env.local",
    "prod.env",
    ".envrc",
    # keys
    "server.pem",
    "tls.key",
    "cert.p12",
    "cert.pfx",
    "store.jks",
    "app.keystore",
    "id_rsa",
    "id_ed25519.pub",
    "id_ecdsa",
    "putty.ppk",
    ".ssh/config",
    ".gnupg/pubring.kbx",
    # credentials
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".git-credentials",
    ".htpasswd",
    "credentials",
    "credentials.json",
    "gcp-credentials-prod.json",
    "my_secret.txt",
    "secrets/prod.yaml",
    "service-account-ci.json",
    "vault.kdbx",
    ".aws/credentials",
    ".docker/config.json",
    ".kube/config",
    # databases
    "app.db",
    "cache.sqlite",
    "cache.sqlite3",
    "app.db-journal",
    "app.db-wal",
    "legacy.mdb",
    "legacy.accdb",
    # noise
    ".git/config",
    "node_modules/lib/index.js",
    "__pycache__/m.py",
    ".ipynb_checkpoints/nb-checkpoint.ipynb",
    ".venv/lib/site.py",
    "venv/lib/site.py",
    ".tox/log.txt",
    ".mypy_cache/x.json",
    ".pytest_cache/v.txt",
    ".ruff_cache/c.txt",
]


@pytest.mark.parametrize("prefix", ["", "deep/er/"])
def test_default_deny_at_any_depth(tmp_path: Path, prefix: str) -> None:
    make(tmp_path, {prefix + rel: "x" for rel in DENIED_PATHS})
    make(tmp_path, {prefix + "data.csv": "a,b", prefix + "data.parquet": b"PAR1", "ok.py": ""})
    # A .gitignore negation cannot bring a denied file back.
    make(tmp_path, {".gitignore": "!*.pem\n!.env\n!*.db\n"})
    result = assert_agrees(tmp_path, ALL_HIDDEN)
    assert listed(result) == sorted(
        [".gitignore", "ok.py", prefix + "data.csv", prefix + "data.parquet"]
    )
    for rel in DENIED_PATHS:
        assert check_path(str(tmp_path), prefix + rel, ALL_HIDDEN) == "denied", rel


def test_default_deny_is_a_tuple_of_strings() -> None:
    assert isinstance(DEFAULT_DENY, tuple)
    assert all(isinstance(pattern, str) and pattern for pattern in DEFAULT_DENY)
    assert "*.parquet" not in DEFAULT_DENY
    assert "*.csv" not in DEFAULT_DENY


def test_deny_survives_newlines_in_directory_names(tmp_path: Path) -> None:
    make(tmp_path, {"a\nb/server.pem": "key", "a\nb/notes.md": "", "\u00fcn\u00efc\u00f6de.py": ""})
    result = assert_agrees(tmp_path, WorkspaceRules())
    assert listed(result) == ["a\nb/notes.md", "\u00fcn\u00efc\u00f6de.py"]
    assert check_path(str(tmp_path), "a\nb/server.pem", WorkspaceRules()) == "denied"


def test_backslash_names_are_invalid(tmp_path: Path) -> None:
    make(tmp_path, {"a\\b.py": "", "ok.py": ""})
    result = assert_agrees(tmp_path, WorkspaceRules())
    assert listed(result) == ["ok.py"]
    assert result.skipped == {"invalid": 1}


# --- size, symlinks, should_list, limits ----------------------------------------------------


def test_too_large(tmp_path: Path) -> None:
    make(tmp_path, {"big.txt": "x" * 11, "edge.txt": "x" * 10})
    rules = WorkspaceRules(max_file_bytes=10)
    result = assert_agrees(tmp_path, rules)
    assert [(e.path, e.size) for e in result.files] == [("edge.txt", 10)]
    assert result.skipped == {"too_large": 1}
    assert check_path(str(tmp_path), "big.txt", rules) == "too_large"
    # A size the caller already knows (the content just saved) takes precedence.
    assert check_path(str(tmp_path), "big.txt", rules, size=5) is None
    assert check_path(str(tmp_path), "edge.txt", rules, size=11) == "too_large"


def test_file_entries_carry_stat(tmp_path: Path) -> None:
    make(tmp_path, {"a.py": "hello"})
    os.utime(tmp_path / "a.py", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    assert scan(str(tmp_path), WorkspaceRules()).files == [
        FileEntry("a.py", 1_700_000_000_123_456_789, 5)
    ]


def test_symlinks(tmp_path: Path) -> None:
    root = make(tmp_path / "root", {"real/data.py": "x", "sub/.env": "S=1", "sub/b.py": ""})
    make(tmp_path / "outside", {"secret.py": "x", "dir/f.py": ""})
    (root / "out_file.py").symlink_to(tmp_path / "outside" / "secret.py")
    (root / "out_dir").symlink_to(tmp_path / "outside" / "dir")
    (root / "in_file.py").symlink_to(root / "real" / "data.py")
    (root / "relative.py").symlink_to("real/data.py")
    (root / "innocent.txt").symlink_to("sub/.env")  # deny follows the link
    (root / "sub" / "loop").symlink_to("..")  # a cycle, never followed
    (root / "sub" / "self").symlink_to("self")  # ELOOP on stat
    (root / "dangling.py").symlink_to("nowhere.py")
    rules = WorkspaceRules()
    result = assert_agrees(root, rules)
    assert listed(result) == ["in_file.py", "real/data.py", "relative.py", "sub/b.py"]
    assert result.skipped["symlink_outside"] == 2
    assert result.skipped["symlink_dir"] == 1
    assert result.skipped["denied"] == 2
    assert check_path(str(root), "out_file.py", rules) == "symlink_outside"
    assert check_path(str(root), "innocent.txt", rules) == "denied"
    assert check_path(str(root), "sub/loop/real/data.py", rules) == "symlink_dir"
    assert check_path(str(root), "dangling.py", rules) == "missing"


def test_root_given_through_a_symlink(tmp_path: Path) -> None:
    make(tmp_path / "real_root", {"a.py": ""})
    (tmp_path / "link_root").symlink_to(tmp_path / "real_root")
    (tmp_path / "real_root" / "b.py").symlink_to(tmp_path / "link_root" / "a.py")
    assert listed(assert_agrees(tmp_path / "link_root", WorkspaceRules())) == ["a.py", "b.py"]


def test_should_list(tmp_path: Path) -> None:
    make(tmp_path, {"m.py": "", "m.pyc": b"\x00", "tmpdir/x.py": "", "notes.md~": ""})

    def should_list(name: str) -> bool:
        return not any(fnmatch.fnmatch(name, glob) for glob in ("*.pyc", "*~", "tmpdir"))

    rules = WorkspaceRules(should_list=should_list)
    result = assert_agrees(tmp_path, rules)
    assert listed(result) == ["m.py"]
    assert result.skipped == {"unlisted": 3}
    assert check_path(str(tmp_path), "tmpdir/x.py", rules) == "unlisted"


def test_max_files_truncates(tmp_path: Path) -> None:
    make(tmp_path, {f"d{i % 2}/f{i}.py": "" for i in range(5)})
    result = scan(str(tmp_path), WorkspaceRules(max_files=3))
    assert len(result.files) == 3
    assert result.truncated
    assert listed(result) == sorted(listed(result))
    assert listed(result) == listed(scan(str(tmp_path), WorkspaceRules(max_files=3)))
    exact = scan(str(tmp_path), WorkspaceRules(max_files=5))
    assert len(exact.files) == 5
    assert not exact.truncated


def test_mixed_tree_check_path_agrees_with_scan(tmp_path: Path) -> None:
    root = make(
        tmp_path / "root",
        {
            ".gitignore": "*.log\nbuild/\n",
            "src/.gitignore": "gen/\n!important.log\n*.tmp\n",
            "src/app.py": "",
            "src/important.log": "",
            "src/other.log": "",
            "src/cache.tmp": "",
            "src/gen/out.py": "",
            "src/pkg/.gitignore": "!*.tmp\n",
            "src/pkg/keep.tmp": "",
            "src/pkg/mod.py": "",
            "build/x.py": "",
            ".hidden/x.py": "",
            ".env": "",
            "conf/.env.prod": "",
            "keys/server.pem": "",
            "big.bin": b"\x00" * 64,
            "m.pyc": b"\x00",
            "docs/readme.md": "",
        },
    )
    make(tmp_path / "outside", {"o.py": ""})
    (root / "docs" / "link.md").symlink_to(root / "src" / "app.py")
    (root / "docs" / "escape.py").symlink_to(tmp_path / "outside" / "o.py")
    (root / "docs" / "up").symlink_to("..")
    for rules in (
        WorkspaceRules(),
        WorkspaceRules(allow_hidden=True, max_file_bytes=32),
        WorkspaceRules(use_gitignore=False, should_list=lambda name: not name.endswith(".pyc")),
        WorkspaceRules(extra_ignore=("docs/", "!src/other.log"), deny=()),
    ):
        assert_agrees(root, rules)
    assert listed(scan(str(root), WorkspaceRules())) == [
        "big.bin",
        "docs/link.md",
        "docs/readme.md",
        "m.pyc",
        "src/app.py",
        "src/important.log",
        "src/pkg/keep.tmp",
        "src/pkg/mod.py",
    ]


def test_deep_tree_does_not_recurse(tmp_path: Path) -> None:
    depth = 300
    deep = str(tmp_path)
    for _ in range(depth):
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    Path(deep, "leaf.py").write_text("")
    rel = "d/" * depth + "leaf.py"
    # A recursive walk would need a frame per level; leave it far fewer than that.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(frame_depth() + depth // 3)
    try:
        result = scan(str(tmp_path), WorkspaceRules())
        verdict = check_path(str(tmp_path), rel, WorkspaceRules())
    finally:
        sys.setrecursionlimit(limit)
        # remove the tree bottom-up here: shutil.rmtree (pytest's tmp cleanup) recurses a few
        # frames per level and would hit the recursion limit at session end
        os.remove(os.path.join(deep, "leaf.py"))
        while deep != str(tmp_path):
            os.rmdir(deep)
            deep = os.path.dirname(deep)
    assert listed(result) == [rel]
    assert verdict is None


def frame_depth() -> int:
    frame: FrameType | None = sys._getframe()
    count = 0
    while frame is not None:
        count += 1
        frame = frame.f_back
    return count


def test_scan_is_fast(tmp_path: Path) -> None:
    for d in range(10):
        sub = tmp_path / f"pkg{d}"
        sub.mkdir()
        for i in range(100):
            (sub / f"m{i}.py").touch()
    (tmp_path / ".gitignore").write_text("*.log\nbuild/\n")
    start = time.perf_counter()
    result = scan(str(tmp_path), WorkspaceRules())
    elapsed = time.perf_counter() - start
    assert len(result.files) == 1000
    assert elapsed < 0.5  # about 15 ms here (20k files: about 0.2 s)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 directory anyway")
def test_unreadable_directory(tmp_path: Path) -> None:
    make(tmp_path, {"locked/x.py": "", "open/y.py": ""})
    (tmp_path / "locked").chmod(0)
    try:
        result = scan(str(tmp_path), WorkspaceRules())
        assert listed(result) == ["open/y.py"]
        assert result.skipped == {"unreadable": 1}
        assert check_path(str(tmp_path), "locked/x.py", WorkspaceRules()) == "unreadable"
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        scan(str(tmp_path / "nope"), WorkspaceRules())
    (tmp_path / "file").touch()
    with pytest.raises(NotADirectoryError):
        scan(str(tmp_path / "file"), WorkspaceRules())


# --- check_path specifics -------------------------------------------------------------------


@pytest.mark.parametrize(
    "api_path",
    [
        "../x",
        "/etc/passwd",
        "a/../../x",
        "a\\b",
        "x\x00y",
        "",
        "a//b",
        "./a",
        "a/",
        "a/.",
        "\udcff",
    ],
)
def test_check_path_refuses_unsafe_paths(tmp_path: Path, api_path: str) -> None:
    make(tmp_path, {"a/b": "", "x": ""})
    assert check_path(str(tmp_path), api_path, WorkspaceRules()) == "invalid"


def test_check_path_missing_and_not_file(tmp_path: Path) -> None:
    make(tmp_path, {"dir/f.py": ""})
    rules = WorkspaceRules()
    assert check_path(str(tmp_path), "dir/f.py", rules) is None
    assert check_path(str(tmp_path), "dir/gone.py", rules) == "missing"
    assert check_path(str(tmp_path), "nodir/f.py", rules) == "missing"
    assert check_path(str(tmp_path), "dir/f.py/x", rules) == "missing"
    assert check_path(str(tmp_path), "dir", rules) == "not_file"
    # Rules that depend only on the name still answer for a file that is gone.
    assert check_path(str(tmp_path), "dir/.env", rules) == "missing"


# --- binary detection -----------------------------------------------------------------------

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00"


def test_looks_binary() -> None:
    assert looks_binary(PNG_HEAD)
    assert looks_binary(b"text with a \x00 NUL")
    assert looks_binary("caf\u00e9 cr\u00e8me".encode("latin-1"))  # not UTF-8
    assert looks_binary(b"\x01\x02\x03\x04abc")  # mostly control characters
    assert not looks_binary(b"")
    assert not looks_binary("print('h\u00e9llo')\n\tx = 1\r\n\f\b".encode())
    assert not looks_binary(b"\xef\xbb\xbfwith BOM")
    euro = "\u20ac".encode()  # three bytes
    assert not looks_binary(b"price: " + euro[:2])  # cut inside the last character
    assert looks_binary(b"price: " + euro[:2] + b" more")  # broken in the middle


def test_decode_text() -> None:
    assert decode_text(PNG_HEAD) is None
    assert decode_text(b"a\x00b") is None
    assert decode_text("caf\u00e9".encode("latin-1")) is None  # even where the head forgives
    assert decode_text("h\u00e9llo \u4e16\u754c".encode()) == "h\u00e9llo \u4e16\u754c"
    assert decode_text(b"\xef\xbb\xbfwith BOM") == "with BOM"
    assert decode_text(b"") == ""
    # The 8 KiB sniff window ends inside a character: the whole text still decodes.
    text = "x" * 8191 + "\u20ac" + "tail"
    assert decode_text(text.encode()) == text
    # Genuinely truncated content is not valid UTF-8.
    assert decode_text("\u20ac".encode()[:2]) is None
    # A NUL past the sniff window still disqualifies the file.
    assert decode_text(b"x" * 9000 + b"\x00") is None

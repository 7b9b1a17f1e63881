"""Path confinement for every agent tool: one function decides, before any file is touched.

A path argument is written by the model, and the model reads untrusted text (retrieved files,
web pages, outputs saying "now write ~/.bashrc"). So every path-taking tool calls
:func:`confine` first and uses only the API path it returns. In order:

1. Lexical refusals, with no file-system call at all: NUL and control characters,
   backslashes (Windows separators, UNC ``\\\\server\\share``), drive letters (``C:``),
   absolute paths, ``~`` (home expansion), any ``..`` component - even ``a/../b``, which
   would be harmless, because "no ``..``" is a rule a reviewer can check at a glance.
2. The secret deny list and hidden files, judged on every component's *name* with the very
   rules the semantic index uses (:mod:`jupyter_cloudide.storage.workspace`), so a path that
   does not exist yet (``newdir/.env`` for a write) is judged too.
3. With a local root: the real path (symlinks resolved) must lie inside the real root, and
   the real path's components are judged by the deny list again - a harmless-looking
   ``notes.txt`` symlinked to ``.ssh/id_rsa`` is refused.
4. For a path that exists, :func:`~jupyter_cloudide.storage.workspace.check_path` as a last
   word (defence in depth: it is what the index decides for a saved file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

# _Rules judges one name exactly as check_path and the index scan do, and - unlike
# check_path - needs no file on disk, which a write to a new path requires.
from ...storage.workspace import DEFAULT_DENY, WorkspaceRules, _Rules, check_path
from .base import ToolContext, ToolError

__all__ = ["confine", "confine_for", "is_listable", "local_root", "real_path"]

_MAX_PATH_CHARS = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"\A[A-Za-z]:")
#: reasons of check_path that mean "the agent may not touch this"
_REFUSED_REASONS = {
    "denied": "is on the secret deny list",
    "hidden": "is hidden (hidden files are not allowed on this server)",
    "symlink_outside": "resolves outside the workspace",
}


def _show(path: str) -> str:
    """The path as it may appear in an error message: quoted, bounded."""
    return repr(path[:200] + ("..." if len(path) > 200 else ""))


def _lexical_parts(path: object) -> list[str]:
    """The path's components, or ToolError for anything that is not a plain relative path."""
    if not isinstance(path, str):
        raise ToolError("path must be a string")
    if len(path) > _MAX_PATH_CHARS:
        raise ToolError(f"path is longer than {_MAX_PATH_CHARS} characters")
    if "\x00" in path:
        raise ToolError("path contains a NUL byte")
    if _CONTROL.search(path):
        raise ToolError(f"path {_show(path)} contains a control character")
    if "\\" in path:
        raise ToolError(
            f"path {_show(path)} contains a backslash; use '/'-separated paths relative to the "
            "workspace root (Windows and UNC paths are not allowed)")
    if _DRIVE.match(path):
        raise ToolError(f"path {_show(path)} is a Windows drive path; use a relative path")
    if path.startswith("/"):
        raise ToolError(
            f"path {_show(path)} is absolute; use a path relative to the workspace root")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    for part in parts:
        if part == "..":
            raise ToolError(f"path {_show(path)} contains '..'; paths may not leave the "
                            "workspace or climb back up")
        if part.startswith("~"):
            raise ToolError(f"path {_show(path)} starts a component with '~'; home "
                            "directories are outside the workspace")
    return parts


def _name_reason(rules: _Rules, parts: Sequence[str]) -> str | None:
    """The deny-list or hidden verdict on a path's names, without touching the disk.

    Ancestors are judged as directories; the last component both as a file and as a
    directory, since a path that does not exist yet may become either.
    """
    for depth in range(1, len(parts) + 1):
        rel = "/".join(parts[:depth])
        name = parts[depth - 1]
        last = depth == len(parts)
        for is_dir in ((False, True) if last else (True,)):
            reason = rules.reason(rel, name, is_dir, ())
            if reason in _REFUSED_REASONS:
                return reason
    return None


def confine(
    path: str,
    root_dir: str | None,
    *,
    allow_hidden: bool = False,
    deny: Sequence[str] = DEFAULT_DENY,
    allow_root: bool = False,
) -> str:
    """The normalized API path ('/'-separated, relative, no ``.`` parts) or ToolError.

    ``root_dir`` is the ContentsManager's local root, or None for a ContentsManager without
    one (then only the lexical and name rules apply; that ContentsManager confines storage
    itself). ``allow_root`` admits the empty path (the root folder, for listings).
    """
    parts = _lexical_parts(path)
    if not parts and not allow_root:
        raise ToolError("path is empty; give a file path relative to the workspace root")
    workspace_rules = WorkspaceRules(allow_hidden=allow_hidden, deny=tuple(deny),
                                     use_gitignore=False, max_file_bytes=2**62)
    rules = _Rules(root_dir or os.curdir, workspace_rules)
    reason = _name_reason(rules, parts)
    if reason is not None:
        raise ToolError(f"path {_show(path)} {_REFUSED_REASONS[reason]}; access refused")
    api_path = "/".join(parts)
    if root_dir is None:
        return api_path
    real_root = os.path.realpath(root_dir)
    real = os.path.realpath(os.path.join(root_dir, *parts))
    try:
        inside = os.path.commonpath([real_root, real]) == real_root
    except ValueError:  # different drives (Windows)
        inside = False
    if not inside:
        raise ToolError(f"path {_show(path)} resolves outside the workspace (a symlink?); "
                        "access refused")
    real_parts = [] if real == real_root else os.path.relpath(real, real_root).split(os.sep)
    if _name_reason(rules, real_parts) is not None:
        raise ToolError(f"path {_show(path)} points at a file on the secret deny list; "
                        "access refused")
    if parts and os.path.lexists(os.path.join(root_dir, *parts)):
        verdict = check_path(root_dir, api_path, workspace_rules)
        if verdict in _REFUSED_REASONS:
            raise ToolError(f"path {_show(path)} {_REFUSED_REASONS[verdict]}; access refused")
    return api_path


def local_root(contents_manager: object) -> str | None:
    """The ContentsManager's local root folder, or None when it keeps files elsewhere."""
    root = getattr(contents_manager, "root_dir", None)
    return root if isinstance(root, str) and root and os.path.isdir(root) else None


def confine_for(ctx: ToolContext, path: str, *, allow_root: bool = False) -> str:
    """:func:`confine` with the root and hidden-file policy of the context's ContentsManager."""
    return confine(path, local_root(ctx.contents_manager),
                   allow_hidden=bool(getattr(ctx.contents_manager, "allow_hidden", False)),
                   allow_root=allow_root)


def real_path(root_dir: str, api_path: str) -> str:
    """The real (symlink-resolved) file-system path of an API path under ``root_dir``."""
    return os.path.realpath(os.path.join(root_dir, *api_path.split("/")))


def is_listable(ctx: ToolContext, api_path: str) -> bool:
    """Whether a listing may show ``api_path`` (an entry the ContentsManager returned)."""
    try:
        confine_for(ctx, api_path)
    except ToolError:
        return False
    return True

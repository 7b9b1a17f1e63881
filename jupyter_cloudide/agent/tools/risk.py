"""A quick, conservative guess at whether code the agent wants to run deserves a human look.

This is a heuristic for deciding when to ASK the user, **not a sandbox**. It cannot be: Python
can reach any of these capabilities through paths no static check sees (``pickle``,
``ctypes`` via a third-party module, a helper function in the user's own package that calls
``subprocess``). What it does is cheap and predictable: code that visibly runs programs,
deletes or writes files, opens network connections, evaluates strings as code or uses shell
magics is ``high``; the bulk of data-science code (pandas, numpy, matplotlib, prints) is
``low``, so approvals are asked where they mean something. Anything it cannot parse is
``high``.

How: the code is parsed with :mod:`ast` (names resolved through ``import ... as`` aliases).
IPython syntax is not Python, so when the plain parse fails, shell lines (``!cmd``,
``x = !cmd``) and magics (``%name``, ``%%name``) are judged from the text and replaced by
``pass`` before parsing again; the bodies of ``%%time``/``%%capture``-style magics, which run
Python, are analysed as Python. Deliberately not flagged (documented limits): library calls
that write files (``df.to_csv``, ``plt.savefig``), ``pandas.read_csv("https://...")``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["RiskReport", "score_code"]

_MAX_CODE_CHARS = 1_000_000
_MAX_DEPTH = 4

# --- what is risky ---------------------------------------------------------------------------

#: importing these is enough: their whole purpose is one of the risky capabilities
_RISKY_MODULES: dict[str, str] = {
    "subprocess": "runs programs",
    "pty": "runs programs",
    "pexpect": "runs programs",
    "sh": "runs programs",
    "plumbum": "runs programs",
    "socket": "network access",
    "requests": "network access",
    "urllib": "network access",
    "urllib3": "network access",
    "httpx": "network access",
    "http.client": "network access",
    "aiohttp": "network access",
    "ftplib": "network access",
    "smtplib": "network access",
    "telnetlib": "network access",
    "paramiko": "network access",
    "websocket": "network access",
    "websockets": "network access",
    "pycurl": "network access",
    "importlib": "dynamic import",
    "ctypes": "native code",
}
#: submodules exempt from their parent's verdict (pure string handling, no I/O)
_SAFE_SUBMODULES = ("urllib.parse",)

#: dotted names of risky functions (after alias resolution); prefixes end with "*"
_RISKY_FUNCTIONS: dict[str, str] = {
    "os.system": "runs a shell command",
    "os.popen": "runs a shell command",
    "os.exec*": "replaces the kernel with another program",
    "os.spawn*": "runs programs",
    "os.posix_spawn*": "runs programs",
    "os.fork*": "forks the kernel",
    "os.kill*": "sends signals to processes",
    "os.remove": "deletes files",
    "os.unlink": "deletes files",
    "os.rmdir": "deletes folders",
    "os.removedirs": "deletes folders",
    "os.rename": "moves files",
    "os.replace": "moves files",
    "os.truncate": "truncates files",
    "os.open": "opens files at the OS level",
    "os.startfile": "runs programs",
    "shutil.rmtree": "deletes folder trees",
    "shutil.move": "moves files",
    "shutil.copy*": "writes files",
    "shutil.chown": "changes file ownership",
    "builtins.eval": "evaluates a string as code",
    "builtins.exec": "executes a string as code",
    "builtins.__import__": "dynamic import",
    "builtins.open": "opens files",
}
#: builtins that run strings as code
_DYNAMIC_BUILTINS = {"eval": "evaluates a string as code", "exec": "executes a string as code",
                     "__import__": "dynamic import"}
#: method names risky on any object (their names are specific enough to have no benign twin)
_RISKY_METHODS: dict[str, str] = {
    "unlink": "deletes files",
    "rmdir": "deletes folders",
    "rmtree": "deletes folder trees",
    "write_text": "writes a file",
    "write_bytes": "writes a file",
    "system": "runs a shell command",
    "popen": "runs a shell command",
    "getoutput": "runs a shell command",
    "getstatusoutput": "runs a shell command",
    "check_output": "runs programs",
    "check_call": "runs programs",
    "Popen": "runs programs",
    "urlopen": "network access",
    "urlretrieve": "network access",
    "run_cell": "runs code this check cannot see",
}
#: attribute names used to escape from normal name resolution
_INTROSPECTION = {"__builtins__", "__globals__", "__subclasses__", "__code__", "__import__"}

#: cell magics whose body is Python (analysed as such) and harmless display-only ones
_PYTHON_CELL_MAGICS = {"time", "timeit", "capture", "prun"}
_SAFE_CELL_MAGICS = {"latex", "markdown"}
_CELL_MAGIC_WHY = {
    "bash": "runs shell commands", "sh": "runs shell commands",
    "script": "runs another program", "system": "runs shell commands",
    "sx": "runs shell commands", "writefile": "writes a file", "file": "writes a file",
    "javascript": "runs JavaScript in the browser", "js": "runs JavaScript in the browser",
    "html": "injects HTML (and scripts) into the page",
}
#: line magics that run Python given on the line, and ones known to be harmless
_PYTHON_LINE_MAGICS = {"time", "timeit", "prun"}
_SAFE_LINE_MAGICS = {
    "matplotlib", "who", "whos", "who_ls", "pwd", "precision", "xmode", "history", "pinfo",
    "pinfo2", "pdoc", "pdef", "psource", "magic", "lsmagic", "quickref", "autoreload",
    "aimport", "load_ext", "reload_ext", "config", "colors", "doctest_mode", "page", "cd",
}
_LINE_MAGIC_WHY = {
    "system": "runs shell commands", "sx": "runs shell commands",
    "run": "runs a script", "pip": "installs packages", "conda": "installs packages",
    "mamba": "installs packages", "env": "reads or sets environment variables (secrets)",
    "writefile": "writes a file", "save": "writes a file", "rm": "deletes files",
    "rmdir": "deletes folders", "mv": "moves files", "cp": "copies files",
    "load": "loads code from a file or URL", "reset": "wipes the kernel's variables",
}

# IPython syntax, one line at a time: an optional "x = " target, then a sigil.
_IPY_LINE = re.compile(
    r"^(?P<indent>[ \t]*)(?:(?P<target>[A-Za-z_][\w.\[\]'\", \t]*?)[ \t]*=[ \t]*)?"
    r"(?P<sigil>!!?|%%?)(?P<rest>.*)$")
_MAGIC_NAME = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?P<args>.*)$")
_TIMEIT_OPTIONS = re.compile(r"^(?:-[a-zA-Z](?:[ \t]*\d+)?[ \t]+)*")


@dataclass
class RiskReport:
    """``high`` when any reason was found; reasons name the construct and what it does."""

    level: Literal["low", "high"]
    reasons: list[str] = field(default_factory=list)

    @property
    def high(self) -> bool:
        return self.level == "high"


class _Reasons:
    """Ordered, de-duplicated reasons."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, reason: str) -> None:
        if reason not in self.items:
            self.items.append(reason)

    def extend(self, reasons: Iterable[str]) -> None:
        for reason in reasons:
            self.add(reason)


def _risky_function(dotted: str) -> str | None:
    for pattern, why in _RISKY_FUNCTIONS.items():
        if pattern.endswith("*"):
            if dotted.startswith(pattern[:-1]):
                return why
        elif dotted == pattern:
            return why
    return None


def _risky_module(module: str) -> str | None:
    if any(module == safe or module.startswith(safe + ".") for safe in _SAFE_SUBMODULES):
        return None
    for name, why in _RISKY_MODULES.items():
        if module == name or module.startswith(name + "."):
            return why
    return None


def _is_write_mode(mode: str) -> bool:
    return any(flag in mode for flag in "wax+")


class _Scanner(ast.NodeVisitor):
    """Collects reasons from a parsed module."""

    def __init__(self, reasons: _Reasons, depth: int) -> None:
        self.reasons = reasons
        self.depth = depth
        #: local name -> the dotted module or function it was imported as
        self.aliases: dict[str, str] = {}

    # -- names -------------------------------------------------------------------------------

    def dotted(self, node: ast.expr) -> str | None:
        """``a.b.c`` with ``a`` resolved through the imports, or None for other expressions."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base is not None else None
        return None

    # -- imports -----------------------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            local = alias.asname or alias.name.split(".")[0]
            self.aliases[local] = alias.name if alias.asname else alias.name.split(".")[0]
            why = _risky_module(alias.name)
            if why:
                self.reasons.add(f"{why}: import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        why = _risky_module(module)
        if why:
            self.reasons.add(f"{why}: from {module} import ...")
        for alias in node.names:
            if alias.name == "*":
                if module in ("os", "shutil", "subprocess", "builtins"):
                    self.reasons.add(f"imports every name of {module} (from {module} import *)")
                continue
            full = f"{module}.{alias.name}" if module else alias.name
            self.aliases[alias.asname or alias.name] = full
            why = _risky_function(full) or _risky_module(full)
            if why:
                self.reasons.add(f"{why}: from {module} import {alias.name}")
        self.generic_visit(node)

    # -- names and attributes ------------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _DYNAMIC_BUILTINS and node.id not in self.aliases:
            self.reasons.add(f"{_DYNAMIC_BUILTINS[node.id]}: {node.id}")
        elif node.id == "__builtins__":
            self.reasons.add("reaches into __builtins__")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = self.dotted(node)
        why = _risky_function(dotted) if dotted else None
        if why and dotted != "builtins.open":
            self.reasons.add(f"{why}: {dotted}")
        if node.attr in _INTROSPECTION:
            self.reasons.add(f"introspection that escapes normal name lookup: .{node.attr}")
        self.generic_visit(node)

    # -- calls ---------------------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        dotted = self.dotted(func)
        if dotted in ("open", "builtins.open", "io.open", "codecs.open"):
            self._check_open(node, mode_index=1, label=dotted)
        elif isinstance(func, ast.Attribute) and func.attr == "open" and dotted != "os.open":
            base = self.dotted(func.value)
            # A module's open(file, mode) vs. an object's .open(mode) (pathlib).
            module_like = base is not None and base.split(".")[0] in self.aliases.values()
            self._check_open(node, mode_index=1 if module_like else 0,
                             label=f"{base or '...'}.open")
        if (isinstance(func, ast.Attribute) and func.attr in _RISKY_METHODS
                and not (dotted and _risky_function(dotted))):  # else reported by full name
            self.reasons.add(f"{_RISKY_METHODS[func.attr]}: .{func.attr}()")
        if dotted == "getattr" and len(node.args) >= 2:
            self._check_getattr(node)
        if isinstance(func, ast.Attribute) and func.attr in ("run_line_magic", "run_cell_magic"):
            self._check_magic_call(node, cell=func.attr == "run_cell_magic")
        self.generic_visit(node)

    def _check_open(self, node: ast.Call, *, mode_index: int, label: str) -> None:
        mode_node: ast.expr | None = None
        if len(node.args) > mode_index:
            mode_node = node.args[mode_index]
        for keyword in node.keywords:
            if keyword.arg == "mode":
                mode_node = keyword.value
        if mode_node is None:
            return  # read-only default
        if isinstance(mode_node, ast.Constant):
            if isinstance(mode_node.value, str) and _is_write_mode(mode_node.value):
                self.reasons.add(f"writes a file: {label}(..., {mode_node.value!r})")
            return
        self.reasons.add(f"opens a file with a mode this check cannot read: {label}()")

    def _check_getattr(self, node: ast.Call) -> None:
        target = self.dotted(node.args[0])
        name = node.args[1]
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            full = f"{target}.{name.value}" if target else name.value
            why = _risky_function(full) or _RISKY_METHODS.get(name.value) \
                or _DYNAMIC_BUILTINS.get(name.value)
            if why:
                self.reasons.add(f"{why}: getattr(..., {name.value!r})")
        elif target and (target in ("os", "shutil", "subprocess", "builtins")
                         or _risky_module(target)):
            self.reasons.add(f"looks up a name of {target} dynamically: getattr({target}, ...)")

    def _check_magic_call(self, node: ast.Call, *, cell: bool) -> None:
        """``get_ipython().run_line_magic(name, line)`` / ``run_cell_magic(name, line, body)``."""
        args = node.args
        if not args or not isinstance(args[0], ast.Constant) or not isinstance(
                args[0].value, str):
            self.reasons.add("runs an IPython magic this check cannot read")
            return
        name = args[0].value
        line = args[1].value if len(args) > 1 and isinstance(args[1], ast.Constant) else ""
        if cell:
            body = args[2].value if len(args) > 2 and isinstance(args[2], ast.Constant) else None
            self.reasons.extend(_judge_cell_magic(name, str(line), body, self.depth))
        else:
            self.reasons.extend(_judge_line_magic(name, str(line), self.depth))


# --- IPython syntax ----------------------------------------------------------------------------


def _judge_cell_magic(name: str, line: str, body: object, depth: int) -> list[str]:
    if name in _SAFE_CELL_MAGICS:
        return []
    if name in _PYTHON_CELL_MAGICS:
        if not isinstance(body, str):
            return [f"cell magic %%{name} with a body this check cannot read"]
        setup = _TIMEIT_OPTIONS.sub("", line.strip(), count=1)
        code = f"{setup}\n{body}" if name == "timeit" and setup else body
        return _score(code, depth + 1).items
    why = _CELL_MAGIC_WHY.get(name, "runs code this check cannot analyze")
    return [f"cell magic %%{name}: {why}"]


def _judge_line_magic(name: str, args: str, depth: int) -> list[str]:
    if name in _SAFE_LINE_MAGICS:
        return []
    if name in _PYTHON_LINE_MAGICS:
        code = _TIMEIT_OPTIONS.sub("", args.strip(), count=1)
        return _score(code, depth + 1).items if code else []
    why = _LINE_MAGIC_WHY.get(name, "an IPython magic this check does not know")
    return [f"line magic %{name}: {why}"]


def _strip_ipython(code: str, reasons: _Reasons, depth: int) -> str:
    """Judge IPython-only lines and replace them with ``pass``; returns parseable Python
    (when the rest is). A leading ``%%magic`` decides for the whole cell."""
    lines = code.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):
        match = _MAGIC_NAME.match(lines[first].lstrip()[2:])
        name = match.group("name") if match else ""
        line_args = match.group("args") if match else ""
        body = "\n".join(lines[first + 1 :])
        reasons.extend(_judge_cell_magic(name, line_args, body, depth))
        return ""
    out: list[str] = []
    for line in lines:
        match = _IPY_LINE.match(line)
        if match is None:
            out.append(line)
            continue
        indent, sigil, rest = match.group("indent"), match.group("sigil"), match.group("rest")
        if sigil.startswith("!"):
            reasons.add(f"shell command: !{rest.strip()[:80]}")
        elif sigil == "%%":
            magic = _MAGIC_NAME.match(rest)
            reasons.add(f"cell magic %%{magic.group('name') if magic else rest[:40]} "
                        "not at the top of the cell")
        else:
            magic = _MAGIC_NAME.match(rest)
            if magic is None:
                reasons.add(f"unreadable IPython line: %{rest[:40]}")
            else:
                reasons.extend(_judge_line_magic(magic.group("name"), magic.group("args"),
                                                 depth))
        out.append(f"{indent}pass")
    return "\n".join(out)


def _parse(code: str) -> ast.Module | str:
    """The module, or a reason why it could not be parsed."""
    try:
        return ast.parse(code)
    except SyntaxError as exc:
        return f"cannot analyze: {exc.msg} at line {exc.lineno}"
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"cannot analyze: {type(exc).__name__}"


def _score(code: str, depth: int) -> _Reasons:
    reasons = _Reasons()
    if depth > _MAX_DEPTH:
        reasons.add("cannot analyze: magics nested too deeply")
        return reasons
    if len(code) > _MAX_CODE_CHARS:
        reasons.add(f"cannot analyze: code longer than {_MAX_CODE_CHARS} characters")
        return reasons
    tree = _parse(code)
    if isinstance(tree, str):
        # Not Python: maybe IPython syntax. (Valid Python never needs this, so "!" or "%"
        # lines inside a string literal of valid code are never misread as magics.)
        stripped = _strip_ipython(code, reasons, depth)
        tree = _parse(stripped)
        if isinstance(tree, str):
            reasons.add(tree)
            return reasons
    try:
        _Scanner(reasons, depth).visit(tree)
    except RecursionError:
        reasons.add("cannot analyze: code nested too deeply")
    return reasons


def score_code(code: str) -> RiskReport:
    """``high`` with reasons if the code does anything risky, else ``low``."""
    reasons = _score(code, 0).items
    return RiskReport(level="high" if reasons else "low", reasons=reasons)

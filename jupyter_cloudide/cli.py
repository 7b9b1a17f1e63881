"""``jupyter cloudide``: the semantic index and the ``/v1`` API keys from a terminal.

- ``jupyter cloudide index [--full]`` builds or updates the index of a folder (default: the
  current one, as ``jupyter lab`` started there would serve it), with a progress bar;
- ``jupyter cloudide search "query" [--k=10] [--mode=hybrid] [--glob=...]`` prints ranked hits;
- ``jupyter cloudide token create --models 'gpt-*' --expires 30d [--auto-approve] [--name=..]``
  prints a new API key once; ``token list`` and ``token revoke <id>`` manage them.

It reads the same configuration as the server (``jupyter_server_config``: the ``CloudIDEApp``
index settings and data folder) and writes the same per-user index the server uses, so an
index built here is what the search panel searches. Files are read from disk with the same
rules the server applies (.gitignore, hidden files, the deny list of secrets, size cap).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from jupyter_core.application import JupyterApp
from traitlets import Bool, Enum, Int, Unicode, default

from ._version import __version__


def _disk_reader(root: Path) -> Any:
    from .storage.workspace import decode_text

    async def read(path: str) -> Any:
        data = await asyncio.to_thread((root / path).read_bytes)
        if path.endswith(".ipynb"):
            try:
                notebook = json.loads(data)
            except ValueError:
                return None
            return notebook if isinstance(notebook, dict) else None
        return decode_text(data)

    return read


class _IndexCommand(JupyterApp):
    """Shared: the folder, the user, and an IndexService built like the server's."""

    config_file_name = Unicode("jupyter_server_config")
    root_dir = Unicode(config=True, help="The workspace folder (default: the current folder).")
    user = Unicode(config=True, help="Whose index (default: as the server names its owner).")

    @default("root_dir")
    def _default_root_dir(self) -> str:
        return os.getcwd()

    @default("user")
    def _default_user(self) -> str:
        from .app import CloudIDEApp

        return os.environ.get("JUPYTERHUB_USER") or CloudIDEApp()._owner_name

    aliases = {"root-dir": "_IndexCommand.root_dir", "user": "_IndexCommand.user",
               "log-level": "Application.log_level"}

    def service(self, on_progress: Any = None) -> Any:
        from .app import CloudIDEApp
        from .storage.indexer import IndexService, IndexSettings
        from .storage.workspace import WorkspaceRules

        cide = CloudIDEApp(config=self.config)
        root = Path(self.root_dir).resolve()
        if not root.is_dir():
            raise SystemExit(f"not a folder: {root}")
        settings = IndexSettings(
            root_dir=str(root), data_dir=Path(cide.data_dir) / "index",
            rules=WorkspaceRules(max_file_bytes=cide.index_max_file_bytes,
                                 extra_ignore=tuple(cide.index_ignore)),
            max_lines=cide.index_chunk_lines, scan_interval_s=0,
        )
        return IndexService(settings, cide._build_embedder(), _disk_reader(root),
                            on_progress=on_progress)


class IndexCommand(_IndexCommand):
    """Build or update the semantic index of a folder."""

    name = "jupyter-cloudide-index"
    description = __doc__
    full = Bool(False, config=True, help="Wipe the index and build it again.")
    flags = {"full": ({"IndexCommand": {"full": True}}, "Wipe the index and build it again.")}
    aliases = {**_IndexCommand.aliases, "root-dir": "IndexCommand.root_dir",
               "user": "IndexCommand.user"}

    def start(self) -> None:
        sys.exit(asyncio.run(self._run()))

    async def _run(self) -> int:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="file", desc="indexing", disable=None)

        def progress(user: str, status: dict[str, Any]) -> None:
            p = status.get("progress") or {}
            if "files_total" in p:
                bar.total = p["files_total"]
                bar.n = p.get("files_done", 0)
                bar.set_postfix(chunks=p.get("chunks_embedded", 0), refresh=False)
                bar.refresh()

        service = self.service(progress)
        try:
            service.request(self.user, scan=True, rebuild=self.full)
            status = await service.wait_idle(self.user)
        finally:
            bar.close()
            await service.close()
        print(json.dumps(status, indent=2))
        return 1 if status.get("state") == "error" else 0


class SearchCommand(_IndexCommand):
    """Search the semantic index of a folder (updating it first)."""

    name = "jupyter-cloudide-search"
    description = __doc__
    k = Int(10, config=True, help="How many results.")
    mode = Enum(["hybrid", "vector", "text"], "hybrid", config=True, help="Ranking method.")
    glob = Unicode("", config=True, help="Only paths matching this glob.")
    as_json = Bool(False, config=True, help="Print JSON instead of text.")
    aliases = {**_IndexCommand.aliases, "root-dir": "SearchCommand.root_dir",
               "user": "SearchCommand.user", "k": "SearchCommand.k",
               "mode": "SearchCommand.mode", "glob": "SearchCommand.glob"}
    flags = {"json": ({"SearchCommand": {"as_json": True}}, "Print JSON.")}

    def start(self) -> None:
        query = " ".join(self.extra_args).strip()
        if not query:
            raise SystemExit('usage: jupyter cloudide search "what you look for"')
        sys.exit(asyncio.run(self._run(query)))

    async def _run(self, query: str) -> int:
        service = self.service()
        try:
            service.request(self.user, scan=True)
            await service.wait_idle(self.user)
            found = await service.search(self.user, query, k=self.k, mode=self.mode,
                                         path_glob=self.glob or None)
        finally:
            await service.close()
        if self.as_json:
            print(json.dumps(found, indent=2))
            return 0
        for hit in found["results"]:
            where = f"{hit['path']}:{hit['start_line']}-{hit['end_line']}"
            symbol = f"  {hit['symbol']}" if hit.get("symbol") else ""
            print(f"{hit['score']:.4f}  {where}{symbol}")
        return 0


class _TokenCommand(JupyterApp):
    """Shared: the metadata store as the server opens it, and whose keys."""

    config_file_name = Unicode("jupyter_server_config")
    user = Unicode(config=True, help="Whose keys (default: as the server names its owner).")
    as_json = Bool(False, config=True, help="Print JSON.")

    @default("user")
    def _default_user(self) -> str:
        from .app import CloudIDEApp

        return os.environ.get("JUPYTERHUB_USER") or CloudIDEApp()._owner_name

    def store(self) -> Any:
        from .app import CloudIDEApp
        from .storage.db import MetadataStore

        cide = CloudIDEApp(config=self.config)
        url = cide.db_url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:"):
            Path(cide.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        return MetadataStore(url).open()

    def _fail(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        self.exit(1)


class TokenCreateCommand(_TokenCommand):
    """Mint an API key for cloudide/v1 and print it (once: only its hash is kept)."""

    name = "jupyter-cloudide-token-create"
    description = __doc__
    models = Unicode("", config=True,
                     help="Comma-separated model ids or globs the key may use (default: all).")
    expires = Unicode("", config=True, help="Lifetime: 30d, 12h, 90m, 2w (default: none).")
    key_name = Unicode("", config=True, help="A name to recognise the key by.")
    auto_approve = Bool(False, config=True,
                        help="The agent model may run tools that would ask for approval.")
    aliases = {"models": "TokenCreateCommand.models", "expires": "TokenCreateCommand.expires",
               "name": "TokenCreateCommand.key_name", "user": "TokenCreateCommand.user"}
    flags = {"auto-approve": ({"TokenCreateCommand": {"auto_approve": True}},
                              "The agent model may run tools that would ask for approval."),
             "json": ({"TokenCreateCommand": {"as_json": True}}, "Print JSON.")}

    def start(self) -> None:
        from .agent import keys
        from .errors import CloudIDEError

        globs = [m.strip() for m in self.models.split(",") if m.strip()]
        store = self.store()
        try:
            plaintext, record = keys.create(store, self.user, name=self.key_name, models=globs,
                                            expires=self.expires or None,
                                            allow_auto_approve=self.auto_approve)
        except CloudIDEError as exc:
            self._fail(exc.message)
            return
        finally:
            store.close()
        if self.as_json:
            print(json.dumps({"key": plaintext, "token": record}, indent=2))
            return
        print(plaintext)
        scope = ", ".join(record["models"]) or "every model you may use"
        print(f"API key {record['id']} for {self.user} ({scope}; expires "
              f"{record['expires_at'] or 'never'}; auto-approve "
              f"{'on' if record['allow_auto_approve'] else 'off'}). It is shown only now.",
              file=sys.stderr)


class TokenListCommand(_TokenCommand):
    """List your API keys (never the keys themselves)."""

    name = "jupyter-cloudide-token-list"
    description = __doc__
    aliases = {"user": "TokenListCommand.user"}
    flags = {"json": ({"TokenListCommand": {"as_json": True}}, "Print JSON.")}

    def start(self) -> None:
        from .agent import keys

        store = self.store()
        try:
            items = keys.listing(store, self.user)
        finally:
            store.close()
        if self.as_json:
            print(json.dumps(items, indent=2))
            return
        for item in items:
            print(f"{item['id']}  {item['prefix']}…  {item['state']:8}  "
                  f"{','.join(item['models']) or '*'}  expires {item['expires_at'] or 'never'}"
                  f"  {item['name']}")


class TokenRevokeCommand(_TokenCommand):
    """Revoke one of your API keys by its id (``token list`` shows them)."""

    name = "jupyter-cloudide-token-revoke"
    description = __doc__
    aliases = {"user": "TokenRevokeCommand.user"}

    def start(self) -> None:
        from .agent import keys
        from .errors import CloudIDEError

        if len(self.extra_args) != 1:
            self._fail("usage: jupyter cloudide token revoke <id>")
            return
        store = self.store()
        try:
            keys.revoke(store, self.user, self.extra_args[0])
        except CloudIDEError as exc:
            self._fail(exc.message)
            return
        finally:
            store.close()
        print(f"revoked {self.extra_args[0]}")


class TokenCommand(JupyterApp):
    """API keys for the OpenAI-compatible cloudide/v1 API: create, list, revoke."""

    name = "jupyter-cloudide-token"
    description = __doc__
    subcommands = {
        "create": (TokenCreateCommand, TokenCreateCommand.description.splitlines()[0]),
        "list": (TokenListCommand, TokenListCommand.description.splitlines()[0]),
        "revoke": (TokenRevokeCommand, TokenRevokeCommand.description.splitlines()[0]),
    }

    def start(self) -> None:
        if self.subapp is None:
            print("usage: jupyter cloudide token create|list|revoke --help")
            self.exit(2)
        super().start()


class CloudIDECommand(JupyterApp):
    """jupyter_cloudide from the command line."""

    name = "jupyter-cloudide"
    version = __version__
    description = __doc__
    subcommands = {
        "index": (IndexCommand, IndexCommand.description.splitlines()[0]),
        "search": (SearchCommand, SearchCommand.description.splitlines()[0]),
        "token": (TokenCommand, TokenCommand.description.splitlines()[0]),
        # imported only when used: the sidecar needs none of the above
        "serve-adapter": ("jupyter_cloudide.adapters.sidecar.ServeAdapterCommand",
                          "Serve a protocol adapter as a local OpenAI-compatible API"),
    }

    def start(self) -> None:
        if self.subapp is None:
            print("usage: jupyter cloudide index|search|token|serve-adapter --help")
            self.exit(2)
        super().start()


main = CloudIDECommand.launch_instance

if __name__ == "__main__":
    main()

"""``jupyter cloudide``: the semantic index and the ``/v1`` API keys from a terminal.

- ``jupyter cloudide index [--full]`` builds or updates the index of a folder (default: the
  current one, as ``jupyter lab`` started there would serve it), with a progress bar;
- ``jupyter cloudide search "query" [--k=10] [--mode=hybrid] [--glob=...]`` prints ranked hits;
- ``jupyter cloudide token create --models 'gpt-*' --expires 30d [--auto-approve] [--name=..]``
  prints a new API key once; ``token list`` and ``token revoke <id>`` manage them;
- ``jupyter cloudide usage [--user U | --group G] [--days N | --since D --until D]
  [--by day|model|user] [--csv] [--rows]`` prints usage and cost from the ledger, and
  ``usage reprice --since D`` recomputes costs after a price change (docs/metering.md).

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


def _open_store(cide: Any) -> Any:
    """The metadata store as the server opens it (its folder created for SQLite), without the
    server's start-up work (a running server's pending approvals stay pending)."""
    from .storage.db import MetadataStore

    url = cide.db_url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:"):
        Path(cide.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    return MetadataStore(url).open()


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

        return _open_store(CloudIDEApp(config=self.config))

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


class _UsageBase(JupyterApp):
    """Shared: the metadata store and the prices as the server's configuration has them."""

    config_file_name = Unicode("jupyter_server_config")

    def cide(self) -> Any:
        from .app import CloudIDEApp

        return CloudIDEApp(config=self.config)

    def store(self) -> Any:
        return _open_store(self.cide())

    def _fail(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        self.exit(2)


def _day(value: str, what: str) -> Any:
    from datetime import datetime, timezone

    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise SystemExit(f"error: --{what}: a date YYYY-MM-DD, not {value!r}") from None
    return day.replace(tzinfo=timezone.utc)


_USAGE_COLUMNS = ("cost", "input_tokens", "output_tokens", "calls", "kernel_busy_seconds",
                  "kernel_seconds", "requests")


def usage_table(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Roll report series rows (``reports.series_rows``) up by day, model or user."""
    from .metering.kernel_time import KIND_BUSY, KIND_LIFETIME
    from .metering.ledger import KIND_REQUESTS
    from .metering.pricing import TOKEN_KINDS

    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = {"day": row["t"][:10], "model": row["model"] or "(none)",
               "user": row["user"]}[by]
        if by == "model" and not row["model"]:
            continue
        entry = table.setdefault(key, {by: key, **dict.fromkeys(_USAGE_COLUMNS, 0)})
        entry["cost"] += row["cost"]
        if row["kind"] in TOKEN_KINDS:
            entry["input_tokens"] += row["input_tokens"]
            entry["output_tokens"] += row["output_tokens"]
            entry["calls"] += row["events"]
        elif row["kind"] == KIND_BUSY:
            entry["kernel_busy_seconds"] += row["quantity"]
        elif row["kind"] == KIND_LIFETIME:
            entry["kernel_seconds"] += row["quantity"]
        elif row["kind"] == KIND_REQUESTS:
            entry["requests"] += int(row["quantity"])
    for entry in table.values():
        entry["cost"] = round(entry["cost"], 6)
    return [table[k] for k in sorted(table)]


class UsageReportCommand(_UsageBase):
    """Usage and cost from the ledger, by day, model or user (everyone unless --user or
    --group); --csv for a spreadsheet, --rows for the ledger rows themselves."""

    name = "jupyter-cloudide-usage"
    description = __doc__
    user = Unicode("", config=True, help="Only this user.")
    group = Unicode("", config=True, help="Only this group (rows billed to it and its members).")
    days = Int(30, config=True, help="The last N whole UTC days (with today).")
    since = Unicode("", config=True, help="From this UTC day (YYYY-MM-DD), instead of --days.")
    until = Unicode("", config=True, help="Through this UTC day (YYYY-MM-DD; default: today).")
    by = Enum(["day", "model", "user"], "day", config=True, help="One line per day, model or user.")
    as_csv = Bool(False, config=True, help="Print CSV (cells safe for spreadsheets).")
    as_json = Bool(False, config=True, help="Print the whole report as JSON.")
    rows = Bool(False, config=True, help="The ledger rows themselves (with --csv: an export).")
    aliases = {"user": "UsageReportCommand.user", "group": "UsageReportCommand.group",
               "days": "UsageReportCommand.days", "since": "UsageReportCommand.since",
               "until": "UsageReportCommand.until", "by": "UsageReportCommand.by",
               "log-level": "Application.log_level"}
    flags = {"csv": ({"UsageReportCommand": {"as_csv": True}}, "Print CSV."),
             "json": ({"UsageReportCommand": {"as_json": True}}, "Print JSON."),
             "rows": ({"UsageReportCommand": {"rows": True}}, "The ledger rows.")}
    subcommands = {
        "reprice": ("jupyter_cloudide.cli.UsageRepriceCommand",
                    "Recompute ledger costs with the current prices"),
    }

    def window(self) -> tuple[Any, Any]:
        from datetime import timedelta

        from .metering.reports import period

        if self.user and self.group:
            raise SystemExit("error: --user or --group, not both")
        if not self.since:
            if self.until:
                raise SystemExit("error: --until needs --since")
            if not 1 <= self.days <= 3660:
                raise SystemExit("error: --days: 1 to 3660")
            return period(self.days)
        since = _day(self.since, "since")
        until = _day(self.until, "until") + timedelta(days=1) if self.until else period(1)[1]
        if until <= since:
            raise SystemExit("error: --until is before --since")
        return since, until

    def start(self) -> None:
        if self.subapp is not None:
            self.subapp.start()
            return
        from .metering import reports

        since, until = self.window()
        user, group = self.user or None, self.group or None
        store = self.store()
        try:
            if self.rows:
                records = store.list_usage_events(user, since, until, group=group,
                                                  limit=10_000_000)
                if self.as_csv:
                    sys.stdout.write(reports.ledger_csv(records))
                else:
                    for r in records:
                        print(json.dumps({**{c: getattr(r, c) for c in
                                             reports.LEDGER_CSV_COLUMNS},
                                          "occurred_at": r.occurred_at.isoformat()}))
                return
            if self.as_json:
                print(json.dumps(reports.usage_report(store.engine, user, since=since,
                                                      until=until, group=group), indent=2))
                return
            table = usage_table(reports.series_rows(store.engine, user, since=since,
                                                    until=until, group=group), self.by)
        finally:
            store.close()
        if self.as_csv:
            sys.stdout.write(reports.csv_text((self.by, *_USAGE_COLUMNS), table))
            return
        who = f"user {user}" if user else f"group {group}" if group else "everyone"
        print(f"usage of {who}, {since.date()} to {until.date()} (exclusive), by {self.by}")
        header = (self.by, *_USAGE_COLUMNS)
        print("  ".join(f"{h:>14}" for h in header))
        for entry in table:
            print("  ".join(f"{entry[h]!s:>14}" if isinstance(entry[h], str)
                            else f"{entry[h]:>14.6g}" for h in header))
        if not table:
            print("(no usage)")


class UsageRepriceCommand(_UsageBase):
    """Recompute the cost of every ledger row from the billing period of --since with the
    current prices (models' price_per_1k, kernel_prices, tiers) and rebuild the roll-ups."""

    name = "jupyter-cloudide-usage-reprice"
    description = __doc__
    since = Unicode("", config=True, help="Reprice from the billing period of this UTC day.")
    aliases = {"since": "UsageRepriceCommand.since", "log-level": "Application.log_level"}

    def start(self) -> None:
        from .metering.pricing import PricingError, reprice

        if not self.since:
            self._fail("usage: jupyter cloudide usage reprice --since YYYY-MM-DD")
            return
        since = _day(self.since, "since")
        try:
            pricing = self.cide().build_pricing()
        except PricingError as exc:
            self._fail(f"pricing: {exc}")
            return
        store = self.store()
        try:
            result = reprice(store, pricing, since)
        finally:
            store.close()
        print(json.dumps(result))


class CloudIDECommand(JupyterApp):
    """jupyter_cloudide from the command line."""

    name = "jupyter-cloudide"
    version = __version__
    description = __doc__
    subcommands = {
        "index": (IndexCommand, IndexCommand.description.splitlines()[0]),
        "search": (SearchCommand, SearchCommand.description.splitlines()[0]),
        "token": (TokenCommand, TokenCommand.description.splitlines()[0]),
        "usage": (UsageReportCommand, UsageReportCommand.description.splitlines()[0]),
        # imported only when used: the sidecar needs none of the above
        "serve-adapter": ("jupyter_cloudide.adapters.sidecar.ServeAdapterCommand",
                          "Serve a protocol adapter as a local OpenAI-compatible API"),
    }

    def start(self) -> None:
        if self.subapp is None:
            print("usage: jupyter cloudide index|search|token|usage|serve-adapter --help")
            self.exit(2)
        super().start()


main = CloudIDECommand.launch_instance

if __name__ == "__main__":
    main()

"""The hub service under a real JupyterHub with two users' servers (see conftest.py).

What is real: JupyterHub, configurable-http-proxy, the OAuth and token checks, the servers
(``jupyterhub-singleuser`` with jupyter_cloudide), the service process and their HTTP
between each other. Only the model provider is the fake upstream.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from fake_upstream import Turn
from hub_testing import GROUP, PASSWORD, SERVICE, TEAM_LIMIT, USERS, Hub, _descendants, wait_for

pytestmark = pytest.mark.timeout(240)


def _server_token(hub: Hub, user: str) -> str:
    """The JUPYTERHUB_API_TOKEN the Hub gave ``user``'s server (what its hub sync uses)."""
    for pid in _descendants(hub.process.pid):
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                   if "=" in item)
        if env.get("JUPYTERHUB_USER") == user and "JUPYTERHUB_API_TOKEN" in env:
            return env["JUPYTERHUB_API_TOKEN"]
    raise AssertionError(f"no server process of {user} found")


def _row(user: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user": user, "kind": "tokens", "model": "gpt-4o-mini",
            "input_tokens": 0, "output_tokens": 0, "cost": 0.0,
            "occurred_at": "2020-01-01T00:00:00+00:00", **extra}


def _chat(hub: Hub, user: str, model: str, *, max_tokens: int = 16) -> httpx.Response:
    """One /v1 chat completion on ``user``'s server, authenticated by the user's Hub token."""
    with hub.client() as client:
        return client.post(
            f"user/{user}/cloudide/v1/chat/completions",
            headers={"Authorization": f"Bearer {hub.user_token(user)}"},
            json={"model": model, "max_tokens": max_tokens,
                  "messages": [{"role": "user", "content": f"hello from {user}"}]})


def _user_totals(report: dict[str, Any], user: str) -> dict[str, Any]:
    found = [u for u in report["users"] if u["user"] == user]
    return found[0] if found else {"input_tokens": 0, "output_tokens": 0, "cost": 0.0,
                                   "events": 0}


# -- the service's own checks ------------------------------------------------------------------


def test_usage_reports_are_authenticated_scoped_and_validated(servers: Hub) -> None:
    hub = servers
    server_token = _server_token(hub, "alice")
    # no credentials, or a cookie-less bad token: 401, never data
    assert hub.service("api/usage", None, "POST", json={"rows": []}).status_code == 401
    assert hub.service("api/budgets", "not-a-token").status_code == 401

    # the server's own token: its user's rows are accepted, once (replays are absorbed)
    rows = [_row("alice", "hubtest:1"), _row("alice", "hubtest:2")]
    first = hub.service("api/usage", server_token, "POST", json={"rows": rows})
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": 2, "inserted": 2}
    again = hub.service("api/usage", server_token, "POST", json={"rows": rows})
    assert again.json() == {"accepted": 2, "inserted": 0}
    # bob may use the same event ids: they are his, not a replay of alice's
    bob = hub.service("api/usage", _server_token(hub, "bob"), "POST",
                      json={"rows": [_row("bob", "hubtest:1")]})
    assert bob.json() == {"accepted": 1, "inserted": 1}

    # a server reporting another user's rows: 403, nothing recorded
    foreign = hub.service("api/usage", server_token, "POST",
                          json={"rows": [_row("alice", "hubtest:3"), _row("bob", "hubtest:4")]})
    assert foreign.status_code == 403, foreign.text
    assert "own user" in foreign.json()["message"]
    assert hub.service("api/usage", server_token, "POST",
                       json={"rows": [_row("alice", "hubtest:3")]}).json()["inserted"] == 1

    # malformed bodies: 400 naming the field; oversized: 413
    for body, field in [(b"not json", "body"), (b"[1, 2]", "body"),
                        (b'{"rows": {}}', "rows"), (b'{"rows": [], "x": 1}', "x"),
                        (b'{"rows": [{"event_id": "e", "user": "alice"}]}', "kind"),
                        (b'{"rows": [{"event_id": "e", "user": "alice", "kind": "tokens", '
                         b'"input_tokens": -1, "occurred_at": "2020-01-01T00:00:00Z"}]}',
                         "input_tokens"),
                        (b'\xff\xfe', "body")]:
        response = hub.service("api/usage", server_token, "POST", content=body)
        assert response.status_code == 400, (body, response.text)
        assert field in response.json()["message"], (body, response.text)
    huge = hub.service("api/usage", server_token, "POST", content=b"x" * (5 * 1024 * 1024))
    assert huge.status_code == 413

    # a token without access:services!service=cloudide (a service's token): 403
    assert hub.service("api/budgets", hub.admin_token).status_code == 403


def test_report_and_page_are_for_admins_only(servers: Hub) -> None:
    hub = servers
    for user in USERS:
        token = hub.user_token(user)
        assert hub.service("api/report", token).status_code == 403
        page = hub.service("", token)
        assert page.status_code == 403 and "<script" not in page.text
    admin = hub.user_token("admin")
    assert hub.service("api/report", admin, params={"days": "0"}).status_code == 400
    assert hub.service("api/report", admin, params={"group": "nope"}).status_code == 400
    page = hub.service("", admin)
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "<svg" in page.text and "Per user" in page.text and "Per group" in page.text
    # no login: the page sends the browser to the Hub's OAuth; the API answers 401
    with hub.client(follow_redirects=False) as client:
        redirect = client.get(f"services/{SERVICE}/")
        assert redirect.status_code == 302
        assert "/hub/api/oauth2/authorize" in redirect.headers["location"]
        assert client.get(f"services/{SERVICE}/api/report").status_code == 401


def _login(hub: Hub, client: httpx.Client, user: str) -> None:
    """The Hub's login form, as a browser fills it in."""
    form = client.get("hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
    data = {"username": user, "password": PASSWORD, **({"_xsrf": xsrf.group(1)} if xsrf else {})}
    response = client.post("hub/login", data=data, follow_redirects=False)
    assert response.status_code == 302, response.text


def test_admin_page_through_hub_oauth_login(servers: Hub) -> None:
    hub = servers
    with httpx.Client(base_url=hub.url, timeout=30.0, trust_env=False) as browser:
        _login(hub, browser, "admin")
        # the page → the Hub's authorize → our oauth_callback → the page, with a cookie
        url = f"{hub.url}services/{SERVICE}/?days=7"
        for _ in range(10):
            response = browser.get(url, follow_redirects=False)
            if response.status_code != 302:
                break
            url = urljoin(url, response.headers["location"])
        assert response.status_code == 200, response.text[:500]
        assert "Signed in as admin" in response.text
        assert '<option value="7" selected>' in response.text
    with httpx.Client(base_url=hub.url, timeout=30.0, trust_env=False) as browser:
        _login(hub, browser, "alice")
        url = f"{hub.url}services/{SERVICE}/"
        for _ in range(10):
            response = browser.get(url, follow_redirects=False)
            if response.status_code != 302:
                break
            url = urljoin(url, response.headers["location"])
        assert response.status_code == 403


# -- two users, two servers ------------------------------------------------------------------


def test_conversations_and_indexes_are_isolated(servers: Hub) -> None:
    hub = servers
    homes = {user: hub.tmp / "home" / user for user in USERS}
    (homes["alice"] / "alpha_notes.py").write_text("def alpha_secret():\n    return 'apple'\n")
    (homes["bob"] / "beta_notes.py").write_text("def beta_secret():\n    return 'banana'\n")
    created = {}
    for user in USERS:
        response = hub.server(user, "cloudide/api/conversations", method="POST",
                              json={"title": f"{user}'s plan"})
        assert response.status_code == 201, response.text
        created[user] = response.json()["id"]
        assert hub.server(user, "cloudide/api/index", method="POST",
                          json={}).status_code == 202

    for user in USERS:
        titles = {c["title"] for c in hub.server(
            user, "cloudide/api/conversations").json()["conversations"]}
        assert f"{user}'s plan" in titles
        other = "bob" if user == "alice" else "alice"
        assert f"{other}'s plan" not in titles
        # the other's conversation id means nothing on this server
        missing = hub.server(user, f"cloudide/api/conversations/{created[other]}")
        assert missing.status_code == 404
        # and the other's server refuses this user's token altogether
        foreign = hub.server(other, "cloudide/api/conversations", token=hub.user_token(user))
        assert foreign.status_code == 403

    for user in USERS:
        def indexed(user: str = user) -> bool:
            status = hub.server(user, "cloudide/api/index").json()
            return bool(status.get("complete")) and status.get("state") != "indexing"
        wait_for(indexed, f"{user}'s index", logs=hub.logs)
    for user, mine, theirs in (("alice", "alpha_notes.py", "beta_notes.py"),
                               ("bob", "beta_notes.py", "alpha_notes.py")):
        response = hub.server(user, "cloudide/api/search", method="POST",
                              json={"query": "secret notes", "k": 10})
        assert response.status_code == 200, response.text
        paths = {r["path"] for r in response.json()["results"]}
        assert mine in paths and theirs not in paths, paths
    # each server keeps its own data dir (database and index)
    for user in USERS:
        data = homes[user] / "cloudide-data"
        assert (data / "cloudide.db").exists() and (data / "index").is_dir()


def test_usage_is_aggregated_per_user_and_group(servers: Hub, upstream: Any) -> None:
    hub = servers
    before = hub.report(days=1)
    spent = {"alice": (123, 45), "bob": (67, 8)}
    for user, usage in spent.items():
        upstream.script(Turn(text=f"hi {user}", usage=usage))
        response = _chat(hub, user, "gpt-4o-mini")
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] == usage[0]

    def reported() -> dict[str, Any] | None:
        report = hub.report(days=1)
        for user, (tin, tout) in spent.items():
            now, then = _user_totals(report, user), _user_totals(before, user)
            if (now["input_tokens"] - then["input_tokens"],
                    now["output_tokens"] - then["output_tokens"]) != (tin, tout):
                return None
        return report

    report = wait_for(reported, "both servers' usage at the service", logs=hub.logs)
    team = next(g for g in report["groups"] if g["group"] == GROUP)
    team_before = next((g for g in before["groups"] if g["group"] == GROUP),
                       {"input_tokens": 0, "output_tokens": 0})
    assert team["members"] == ["alice", "bob"]
    assert team["input_tokens"] - team_before["input_tokens"] == 123 + 67
    assert team["output_tokens"] - team_before["output_tokens"] == 45 + 8
    # the group filter and the user filter narrow the same figures
    only_alice = hub.report(days=1, user="alice")
    assert [u["user"] for u in only_alice["users"]] == ["alice"]
    assert _user_totals(only_alice, "alice") == _user_totals(report, "alice")
    by_group = hub.report(days=1, group=GROUP)
    assert {u["user"] for u in by_group["users"]} == {"alice", "bob"}
    # the page shows both users, escaped
    page = hub.service("", hub.user_token("admin"), params={"days": 1}).text
    assert "<td>alice</td>" in page and "<td>bob</td>" in page


def test_team_budget_is_enforced_across_servers(servers: Hub, upstream: Any) -> None:
    """The service's group budget (1.5 a day, gpt-4o at 1.0 per 1k tokens): alice's spend,
    counted on bob's server through the service, refuses bob's call that alone would fit."""
    hub = servers
    # bob's server has the team budget from the service (the rule reached it)
    def bob_has_budget() -> dict[str, Any] | None:
        usage = hub.server("bob", "cloudide/api/usage", params={"days": 1}).json()
        return next((b for b in usage.get("budgets") or []
                     if b.get("scope") == f"group:{GROUP}"), None)
    budget = wait_for(bob_has_budget, "the team budget on bob's server", logs=hub.logs)
    assert budget["limit"] == TEAM_LIMIT

    # alice spends 1.0 (500 + 500 tokens of gpt-4o)
    upstream.script(Turn(text="costly", usage=(500, 500)), model="gpt-4o")
    response = _chat(hub, "alice", "gpt-4o")
    assert response.status_code == 200, response.text

    # ... which bob's server learns from the service
    def bob_sees_alice() -> dict[str, Any] | None:
        found = bob_has_budget()
        return found if found and found["spent"] >= 1.0 else None
    seen = wait_for(bob_sees_alice, "alice's spend on bob's server", logs=hub.logs)
    assert seen["spent"] == pytest.approx(1.0)

    # bob alone has spent nothing, but 1.0 + his worst case (600 output tokens: 0.6) > 1.5
    refused = _chat(hub, "bob", "gpt-4o", max_tokens=600)
    assert refused.status_code == 429, refused.text
    assert refused.headers.get("x-should-retry") == "false"
    # a call whose worst case fits still goes through: bob spends 0.6
    upstream.script(Turn(text="small", usage=(300, 300)), model="gpt-4o")
    assert _chat(hub, "bob", "gpt-4o", max_tokens=20).status_code == 200

    # now alice's server is refused too: 1.0 of hers + 0.6 of bob's > 1.5
    def alice_refused() -> bool:
        usage = hub.server("alice", "cloudide/api/usage", params={"days": 1}).json()
        team = next(b for b in usage["budgets"] if b["scope"] == f"group:{GROUP}")
        return bool(team["spent"] >= 1.6 - 1e-9)
    wait_for(alice_refused, "bob's spend on alice's server", logs=hub.logs)
    assert _chat(hub, "alice", "gpt-4o").status_code == 429

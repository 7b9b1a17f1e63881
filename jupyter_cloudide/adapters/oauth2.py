"""OAuth2 client credentials (RFC 6749 §4.4) for adapters: one access token per adapter,
fetched on first use, refreshed before it expires and at once when the service says it is no
longer valid; one fetch at a time however many calls are waiting for it.

Client authentication is ``client_secret_basic`` (HTTP Basic with the form-encoded id and
secret, as §2.3.1 says) or ``client_secret_post`` (both in the form). Failures are
:class:`ProviderError` kinds: a refused client or scope is ``auth`` (no retry helps), a 429 is
``rate_limited`` with its ``Retry-After``, 5xx ``server``/``overloaded``, transport
``connection``/``timeout``, an answer without a usable token ``malformed``. Messages carry the
token endpoint's error code, never the secret or the token.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

from ..agent.providers.base import ProviderError, retry_after

#: an OAuth2 error code is a short ASCII word (RFC 6749 §5.2); anything else is not echoed
_ERROR_CODE = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$")
DEFAULT_LIFETIME_S = 3600.0


class ClientCredentials:
    def __init__(self, token_url: str, client_id: str, client_secret: str, *, scope: str = "",
                 audience: str = "", auth_method: str = "client_secret_basic",
                 timeout_s: float = 10.0, refresh_skew_s: float = 30.0,
                 verify: ssl.SSLContext | bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.audience = audience
        self.auth_method = auth_method
        self.timeout_s = timeout_s
        self.refresh_skew_s = refresh_skew_s
        self._verify = verify
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lifetime = DEFAULT_LIFETIME_S
        self._lock = asyncio.Lock()
        self._client: Any = None
        #: tokens fetched so far (for tests and the health of the adapter)
        self.fetches = 0

    def __repr__(self) -> str:
        return f"ClientCredentials({self.token_url!r}, client_id={self.client_id!r})"

    @property
    def expires_at(self) -> float:
        """When the current token expires (the clock's time; 0 when there is none)."""
        return self._expires_at if self._token else 0.0

    def valid(self) -> bool:
        """A token is held and is not within the refresh margin of its expiry: a fifth of its
        lifetime, at most ``refresh_skew_s``."""
        skew = min(self.refresh_skew_s, self._lifetime / 5)
        return self._token is not None and self._clock() < self._expires_at - skew

    async def token(self) -> str:
        """A valid access token (fetched when there is none or it is about to expire)."""
        if self.valid():
            assert self._token is not None
            return self._token
        async with self._lock:
            if not self.valid():
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str | None) -> None:
        """The service refused ``token``: the next :meth:`token` fetches a new one (unless
        another call already did)."""
        if token is not None and token == self._token:
            self._token = None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=self.timeout_s, verify=self._verify)
        return self._client

    async def _fetch(self) -> None:
        import httpx

        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audience:
            form["audience"] = self.audience
        auth = None
        if self.auth_method == "client_secret_post":
            form.update(client_id=self.client_id, client_secret=self._secret)
        else:
            auth = httpx.BasicAuth(quote_plus(self.client_id), quote_plus(self._secret))
        try:
            response = await self._http().post(self.token_url, data=form, auth=auth,
                                               headers={"Accept": "application/json"})
        except httpx.TimeoutException:
            raise ProviderError("timeout", "the OAuth2 token endpoint did not answer in time"
                                ) from None
        except httpx.HTTPError as exc:
            raise ProviderError("connection", "cannot reach the OAuth2 token endpoint "
                                f"({type(exc).__name__})") from None
        body = _json(response)
        status = response.status_code
        if status != 200:
            code = body.get("error") if isinstance(body, dict) else None
            what = f" ({code})" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
            message = f"OAuth2 token request failed with {status}{what}"
            if status == 429:
                raise ProviderError("rate_limited", message, status=status,
                                    retry_after_s=retry_after(response.headers))
            if status in (502, 503, 504):
                raise ProviderError("overloaded", message, status=status,
                                    retry_after_s=retry_after(response.headers))
            if status >= 500:
                raise ProviderError("server", message, status=status)
            raise ProviderError("auth", message.replace("failed", "refused"), status=status)
        token = body.get("access_token") if isinstance(body, dict) else None
        kind = str(body.get("token_type", "bearer")) if isinstance(body, dict) else ""
        if not isinstance(token, str) or not token or kind.lower() != "bearer":
            raise ProviderError("malformed", "the OAuth2 token endpoint sent no bearer token")
        try:
            lifetime = float(body.get("expires_in", DEFAULT_LIFETIME_S))
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME_S
        self._lifetime = max(1.0, lifetime)
        self._expires_at = self._clock() + self._lifetime
        self._token = token
        self.fetches += 1


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None

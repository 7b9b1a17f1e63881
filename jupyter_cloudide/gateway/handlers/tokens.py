"""``cloudide/api/tokens[/<id>]``: the caller's API keys for ``cloudide/v1`` (list, mint,
revoke). Authenticated like every ``cloudide/api`` route (token, or cookie + XSRF); a user
only ever sees and revokes their own keys."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...agent import keys
from ..base import CloudIDEHandler, write_json
from ..openai_api.auth import forget_keys

AUTH_RESOURCE = "cloudide:tokens"
KEY_ID = r"(?P<key_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"


class TokensHandler(CloudIDEHandler):
    auth_resource = AUTH_RESOURCE
    route_name = "tokens"
    operations = {"POST": "createToken"}

    @web.authenticated
    @authorized
    async def get(self) -> None:
        store = await self.cloudide.metadata_store()
        write_json(self, {"tokens": await store.call(keys.listing, store, self.username)})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        store = await self.cloudide.metadata_store()
        plaintext, record = await store.call(
            keys.create, store, self.username, name=str(body.get("name") or ""),
            models=list(body.get("models") or ()), expires=body.get("expires"),
            allow_auto_approve=bool(body.get("allow_auto_approve", False)))
        # the key itself is in this answer only; no-store keeps it out of every cache
        write_json(self, {"key": plaintext, "token": record}, status=201)


class TokenHandler(CloudIDEHandler):
    auth_resource = AUTH_RESOURCE
    route_name = "token"

    @web.authenticated
    @authorized
    async def delete(self, key_id: str) -> None:
        store = await self.cloudide.metadata_store()
        await store.call(keys.revoke, store, self.username, key_id)
        forget_keys(self.cloudide)
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/cloudide/api/tokens", TokensHandler),
    (rf"/cloudide/api/tokens/{KEY_ID}", TokenHandler),
]

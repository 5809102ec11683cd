"""A fake of the Bot Framework token service (token.botframework.com) for one Azure Bot and its
OAuth connections, as botframework-connector's token API client and Microsoft's SSO docs use it:

* ``GET /api/botsignin/GetSignInResource?state=S&api-version=token`` — ``S`` is the base64 JSON
  token exchange state (``connectionName``, ``conversation``, ``relatesTo``, ``msAppId``);
  answers ``{signInLink, tokenExchangeResource: {id, uri, providerId}, tokenPostResource}``,
  the ``uri`` being the connection's token exchange URL.
* ``POST /api/usertoken/exchange?userId&connectionName&channelId&api-version=token`` with
  ``{"token": SSO token}`` — exchanges a token that the fake Entra ID signed, for the
  connection's exchange URL (its audience), of the tenant, within its lifetime: 200
  ``{channelId, connectionName, token, expiration}``; otherwise 400 ``{"error": {code,
  message}}`` (what a consent requirement or a token for another resource gets).
* ``GET /api/usertoken/GetToken?userId&connectionName&channelId&code&api-version=token`` — the
  user's token after signing in with the card's link (``complete_sign_in`` plays the user); 404
  when there is none for that code.

Every call needs the bot's own token (audience ``https://api.botframework.com``, issued to the
bot's app id) — 401 otherwise.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web

from ._server import ThreadedServer, error_body
from .identity import FakeIdentityProvider

BOT_AUDIENCE = "https://api.botframework.com"


@dataclass
class Connection:
    name: str
    exchange_uri: str  # the token exchange URL (the app's Application ID URI)
    provider_id: str = field(default_factory=lambda: str(uuid.uuid4()))


class FakeTokenService(ThreadedServer):
    def __init__(self, identity: FakeIdentityProvider, app_id: str) -> None:
        super().__init__()
        self.identity = identity
        self.app_id = app_id
        self._lock = threading.Lock()
        self._connections: dict[str, Connection] = {}
        self._codes: dict[str, tuple[str, str, str]] = {}  # code → (user id, connection, token)
        self.states: list[dict[str, Any]] = []  # decoded states of GetSignInResource
        self.exchanges: list[dict[str, Any]] = []  # (userId, connectionName, ok) per exchange
        self.refuse_exchanges = ""  # non-empty: every exchange fails with this message

    def add_connection(self, name: str, exchange_uri: str) -> Connection:
        connection = Connection(name, exchange_uri)
        with self._lock:
            self._connections[name] = connection
        return connection

    def complete_sign_in(self, user_id: str, connection: str, token: str) -> str:
        """The user signs in with the card's link: the magic code Teams then sends."""
        code = f"{secrets.randbelow(10**6):06d}"
        with self._lock:
            self._codes[code] = (user_id, connection, token)
        return code

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/botsignin/GetSignInResource", self._sign_in_resource)
        app.router.add_post("/api/usertoken/exchange", self._exchange)
        app.router.add_get("/api/usertoken/GetToken", self._get_token)
        return app

    # -- HTTP ----------------------------------------------------------------------------------
    def _bot(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        try:
            claims = self.identity.verify_access_token(auth.removeprefix("Bearer "), BOT_AUDIENCE)
        except jwt.PyJWTError as exc:
            return web.json_response(error_body("Unauthorized", str(exc)), status=401)
        if claims.get("appid") != self.app_id:
            return web.json_response(error_body("Unauthorized", "another app's token"), status=401)
        if request.query.get("api-version") != "token":
            return web.json_response(error_body("BadArgument", "api-version"), status=400)
        return None

    def _connection(self, name: str | None) -> Connection | None:
        with self._lock:
            return self._connections.get(name or "")

    async def _sign_in_resource(self, request: web.Request) -> web.Response:
        if (refused := self._bot(request)) is not None:
            return refused
        try:
            state = json.loads(base64.b64decode(request.query["state"]))
        except (KeyError, ValueError):
            return web.json_response(error_body("BadArgument", "state"), status=400)
        connection = self._connection(state.get("connectionName"))
        if connection is None or state.get("msAppId") != self.app_id:
            return web.json_response(error_body("BadArgument", "unknown connection"), status=400)
        with self._lock:
            self.states.append(state)
        return web.json_response(
            {
                "signInLink": f"{self.base_url}/api/oauth/signin?signin={secrets.token_hex(8)}",
                "tokenExchangeResource": {
                    "id": str(uuid.uuid4()),
                    "uri": connection.exchange_uri,
                    "providerId": connection.provider_id,
                },
                "tokenPostResource": {"sasUrl": f"{self.base_url}/api/sas/{uuid.uuid4()}"},
            }
        )

    async def _exchange(self, request: web.Request) -> web.Response:
        if (refused := self._bot(request)) is not None:
            return refused
        query = request.query
        connection = self._connection(query.get("connectionName"))
        try:
            body = await request.json()
        except ValueError:
            body = {}
        token = body.get("token") if isinstance(body, dict) else None
        problem = self.refuse_exchanges
        if connection is None:
            problem = "unknown connection"
        elif not isinstance(token, str) or not token:
            problem = "no token"
        elif not problem:
            try:
                claims = jwt.decode(
                    token,
                    self.identity.entra_key.private_key.public_key(),
                    algorithms=["RS256"],
                    audience=connection.exchange_uri,
                )
                if claims.get("iss") != f"{self.identity.base_url}/{claims.get('tid')}/v2.0":
                    problem = "issuer"
            except jwt.PyJWTError as exc:
                problem = f"AADSTS50013: the token cannot be exchanged ({exc})"
        with self._lock:
            self.exchanges.append(
                {
                    "userId": query.get("userId"),
                    "connectionName": query.get("connectionName"),
                    "channelId": query.get("channelId"),
                    "ok": not problem,
                }
            )
        if problem:
            return web.json_response(error_body("ServiceError", problem), status=400)
        assert connection is not None
        return web.json_response(
            {
                "channelId": query.get("channelId"),
                "connectionName": connection.name,
                "token": self.identity.mint_access_token(
                    self.app_id, "https://graph.microsoft.com"
                ),
                "expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
            }
        )

    async def _get_token(self, request: web.Request) -> web.Response:
        if (refused := self._bot(request)) is not None:
            return refused
        query = request.query
        with self._lock:
            found = self._codes.pop(query.get("code", ""), None)
        if found is None or found[:2] != (query.get("userId"), query.get("connectionName")):
            return web.Response(status=404)
        return web.json_response(
            {
                "channelId": query.get("channelId"),
                "connectionName": found[1],
                "token": found[2],
                "expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
            }
        )

"""A fake of the managed identity endpoint of Azure App Service and Container Apps.

The platform sets `IDENTITY_ENDPOINT` (a local http URL) and `IDENTITY_HEADER` (a secret) in the
app's environment; the app asks `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=R`
(`&client_id=C` for a user-assigned identity) with the secret in `X-IDENTITY-HEADER`, and gets
`{access_token, expires_on, resource, token_type, client_id}` (expires_on in epoch seconds).
A request without the secret is refused (401); an identity not assigned to the app, or an
unknown api-version, is answered 400 `{statusCode, message}` as the platform does.

Tokens are minted by the fake Entra ID (`FakeIdentityProvider.mint_access_token`) for the
identity's client id and the asked resource, so the fake Bot Connector and Graph accept them.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterable

from aiohttp import web

from ._server import ThreadedServer
from .identity import FakeIdentityProvider

API_VERSION = "2019-08-01"


class FakeManagedIdentityEndpoint(ThreadedServer):
    def __init__(self, identity: FakeIdentityProvider, client_ids: Iterable[str]) -> None:
        super().__init__(https=False)  # the platform's endpoint is plain http on the host
        self.identity = identity
        self.secret = secrets.token_urlsafe(16)
        self._client_ids = set(client_ids)
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/msi/token"

    def environment(self) -> dict[str, str]:
        """What App Service / Container Apps put in the app's environment."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.secret}

    def unassign(self, client_id: str) -> None:
        with self._lock:
            self._client_ids.discard(client_id)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/msi/token", self._token)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        def refuse(status: int, message: str) -> web.Response:
            return web.json_response({"statusCode": status, "message": message}, status=status)

        if request.headers.get("X-IDENTITY-HEADER") != self.secret:
            return refuse(401, "The X-IDENTITY-HEADER header is missing or wrong.")
        query = request.query
        if query.get("api-version") != API_VERSION:
            return refuse(400, f"Unsupported api-version {query.get('api-version')!r}.")
        resource = query.get("resource", "")
        if not resource:
            return refuse(400, "The resource parameter is required.")
        client_id = query.get("client_id", "")
        with self._lock:
            assigned = client_id in self._client_ids
        if not assigned:
            return refuse(
                400,
                "No User Assigned or Delegated Managed Identity found for specified "
                "ClientId/ResourceId/PrincipalId.",
            )
        lifetime = int(self.identity.token_lifetime)
        token = self.identity.mint_access_token(client_id, resource, exp_delta=lifetime)
        return web.json_response(
            {
                "access_token": token,
                "expires_on": str(int(time.time()) + lifetime),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            }
        )

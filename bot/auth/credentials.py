"""The bot's own identity: app-only access tokens from Entra ID, with msal.

`SingleTenant` / `MultiTenant` bots prove themselves with their client secret (msal's
client credentials); a `UserAssignedMSI` bot has no secret: msal's `ManagedIdentityClient`
asks the host's managed identity endpoint (App Service and Container Apps: `IDENTITY_ENDPOINT`
with `IDENTITY_HEADER`, which the platform sets) for a token of the identity whose client id
is `MicrosoftAppId`.

One msal application per authority (tenant), made once and kept; each token is kept until
shortly before it expires, so a busy bot asks Entra ID for a new token about once an hour,
not once per message. msal is synchronous (it uses `requests`): building an application (it
fetches the tenant's metadata) and acquiring a token run in a worker thread, never on the event
loop. Concurrent callers that need the same token wait for one request instead of each making
their own.

TLS trust follows the standard environment: `REQUESTS_CA_BUNDLE`, then `SSL_CERT_FILE`
(`ca_file()`); the same file is used for the bot's aiohttp clients.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

import msal
import requests
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from bot.config import Settings

log = logging.getLogger("bot.auth.credentials")

# A token with less than this left is renewed before use (Entra tokens last 60–90 minutes).
RENEW_BEFORE_SECONDS = 300
HTTP_TIMEOUT_SECONDS = 15
MULTI_TENANT_AUTHORITY = "botframework.com"


class CredentialsError(Exception):
    """The bot could not get a token for itself; the message says why (never the secret)."""


class TokenAnswerMalformed(CredentialsError):
    """The token endpoint answered, but not with a token response as OAuth 2.0 documents it:
    the bot cannot know its token, as in an outage (the same request may work later)."""


class TokenAnswer(BaseModel):
    """What a client-credentials token response must hold for the bot to use it."""

    model_config = ConfigDict(extra="ignore")

    access_token: StrictStr = Field(min_length=1)
    expires_in: int = Field(gt=0)


def ca_file() -> str | None:
    """The CA bundle the environment names (`REQUESTS_CA_BUNDLE`, then `SSL_CERT_FILE`), if any."""
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        path = os.environ.get(name)
        if path and os.path.isfile(path):
            return path
    return None


def client_ssl_context() -> ssl.SSLContext:
    """A verifying TLS context that trusts what the environment says (or the system store)."""
    return ssl.create_default_context(cafile=ca_file())


class _Http(requests.Session):
    """requests has no session-wide timeout; msal's calls must not hang a worker thread."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", HTTP_TIMEOUT_SECONDS)
        return super().request(*args, **kwargs)


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # time.monotonic()


class ClientCredentials:
    """App-only tokens for the bot's identity: its app registration (MicrosoftAppId /
    MicrosoftAppPassword) or its user-assigned managed identity (MicrosoftAppType
    UserAssignedMSI)."""

    def __init__(self, settings: Settings) -> None:
        if not settings.app_id or not (settings.app_password or settings.managed_identity):
            raise CredentialsError("MicrosoftAppId and MicrosoftAppPassword are needed for tokens")
        self._managed: msal.ManagedIdentityClient | None = None
        self._app_id = settings.app_id
        self._secret = settings.app_password
        self._authority_base = settings.login_authority.rstrip("/")
        self._connector_scope = settings.connector_scope
        single_tenant = settings.app_type.lower() == "singletenant"
        # Multi-tenant bots get their Bot Connector token from the botframework.com tenant.
        self.connector_tenant = (
            settings.app_tenant_id
            if single_tenant and settings.app_tenant_id
            else MULTI_TENANT_AUTHORITY
        )
        # Graph is asked about the provider's own directory.
        self.graph_tenant = settings.app_tenant_id or next(
            iter(settings.effective_allowed_tenants), ""
        )
        self._http = _Http()
        self._http.verify = ca_file() or True
        self._apps: dict[str, msal.ConfidentialClientApplication] = {}
        self._apps_lock = asyncio.Lock()
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        if settings.managed_identity:
            self._managed = msal.ManagedIdentityClient(
                msal.UserAssignedManagedIdentity(client_id=settings.app_id),
                http_client=self._http,
                token_cache=msal.TokenCache(),
            )

    async def connector_token(self) -> str:
        """A token for the Bot Connector (replies and proactive messages)."""
        return await self.token(self._connector_scope, self.connector_tenant)

    async def graph_token(self, scope: str) -> str:
        """A Microsoft Graph token in the provider's tenant (a `bot.auth.graph.TokenProvider`)."""
        if not self.graph_tenant:
            raise CredentialsError(
                "MicrosoftAppTenantId (or FUSION_ALLOWED_TENANTS) is needed to call Microsoft Graph"
            )
        return await self.token(scope, self.graph_tenant)

    async def token(self, scope: str, tenant: str) -> str:
        key = (tenant, scope)
        cached = self._tokens.get(key)
        if cached is not None and cached.expires_at - RENEW_BEFORE_SECONDS > time.monotonic():
            return cached.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.expires_at - RENEW_BEFORE_SECONDS > time.monotonic():
                return cached.value
            started = time.monotonic()
            if self._managed is not None:
                result = await asyncio.to_thread(self._acquire_managed, self._managed, scope)
            else:
                app = await self._app(tenant)
                result = await asyncio.to_thread(self._acquire, app, scope)
            if result.get("error"):
                error = result.get("error")
                description = str(result.get("error_description") or "").strip()
                detail = f" ({description.splitlines()[0]})" if description else ""
                source = "the managed identity endpoint" if self._managed else "Entra ID"
                raise CredentialsError(
                    f"{source} refused a token for {scope} in tenant {tenant}: {error}{detail}"
                )
            try:
                answer = TokenAnswer.model_validate(result)
            except ValidationError as exc:
                # msal has cached the answer as a token: a fresh application forgets it.
                self._apps.pop(tenant, None)
                where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "the answer"
                raise TokenAnswerMalformed(
                    f"Entra ID answered the token request for {scope} with something that is "
                    f"not a token response ({where}: {exc.errors()[0]['msg'].lower()})"
                ) from None
            token, lifetime = answer.access_token, float(answer.expires_in)
            self._tokens[key] = _Token(token, started + lifetime)
            log.info(
                "token acquired", extra={"scope": scope, "tenant": tenant, "expires_in": lifetime}
            )
            return token

    async def _app(self, tenant: str) -> msal.ConfidentialClientApplication:
        async with self._apps_lock:
            app = self._apps.get(tenant)
            if app is None:
                app = await asyncio.to_thread(self._new_app, tenant)
                self._apps[tenant] = app
            return app

    def _new_app(self, tenant: str) -> msal.ConfidentialClientApplication:
        try:
            return msal.ConfidentialClientApplication(
                self._app_id,
                client_credential=self._secret,
                authority=f"{self._authority_base}/{tenant}",
                http_client=self._http,
                # Known Microsoft hosts need no discovery; configured ones are trusted as given.
                instance_discovery=False,
            )
        except (ValueError, requests.RequestException) as exc:
            raise CredentialsError(
                f"Entra ID authority {self._authority_base}/{tenant}: {exc}"
            ) from exc

    @staticmethod
    def _acquire(app: msal.ConfidentialClientApplication, scope: str) -> dict[str, Any]:
        try:
            result = app.acquire_token_for_client(scopes=[scope])
        except requests.RequestException as exc:
            raise CredentialsError(f"Entra ID could not be reached: {exc}") from exc
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            # msal reads the answer as it comes: a body that is not a token response breaks it.
            raise TokenAnswerMalformed(
                f"Entra ID answered the token request with something that is not a token "
                f"response ({type(exc).__name__})"
            ) from None
        if not isinstance(result, dict):
            raise TokenAnswerMalformed(
                "Entra ID answered the token request with something that is not a token response"
            )
        return dict(result)

    @staticmethod
    def _acquire_managed(client: msal.ManagedIdentityClient, scope: str) -> dict[str, Any]:
        # Managed identity endpoints take a resource, not a scope.
        resource = scope.removesuffix("/.default")
        try:
            result = client.acquire_token_for_client(resource=resource)
        except requests.RequestException as exc:
            raise CredentialsError(
                f"the managed identity endpoint could not be reached: {exc}"
            ) from exc
        except msal.ManagedIdentityError as exc:
            raise CredentialsError(f"managed identity: {exc}") from exc
        return dict(result or {})

    def close(self) -> None:
        self._http.close()

"""App-only Microsoft Graph tokens in each customer tenant (msal client credentials).

One msal `ConfidentialClientApplication` per tenant authority, made once and kept (msal's own
token cache then answers repeated requests until shortly before expiry); msal is synchronous,
so building an application and asking for a token run in a worker thread. The app is the bot's
own Entra app unless FUSION_PROVISIONING_APP_ID names a separate multi-tenant one.

Kept beside `bot.auth.credentials.ClientCredentials` rather than inside it: a customer tenant
that has not consented is an expected answer here (shown to the admin with the consent URL),
not a configuration error, so errors keep Entra's AADSTS code.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msal
import requests

from bot.auth.credentials import HTTP_TIMEOUT_SECONDS, ca_file
from bot.config import Settings

# AADSTS codes meaning "this app is not (or no longer) consented in that tenant".
NOT_CONSENTED = frozenset({65001, 7000229, 700016, 500011, 650051, 50020})
_CODE = re.compile(r"AADSTS(\d+)")


class TokenError(Exception):
    """No token for a tenant. `retryable`: Entra down or slow; else the message says why."""

    def __init__(self, message: str, *, retryable: bool = False, consent_url: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.consent_url = consent_url


class _Http(requests.Session):
    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", HTTP_TIMEOUT_SECONDS)
        return super().request(*args, **kwargs)


class TenantTokens:
    """`await tokens.token(tenant_id)`: a Graph token in that tenant, or TokenError."""

    def __init__(self, settings: Settings) -> None:
        self.app_id = settings.provisioning_app_id or settings.app_id
        self._secret = (
            settings.provisioning_app_password
            if settings.provisioning_app_id
            else settings.app_password
        )
        self._authority = settings.login_authority.rstrip("/")
        self._scope = settings.graph_scope
        self._http = _Http()
        self._http.verify = ca_file() or True
        self._apps: dict[str, msal.ConfidentialClientApplication] = {}
        self._lock = asyncio.Lock()
        self.requests = 0  # token requests that reached msal (its cache answers most)

    def consent_url(self, tenant_id: str) -> str:
        """Where a Global Administrator of the tenant grants the app's permissions."""
        return f"{self._authority}/{tenant_id}/adminconsent?client_id={self.app_id}"

    async def token(self, tenant_id: str) -> str:
        async with self._lock:
            app = self._apps.get(tenant_id)
            if app is None:
                app = await asyncio.to_thread(self._new_app, tenant_id)
                self._apps[tenant_id] = app
        self.requests += 1
        result = await asyncio.to_thread(self._acquire, app)
        token = result.get("access_token")
        if isinstance(token, str) and token:
            return token
        raise self._refusal(tenant_id, result)

    def _refusal(self, tenant_id: str, result: dict[str, Any]) -> TokenError:
        error = str(result.get("error") or "no token")
        description = str(result.get("error_description") or "").strip()
        codes = {int(c) for c in result.get("error_codes") or [] if isinstance(c, int)}
        codes |= {int(c) for c in _CODE.findall(description)}
        first_line = description.splitlines()[0] if description else error
        if codes & NOT_CONSENTED:
            url = self.consent_url(tenant_id)
            return TokenError(
                f"Tenant {tenant_id} has not consented to the bot's app ({first_line[:200]}). "
                f"A Global Administrator of that tenant grants it at {url} "
                "(TeamsTelephoneNumber.ReadWrite.All and User.Read.All); then retry.",
                consent_url=url,
            )
        if error in {"temporarily_unavailable", "server_error"} or not codes:
            return TokenError(
                f"Entra ID gave no token for tenant {tenant_id} right now ({first_line[:200]}).",
                retryable=True,
            )
        return TokenError(f"Entra ID refused a token for tenant {tenant_id}: {first_line[:300]}")

    def _new_app(self, tenant_id: str) -> msal.ConfidentialClientApplication:
        try:
            return msal.ConfidentialClientApplication(
                self.app_id,
                client_credential=self._secret,
                authority=f"{self._authority}/{tenant_id}",
                http_client=self._http,
                instance_discovery=False,
            )
        except requests.RequestException as exc:
            raise TokenError(f"Entra ID could not be reached: {exc}", retryable=True) from exc
        except ValueError as exc:
            # msal validates the authority by fetching its metadata: an unknown tenant lands here.
            raise TokenError(f"Entra ID does not know tenant {tenant_id}: {exc}") from exc

    def _acquire(self, app: msal.ConfidentialClientApplication) -> dict[str, Any]:
        try:
            result = app.acquire_token_for_client(scopes=[self._scope])
        except requests.RequestException as exc:
            return {"error": "temporarily_unavailable", "error_description": str(exc)}
        return dict(result or {})

    def close(self) -> None:
        self._http.close()

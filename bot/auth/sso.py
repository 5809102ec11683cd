"""Teams SSO: the `groups` claim of the caller's Entra ID token, so membership needs no Graph call.

The protocol (Microsoft's "Enable SSO for your bot" for Teams; bot/teams/sso.py speaks it): the
bot sends an OAuth card naming the Azure Bot's OAuth connection and a `tokenExchangeResource`
(from the Bot Framework token service's `GetSignInResource`); Teams gets the user a token for
that resource (the app's Application ID URI, `api://botid-APP_ID`) without asking and hands it
over in a `signin/tokenExchange` invoke. The bot exchanges it at the token service
(`/api/usertoken/exchange`, `TokenService` below) and reads it itself; if either fails it answers
412 and Teams shows the card's sign-in button instead, after which a `signin/verifyState` invoke
brings a code that the token service turns into the user's token (`GetToken`). The token is only
a source of group ids, never of identity: it counts only if it is an Entra ID v2.0 access
token, RS256-signed by a key of the tenant's published key set, issued by
`{login_authority}/{tid}/v2.0` for an allowed tenant (the activity's own), meant for this bot
(`aud` is the bot's app id, as in v2.0 tokens, or `FUSION_SSO_RESOURCE`, the Application ID URI
in `webApplicationInfo.resource`), within its lifetime (5 minutes of clock skew), and about the
very user the authenticated activity came from (`oid`). Anything else is refused and nothing is
remembered.

What a valid token says — its groups, or that the user is in too many groups to list (the
overage: `_claim_names.groups` or `hasgroups`), which sends the policy to Graph — is remembered
per user for `membership_cache_seconds`, like a Graph answer.

Signing keys are fetched per tenant on the app's aiohttp session (never a blocking call on the
event loop), kept for a day, and fetched again for a key id not seen yet at most every
`KEYS_MIN_REFRESH_SECONDS`, so a stream of tokens with invented key ids cannot make the bot
hammer Entra ID.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from bot.config import Settings

log = logging.getLogger("bot.auth.sso")

CLOCK_SKEW_SECONDS = 300
KEYS_MAX_AGE_SECONDS = 24 * 3600
KEYS_MIN_REFRESH_SECONDS = 300
KEYS_TIMEOUT_SECONDS = 10
MAX_REMEMBERED = 10_000


class SsoRejected(Exception):
    """The SSO token does not count; the message says why (never the token)."""


class TokenServiceError(Exception):
    """The Bot Framework token service could not be used; the message says why."""


@dataclass(frozen=True)
class SignInResource:
    """What an OAuth card needs (the token service's `GetSignInResource`)."""

    sign_in_link: str
    exchange_id: str
    exchange_uri: str
    provider_id: str | None


#: The token service's API version (a constant of the protocol, as in botframework-connector).
TOKEN_API_VERSION = "token"


class TokenService:
    """The Bot Framework token service (`FUSION_TOKEN_SERVICE_URL`): sign-in resources, token
    exchange and magic codes for the Azure Bot's OAuth connection, called with the bot's own
    Bot Connector token on the app's aiohttp session.

    botframework-connector has a client for this, but it fetches its token with blocking msal
    calls on the event loop and only with a client secret (not a managed identity); these three
    calls are small enough to make here with the bot's `ClientCredentials`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: Callable[[], Awaitable[str]],
        *,
        timeout_seconds: float = 15,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def _call(
        self, method: str, path: str, query: dict[str, str], body: Any = None
    ) -> tuple[int, Any]:
        try:
            headers = {"Authorization": f"Bearer {await self._token()}"}
            async with self._session.request(
                method,
                f"{self._base}{path}",
                params={**query, "api-version": TOKEN_API_VERSION},
                json=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenServiceError(f"the token service could not be reached ({exc})") from exc
        except Exception as exc:  # no token for the bot itself
            raise TokenServiceError(f"no token to call the token service: {exc}") from exc
        try:
            document = json.loads(text) if text.strip() else None
        except ValueError:
            document = None
        return status, document

    async def sign_in_resource(self, state: str) -> SignInResource:
        status, doc = await self._call("GET", "/api/botsignin/GetSignInResource", {"state": state})
        if status != 200 or not isinstance(doc, dict):
            raise TokenServiceError(f"GetSignInResource answered {status}: {_error_of(doc)}")
        resource = doc.get("tokenExchangeResource")
        link = doc.get("signInLink")
        if (
            not isinstance(link, str)
            or not link.startswith("https://")
            or not isinstance(resource, dict)
            or not isinstance(resource.get("id"), str)
            or not isinstance(resource.get("uri"), str)
        ):
            raise TokenServiceError("GetSignInResource answered an unexpected document")
        provider = resource.get("providerId")
        return SignInResource(
            link, resource["id"], resource["uri"], provider if isinstance(provider, str) else None
        )

    async def exchange(self, user_id: str, connection: str, channel_id: str, token: str) -> str:
        """The connection's token for the user, from their SSO token; raises
        `TokenServiceError` when the token service will not exchange it (consent needed, a
        token for another resource…)."""
        status, doc = await self._call(
            "POST",
            "/api/usertoken/exchange",
            {"userId": user_id, "connectionName": connection, "channelId": channel_id},
            {"token": token},
        )
        found = doc.get("token") if isinstance(doc, dict) and status == 200 else None
        if not isinstance(found, str) or not found:
            raise TokenServiceError(
                f"the token service did not exchange the token ({status}: {_error_of(doc)})"
            )
        return found

    async def user_token(
        self, user_id: str, connection: str, channel_id: str, code: str
    ) -> str | None:
        """The user's token after they signed in with the card's button (`code`: the magic
        code of `signin/verifyState`); None when the token service has none."""
        status, doc = await self._call(
            "GET",
            "/api/usertoken/GetToken",
            {
                "userId": user_id,
                "connectionName": connection,
                "channelId": channel_id,
                "code": code,
            },
        )
        if status == 404:
            return None
        found = doc.get("token") if isinstance(doc, dict) else None
        if status != 200 or not isinstance(found, str) or not found:
            raise TokenServiceError(f"GetToken answered {status}: {_error_of(doc)}")
        return found


def _error_of(doc: Any) -> str:
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code')}: {str(error.get('message'))[:200]}"
    return "no details"


@dataclass(frozen=True)
class SsoGroups:
    """What a valid SSO token says about the user's groups."""

    groups: tuple[str, ...] | None  # None: the token lists none (overage, or no claim)
    overage: bool = False


@dataclass
class _KeySet:
    keys: dict[str, jwt.PyJWK]
    fetched_at: float  # when these keys were fetched
    tried_at: float  # the last fetch attempt, successful or not


class TenantSigningKeys:
    """Each tenant's Entra ID signing keys (`{authority}/{tid}/discovery/v2.0/keys`)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        authority: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._authority = authority.rstrip("/")
        self._clock = clock
        self._sets: dict[str, _KeySet] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def key(self, tenant: str, kid: str) -> jwt.PyJWK:
        known = self._sets.get(tenant)
        if known is not None:
            now = self._clock()
            stale = now - known.fetched_at >= KEYS_MAX_AGE_SECONDS
            may_fetch = now - known.tried_at >= KEYS_MIN_REFRESH_SECONDS
            if kid in known.keys and not (stale and may_fetch):
                return known.keys[kid]
            if not may_fetch:
                raise SsoRejected(f"the token's signing key {kid!r} is not one of the tenant's")
        known = await self._refresh(tenant, known)
        if kid not in known.keys:
            raise SsoRejected(f"the token's signing key {kid!r} is not one of the tenant's")
        return known.keys[kid]

    async def _refresh(self, tenant: str, seen: _KeySet | None) -> _KeySet:
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            current = self._sets.get(tenant)
            if current is not None and current is not seen:
                return current  # another request fetched them while this one waited
            url = f"{self._authority}/{tenant}/discovery/v2.0/keys"
            try:
                timeout = aiohttp.ClientTimeout(total=KEYS_TIMEOUT_SECONDS)
                async with self._session.get(url, timeout=timeout) as resp:
                    resp.raise_for_status()
                    document = await resp.json(content_type=None)
                keys = {
                    jwk["kid"]: jwt.PyJWK.from_dict(jwk)
                    for jwk in document["keys"]
                    if isinstance(jwk, dict)
                    and isinstance(jwk.get("kid"), str)
                    and jwk.get("kty") == "RSA"
                    and jwk.get("use", "sig") == "sig"
                }
            except (
                aiohttp.ClientError,
                TimeoutError,
                ValueError,
                KeyError,
                TypeError,
                jwt.PyJWTError,
            ) as exc:
                log.warning("could not fetch Entra signing keys: %s", exc, extra={"url": url})
                # Keep what was known (if anything) and do not ask again before the interval.
                now = self._clock()
                kept = current or _KeySet({}, now - KEYS_MAX_AGE_SECONDS, now)
                kept.tried_at = now
                self._sets[tenant] = kept
                if current is None:
                    raise SsoRejected("the tenant's signing keys could not be fetched") from exc
                return kept
            now = self._clock()
            fresh = _KeySet(keys, now, now)
            self._sets[tenant] = fresh
            log.info("Entra signing keys refreshed", extra={"tenant": tenant, "keys": len(keys)})
            return fresh


class TeamsSso:
    """Checks SSO tokens from `signin/tokenExchange` and remembers what valid ones say."""

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._authority = settings.login_authority.rstrip("/")
        self._audiences = [a for a in (settings.app_id, settings.sso_resource) if a]
        self._tenants = {t.lower() for t in settings.effective_allowed_tenants}
        self._ttl = settings.membership_cache_seconds
        self._clock = clock
        self._keys = TenantSigningKeys(session, self._authority, clock=clock)
        # object id (lower case) → (valid until, what the token said)
        self._remembered: dict[str, tuple[float, SsoGroups]] = {}

    async def exchange(self, token: str, *, object_id: str, tenant_id: str | None) -> SsoGroups:
        """Check `token` for the user `object_id` of `tenant_id` and remember its groups.

        Raises `SsoRejected` (and remembers nothing) when the token does not count."""
        found = await self.check(token, object_id=object_id, tenant_id=tenant_id)
        self.remember(object_id, found)
        return found

    def remember(self, object_id: str, found: SsoGroups) -> None:
        """Keep what a checked token said about the user's groups, like a Graph answer."""
        if self._ttl > 0 and (found.groups is not None or found.overage):
            if len(self._remembered) >= MAX_REMEMBERED:
                self._prune()
            self._remembered[object_id.lower()] = (self._clock() + self._ttl, found)

    def groups_for(self, object_id: str) -> SsoGroups | None:
        """What the user's last valid SSO token said, while it is remembered."""
        if not object_id:
            return None
        entry = self._remembered.get(object_id.lower())
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._remembered[object_id.lower()]
            return None
        return entry[1]

    async def check(self, token: str, *, object_id: str, tenant_id: str | None) -> SsoGroups:
        if not object_id:
            raise SsoRejected("the activity carries no Entra object id")
        try:
            header = jwt.get_unverified_header(token)
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise SsoRejected("not a JSON Web Token") from exc
        if header.get("alg") != "RS256":
            raise SsoRejected(f"signing algorithm {header.get('alg')!r} is not RS256")
        kid = header.get("kid")
        tid = unverified.get("tid")
        if not isinstance(kid, str) or not isinstance(tid, str):
            raise SsoRejected("the token names no signing key or no tenant")
        if tid.lower() not in self._tenants:
            raise SsoRejected("the token is from a tenant this bot does not serve")
        if tenant_id and tid.lower() != tenant_id.lower():
            raise SsoRejected("the token is from another tenant than the conversation")
        key = await self._keys.key(tid, kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self._audiences,
                issuer=f"{self._authority}/{tid}/v2.0",
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "nbf", "iss", "aud", "oid", "tid"]},
            )
        except jwt.PyJWTError as exc:
            raise SsoRejected(f"invalid token: {exc}") from exc
        oid = claims.get("oid")
        if not isinstance(oid, str) or oid.lower() != object_id.lower():
            raise SsoRejected("the token is for another user than the one who sent it")
        return _groups(claims)

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, (until, _) in self._remembered.items() if until <= now]:
            del self._remembered[key]
        while len(self._remembered) >= MAX_REMEMBERED:
            del self._remembered[next(iter(self._remembered))]


def _groups(claims: dict[str, Any]) -> SsoGroups:
    names = claims.get("_claim_names")
    if (isinstance(names, dict) and "groups" in names) or claims.get("hasgroups"):
        return SsoGroups(None, overage=True)
    groups = claims.get("groups")
    if isinstance(groups, list) and all(isinstance(g, str) for g in groups):
        return SsoGroups(tuple(groups))
    if groups is not None:
        raise SsoRejected("the token's groups claim is not a list of group ids")
    return SsoGroups(None)  # no groups claim configured: the policy asks Graph

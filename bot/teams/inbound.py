"""Inbound checks that belong to no SDK: the Bot Framework channel token, checked in full.

The Microsoft 365 Agents SDK's own validator (`JwtTokenValidator`, 1.9.0) cannot serve this
bot: it fetches Bot Framework signing keys from a fixed address (login.botframework.com, with
blocking `urllib` in a worker thread) instead of the configured OpenID metadata
(FUSION_BOTFRAMEWORK_OPENID_METADATA, which sovereign clouds and the tests need), it checks no
key endorsement, accepts a token without `exp`, and leaves the issuer and the `serviceurl`
claim unchecked unless configured. `ChannelTokens` makes the checks botbuilder's
`ChannelValidation` makes, and ours on top, with PyJWT (what both SDKs use underneath):

- the `Authorization` header is `Bearer <token>`; the token's issuer is the channel's
  (emulator tokens are refused) and it is no skill's (another bot's), it has an `exp`;
- the activity has a `serviceUrl` and a `channelId`;
- the signature (RS256/384/512 only: no `none`, no HMAC) is by a key the metadata publishes,
  and that key is endorsed for the activity's channel when it lists endorsements;
- the audience is our app id; the lifetime holds with 5 minutes of clock skew;
- the `serviceurl` claim is the activity's `serviceUrl`.

Every failure is a `PermissionError` (the edge's 401). Signing keys are fetched on the app's
aiohttp session (never blocking the loop), refreshed daily and, for an unknown key id, at most
hourly; concurrent refreshes wait for one fetch. A token that passed every check is remembered
for its channel and service URL until it expires or the keys change (the connector sends the
same token for about an hour; checking it is most of the cost of authentication).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import aiohttp
import jwt
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from bot.teams.connector import UntrustedServiceUrl

log = logging.getLogger("bot.teams.inbound")

KEYS_TIMEOUT_SECONDS = 10
#: botbuilder's clock skew allowance when it checks a token's lifetime.
CLOCK_SKEW_SECONDS = 300
#: Distinct (token, channel, service URL) triples remembered as checked.
CHECKED_TOKENS = 256
KEYS_MAX_AGE_SECONDS = 24 * 3600
UNKNOWN_KEY_REFRESH_SECONDS = 3600
ALGORITHMS = ("RS256", "RS384", "RS512")
SERVICE_URL_CLAIM = "serviceurl"


class MalformedKeys(Exception):
    """The OpenID metadata or its key set is not what the OpenID specifications document."""


class _Published(BaseModel):
    model_config = ConfigDict(extra="ignore")


P = TypeVar("P", bound=_Published)


class OpenIdMetadata(_Published):
    """The Bot Framework OpenID metadata: where the signing keys are."""

    jwks_uri: StrictStr = Field(pattern=r"^https?://")


class SigningKey(_Published):
    """One JSON Web Key as botbuilder reads it (RSA, with the channels that endorse it)."""

    model_config = ConfigDict(extra="allow")

    kty: StrictStr
    kid: StrictStr = Field(min_length=1)
    n: StrictStr | None = None
    e: StrictStr | None = None
    x5c: list[StrictStr] | None = None
    endorsements: list[StrictStr] | None = None


class SigningKeySet(_Published):
    keys: list[SigningKey] = Field(min_length=1)


async def _document(
    session: aiohttp.ClientSession, url: str, model: type[P], limit: aiohttp.ClientTimeout
) -> P:
    """A document of the signing-key chain, read as the model says or refused: a malformed
    one leaves the keys as they were (none at first), so tokens are refused (401) and the
    log says why."""
    async with session.get(url, timeout=limit) as resp:
        resp.raise_for_status()
        raw = await resp.read()
    try:
        return model.model_validate_json(raw)
    except (ValidationError, RecursionError) as exc:
        log.error("signing keys not refreshed: %s from %s is malformed", model.__name__, url)
        raise MalformedKeys(f"{model.__name__} from {url} is malformed: {exc}") from None


async def published_keys(
    session: aiohttp.ClientSession, metadata_url: str, limit: aiohttp.ClientTimeout
) -> list[dict[str, Any]]:
    """The signing keys the OpenID metadata at `metadata_url` points to, as JWK dicts (both
    edges read them through this)."""
    metadata = await _document(session, metadata_url, OpenIdMetadata, limit)
    published = await _document(session, metadata.jwks_uri, SigningKeySet, limit)
    return [key.model_dump(exclude_none=True) for key in published.keys]


class SigningKeys:
    """The channel's published signing keys (OpenID metadata → jwks_uri), fetched without
    blocking the loop."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self._session = session
        self._lock = asyncio.Lock()
        self._keys: dict[str, dict[str, Any]] = {}
        #: time.monotonic() of the last refresh; 0: never fetched.
        self.last_updated = 0.0

    async def load(self) -> bool:
        """Fetch the keys now unless some are loaded (readiness); whether any are."""
        if not self._keys:
            await self._refresh(self.last_updated)
        return bool(self._keys)

    async def find(self, kid: str) -> dict[str, Any] | None:
        age = time.monotonic() - self.last_updated
        if not self.last_updated or age > KEYS_MAX_AGE_SECONDS:
            await self._refresh(self.last_updated)
        elif kid not in self._keys and age > UNKNOWN_KEY_REFRESH_SECONDS:
            await self._refresh(self.last_updated)
        return self._keys.get(kid)

    async def _refresh(self, stale_since: float) -> None:
        async with self._lock:
            if self.last_updated != stale_since:
                return  # another request refreshed while this one waited
            timeout = aiohttp.ClientTimeout(total=KEYS_TIMEOUT_SECONDS)
            keys = await published_keys(self._session, self.url, timeout)
            self._keys = {str(k["kid"]): k for k in keys}
            self.last_updated = time.monotonic()
            log.info("signing keys refreshed", extra={"keys": len(keys), "metadata_url": self.url})


@dataclass(frozen=True)
class _Checked:
    claims: dict[str, Any]
    valid_until: float  # time.time(): its exp plus the clock skew
    keys: float  # the refresh of the signing keys it was checked against


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme != "Bearer" or not token or " " in token:
        raise PermissionError("no bearer token")
    return token


class ChannelTokens:
    """Checks a Bot Framework channel token for one activity; see the module docstring."""

    def __init__(self, *, app_id: str, issuer: str, keys: SigningKeys) -> None:
        self._app_id = app_id
        self._issuer = issuer
        self.keys = keys
        self._checked: dict[tuple[str, str, str], _Checked] = {}

    async def check(
        self, authorization: str | None, channel_id: str | None, service_url: str | None
    ) -> dict[str, Any]:
        """The token's claims; PermissionError for anything short of every check passing."""
        try:
            return await self._check(authorization, channel_id, service_url)
        except PermissionError:
            raise
        except Exception as exc:  # jwt errors, KeyError, a failed key fetch...
            raise PermissionError(f"invalid token: {type(exc).__name__}: {exc}") from exc

    async def _check(
        self, authorization: str | None, channel_id: str | None, service_url: str | None
    ) -> dict[str, Any]:
        token = bearer_token(authorization)
        if service_url and channel_id:
            # Passed every check below for this channel and service URL, and not expired.
            remembered = self._remembered((token, channel_id, service_url))
            if remembered is not None:
                return remembered
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
        if unverified.get("iss") != self._issuer:
            raise PermissionError(f"not a channel token: issuer {unverified.get('iss')!r}")
        exp = unverified.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise PermissionError("the token has no expiry (exp)")
        if _is_skill_claims(unverified):
            raise PermissionError("a skill token (another bot calling): not served")
        if not service_url or not channel_id:
            raise PermissionError("activity without serviceUrl or channelId")
        key = (token, channel_id, service_url)
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise PermissionError(f"algorithm {algorithm!r} is not accepted")
        kid = header.get("kid")
        jwk = await self.keys.find(kid) if isinstance(kid, str) else None
        if jwk is None:
            raise PermissionError("the token is not signed by a published key")
        endorsements = jwk.get("endorsements")
        if endorsements and channel_id not in endorsements:
            raise PermissionError(f"the signing key is not endorsed for channel {channel_id!r}")
        claims: dict[str, Any] = jwt.decode(
            token,
            key=jwt.PyJWK(jwk, algorithm).key,
            algorithms=[algorithm],
            leeway=CLOCK_SKEW_SECONDS,
            issuer=self._issuer,
            options={"verify_aud": False, "require": ["exp"]},
        )
        if claims.get("aud") != self._app_id:
            raise PermissionError("the token is for another audience")
        if claims.get(SERVICE_URL_CLAIM) != service_url:
            raise PermissionError("serviceurl claim does not match the activity")
        self._remember(key, claims)
        return claims

    def _remember(self, key: tuple[str, str, str], claims: dict[str, Any]) -> None:
        if len(self._checked) >= CHECKED_TOKENS:
            del self._checked[next(iter(self._checked))]
        self._checked[key] = _Checked(
            claims, float(claims["exp"]) + CLOCK_SKEW_SECONDS, self.keys.last_updated
        )

    def _remembered(self, key: tuple[str, str, str]) -> dict[str, Any] | None:
        checked = self._checked.get(key)
        if checked is None:
            return None
        if checked.keys != self.keys.last_updated or time.time() >= checked.valid_until:
            del self._checked[key]  # expired, or the keys changed: check it in full again
            return None
        return dict(checked.claims)


def _is_skill_claims(claims: dict[str, Any]) -> bool:
    """botbuilder's `SkillValidation.is_skill_claim`: a versioned token whose caller (appid,
    or azp in v2 tokens) is not its audience."""
    if "ver" not in claims:
        return False
    audience = claims.get("aud")
    caller = claims.get("azp") if claims.get("ver") == "2.0" else claims.get("appid")
    return bool(audience) and bool(caller) and caller != audience


def one_authorization(request: web.Request, *, required: bool) -> str:
    """The request's one Authorization header ("" if none and not `required`); 401 for two
    headers (which one counts would depend on who reads them) or, when `required`, none that
    is a bearer token."""
    found = request.headers.getall("Authorization", [])
    if len(found) > 1:
        log.warning("inbound request refused: %d Authorization headers", len(found))
        raise web.HTTPUnauthorized()
    header = found[0] if found else ""
    if required and not header.startswith("Bearer "):
        log.warning("inbound request refused: no bearer token")
        raise web.HTTPUnauthorized()
    return header


def refused(exc: Exception) -> web.StreamResponse:
    """The answer to a request refused before its turn ran, on either edge: 401 for a token
    that does not pass (PermissionError), 403 for an activity whose serviceUrl is not trusted."""
    log.warning("inbound request refused: %s", exc)
    if not isinstance(exc, UntrustedServiceUrl):
        raise web.HTTPUnauthorized() from None
    return web.json_response(
        {"error": "untrusted-service-url", "message": "the activity's serviceUrl is not trusted"},
        status=HTTPStatus.FORBIDDEN,
    )


async def read_json(request: web.Request) -> Any:
    """The request's JSON body, or a 400 for any body that cannot be read as JSON.

    Beside malformed text this catches what the parser cannot take: nesting deep enough to
    exhaust the recursion limit (`RecursionError`, not a `ValueError`), bytes that are not
    UTF-8, and a body over the app's size limit (413 stays 413).
    """
    if "application/json" not in request.headers.get("Content-Type", ""):
        raise web.HTTPUnsupportedMediaType()
    try:
        raw = await request.read()
        return json.loads(raw)
    except web.HTTPException:
        raise
    except (ValueError, RecursionError, MemoryError):
        raise web.HTTPBadRequest(text="the body is not JSON this bot can read") from None

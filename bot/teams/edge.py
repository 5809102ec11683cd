"""The Bot Framework edge: inbound authentication and the CloudAdapter that runs a turn.

Inbound, every activity is checked by botbuilder's own token validation
(`ConfigurationBotFrameworkAuthentication`, pointed at the configured OpenID metadata and the
cloud's channel issuer): signature against the published keys, key endorsement for the channel,
issuer, audience (our app id), lifetime with 5 minutes of clock skew, and the `serviceurl`
claim against the activity. Stock botbuilder turns many of these failures into bare exceptions
(HTTP 500); here every one is a 401 and nothing runs. Its signing-key fetch is a blocking
`requests.get` inside a coroutine; `SigningKeys` replaces it with a fetch on the app's aiohttp
session.

The Bot Connector sends the same token with every activity for about an hour, and checking
it (signature, key endorsement, claims) is most of the cost of authentication: a token that
passed every check is remembered, with the channel and service URL it was checked for, until
it expires or the signing keys change. Anything else goes through the full check again.

Outbound, connectors come from `ConnectorPool` (trusted service URLs only, reused clients).

With no MicrosoftAppId (local development mode) nothing is authenticated — the settings refuse
to listen anywhere but loopback in that mode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from botbuilder.core import Bot, InvokeResponse, TurnContext, serializer_helper
from botbuilder.integration.aiohttp import (
    CloudAdapter,
    ConfigurationBotFrameworkAuthentication,
)
from botbuilder.schema import Activity, ActivityTypes
from botframework.connector.auth import (
    AuthenticateRequestResult,
    AuthenticationConstants,
    BotFrameworkAuthentication,
    ClaimsIdentity,
    ConnectorFactory,
    PasswordServiceClientCredentialFactory,
    UserTokenClient,
)
from botframework.connector.skills import BotFrameworkClient
from msrest.exceptions import DeserializationError, HttpOperationError
from msrest.serialization import Model

from bot.auth.credentials import ClientCredentials
from bot.auth.graph import GraphClient
from bot.auth.membership import GraphPolicy
from bot.auth.policy import DevPolicy, Policy
from bot.commands.registry import Services
from bot.config import Settings
from bot.logs import CORRELATION_ID
from bot.teams.bot import FusionBot, tenant_of
from bot.teams.botbuilder_internals import OpenIdMetadata, install_signing_keys
from bot.teams.connector import (
    ConnectorPool,
    ConnectorUnavailable,
    TrustedServiceUrls,
    UntrustedServiceUrl,
)
from bot.teams.gate import TurnGate
from bot.teams.inbound import one_authorization, published_keys, read_json, refused
from bot.teams.proactive import TURN, ProactiveSender, RateLimiter, TurnBudget
from bot.teams.render import dumps
from bot.teams.sso import sso_flow

log = logging.getLogger("bot.teams.edge")

KEYS_TIMEOUT_SECONDS = 10
#: botbuilder's clock skew allowance when it checks a token's lifetime.
CLOCK_SKEW_SECONDS = 300
#: Distinct (token, channel, service URL) triples remembered as checked.
CHECKED_TOKENS = 256

#: Seconds a turn's replies may take, retries included, from the moment its activity is read:
#: the Bot Connector gives up on a bot that has not answered in 15 s (and Teams redelivers).
TURN_BUDGET = 10.0


class SigningKeys(OpenIdMetadata):  # type: ignore[misc]
    """botbuilder's signing-key cache for one metadata URL, fetched without blocking the loop.

    Installed into botbuilder's process-wide cache (keyed by URL) so that its token validation
    uses it. Keeps botbuilder's refresh rules (daily, and at most hourly for an unknown key id);
    concurrent refreshes wait for one fetch.
    """

    last_updated: datetime
    keys: list[dict[str, Any]]

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        super().__init__(url)
        self._session = session
        self._lock = asyncio.Lock()

    @classmethod
    def install(cls, url: str, session: aiohttp.ClientSession) -> SigningKeys:
        keys = cls(url, session)
        install_signing_keys(url, keys)
        return keys

    async def load(self) -> bool:
        """Fetch the keys now unless some are loaded (readiness); whether any are."""
        if not self.keys:
            await self._refresh()
        return bool(self.keys)

    async def _refresh(self) -> None:
        stale_since = self.last_updated
        async with self._lock:
            if self.last_updated != stale_since:
                return  # another request refreshed while this one waited
            timeout = aiohttp.ClientTimeout(total=KEYS_TIMEOUT_SECONDS)
            keys = await published_keys(self._session, self.url, timeout)
            self.keys = keys
            self.last_updated = datetime.now()
            log.info("signing keys refreshed", extra={"keys": len(keys), "metadata_url": self.url})


class _NotAChannelToken(Exception):
    pass


@dataclass(frozen=True)
class _Checked:
    """A token that passed every check for one channel and service URL."""

    claims: dict[str, Any]
    audience: str | None
    caller_id: str | None
    valid_until: float  # time.time(): its exp plus botbuilder's clock skew
    keys: datetime  # the signing keys it was checked against (their last refresh)


class ChannelAuthentication(BotFrameworkAuthentication):
    """botbuilder's validation for tokens from the Bot Framework channel; every failure a
    PermissionError (the adapter's 401). Connectors come from the `ConnectorPool`."""

    def __init__(
        self,
        settings: Settings,
        connectors: ConnectorPool,
        signing_keys: SigningKeys | None = None,
    ) -> None:
        self._settings = settings
        self._connectors = connectors
        self._signing_keys = signing_keys
        self._checked: dict[tuple[str, str, str], _Checked] = {}
        configuration = SimpleNamespace(
            TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL=settings.botframework_openid_metadata,
            TO_BOT_FROM_CHANNEL_TOKEN_ISSUER=settings.channel_issuer,
            TO_CHANNEL_FROM_BOT_LOGIN_URL=f"{settings.login_authority}/botframework.com",
            TO_CHANNEL_FROM_BOT_OAUTH_SCOPE=settings.connector_scope,
            VALIDATE_AUTHORITY=True,
        )
        self._inner = ConfigurationBotFrameworkAuthentication(
            configuration,
            credentials_factory=PasswordServiceClientCredentialFactory(
                settings.app_id, settings.app_password, settings.app_tenant_id or None
            ),
        )
        self._user_tokens: UserTokenClient | None = None

    async def authenticate_request(
        self, activity: Activity, auth_header: str
    ) -> AuthenticateRequestResult:
        if self._settings.dev_mode:
            result = AuthenticateRequestResult()
            result.claims_identity = ClaimsIdentity(
                {}, True, AuthenticationConstants.ANONYMOUS_AUTH_TYPE
            )
            result.audience = self._settings.connector_scope
        else:
            result = await self._validate(activity, auth_header)
        result.connector_factory = self._connectors
        return result

    async def _validate(self, activity: Activity, auth_header: str) -> AuthenticateRequestResult:
        try:
            scheme, _, token = (auth_header or "").partition(" ")
            if scheme != "Bearer" or not token:
                raise PermissionError("no bearer token")
            # Only channel tokens: emulator and skill tokens (other issuers) are not accepted.
            unverified = jwt.decode(token, options={"verify_signature": False})
            issuer = unverified.get("iss")
            if issuer != self._settings.channel_issuer:
                raise _NotAChannelToken(f"issuer {issuer!r}")
            # PyJWT checks `exp` only when it is present: a token without one would never expire.
            exp = unverified.get("exp")
            if not isinstance(exp, (int, float)) or isinstance(exp, bool):
                raise PermissionError("the token has no expiry (exp)")
            # Without these botbuilder skips the serviceurl and endorsement checks.
            if not activity.service_url or not activity.channel_id:
                raise PermissionError("activity without serviceUrl or channelId")
            key = (token, activity.channel_id, activity.service_url)
            remembered = self._remembered(key)
            if remembered is not None:
                return remembered
            result = await self._inner.authenticate_request(activity, auth_header)
            claims = result.claims_identity.claims if result.claims_identity else {}
            if claims.get(AuthenticationConstants.SERVICE_URL_CLAIM) != activity.service_url:
                raise PermissionError("serviceurl claim does not match the activity")
            self._remember(key, result)
            return result
        except PermissionError:
            raise
        except Exception as exc:  # botbuilder raises bare Exception, jwt errors, KeyError...
            raise PermissionError(f"invalid token: {type(exc).__name__}: {exc}") from exc

    def _remember(self, key: tuple[str, str, str], result: AuthenticateRequestResult) -> None:
        claims = dict(result.claims_identity.claims)
        exp = claims.get("exp")
        if self._signing_keys is None or not isinstance(exp, (int, float)):
            return
        if len(self._checked) >= CHECKED_TOKENS:
            del self._checked[next(iter(self._checked))]
        self._checked[key] = _Checked(
            claims,
            result.audience,
            result.caller_id,
            float(exp) + CLOCK_SKEW_SECONDS,
            self._signing_keys.last_updated,
        )

    def _remembered(self, key: tuple[str, str, str]) -> AuthenticateRequestResult | None:
        checked = self._checked.get(key)
        if checked is None:
            return None
        keys = self._signing_keys
        if keys is None or checked.keys != keys.last_updated or time.time() >= checked.valid_until:
            del self._checked[key]  # expired, or the keys changed: check it in full again
            return None
        result = AuthenticateRequestResult()
        result.claims_identity = ClaimsIdentity(dict(checked.claims), True)
        result.audience = checked.audience
        result.caller_id = checked.caller_id
        return result

    async def authenticate_streaming_request(
        self, auth_header: str, channel_id_header: str
    ) -> AuthenticateRequestResult:
        raise PermissionError("streaming connections are not served")

    def create_connector_factory(self, claims_identity: ClaimsIdentity) -> ConnectorFactory:
        return self._connectors

    async def create_user_token_client(self, claims_identity: ClaimsIdentity) -> UserTokenClient:
        # The adapter asks for one on every turn; the stock one is a new msrest client each time.
        # The bot never signs users in, so one is made once and kept.
        if self._user_tokens is None:
            self._user_tokens = await self._inner.create_user_token_client(claims_identity)
        return self._user_tokens

    def create_bot_framework_client(self) -> BotFrameworkClient:
        return self._inner.create_bot_framework_client()

    def get_originating_audience(self) -> str:
        return self._settings.connector_scope

    async def authenticate_channel_request(self, auth_header: str) -> ClaimsIdentity:
        raise PermissionError("skill callbacks are not served")


@dataclass
class Edge:
    """Everything a turn needs from the Bot Framework side, made once per app."""

    settings: Settings
    adapter: CloudAdapter
    bot: Bot
    # Outbound: trusted service URLs + reused connector clients (replies, adapter proactive).
    connectors: ConnectorPool
    # The process's one Bot Connector sender: the connector clients' transport, and what the
    # scheduler, the approvals channel and provisioning post and update cards with.
    sender: ProactiveSender
    # The bot's own tokens (None in local development mode).
    credentials: ClientCredentials | None = None
    signing_keys: SigningKeys | None = None
    services: Services = field(default_factory=Services)
    gate: TurnGate = field(default_factory=lambda: TurnGate(0))

    async def receive(self, request: web.Request) -> web.StreamResponse:
        """POST /api/messages: `CloudAdapter.process` without its HTTP 500s.

        Authentication failures answer 401; an untrusted serviceUrl 403 (before anything runs);
        a body that is not an activity 400 / 415.
        """
        one_authorization(request, required=not self.settings.dev_mode)
        activity = await read_activity(request)
        correlation = CORRELATION_ID.set(str(activity.id)[:200] if activity.id else None)
        try:
            async with self.gate.place():
                # The turn's replies are retried (429, 5xx) only while the channel still waits.
                budget = TURN.set(TurnBudget(tenant_of(activity), time.monotonic() + TURN_BUDGET))
                try:
                    return await self._turn(request, activity)
                finally:
                    TURN.reset(budget)
        finally:
            CORRELATION_ID.reset(correlation)

    async def _turn(self, request: web.Request, activity: Activity) -> web.StreamResponse:
        try:
            invoke_response: InvokeResponse | None = await self.adapter.process_activity(
                request.headers.get("Authorization", ""), activity, self.bot.on_turn
            )
        except (PermissionError, UntrustedServiceUrl) as exc:
            return refused(exc)
        if invoke_response is not None:
            body = invoke_response.body
            # ActivityHandler hands over bodies it already serialized; the stock adapter
            # serializes them again and fails (HTTP 500) on a dict.
            if isinstance(body, Model):
                body = serializer_helper(body)
            return web.json_response(body, status=invoke_response.status, dumps=dumps)
        return web.Response(status=HTTPStatus.CREATED)


async def read_activity(request: web.Request) -> Activity:
    """The body as a Bot Framework activity, or a 400: nothing else runs for it."""
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        # msrest would make a string of any `type` (a list, a number) rather than refuse it.
        raise web.HTTPBadRequest(text="the body is not a Bot Framework activity")
    try:
        activity = Activity().deserialize(body)
    except (ValueError, TypeError, AttributeError, RecursionError, DeserializationError):
        activity = None
    if activity is None or not isinstance(activity.type, str) or not activity.type:
        raise web.HTTPBadRequest(text="the body is not a Bot Framework activity")
    return activity


async def _on_turn_error(turn_context: TurnContext, error: Exception) -> None:
    """A turn failed outside the command layer (which answers its own errors): log it, and tell
    the user something went wrong if the connector still works."""
    activity = turn_context.activity
    log.error("turn failed", exc_info=error)
    if isinstance(error, (UntrustedServiceUrl, ConnectorUnavailable)) or _unsendable(error):
        return  # the connector cannot take a message now: telling the user would fail too
    text = (
        "Something went wrong and the request may not have been completed. "
        f"Reference: {activity.id or '-'}."
    )
    try:
        if activity.type == ActivityTypes.invoke:
            # An AdaptiveCardInvokeResponse as JSON (msrest refuses a text `value`: the turn
            # would end without an invoke response, HTTP 501).
            body = {
                "statusCode": 200,
                "type": "application/vnd.microsoft.activity.message",
                "value": text,
            }
            await turn_context.send_activity(
                Activity(
                    type=ActivityTypes.invoke_response,
                    value=InvokeResponse(status=200, body=body),
                )
            )
        else:
            await turn_context.send_activity(text)
    except Exception:
        log.warning("could not tell the user about the failure", exc_info=True)


def _unsendable(error: Exception) -> bool:
    """The Bot Connector refused the turn's reply as one more would be: 403 (the bot was
    removed or blocked) or 429 beyond the turn's budget."""
    response = getattr(error, "response", None)
    return isinstance(error, HttpOperationError) and getattr(response, "status_code", None) in (
        403,
        429,
    )


def build_policy(settings: Settings, graph: GraphClient | None) -> Policy:
    """Local development: the listed dev admins. Otherwise tenants from settings and group
    administrators through Entra ID."""
    if settings.dev_mode:
        return DevPolicy(settings.dev_admins)
    return GraphPolicy(settings, graph)


def build_sender(
    settings: Settings, session: aiohttp.ClientSession, credentials: ClientCredentials | None
) -> ProactiveSender:
    """The process's one Bot Connector sender (replies, card updates, proactive posts)."""
    trusted = TrustedServiceUrls(settings.trusted_service_urls, allow_loopback=settings.dev_mode)
    windows = RateLimiter() if settings.teams_rate_limits else RateLimiter((), ())
    return ProactiveSender(
        session,
        token=credentials.connector_token if credentials else None,
        is_trusted=trusted.trusts,
        limiter=windows,
    )


def build_edge(
    settings: Settings,
    session: aiohttp.ClientSession,
    credentials: ClientCredentials | None,
    services: Services | None = None,
    sender: ProactiveSender | None = None,
) -> Edge:
    """Adapter, authentication, connectors and bot, made once for the app's lifetime.

    `sender` is the process's one Bot Connector sender (made here if not given): the
    connector clients send through it, so replies share its rate limiter with every other send.
    """
    trusted = TrustedServiceUrls(settings.trusted_service_urls, allow_loopback=settings.dev_mode)
    sender = sender or build_sender(settings, session, credentials)
    connectors = ConnectorPool(trusted, sender)
    keys = (
        None
        if settings.dev_mode
        else SigningKeys.install(settings.botframework_openid_metadata, session)
    )
    adapter = CloudAdapter(ChannelAuthentication(settings, connectors, keys))
    adapter.on_turn_error = _on_turn_error
    graph = GraphClient(session, settings, credentials.graph_token) if credentials else None
    front_door = services or Services()
    if graph is not None:
        front_door = replace(front_door, graph=graph)
    sso = None if settings.dev_mode else sso_flow(settings, session, credentials)
    bot = FusionBot(settings, build_policy(settings, graph), front_door, sso)
    gate = TurnGate(settings.max_concurrent_turns)
    return Edge(settings, adapter, bot, connectors, sender, credentials, keys, front_door, gate)

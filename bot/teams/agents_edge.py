"""The edge on the Microsoft 365 Agents SDK for Python (FUSION_EDGE=agents).

The same turn as the botbuilder edge (`bot.teams.edge`), through the same commands, cards and
domain; what differs is the SDK that carries it:

- Inbound: the request is checked as on the other edge (one Authorization header, a bearer
  token, JSON, an activity) and the token by `bot.teams.inbound.ChannelTokens` — the SDK's own
  validator cannot be pointed at the configured OpenID metadata and skips checks we make (see
  there). The activity is the SDK's (`microsoft_agents.activity.Activity`); the SDK's
  `CloudAdapter.process_activity` runs the turn with the checked claims.
- The turn: `AgentsBot`, an SDK `ActivityHandler`, hands messages, `adaptiveCard/action`
  invokes and the SSO token exchange to the shared turn logic (`bot.teams.bot.FusionBot`,
  `bot.teams.card_actions`) through `SdkTurn`, which gives that logic the turn as it uses it and
  hands each activity it sends to the SDK as an SDK activity.
- Outbound: the SDK's own `ConnectorClient` (its REST operations and models), one per
  trusted service URL and kept for the app's lifetime, whose HTTP transport is the process's
  one `ProactiveSender` (`SenderSession`): replies, card updates, approval copies and digests
  pass one rate limiter, are signed with the bot's cached token, and reach only trusted
  service URLs — checked before a token is asked for or a byte is sent. (The SDK's stock
  factory makes a new aiohttp session, token and connection per turn and closes them after.)

Configuration keeps our names (MicrosoftAppId, MicrosoftAppPassword, MicrosoftAppTenantId,
FUSION_*); `sdk_configuration(settings)` says what each is in the SDK's own terms.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from microsoft_agents.activity import (
    Activity,
    ActivityTypes,
    Attachment,
    ConversationAccount,
    InvokeResponse,
)
from microsoft_agents.hosting.aiohttp import CloudAdapter
from microsoft_agents.hosting.core import (
    ActivityHandler,
    ChannelServiceClientFactoryBase,
    TurnContext,
)
from microsoft_agents.hosting.core.authorization import ClaimsIdentity
from microsoft_agents.hosting.core.connector import ConnectorClientBase, UserTokenClientBase
from microsoft_agents.hosting.core.connector.client import ConnectorClient, UserTokenClient
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError
from yarl import URL

from bot.auth.credentials import ClientCredentials
from bot.auth.graph import GraphClient
from bot.commands.registry import Services
from bot.config import Settings
from bot.logs import CORRELATION_ID
from bot.teams.bot import FusionBot, tenant_of
from bot.teams.card_actions import INVOKE_NAME
from bot.teams.connector import ConnectorUnavailable, TrustedServiceUrls, UntrustedServiceUrl
from bot.teams.edge import TURN_BUDGET, build_policy, build_sender
from bot.teams.gate import TurnGate
from bot.teams.inbound import (
    ChannelTokens,
    SigningKeys,
    one_authorization,
    read_json,
    refused,
)
from bot.teams.proactive import TURN, ProactiveSender, SendOutcome, SendResult, TurnBudget
from bot.teams.render import Card, dumps
from bot.teams.sso import INVOKES as SSO_INVOKES
from bot.teams.sso import sso_flow

log = logging.getLogger("bot.teams.agents_edge")

#: The rendered cards of the turn being served (see `HeldCards`); set by the edge per turn.
HELD_CARDS: ContextVar[HeldCards | None] = ContextVar("held_cards", default=None)

MAX_CLIENTS = 64  # distinct service URLs kept; Teams uses a handful of regional ones


def sdk_configuration(settings: Settings) -> dict[str, Any]:
    """Our settings in the SDK's configuration names (`CONNECTIONS__SERVICE_CONNECTION__
    SETTINGS__…`, read by `load_configuration_from_env`), for whoever configures the SDK
    alongside; the edge itself is built from `Settings`."""
    return {
        "CLIENTID": settings.app_id,  # MicrosoftAppId
        "CLIENTSECRET": settings.app_password,  # MicrosoftAppPassword
        "TENANTID": settings.app_tenant_id,  # MicrosoftAppTenantId
        "AUTHORITY": f"{settings.login_authority}/{settings.app_tenant_id or 'botframework.com'}",
        "SCOPES": [settings.connector_scope],  # FUSION_CONNECTOR_SCOPE
        "ISSUERS": [settings.channel_issuer],  # FUSION_CHANNEL_ISSUER
        "VALIDATE_ISSUER": True,  # checked by bot.teams.inbound in any case
    }


# ----- outbound: the SDK's connector client over the process's one sender ---------------------


class HeldCards:
    """The rendered cards a turn sends, handed to the SDK as placeholder strings.

    The SDK copies and re-serializes every activity with pydantic (`model_dump`) before it
    sends it, and the invoke response twice; a card as a plain value is walked node by node
    each time (measured: most of the agents edge's extra CPU per turn). A placeholder is a
    short string to pydantic; `dumps` writes each card in its place as the JSON made once when
    it was rendered — what the botbuilder edge sends (`render.dumps`)."""

    def __init__(self) -> None:
        self._cards: dict[str, Card] = {}

    def hold(self, content: Any) -> Any:
        if not isinstance(content, Card) or content.json is None:
            return _plain(content)
        token = f"\u0000fusion-card:{uuid.uuid4().hex}"
        self._cards[token] = content
        return token

    def dumps(self, value: Any) -> str:
        text = dumps(value)
        for token, card in self._cards.items():
            quoted = json.dumps(token)
            if quoted in text:
                text = text.replace(quoted, card.json or "null", 1)
        return text


class _Answer:
    """A Bot Connector answer as the SDK's REST operations read an aiohttp response."""

    def __init__(self, method: str, url: URL, result: SendResult) -> None:
        assert result.status is not None
        self.status = result.status
        self.headers = CIMultiDictProxy(CIMultiDict(result.headers))
        self._body = result.body
        self.method = method
        self.url = url
        self.history: tuple[Any, ...] = ()
        self.request_info = aiohttp.RequestInfo(url, method, CIMultiDictProxy(CIMultiDict()), url)

    @property
    def ok(self) -> bool:
        return self.status < 400

    async def read(self) -> bytes:
        return self._body

    async def text(self, encoding: str = "utf-8") -> str:
        return self._body.decode(encoding, "replace")

    async def json(self, **_: Any) -> Any:
        return json.loads(self._body) if self._body else None

    def raise_for_status(self) -> None:
        if not self.ok:
            raise aiohttp.ClientResponseError(
                self.request_info, self.history, status=self.status, headers=self.headers
            )


class _Exchange:
    """`async with session.post(...) as response`: one request through the sender."""

    def __init__(self, session: SenderSession, method: str, url: str, kwargs: dict[str, Any]):
        self._session = session
        self._method = method
        self._url = url
        self._kwargs = kwargs

    async def __aenter__(self) -> _Answer:
        return await self._session.send(self._method, self._url, **self._kwargs)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class SenderSession:
    """What the SDK's `ConnectorClient` takes for an aiohttp session, sending through the
    process's `ProactiveSender` (trust check, rate limits, the bot's token, retries). Kept for
    the app's lifetime: the SDK closes its client after every turn, and that closes nothing."""

    def __init__(self, base_url: str, sender: ProactiveSender) -> None:
        self._base_url = URL(base_url if base_url.endswith("/") else base_url + "/")
        self._sender = sender
        self.headers: dict[str, str] = {}

    def request(self, method: str, url: str, **kwargs: Any) -> _Exchange:
        return _Exchange(self, method.upper(), url, kwargs)

    def get(self, url: str, **kwargs: Any) -> _Exchange:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> _Exchange:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> _Exchange:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> _Exchange:
        return self.request("DELETE", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> _Exchange:
        return self.request("PATCH", url, **kwargs)

    async def close(self) -> None:
        return None

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        # The SDK's paths are relative ("v3/conversations/…") and already escaped.
        where = self._base_url.join(URL(url, encoded=True))
        if params:
            where = where.update_query(params)
        held = HELD_CARDS.get()
        text = None if json is None else held.dumps(json) if held is not None else dumps(json)
        body = text.encode() if text is not None else data
        if isinstance(body, str):
            body = body.encode()
        sending = {**self.headers, **(headers or {})}
        if json is not None:
            sending["Content-Type"] = "application/json; charset=utf-8"
        result = await self._sender.exchange(method, where, body, sending)
        if result.outcome is SendOutcome.REFUSED:
            raise UntrustedServiceUrl(str(where))
        if result.status is None:
            raise ConnectorUnavailable(result.error or "no answer from the Bot Connector")
        return _Answer(method, where, result)


class ConnectorClients(ChannelServiceClientFactoryBase):
    """The SDK's client factory: for trusted service URLs only, one client per URL, reused."""

    def __init__(
        self,
        trusted: TrustedServiceUrls,
        sender: ProactiveSender,
        app_id: str = "",
        token_service: str = "https://token.botframework.com",
    ) -> None:
        self.trusted = trusted
        self.sender = sender
        self._app_id = app_id
        # The SDK's user token client is made once and never called: Teams SSO goes through
        # bot/teams/sso.py, on either edge (it is there because the SDK's adapter asks for one).
        self._token_service = token_service
        self._clients: dict[str, ConnectorClient] = {}
        self._user_tokens: UserTokenClient | None = None

    async def create_connector_client(
        self,
        context: TurnContext | None,
        claims_identity: ClaimsIdentity,
        service_url: str,
        audience: str,
        scopes: list[str] | None = None,
        use_anonymous: bool = False,
    ) -> ConnectorClientBase:
        """Raises UntrustedServiceUrl before anything is sent. The token is the bot's own for
        the configured connector scope (the only audience this bot sends to)."""
        self.trusted.require(service_url)
        client = self._clients.get(service_url)
        if client is None:
            if len(self._clients) >= MAX_CLIENTS:
                del self._clients[next(iter(self._clients))]
            session = SenderSession(service_url, self.sender)
            client = ConnectorClient(service_url, "", session=session)  # type: ignore[arg-type]
            self._clients[service_url] = client
            log.info("connector client created", extra={"service_url": service_url})
        return client

    async def create_user_token_client(
        self,
        context: TurnContext,
        claims_identity: ClaimsIdentity,
        use_anonymous: bool = False,
    ) -> UserTokenClientBase:
        if self._user_tokens is None:
            session = SenderSession(self._token_service, self.sender)
            self._user_tokens = UserTokenClient(
                self._token_service,
                "",
                app_id=self._app_id or None,  # none in local development mode
                session=session,  # type: ignore[arg-type]
            )
        return self._user_tokens

    @property
    def client_count(self) -> int:
        return len(self._clients)


# ----- the turn ----------------------------------------------------------------------------------


def sdk_activity(activity: Any) -> Activity:
    """An activity the shared turn logic made (botbuilder's schema, or text) as the SDK's."""
    if isinstance(activity, Activity):
        return activity
    if isinstance(activity, str):
        return Activity(type=ActivityTypes.message, text=activity)
    fields: dict[str, Any] = {}
    for name in ("type", "id", "text", "summary", "service_url", "reply_to_id", "text_format"):
        value = getattr(activity, name, None)
        if value is not None:
            fields[name] = value
    attachments = getattr(activity, "attachments", None)
    if attachments:
        held = HELD_CARDS.get()
        fields["attachments"] = [
            Attachment(
                content_type=a.content_type,
                content=held.hold(a.content) if held is not None else _plain(a.content),
            )
            for a in attachments
        ]
    conversation = getattr(activity, "conversation", None)
    if conversation is not None and conversation.id:
        fields["conversation"] = ConversationAccount(id=conversation.id)
    value = getattr(activity, "value", None)
    if value is not None:
        if hasattr(value, "status") and hasattr(value, "body"):  # an invoke response
            value = {"status": value.status, "body": value.body}
        fields["value"] = value
    return Activity(**fields)


def _plain(content: Any) -> Any:
    """Attachment content as JSON values: botbuilder's card models (an OAuth card) serialized."""
    serialize = getattr(content, "serialize", None)
    return serialize() if callable(serialize) and not isinstance(content, Mapping) else content


class _SdkAdapterDoor:
    """`turn_context.adapter.update_activity(turn_context, activity)` for the shared logic."""

    def __init__(self, turn: TurnContext) -> None:
        self._turn = turn

    async def update_activity(self, _turn: Any, activity: Any) -> Any:
        return await self._turn.adapter.update_activity(self._turn, sdk_activity(activity))


class SdkTurn:
    """The SDK's turn as the shared turn logic (`FusionBot`, `bot.teams.card_actions`) uses one: the
    activity (the SDK's; the logic reads only fields both SDKs name alike), send and update."""

    def __init__(self, turn: TurnContext) -> None:
        self._turn = turn
        self.adapter = _SdkAdapterDoor(turn)

    @property
    def activity(self) -> Activity:
        return self._turn.activity

    async def send_activity(self, activity: Any) -> Any:
        return await self._turn.send_activity(sdk_activity(activity))

    async def update_activity(self, activity: Any) -> Any:
        return await self._turn.update_activity(sdk_activity(activity))


def conversation_reference(activity: Activity) -> dict[str, Any]:
    """The stored conversation reference, in the same JSON shape as botbuilder's."""
    reference = activity.get_conversation_reference()
    found: dict[str, Any] = reference.model_dump(by_alias=True, exclude_none=True, mode="json")
    return found


def _invoke_error(status: HTTPStatus, code: str, message: str) -> InvokeResponse:
    body = {
        "statusCode": int(status),
        "type": "application/vnd.microsoft.error",
        "value": {"code": code, "message": message},
    }
    return InvokeResponse(status=int(status), body=body)


def card_invoke_problem(value: Any) -> InvokeResponse | None:
    """The 400 botbuilder's ActivityHandler answers for an `adaptiveCard/action` invoke whose
    value is not an Action.Execute (the same codes and messages), or None."""
    if value is None:
        return _invoke_error(HTTPStatus.BAD_REQUEST, "BadRequest", "Missing value property")
    if not isinstance(value, Mapping):
        return _invoke_error(
            HTTPStatus.BAD_REQUEST, "BadRequest", "Value property is not properly formed"
        )
    action = value.get("action")
    if action is None:
        return _invoke_error(HTTPStatus.BAD_REQUEST, "BadRequest", "Missing action property")
    if not isinstance(action, Mapping):
        return _invoke_error(
            HTTPStatus.BAD_REQUEST, "BadRequest", "The action property is not an object"
        )
    if action.get("type") != "Action.Execute":
        return _invoke_error(
            HTTPStatus.BAD_REQUEST,
            "NotSupported",
            f"The action '{action.get('type')}' is not supported.",
        )
    return None


def _sdk_invoke_response(found: Any) -> InvokeResponse:
    """botbuilder's InvokeResponse (what the shared logic answers with) as the SDK's; a card
    in its body is held (`HeldCards`) until the edge writes the HTTP answer."""
    body = found.body
    held = HELD_CARDS.get()
    if held is not None and isinstance(body, dict) and "value" in body:
        body = {**body, "value": held.hold(body["value"])}
    return InvokeResponse(status=int(found.status), body=body)


class AgentsBot(ActivityHandler):
    """The SDK's activity handler over the shared turn logic (one `FusionBot`)."""

    def __init__(self, logic: FusionBot) -> None:
        self.logic = logic

    async def on_turn(self, turn_context: TurnContext) -> None:  # type: ignore[override]
        await self.logic._track_conversation(turn_context.activity)
        await super().on_turn(turn_context)

    async def on_message_activity(self, turn_context: TurnContext) -> None:  # type: ignore[override]
        await self.logic.on_message_activity(SdkTurn(turn_context))  # type: ignore[arg-type]

    async def on_invoke_activity(  # type: ignore[override]
        self, turn_context: TurnContext
    ) -> InvokeResponse | None:
        activity = turn_context.activity
        if activity.name in SSO_INVOKES:
            return _sdk_invoke_response(await self.logic._sign_in(activity))  # type: ignore[arg-type]
        if activity.name == INVOKE_NAME:
            problem = card_invoke_problem(activity.value)
            if problem is not None:
                return problem
            answer = await self.logic.on_adaptive_card_invoke(SdkTurn(turn_context), None)  # type: ignore[arg-type]
            if answer is None:
                return InvokeResponse(status=int(HTTPStatus.OK))
            payload = {"statusCode": answer.status_code, "type": answer.type, "value": answer.value}
            body = {k: v for k, v in payload.items() if v is not None}
            return _sdk_invoke_response(InvokeResponse(status=int(HTTPStatus.OK), body=body))
        return InvokeResponse(status=int(HTTPStatus.NOT_IMPLEMENTED))


async def _on_turn_error(turn_context: TurnContext, error: Exception) -> None:
    """As the botbuilder edge's: log it, and tell the user unless the connector cannot take a
    message now (untrusted, unavailable, 403, 429 beyond the turn's budget)."""
    activity = turn_context.activity
    log.error("turn failed", exc_info=error)
    unsendable = isinstance(error, aiohttp.ClientResponseError) and error.status in (403, 429)
    if isinstance(error, (UntrustedServiceUrl, ConnectorUnavailable)) or unsendable:
        return
    text = (
        "Something went wrong and the request may not have been completed. "
        f"Reference: {activity.id or '-'}."
    )
    try:
        if activity.type == ActivityTypes.invoke:
            body = {
                "statusCode": 200,
                "type": "application/vnd.microsoft.activity.message",
                "value": text,
            }
            await turn_context.send_activity(
                Activity(type=ActivityTypes.invoke_response, value={"status": 200, "body": body})
            )
        else:
            await turn_context.send_activity(text)
    except Exception:
        log.warning("could not tell the user about the failure", exc_info=True)


def read_sdk_activity(body: Any) -> Activity:
    """The body as the SDK's activity, or a 400: nothing else runs for it.

    What botbuilder's (msrest's) reading takes, this takes too, so that both edges answer a
    body alike: a number where text belongs is read as its text, a null string as absent, and
    an entity the SDK cannot read (a mention whose `mentioned` is no account) is left out (to
    botbuilder every entity is a bag of properties, and no such mention is ever the bot's).
    A wrong shape anywhere else (an account that is a string, a timestamp that is no date)
    is the 400 it is to botbuilder."""
    if not isinstance(body, dict) or not isinstance(body.get("type"), str) or not body["type"]:
        raise web.HTTPBadRequest(text="the body is not a Bot Framework activity")
    for _ in range(3):
        try:
            return Activity.model_validate(body)
        except ValidationError as exc:
            body = _as_botbuilder_reads(body, exc)
        except (ValueError, TypeError, RecursionError):
            body = None
        if body is None:
            break
    raise web.HTTPBadRequest(text="the body is not a Bot Framework activity")


def _readable_entity(entity: Any) -> bool:
    try:
        Activity.model_validate({"type": "message", "entities": [entity]})
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _as_botbuilder_reads(body: dict[str, Any], error: ValidationError) -> dict[str, Any] | None:
    """`body` with what msrest would have coerced coerced; None if msrest would refuse it."""
    fixed = copy.deepcopy(body)
    for problem in error.errors():
        where, kind, value = problem["loc"], problem["type"], problem.get("input")
        if where and where[0] == "entities" and isinstance(fixed.get("entities"), list):
            fixed["entities"] = [e for e in fixed["entities"] if _readable_entity(e)]
            continue
        if kind != "string_type" or isinstance(value, (dict, list)):
            return None
        parent: Any = fixed
        for step in where[:-1]:
            parent = parent[step]
        if value is None:
            del parent[where[-1]]
        else:
            parent[where[-1]] = str(value).lower() if isinstance(value, bool) else str(value)
    return fixed


@dataclass
class AgentsEdge:
    """Everything a turn needs on the Agents SDK side, made once per app (as `Edge`)."""

    settings: Settings
    adapter: CloudAdapter
    bot: AgentsBot
    connectors: ConnectorClients
    sender: ProactiveSender
    tokens: ChannelTokens | None = None  # None in local development mode
    credentials: ClientCredentials | None = None
    services: Services = field(default_factory=Services)
    gate: TurnGate = field(default_factory=lambda: TurnGate(0))
    name: str = "agents"

    @property
    def signing_keys(self) -> SigningKeys | None:
        """The channel's signing keys (GET /readyz loads them); None in local development."""
        return self.tokens.keys if self.tokens is not None else None

    async def receive(self, request: web.Request) -> web.StreamResponse:
        """POST /api/messages; the same answers as the botbuilder edge: 401 for anything short
        of a valid channel token, 403 for an untrusted serviceUrl (before anything runs),
        400 / 415 for a body that is not an activity."""
        authorization = one_authorization(request, required=not self.settings.dev_mode)
        activity = read_sdk_activity(await read_json(request))
        correlation = CORRELATION_ID.set(str(activity.id)[:200] if activity.id else None)
        cards = HELD_CARDS.set(HeldCards())
        try:
            async with self.gate.place():
                budget = TURN.set(TurnBudget(tenant_of(activity), time.monotonic() + TURN_BUDGET))  # type: ignore[arg-type]
                try:
                    return await self._turn(authorization, activity)
                finally:
                    TURN.reset(budget)
        finally:
            HELD_CARDS.reset(cards)
            CORRELATION_ID.reset(correlation)

    async def _claims(self, authorization: str, activity: Activity) -> ClaimsIdentity:
        if self.tokens is None:
            return ClaimsIdentity({}, authentication_type="anonymous")
        channel = str(activity.channel_id) if activity.channel_id else None
        claims = await self.tokens.check(authorization, channel, activity.service_url)
        return ClaimsIdentity(claims, security_token=authorization.partition(" ")[2])

    async def _turn(self, authorization: str, activity: Activity) -> web.StreamResponse:
        try:
            claims = await self._claims(authorization, activity)
            if not activity.conversation or not activity.conversation.id:
                raise web.HTTPBadRequest(text="the activity has no conversation id")
            invoke_response = await self.adapter.process_activity(
                claims, activity, self.bot.on_turn
            )
        except (PermissionError, UntrustedServiceUrl) as exc:
            return refused(exc)
        if invoke_response is not None:
            held = HELD_CARDS.get()
            return web.json_response(
                invoke_response.body,
                status=int(invoke_response.status),
                dumps=held.dumps if held is not None else dumps,
            )
        return web.Response(status=HTTPStatus.CREATED)


def build_agents_edge(
    settings: Settings,
    session: aiohttp.ClientSession,
    credentials: ClientCredentials | None,
    services: Services | None = None,
    sender: ProactiveSender | None = None,
) -> AgentsEdge:
    """Adapter, token checks, connectors and bot, made once for the app's lifetime (as
    `bot.teams.edge.build_edge`, with the same shared parts)."""
    # The SDK logs every send at INFO, and every body its models refuse at ERROR with a
    # traceback (the edge answers those itself: 400, or read as botbuilder reads them).
    logging.getLogger("microsoft_agents").setLevel(logging.WARNING)
    logging.getLogger("microsoft_agents.activity").setLevel(logging.CRITICAL)
    trusted = TrustedServiceUrls(settings.trusted_service_urls, allow_loopback=settings.dev_mode)
    sender = sender or build_sender(settings, session, credentials)
    connectors = ConnectorClients(trusted, sender, settings.app_id, settings.token_service_url)
    tokens = (
        None
        if settings.dev_mode
        else ChannelTokens(
            app_id=settings.app_id,
            issuer=settings.channel_issuer,
            keys=SigningKeys(settings.botframework_openid_metadata, session),
        )
    )
    adapter = CloudAdapter(channel_service_client_factory=connectors)
    adapter.on_turn_error = _on_turn_error
    graph = GraphClient(session, settings, credentials.graph_token) if credentials else None
    front_door = services or Services()
    if graph is not None:
        front_door = replace(front_door, graph=graph)
    sso = None if settings.dev_mode else sso_flow(settings, session, credentials)
    logic = FusionBot(
        settings,
        build_policy(settings, graph),
        front_door,
        sso,
        reference_of=conversation_reference,
    )
    gate = TurnGate(settings.max_concurrent_turns)
    return AgentsEdge(
        settings,
        adapter,
        AgentsBot(logic),
        connectors,
        sender,
        tokens,
        credentials,
        front_door,
        gate,
    )

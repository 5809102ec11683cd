"""Outbound to the Bot Connector: only to trusted service URLs, over one shared HTTP session.

botbuilder trusts any `serviceUrl` (its `is_trusted_service` always answers yes) and its stock
connector factory builds, for every turn, a new msrest client (msrest 0.7.1 builds a retry
policy with a slow scan for each) over a new `requests` session — a new TCP/TLS connection per
reply — and signs each request with a blocking msal call on the event loop. Here:

- `TrustedServiceUrls` says whether a URL lies under one of the configured Bot Connector bases
  (same scheme, host and port, path below the base path). A URL that does not is refused before
  a token is asked for or a byte is sent.
- `ConnectorPool` is the `ConnectorFactory` the adapter uses for replies and proactive sends:
  one `ConnectorClient` per service URL, made once and reused, whose pipeline checks every
  request URL against the trusted bases and hands it to the process's one `ProactiveSender`,
  which counts it against Teams' rate limits, signs it with the bot's cached token, sends it
  on the app's shared aiohttp session (kept-alive connections, TLS trust from the environment)
  and retries a 429 after its Retry-After within the turn's time budget.
  Its serializer hands an activity's cards over as the JSON they already are and skips msrest's
  rebuilding and validating of the activity: msrest would walk every node of every card three
  times (the largest single cost of a reply in the profile).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from botframework.connector import models
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import ConnectorFactory, MicrosoftAppCredentials
from botframework.connector.bot_framework_sdk_client_async import (
    BotFrameworkConnectorConfiguration,
)
from botframework.connector.models import Activity, Attachment
from msrest import Serializer
from msrest.pipeline import AsyncHTTPPolicy, AsyncHTTPSender, AsyncPipeline, Request, Response
from msrest.pipeline.universal import RawDeserializer
from msrest.universal_http import ClientRequest
from msrest.universal_http.async_abc import AsyncClientResponse
from multidict import CIMultiDict
from yarl import URL

from bot.config import is_loopback
from bot.teams.botbuilder_internals import serialize_model, set_operations_serializer
from bot.teams.proactive import ProactiveSender, SendOutcome, SendResult
from bot.teams.render import Card, dumps

log = logging.getLogger("bot.teams.connector")

USER_AGENT = "FusionProductsBot (botbuilder-python 4.17.1)"
MAX_CLIENTS = 64  # distinct service URLs kept; Teams uses a handful of regional ones


class UntrustedServiceUrl(Exception):
    """A send was aimed at a service URL outside FUSION_TRUSTED_SERVICE_URLS; nothing was sent."""

    def __init__(self, url: str) -> None:
        super().__init__(f"service URL {url!r} is not trusted (FUSION_TRUSTED_SERVICE_URLS)")
        self.url = url


@dataclass(frozen=True)
class _Location:
    scheme: str
    host: str  # lower case
    port: int | None
    path: str  # ends with "/"

    def within(self, base: _Location) -> bool:
        return (self.scheme, self.host, self.port) == (
            base.scheme,
            base.host,
            base.port,
        ) and self.path.startswith(base.path)


def _locate(url: str) -> _Location | None:
    """Where `url` goes as aiohttp would send it; None if it is not a plain http(s) URL."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host or "\\" in url:
        return None
    if parsed.user is not None or parsed.password is not None:
        return None
    if ".." in parsed.path.split("/"):
        return None
    path = parsed.path if parsed.path.endswith("/") else parsed.path + "/"
    return _Location(parsed.scheme, parsed.host.lower(), parsed.port, path)


class TrustedServiceUrls:
    """The Bot Connector bases replies may go to (scheme, host, port, path prefix)."""

    def __init__(self, urls: Iterable[str], *, allow_loopback: bool = False) -> None:
        bases = []
        for url in urls:
            base = _locate(url)
            if base is None:
                raise ValueError(f"FUSION_TRUSTED_SERVICE_URLS: {url!r} is not an http(s) base URL")
            bases.append(base)
        self._bases = tuple(bases)
        # Local development mode sends no token, and the emulators live on loopback.
        self._allow_loopback = allow_loopback

    def trusts(self, url: str | None) -> bool:
        where = _locate(url) if isinstance(url, str) else None
        if where is None:
            return False
        if self._allow_loopback and is_loopback(where.host):
            return True
        return any(where.within(base) for base in self._bases)

    def require(self, url: str | None) -> str:
        if url is None or not self.trusts(url):
            raise UntrustedServiceUrl(str(url))
        return url


class _TrustedOnly(AsyncHTTPPolicy):  # type: ignore[misc]
    """Refuses a request to an untrusted URL before it reaches the transport."""

    def __init__(self, trusted: TrustedServiceUrls) -> None:
        super().__init__()
        self._trusted = trusted

    async def send(self, request: Request, **kwargs: Any) -> Response:
        self._trusted.require(request.http_request.url)
        assert self.next is not None  # the pipeline links a sender after this policy
        return await self.next.send(request, **kwargs)


class ConnectorUnavailable(Exception):
    """The Bot Connector gave no answer to hand back (unreachable, no token, or the rate
    limit would hold the send past its time budget); nothing more is retried."""


class _Answer(AsyncClientResponse):  # type: ignore[misc]
    """The Bot Connector's answer as the sender read it (status, headers, body)."""

    def __init__(self, request: ClientRequest, result: SendResult) -> None:
        super().__init__(request, None)
        assert result.status is not None
        self.status_code = result.status
        self.headers = CIMultiDict(result.headers)
        self.reason = _reason(result.status)
        self._body = result.body

    def body(self) -> bytes:
        return self._body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _LimitedSender(AsyncHTTPSender):  # type: ignore[misc]
    """The connector clients' transport: the process's one `ProactiveSender`, so replies are
    rate-limited, signed and retried (429 after Retry-After, within the turn's budget) like
    every other send, and a 403 marks the conversation inactive."""

    def __init__(self, sender: ProactiveSender) -> None:
        self._sender = sender

    async def __aenter__(self) -> _LimitedSender:
        return self

    async def __aexit__(self, *exc_details: object) -> None:
        return None

    async def send(self, request: Request, **config: Any) -> Response:
        http: ClientRequest = request.http_request
        data = http.data
        body = data.encode() if isinstance(data, str) else data
        result = await self._sender.exchange(http.method, http.url, body, dict(http.headers))
        if result.outcome is SendOutcome.REFUSED:
            raise UntrustedServiceUrl(http.url)
        if result.status is None:
            raise ConnectorUnavailable(result.error or "no answer from the Bot Connector")
        return Response(request, _Answer(http, result))


@contextmanager
def _cards_as(activity: Activity | None, swap: Callable[[Card], Any]) -> Iterator[list[Card]]:
    """For the duration, each rendered card in the activity's attachments replaced by
    `swap(card)`; yields the cards, in order."""
    swapped = [
        (attachment, attachment.content)
        for attachment in (activity.attachments or [] if activity is not None else [])
        if isinstance(attachment, Attachment) and isinstance(attachment.content, Card)
    ]
    try:
        for attachment, card in swapped:
            attachment.content = swap(card)
        yield [card for _, card in swapped]
    finally:
        for attachment, card in swapped:
            attachment.content = card


class _ActivitySerializer(Serializer):  # type: ignore[misc]
    """msrest's serializer, except for an activity (what replies carry): its body is made here.

    For any body msrest first rebuilds the model it is given (a deserialization of the object
    into itself), then validates it, then serializes it, visiting every node of every card each
    time, and then encodes it. An activity made by the SDK or `bot.teams.cards` is already a
    model: here it is only serialized, and each rendered card goes into the JSON as the text
    made when it was rendered (`render.dumps`). msrest sends a body it cannot encode (bytes) as
    it is. (msrest would write a dict subclass such as `Card` as its repr: any other body that
    holds an activity gets its cards as plain dicts.)
    """

    def body(self, data: Any, data_type: str, **kwargs: Any) -> Any:
        if data_type != "Activity" or not isinstance(data, Activity):
            with _cards_as(getattr(data, "activity", None), dict):
                return super().body(data, data_type, **kwargs)
        kwargs.setdefault("is_xml", False)
        with _cards_as(data, lambda card: None) as cards:
            body = serialize_model(self, data, data_type, **kwargs)
        card_at = iter(cards)
        serialized = body.get("attachments") or []
        for attachment, out in zip(data.attachments or [], serialized, strict=False):
            if isinstance(attachment, Attachment) and isinstance(attachment.content, Card):
                out["content"] = next(card_at)
        return dumps(body).encode()


class ConnectorPool(ConnectorFactory):
    """Connector clients for trusted service URLs, one per URL, made once and reused."""

    def __init__(self, trusted: TrustedServiceUrls, sender: ProactiveSender) -> None:
        self.trusted = trusted
        self.sender = sender
        self._clients: dict[str, ConnectorClient] = {}

    async def create(self, service_url: str, audience: str | None = None) -> ConnectorClient:
        """The client for `service_url`; raises UntrustedServiceUrl before anything is sent.

        `audience` is the Bot Connector scope (the only one this bot sends to): the token comes
        from the configured connector scope.
        """
        self.trusted.require(service_url)
        client = self._clients.get(service_url)
        if client is None:
            if len(self._clients) >= MAX_CLIENTS:
                del self._clients[next(iter(self._clients))]
            client = self._clients[service_url] = self._new_client(service_url)
        return client

    def _new_client(self, service_url: str) -> ConnectorClient:
        def pipeline(config: BotFrameworkConnectorConfiguration) -> AsyncPipeline:
            return AsyncPipeline(
                [config.user_agent_policy, _TrustedOnly(self.trusted), RawDeserializer()],
                _LimitedSender(self.sender),
            )

        # The sender signs requests; msrest's credentials slot gets an inert placeholder.
        config = BotFrameworkConnectorConfiguration(
            MicrosoftAppCredentials.empty(), service_url, pipeline_type=pipeline
        )
        config.add_user_agent(USER_AGENT)
        log.info("connector client created", extra={"service_url": service_url})
        client = ConnectorClient(None, custom_configuration=config)
        serializer = _ActivitySerializer(
            {k: v for k, v in vars(models).items() if isinstance(v, type)}
        )
        set_operations_serializer(client, serializer)
        return client

    @property
    def client_count(self) -> int:
        return len(self._clients)

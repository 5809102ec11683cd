"""The bot served for real (app factory on 127.0.0.1, port 0) and Bot Framework activities.

The app under test runs on the test's event loop; the fakes it talks to (Bot Connector,
identity provider, Graph) run in their own threads. Helpers read what a card says: its text
blocks, facts and table cells.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from app import create_app
from bot.config import Settings
from bot.domain import ledger
from bot.domain.change import Origin
from bot.domain.models import ProductKind
from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider, SentActivity, shared_tls
from tests.fakes._server import ThreadedServer

APP_ID = "6a0d8f3e-2b1c-4c6d-9e7f-1a2b3c4d5e6f"
APP_SECRET = "teams-test-secret"
BOT_ID = f"28:{APP_ID}"
ADMIN_OID = str(uuid.uuid5(uuid.NAMESPACE_URL, "entra:user:alice"))
OUTSIDER_OID = str(uuid.uuid5(uuid.NAMESPACE_URL, "entra:user:mallory"))
ADMIN_GROUP = str(uuid.uuid5(uuid.NAMESPACE_URL, "entra:group:fusion-admins"))
CARD = "application/vnd.microsoft.card.adaptive"

_ids = itertools.count(1)

#: The SDKs the bot's edge is built on (FUSION_EDGE), and the one `running_bot` uses now: the
#: `fusion_edge` fixture sets it (the protocol tests run once per edge; see teams_fixtures).
EDGES = ("botbuilder", "agents")
edge_under_test = "botbuilder"


def trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the fakes' CA through the standard environment, as production trusts its CAs."""
    bundle = str(shared_tls().ca_bundle)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
    monkeypatch.setenv("SSL_CERT_FILE", bundle)


def identity_provider() -> Iterator[FakeIdentityProvider]:
    """Bot Framework channel token issuer + Entra ID, with the bot's app registered."""
    with FakeIdentityProvider() as fake:
        fake.register_app(APP_ID, APP_SECRET)
        yield fake


def graph_directory(idp: FakeIdentityProvider) -> Iterator[FakeGraph]:
    """Graph with alice in the admin group and mallory outside it."""
    with FakeGraph(idp) as fake:
        fake.add_user(ADMIN_OID, "alice@provider.example", "Alice Admin")
        fake.add_user(OUTSIDER_OID, "mallory@provider.example", "Mallory")
        fake.add_group(ADMIN_GROUP, [ADMIN_OID], display_name="Fusion admins")
        yield fake


def bot_connector(idp: FakeIdentityProvider) -> Iterator[FakeBotConnector]:
    """A Bot Connector that accepts only the bot's own token (audience api.botframework.com)."""
    with FakeBotConnector(idp, expected_app_id=APP_ID) as fake:
        yield fake


def dev_settings(database_url: str, connector: FakeBotConnector, **overrides: Any) -> Settings:
    """Local development mode: no app id, anyone listed in dev_admins is an admin."""
    settings = Settings(
        database_url=database_url,
        dev_admins=(ADMIN_OID,),
        trusted_service_urls=(connector.service_url,),
        migrate_on_start=False,
    )
    return replace(settings, **overrides)


def auth_settings(
    database_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
    **overrides: Any,
) -> Settings:
    """Production mode against the fakes: every Microsoft endpoint points at 127.0.0.1."""
    settings = Settings(
        database_url=database_url,
        app_id=APP_ID,
        app_password=APP_SECRET,
        app_tenant_id=idp.tenant_id,
        login_authority=idp.base_url,
        graph_url=graph.graph_url,
        botframework_openid_metadata=idp.channel_metadata_url,
        trusted_service_urls=(connector.service_url,),
        admin_group_ids=(ADMIN_GROUP,),
        migrate_on_start=False,
    )
    return replace(settings, **overrides)


@dataclass
class ProvisionedWorld:
    """Entra ID, Microsoft Graph (the provider's directory and the customer's tenant) and the
    Bot Connector, faked, and the bot's production-mode settings with provisioning on."""

    idp: FakeIdentityProvider
    graph: FakeGraph
    connector: FakeBotConnector
    settings: Settings

    async def say(self, running: RunningBot, text: str) -> SentActivity:
        """Type `text` as Alice; the bot's first post of its answer (updates of a card that
        follows its jobs may come after)."""
        before = len(self.connector.activities)
        token = self.idp.channel_token(APP_ID, self.connector.service_url)
        activity = message(text, self.connector.service_url, tenant=self.idp.tenant_id)
        assert (await running.post(activity, token)).status == 201
        answers = (await self.connector.wait_for_async(before + 1))[before:]
        return [s for s in answers if s.kind != "update"][0]


@contextmanager
def provisioned_world(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    customer_tenant: str,
    roles: Sequence[str],
    *,
    operation_delay: float | None = None,
) -> Iterator[ProvisionedWorld]:
    """The fakes started, the bot's app registered in the customer's tenant with `roles`, Alice
    an admin; `operation_delay` slows Graph's long-running operations."""
    trust_fakes(monkeypatch)
    with FakeIdentityProvider() as idp:
        idp.add_tenant(customer_tenant)
        idp.register_app(APP_ID, APP_SECRET, roles=list(roles))
        with FakeGraph(idp) as graph, FakeBotConnector(idp, expected_app_id=APP_ID) as connector:
            if operation_delay is not None:
                graph.operation_delay = operation_delay
            graph.add_user(ADMIN_OID, "alice@provider.example", "Alice Admin")
            graph.add_group(ADMIN_GROUP, [ADMIN_OID], display_name="Fusion admins")
            settings = auth_settings(
                database_url,
                idp,
                graph,
                connector,
                provisioning=True,
                provisioning_idle_seconds=0.05,
            )
            yield ProvisionedWorld(idp, graph, connector, settings)


@dataclass(frozen=True)
class Posted:
    status: int
    body: Any  # the JSON answer (an invoke response), if any


@dataclass
class RunningBot:
    """The app on 127.0.0.1:<port>, and a client that posts activities to it."""

    server: TestServer
    http: aiohttp.ClientSession

    @property
    def messages_url(self) -> str:
        return str(self.server.make_url("/api/messages"))

    async def post(
        self,
        activity: dict[str, Any],
        token: str | None = None,
        *,
        authorization: str | None = None,
    ) -> Posted:
        """POST an activity with `Bearer token` (or a raw Authorization header)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if authorization is not None:
            headers["Authorization"] = authorization
        async with self.http.post(self.messages_url, json=activity, headers=headers) as resp:
            body = await resp.read()
            parsed = json.loads(body) if resp.content_type == "application/json" else None
            return Posted(resp.status, parsed)

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(str(self.server.make_url(path))) as resp:
            return resp.status, await resp.json()


@asynccontextmanager
async def running_bot(
    settings: Settings, *, provision: bool | None = None
) -> AsyncIterator[RunningBot]:
    """The app served on 127.0.0.1; `provision` as `create_app` takes it (whether this
    instance runs the provisioning workers; None: as the settings say)."""
    if settings.edge == "botbuilder":  # the default: the edge under test instead
        settings = replace(settings, edge=edge_under_test)
    server = TestServer(create_app(settings, provision=provision), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            yield RunningBot(server, http)
    finally:
        await server.close()


def message(
    text: str,
    service_url: str,
    *,
    sender: str = ADMIN_OID,
    tenant: str | None = None,
    conversation: str = "a:personal-chat-1",
    mention: bool = False,
    activity_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A Teams message activity as the Bot Connector posts it to the bot."""
    entities = []
    if mention:
        at = "<at>Fusion Products</at>"
        text = f"{at} {text}"
        entities.append(
            {"type": "mention", "text": at, "mentioned": {"id": BOT_ID, "name": "Fusion Products"}}
        )
    activity: dict[str, Any] = {
        "type": "message",
        "id": activity_id or f"1{next(_ids):015d}",
        "timestamp": "2025-01-01T10:00:00.000Z",
        "serviceUrl": service_url,
        "channelId": "msteams",
        "from": {"id": f"29:{sender}", "aadObjectId": sender, "name": "Alice Admin"},
        "conversation": {"id": conversation, "conversationType": "personal", "tenantId": tenant},
        "recipient": {"id": BOT_ID, "name": "Fusion Products"},
        "text": text,
        "textFormat": "plain",
        "entities": entities,
        "channelData": {"tenant": {"id": tenant}} if tenant else {},
    }
    activity.update(extra)
    return activity


# ----- reading cards ------------------------------------------------------------------------


def the_card(sent: SentActivity) -> dict[str, Any]:
    [attachment] = sent.attachments
    assert attachment["contentType"] == CARD
    card: dict[str, Any] = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.5"
    return card


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def words(card: dict[str, Any]) -> str:
    """The card's text in one string, as `texts` gives it."""
    return " ".join(texts(card))


def texts(card: dict[str, Any]) -> list[str]:
    """Every TextBlock text on the card, in order, as a reader sees it (no word joiners)."""
    return [
        n["text"].replace("\u2060", "")
        for n in _walk(card)
        if n.get("type") == "TextBlock" and isinstance(n.get("text"), str)
    ]


def facts(card: dict[str, Any]) -> dict[str, str]:
    return {
        f["title"].replace("\u2060", ""): f["value"].replace("\u2060", "")
        for n in _walk(card)
        if n.get("type") == "FactSet"
        for f in n["facts"]
    }


def table(card: dict[str, Any]) -> list[list[str]]:
    """The first table's rows (header first), each cell as its text."""
    for node in _walk(card):
        if node.get("type") == "Table":
            return [[" ".join(texts(cell)) for cell in row["cells"]] for row in node["rows"]]
    raise AssertionError("the card has no table")


# ----- the ledger a test starts from ----------------------------------------------------------

SEED = Origin(actor_id="seed", actor_name="Test seed", source="cli", correlation_id="seed")


async def seed_ledger() -> None:
    """Customer Contoso with subscription ACME-01; TEAMS-SEATS (capacity 10) and SIP-CHANNELS."""
    await ledger.add_customer(SEED, "Contoso Ltd")
    await ledger.add_subscription(SEED, "ACME-01", "Contoso Ltd")
    await ledger.add_product(SEED, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 10)
    await ledger.add_product(SEED, "SIP-CHANNELS", ProductKind.SIP_CHANNELS, 30)


# ----- a slow upstream ------------------------------------------------------------------------


class HeldProxy(ThreadedServer):
    """HTTPS relay (own thread) to `upstream` that holds chosen requests until `release()`.

    Answers are rewritten so that the upstream's own links point back through the relay. While
    a request of the bot's is held, the test can check that the bot's event loop still serves
    other requests — which it could not if the bot waited in a blocking call on that loop.
    """

    def __init__(
        self, upstream: str, hold: Callable[[web.Request], bool], max_hold: float = 15
    ) -> None:
        super().__init__(https=True)
        self.upstream = upstream.rstrip("/")
        self._hold = hold
        self._max_hold = max_hold
        self._released = threading.Event()
        self.held = threading.Event()
        self.waiting = 0  # requests being held right now
        self._client: aiohttp.ClientSession | None = None

    def release(self) -> None:
        self._released.set()

    async def wait_held(self) -> None:
        assert await asyncio.to_thread(self.held.wait, 10), "nothing was held"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def _forward(self, request: web.Request) -> web.Response:
        if self._hold(request):
            self.waiting += 1
            self.held.set()
            await asyncio.to_thread(self._released.wait, self._max_hold)
            self.waiting -= 1
        if self._client is None:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=shared_tls().client_ssl_context())
            )
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}
        }
        async with self._client.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as resp:
            payload = (await resp.read()).replace(self.upstream.encode(), self.base_url.encode())
            return web.Response(body=payload, status=resp.status, content_type=resp.content_type)

    def stop(self) -> None:
        if self._client is not None and self._loop is not None:
            self.call(self._client.close())
            self._client = None
        super().stop()

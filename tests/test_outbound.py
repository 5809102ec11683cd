"""Outbound (SPEC §8): replies and proactive sends go only to trusted service URLs, with the
bot's own token obtained once through msal and reused; nothing blocks the event loop.

The trusted Bot Connector is a fake on 127.0.0.1 under `/amer/`; an "evil" connector on another
port would accept the bot's token too, so anything sent there would be recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from botbuilder.schema import ChannelAccount, ConversationAccount, ConversationReference

from app import EDGE
from bot.teams.connector import UntrustedServiceUrl
from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider
from tests.fakes._server import INFO
from tests.support.ledger_state import snapshot
from tests.support.teams_env import (
    APP_ID,
    BOT_ID,
    HeldProxy,
    RunningBot,
    auth_settings,
    dev_settings,
    message,
    running_bot,
    seed_ledger,
    the_card,
    trust_fakes,
)

CONNECTOR_SCOPE = "https://api.botframework.com/.default"


class PeerRecordingConnector(FakeBotConnector):
    """The fake Bot Connector, also noting the client port of each request (its connection)."""

    def build_app(self) -> web.Application:
        app = super().build_app()

        @web.middleware
        async def peer(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            transport = request.transport
            request[INFO]["peer"] = transport.get_extra_info("peername") if transport else None
            return await handler(request)

        app.middlewares.append(peer)
        return app


@pytest.fixture
def connector(idp: FakeIdentityProvider) -> Iterator[FakeBotConnector]:
    with PeerRecordingConnector(idp, expected_app_id=APP_ID) as fake:
        yield fake


@pytest.fixture
def evil(idp: FakeIdentityProvider) -> Iterator[FakeBotConnector]:
    """Another Bot Connector look-alike: it would accept (and record) the bot's token."""
    with FakeBotConnector(idp) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


def connector_token_requests(idp: FakeIdentityProvider) -> int:
    return sum(1 for r in idp.token_requests if r.info.get("scope") == CONNECTOR_SCOPE)


def tenant_metadata_requests(idp: FakeIdentityProvider, tenant: str) -> int:
    path = f"/{tenant}/v2.0/.well-known/openid-configuration"
    return sum(1 for r in idp.requests if r.path == path)


@dataclass
class Running:
    bot: RunningBot
    idp: FakeIdentityProvider
    connector: FakeBotConnector

    def activity(self, text: str, service_url: str | None = None, **kw: Any) -> dict[str, Any]:
        return message(
            text, service_url or self.connector.service_url, tenant=self.idp.tenant_id, **kw
        )

    def token(self, service_url: str | None = None) -> str:
        return self.idp.channel_token(APP_ID, service_url or self.connector.service_url)


@pytest_asyncio.fixture
async def running(
    empty_db_url: str, idp: FakeIdentityProvider, graph: FakeGraph, connector: FakeBotConnector
) -> AsyncIterator[Running]:
    async with running_bot(auth_settings(empty_db_url, idp, graph, connector)) as bot:
        await seed_ledger()
        yield Running(bot, idp, connector)


# ----- trusted service URLs -----------------------------------------------------------------

TAMPERED: dict[str, Callable[[FakeBotConnector, FakeBotConnector], str]] = {
    "another-port": lambda good, evil: evil.service_url,
    "another-path-prefix": lambda good, evil: f"{good.base_url}/emea/",
    "prefix-lookalike": lambda good, evil: f"{good.base_url}/amer-evil/",
    "dot-dot-out-of-the-prefix": lambda good, evil: f"{good.base_url}/amer/../evil/",
    "https-instead-of-http": lambda good, evil: f"https://127.0.0.1:{good.port}/amer/",
    "userinfo-host-trick": lambda good, evil: (
        f"http://127.0.0.1:{good.port}@127.0.0.1:{evil.port}/amer/"
    ),
    "another-host-name": lambda good, evil: f"http://localhost:{good.port}/amer/",
    "not-http": lambda good, evil: f"ftp://127.0.0.1:{good.port}/amer/",
}


@pytest.mark.parametrize("case", list(TAMPERED))
async def test_tampered_service_url_gets_no_token_and_no_message(
    running: Running, evil: FakeBotConnector, case: str
) -> None:
    # The token is well signed for that serviceUrl: only the bot's own allowlist stands between
    # the reply (and the bot's token) and the address.
    url = TAMPERED[case](running.connector, evil)
    before = await snapshot()
    tokens = connector_token_requests(running.idp)
    posted = await running.bot.post(
        running.activity("allocate 1 TEAMS-SEATS to ACME-01", url), running.token(url)
    )
    assert posted.status == 403
    await asyncio.sleep(0.05)
    assert evil.requests == [] and running.connector.requests == []
    assert connector_token_requests(running.idp) == tokens
    assert await snapshot() == before  # refused before the turn ran


async def test_trailing_path_below_the_trusted_prefix_is_trusted(running: Running) -> None:
    url = running.connector.service_url  # .../amer/ exactly as configured
    assert (await running.bot.post(running.activity("help", url), running.token(url))).status == 201
    [reply] = await running.connector.wait_for_async(1)
    assert reply.claims is not None and reply.claims["appid"] == APP_ID


async def test_dev_mode_refuses_a_non_loopback_service_url(empty_db_url: str) -> None:
    with FakeBotConnector(None) as trusted:
        async with running_bot(dev_settings(empty_db_url, trusted)) as bot:
            await seed_ledger()
            before = await snapshot()
            activity = message(
                "allocate 1 TEAMS-SEATS to ACME-01", "https://smba.evil.example/amer/"
            )
            assert (await bot.post(activity)).status == 403
            assert await snapshot() == before
            assert trusted.requests == []


def reference(
    service_url: str, conversation: str = "19:digests@thread.tacv2"
) -> ConversationReference:
    return ConversationReference(
        channel_id="msteams",
        service_url=service_url,
        conversation=ConversationAccount(id=conversation, is_group=True),
        bot=ChannelAccount(id=BOT_ID, name="Fusion Products"),
    )


def continuation(service_url: str, conversation: str = "19:digests@thread.tacv2") -> Any:
    """The Agents SDK's continuation activity for the same conversation as `reference`."""
    from microsoft_agents.activity import Activity as SdkActivity

    return SdkActivity.model_validate(
        {
            "type": "event",
            "name": "ContinueConversation",
            "channelId": "msteams",
            "serviceUrl": service_url,
            "conversation": {"id": conversation, "isGroup": True},
            "recipient": {"id": BOT_ID, "name": "Fusion Products"},
        }
    )


async def test_proactive_send_goes_only_to_a_trusted_service_url(
    running: Running, evil: FakeBotConnector, fusion_edge: str
) -> None:
    adapter = running.bot.server.app[EDGE].adapter
    sent: list[str] = []

    async def post(turn: Any) -> None:
        await turn.send_activity("usage digest")
        sent.append(turn.activity.service_url)

    async def continue_conversation(service_url: str) -> None:
        # Each SDK's own proactive door: botbuilder's and the Agents SDK's continue_conversation.
        if fusion_edge == "agents":
            await adapter.continue_conversation(APP_ID, continuation(service_url), post)
        else:
            await adapter.continue_conversation(reference(service_url), post, APP_ID)

    tokens = connector_token_requests(running.idp)
    with pytest.raises(UntrustedServiceUrl):
        await continue_conversation(evil.service_url)
    assert sent == [] and evil.requests == []
    assert connector_token_requests(running.idp) == tokens

    await continue_conversation(running.connector.service_url)
    [posted] = await running.connector.wait_for_async(1)
    assert posted.conversation_id == "19:digests@thread.tacv2" and posted.text == "usage digest"
    assert posted.claims is not None and posted.claims["appid"] == APP_ID


# ----- one token, one client, one connection ---------------------------------------------------


async def test_many_turns_share_one_token_one_client_and_their_connections(
    running: Running,
) -> None:
    idp, connector = running.idp, running.connector
    tokens_before = connector_token_requests(idp)
    metadata_before = tenant_metadata_requests(idp, "botframework.com")
    # Twenty turns at once from a cold cache: one token request, not twenty.
    activities = [running.activity("help", conversation=f"a:chat-{i}") for i in range(20)]
    results = await asyncio.gather(*(running.bot.post(a, running.token()) for a in activities))
    assert [r.status for r in results] == [201] * 20
    await connector.wait_for_async(20)
    opened = {r.info.get("peer") for r in connector.requests}
    # Then one after another: kept-alive connections are reused, none is opened per turn.
    connector.clear_records()
    for i in range(10):
        assert (await running.bot.post(running.activity("whoami"), running.token())).status == 201
        await connector.wait_for_async(21 + i)
    assert {r.info.get("peer") for r in connector.requests} <= opened
    assert connector_token_requests(idp) - tokens_before == 1
    # The msal application was made once: the tenant metadata was fetched once.
    assert tenant_metadata_requests(idp, "botframework.com") - metadata_before == 1
    assert running.bot.server.app[EDGE].connectors.client_count == 1
    for reply in connector.activities:
        assert reply.claims is not None and reply.claims["appid"] == APP_ID


async def test_token_acquisition_does_not_block_the_event_loop(
    empty_db_url: str, idp: FakeIdentityProvider, graph: FakeGraph, connector: FakeBotConnector
) -> None:
    # msal is synchronous; the bot runs it in a worker thread. While Entra ID (here: a relay
    # that holds token requests) takes its time, the bot keeps serving.
    def token_request(request: web.Request) -> bool:
        return request.method == "POST" and request.path.endswith("/oauth2/v2.0/token")

    with HeldProxy(idp.base_url, hold=token_request) as entra:
        settings = auth_settings(
            empty_db_url, idp, graph, connector, login_authority=entra.base_url
        )
        async with running_bot(settings) as bot:
            await seed_ledger()
            activity = message("products", connector.service_url, tenant=idp.tenant_id)
            turn = asyncio.create_task(
                bot.post(activity, idp.channel_token(APP_ID, connector.service_url))
            )
            await entra.wait_held()
            health = await asyncio.wait_for(bot.get("/healthz"), 10)
            assert health == (200, {"status": "ok"})
            assert entra.waiting == 1 and not turn.done()
            entra.release()
            assert (await asyncio.wait_for(turn, 10)).status == 201
            [reply] = await connector.wait_for_async(1)
            assert the_card(reply)["body"]

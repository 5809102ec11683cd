"""Inbound authentication (SPEC §8): only activities carrying a valid Bot Framework channel
token get in. Every bad token answers 401, and nothing runs: no reply at the Bot Connector, no
token asked for, no change in the database.

The tokens come from the fake identity provider (its own thread, https, self-signed CA trusted
through REQUESTS_CA_BUNDLE / SSL_CERT_FILE); the bot validates them with botbuilder against the
fake's OpenID metadata and signing keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio

from bot.domain.models import Allocation
from tests.fakes import (
    BAD_CHANNEL_TOKEN_KINDS,
    BOT_FRAMEWORK_TENANT_ID,
    FakeBotConnector,
    FakeGraph,
    FakeIdentityProvider,
)
from tests.fakes.identity import CHANNEL_METADATA_PATH
from tests.support.ledger_state import snapshot
from tests.support.teams_env import (
    APP_ID,
    HeldProxy,
    Posted,
    RunningBot,
    auth_settings,
    message,
    running_bot,
    seed_ledger,
    the_card,
    trust_fakes,
)

CHANGE = "allocate 1 TEAMS-SEATS to ACME-01"


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


@dataclass
class Door:
    bot: RunningBot
    idp: FakeIdentityProvider
    connector: FakeBotConnector

    @property
    def service_url(self) -> str:
        return self.connector.service_url

    def activity(self, **extra: object) -> dict[str, object]:
        return message(CHANGE, self.service_url, tenant=self.idp.tenant_id, **extra)


@pytest_asyncio.fixture
async def door(
    empty_db_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
) -> AsyncIterator[Door]:
    async with running_bot(auth_settings(empty_db_url, idp, graph, connector)) as bot:
        await seed_ledger()
        yield Door(bot, idp, connector)


async def refused_and_nothing_ran(door: Door, send: Callable[[], Awaitable[Posted]]) -> None:
    """`send()` (posting one activity) gets 401 and changes nothing anywhere."""
    before = await snapshot()
    tokens_before = door.idp.token_request_count
    posted = await send()
    assert posted.status == 401
    await asyncio.sleep(0.05)  # anything the turn would have sent has had time to arrive
    assert door.connector.requests == []
    assert door.idp.token_request_count == tokens_before
    assert await snapshot() == before


@pytest.mark.parametrize("kind", BAD_CHANNEL_TOKEN_KINDS)
async def test_bad_channel_token_is_refused(door: Door, kind: str) -> None:
    token = door.idp.bad_channel_token(kind, APP_ID, door.service_url)
    await refused_and_nothing_ran(door, lambda: door.bot.post(door.activity(), token))


HEADERS = {
    "missing": None,
    "empty": "",
    "basic-scheme": "Basic YWxpY2U6c2VjcmV0",
    "bearer-without-token": "Bearer ",
    "lower-case-scheme": "bearer {good}",
    "two-tokens": "Bearer {good} {good}",
}


@pytest.mark.parametrize("case", list(HEADERS))
async def test_malformed_authorization_header_is_refused(door: Door, case: str) -> None:
    good = door.idp.channel_token(APP_ID, door.service_url)
    header = HEADERS[case]
    value = None if header is None else header.format(good=good)
    await refused_and_nothing_ran(door, lambda: door.bot.post(door.activity(), authorization=value))


async def test_activity_without_service_url_is_refused(door: Door) -> None:
    token = door.idp.channel_token(APP_ID, door.service_url)
    activity = door.activity()
    del activity["serviceUrl"]
    await refused_and_nothing_ran(door, lambda: door.bot.post(activity, token))


async def test_activity_without_channel_id_is_refused(door: Door) -> None:
    # botbuilder skips the endorsement check when the activity names no channel.
    token = door.idp.bad_channel_token("unendorsed_key", APP_ID, door.service_url)
    activity = door.activity()
    del activity["channelId"]
    await refused_and_nothing_ran(door, lambda: door.bot.post(activity, token))


async def test_token_endorsed_for_another_channel_is_refused(door: Door) -> None:
    token = door.idp.channel_token(APP_ID, door.service_url, kid="bf-key-webchat")
    await refused_and_nothing_ran(door, lambda: door.bot.post(door.activity(), token))


async def test_emulator_token_is_refused(door: Door) -> None:
    # A real Entra token for the bot's own app id, as the Bot Framework Emulator sends: not
    # from the channel, so not accepted.
    token = door.idp.mint_access_token(APP_ID, APP_ID, tenant=BOT_FRAMEWORK_TENANT_ID)
    await refused_and_nothing_ran(door, lambda: door.bot.post(door.activity(), token))


async def test_skill_token_is_refused(door: Door) -> None:
    token = door.idp.channel_token(
        APP_ID, door.service_url, extra_claims={"ver": "1.0", "appid": "another-bot"}
    )
    await refused_and_nothing_ran(door, lambda: door.bot.post(door.activity(), token))


async def test_good_token_runs_the_turn_and_the_reply_carries_the_bot_token(door: Door) -> None:
    token = door.idp.channel_token(APP_ID, door.service_url)
    posted = await door.bot.post(door.activity(), token)
    assert posted.status == 201
    [reply] = await door.connector.wait_for_async(1)
    assert reply.claims is not None  # verified by the fake connector: signature, issuer, expiry
    assert reply.claims["aud"] == "https://api.botframework.com"
    assert reply.claims["appid"] == APP_ID
    assert reply.claims["tid"] == BOT_FRAMEWORK_TENANT_ID  # multi-tenant bot: botframework.com
    assert the_card(reply)["body"]
    allocation = await Allocation.get(product__name="TEAMS-SEATS", subscription__code="ACME-01")
    assert allocation.quantity == 1


async def test_token_expired_within_the_clock_skew_is_accepted(door: Door) -> None:
    token = door.idp.channel_token(APP_ID, door.service_url, exp_delta=-120, nbf_delta=-3600)
    assert (await door.bot.post(door.activity(), token)).status == 201
    await door.connector.wait_for_async(1)


async def test_signing_key_fetch_does_not_block_the_event_loop(
    empty_db_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
) -> None:
    with HeldProxy(idp.base_url, hold=lambda r: r.path == CHANNEL_METADATA_PATH) as keys:
        metadata = f"{keys.base_url}{CHANNEL_METADATA_PATH}?fake={idp.instance_id}"
        settings = auth_settings(
            empty_db_url, idp, graph, connector, botframework_openid_metadata=metadata
        )
        async with running_bot(settings) as bot:
            await seed_ledger()
            token = idp.channel_token(APP_ID, connector.service_url)
            activity = message("products", connector.service_url, tenant=idp.tenant_id)
            turn = asyncio.create_task(bot.post(activity, token))
            await keys.wait_held()
            # The bot waits for its signing keys; its event loop still serves other requests.
            health = await asyncio.wait_for(bot.get("/healthz"), 10)
            assert health == (200, {"status": "ok"})
            assert keys.waiting == 1 and not turn.done()
            keys.release()
            assert (await asyncio.wait_for(turn, 10)).status == 201
            await connector.wait_for_async(1)


async def test_without_the_ca_in_the_environment_the_fake_keys_are_not_trusted(
    empty_db_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # TLS trust follows the environment: without the fake CA there, the key fetch fails
    # verification, so even a well-signed token cannot be checked — and is refused.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    fresh_metadata = f"{idp.channel_metadata_url}&run=untrusted"  # not in botbuilder's cache
    settings = auth_settings(
        empty_db_url, idp, graph, connector, botframework_openid_metadata=fresh_metadata
    )
    async with running_bot(settings) as bot:
        await seed_ledger()
        door = Door(bot, idp, connector)
        token = idp.channel_token(APP_ID, connector.service_url)
        await refused_and_nothing_ran(door, lambda: bot.post(door.activity(), token))

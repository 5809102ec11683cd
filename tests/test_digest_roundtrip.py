"""A digest end to end through the public doors: `digest here` typed in a Teams channel (Bot
Framework protocol into the real app, channel token checked, admin through the fake Graph), the
conversation reference stored by the edge, then the scheduler posting the digest proactively to
that channel through the fake Bot Connector with the bot's msal token.

The scheduler's clock is injected to reach the next 08:00 without waiting; everything else is
as deployed (the app's database, `ClientCredentials`, the trusted service URL check).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from bot.auth.credentials import ClientCredentials, client_ssl_context
from bot.domain.models import DigestDelivery, DigestSubscription
from bot.scheduler import Scheduler
from bot.teams.connector import TrustedServiceUrls
from bot.teams.proactive import ProactiveSender
from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider
from tests.support.teams_env import (
    APP_ID,
    auth_settings,
    message,
    running_bot,
    seed_ledger,
    texts,
    the_card,
    trust_fakes,
)

CHANNEL = "19:noc-channel@thread.tacv2"


async def test_digest_here_in_a_channel_then_posted_there_on_schedule(
    empty_db_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trust_fakes(monkeypatch)
    settings = auth_settings(empty_db_url, idp, graph, connector)
    async with running_bot(settings) as bot:
        await seed_ledger()
        activity = message(
            "digest here daily at 08:00 UTC",
            connector.service_url,
            tenant=idp.tenant_id,
            conversation=CHANNEL,
            mention=True,
        )
        activity["conversation"]["conversationType"] = "channel"
        posted = await bot.post(activity, idp.channel_token(APP_ID, connector.service_url))
        assert posted.status == 201
        [reply] = await connector.wait_for_async(1)
        assert any("daily at 08:00 UTC" in t for t in texts(the_card(reply))), texts(
            the_card(reply)
        )
        sub = await DigestSubscription.get()
        assert sub.cron == "0 8 * * *"

        now = datetime.now(UTC)
        slot = now.replace(hour=8, minute=0, second=0, microsecond=0)
        if slot <= now:
            slot += timedelta(days=1)
        credentials = ClientCredentials(settings)
        trusted = TrustedServiceUrls(settings.trusted_service_urls)
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_ssl_context())
            ) as session:
                sender = ProactiveSender(
                    session, token=credentials.connector_token, is_trusted=trusted.trusts
                )
                clock = slot + timedelta(seconds=3)
                scheduler = Scheduler(settings, sender, clock=lambda: clock)
                report = await scheduler.tick()
        finally:
            credentials.close()
        row = await DigestDelivery.get()

    assert [d.status for d in report.deliveries] == ["sent"]
    digest = connector.activities[-1]
    assert (digest.kind, digest.conversation_id) == ("send", CHANNEL)
    assert digest.claims is not None and digest.claims["appid"] == APP_ID
    lines = texts(the_card(digest))
    assert lines[0].startswith("Usage digest")
    assert any(line.startswith("**TEAMS-SEATS**") for line in lines)
    # The change since the last one, said as a sentence (no event code).
    assert any("subscribed a conversation to digest" in line for line in lines), lines
    assert (row.slot, row.status, row.activity_id) == (slot, "sent", digest.activity_id)

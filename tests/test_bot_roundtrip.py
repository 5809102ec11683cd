"""Bot Framework round trips: an activity POSTed to /api/messages, the reply card at the fake
Bot Connector (its own thread, 127.0.0.1).

Both modes: local development (no app id, dev admins) and production (channel tokens checked
against the fake identity provider's keys, admins through the fake Graph, replies carrying the
bot's msal token, which the fake connector verifies). Both databases: SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from bot.domain.models import Allocation, AuditEvent, ConversationRef
from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider, SentActivity
from tests.support.ledger_state import snapshot
from tests.support.teams_env import (
    ADMIN_OID,
    APP_ID,
    BOT_ID,
    OUTSIDER_OID,
    RunningBot,
    auth_settings,
    dev_settings,
    facts,
    message,
    running_bot,
    seed_ledger,
    texts,
    the_card,
    trust_fakes,
)

OTHER_TENANT = "99999999-8888-4777-8666-555555555555"


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


@dataclass
class Turns:
    """Posts activities the way the channel does in the chosen mode, and reads the replies."""

    bot: RunningBot
    connector: FakeBotConnector
    tenant: str
    token: Callable[[], str | None]

    def message(self, text: str, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("tenant", self.tenant)
        return message(text, self.connector.service_url, **kwargs)

    async def post(self, activity: dict[str, Any]) -> int:
        resp = await self.bot.post(activity, self.token())
        return resp.status

    async def say(self, text: str, **kwargs: Any) -> SentActivity:
        """Post a message; return the one reply it produced."""
        before = len(self.connector.activities)
        activity = self.message(text, **kwargs)
        assert await self.post(activity) == 201
        sent = (await self.connector.wait_for_async(before + 1))[before:]
        assert len(sent) == 1, [s.activity for s in sent]
        reply = sent[0]
        assert reply.kind == "reply" and reply.reply_to_id == activity["id"]
        assert reply.conversation_id == activity["conversation"]["id"]
        return reply


@pytest_asyncio.fixture(params=["dev", "auth"])
async def turns(
    request: pytest.FixtureRequest,
    empty_db_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
) -> AsyncIterator[Turns]:
    if request.param == "dev":
        plain = FakeBotConnector(None).start()  # local development: replies carry no token
        try:
            async with running_bot(dev_settings(empty_db_url, plain)) as bot:
                await seed_ledger()
                yield Turns(bot, plain, "dev-tenant", lambda: None)
        finally:
            plain.stop()
        return
    settings = auth_settings(empty_db_url, idp, graph, connector)
    async with running_bot(settings) as bot:
        await seed_ledger()
        yield Turns(
            bot, connector, idp.tenant_id, lambda: idp.channel_token(APP_ID, connector.service_url)
        )


def assert_bot_token(turns: Turns, reply: SentActivity) -> None:
    if turns.connector.identity is not None:
        assert reply.claims is not None
        assert reply.claims["aud"] == "https://api.botframework.com"
        assert reply.claims["appid"] == APP_ID


async def test_list_products(turns: Turns) -> None:
    reply = await turns.say("products", mention=True)
    assert_bot_token(turns, reply)
    card = the_card(reply)
    assert texts(card)[0] == "Products"
    # One record per product: its name, then a detail line (narrow first: no table).
    said = texts(card)
    sip, seats = said.index("**SIP-CHANNELS**"), said.index("**TEAMS-SEATS**")
    assert sip < seats
    assert said[sip + 1] == "sip-channels · capacity 30 · allocated 0 · active"
    assert said[seats + 1] == "teams-seats · capacity 10 · allocated 0 · active"


async def test_usage_after_a_change(turns: Turns) -> None:
    await turns.say("allocate 3 TEAMS-SEATS to ACME-01")
    card = the_card(await turns.say("usage"))
    said = texts(card)
    seats = said.index("**TEAMS-SEATS**")
    grid = said[seats + 2 : seats + 10]  # after "30 % allocated": label, figure, ...
    assert grid[:4] == ["Capacity", "10", "Allocated", "3"]
    assert grid[4:8] == ["Unallocated", "7", "In use", "0"]


async def test_change_is_made_audited_and_shown_before_after(turns: Turns) -> None:
    activity_id = "1736500000000001"
    reply = await turns.say("allocate 4 TEAMS-SEATS to ACME-01", activity_id=activity_id)
    assert_bot_token(turns, reply)
    card = the_card(reply)
    assert facts(card)["Target"] == "TEAMS-SEATS → ACME-01"
    assert facts(card)["Allocated"] == "0 → **4**"
    allocation = await Allocation.get(product__name="TEAMS-SEATS", subscription__code="ACME-01")
    assert allocation.quantity == 4
    event = await AuditEvent.get(correlation_id=activity_id)
    assert (event.actor_id, event.source, event.action) == (
        ADMIN_OID,
        "chat",
        "allocation.allocate",
    )
    assert (event.before["allocated"], event.after["allocated"]) == (0, 4)


async def test_refused_change_changes_nothing(turns: Turns) -> None:
    before = await snapshot()
    card = the_card(await turns.say("allocate 11 TEAMS-SEATS to ACME-01"))
    words = " ".join(texts(card))
    assert texts(card)[0] == "Refused"
    assert "capacity" in words.lower() and "10" in words
    assert await snapshot() == before


async def test_malformed_command_gets_what_is_wrong_and_the_usage(turns: Turns) -> None:
    before = await snapshot()
    card = the_card(await turns.say("allocate lots TEAMS-SEATS to ACME-01"))
    lines = texts(card)
    assert lines[0] == "Usage: allocate"
    assert any(line.startswith("allocate N PRODUCT to SUBSCRIPTION") for line in lines)
    assert "Traceback" not in " ".join(lines)
    assert await snapshot() == before


async def test_unknown_name_gets_did_you_mean(turns: Turns) -> None:
    card = the_card(await turns.say("allocate 1 TEAMS-SEAT to ACME-01"))
    assert "Did you mean 'TEAMS-SEATS'" in " ".join(texts(card))


async def test_redelivered_activity_has_one_effect(turns: Turns) -> None:
    activity = turns.message("allocate 2 TEAMS-SEATS to ACME-01")
    for _ in range(2):
        assert await turns.post(activity) == 201
    first, second = await turns.connector.wait_for_async(2)
    assert texts(the_card(first))[0].startswith("Allocated 2")
    assert texts(the_card(second))[0] == "Already done"
    allocation = await Allocation.get(product__name="TEAMS-SEATS", subscription__code="ACME-01")
    assert allocation.quantity == 2
    assert await AuditEvent.filter(correlation_id=activity["id"]).count() == 1


async def test_non_admin_is_told_nothing_about_the_data(turns: Turns) -> None:
    before = await snapshot()
    for text in ("products", "allocate 1 TEAMS-SEATS to ACME-01", "usage NO-SUCH-THING"):
        card = the_card(await turns.say(text, sender=OUTSIDER_OID))
        words = " ".join(texts(card))
        assert texts(card)[0] == "Not allowed"
        assert "TEAMS-SEATS" not in words and "ACME" not in words and "NO-SUCH" not in words
    assert await snapshot() == before


async def test_whoami_is_built_from_the_activity(turns: Turns) -> None:
    card = the_card(await turns.say("whoami"))
    shown = facts(card)
    assert shown["Entra object id"] == ADMIN_OID
    assert shown["Tenant"] == turns.tenant
    assert shown["Group administrator"] == "yes"


async def test_conversation_reference_is_stored_for_proactive_posts(turns: Turns) -> None:
    await turns.say("help", conversation="19:channel-1@thread.tacv2", mention=True)
    ref = await ConversationRef.get(conversation_id="19:channel-1@thread.tacv2")
    assert ref.service_url == turns.connector.service_url
    assert ref.tenant_id == turns.tenant
    assert ref.reference["bot"]["id"] == BOT_ID


def _button_data(card: dict[str, Any], title: str) -> dict[str, Any]:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") == "Action.Execute" and node.get("title") == title:
                return node
            for value in node.values():
                found = walk(value)
                if found:
                    return found
        if isinstance(node, list):
            for item in node:
                found = walk(item)
                if found:
                    return found
        return None

    button = walk(card)
    assert button is not None, f"no {title!r} button"
    return dict(button["data"])


async def test_form_submitted_through_action_execute(turns: Turns) -> None:
    form = await turns.say("allocate")
    data = _button_data(the_card(form), "Submit")
    data.update(quantity=5, product="TEAMS-SEATS", subscription="ACME-01")
    invoke = turns.message(
        "",
        type="invoke",
        name="adaptiveCard/action",
        replyToId=form.activity_id,
        value={
            "action": {"type": "Action.Execute", "verb": data["verb"], "data": data},
            "trigger": "manual",
        },
    )
    del invoke["text"]
    resp = await turns.bot.post(invoke, turns.token())
    assert resp.status == 200
    assert resp.body["statusCode"] == 200
    assert resp.body["type"] == "application/vnd.microsoft.card.adaptive"
    assert facts(resp.body["value"])["Allocated"] == "0 → **5**"
    allocation = await Allocation.get(product__name="TEAMS-SEATS", subscription__code="ACME-01")
    assert allocation.quantity == 5
    event = await AuditEvent.get(action="allocation.allocate")
    assert (event.actor_id, event.source) == (ADMIN_OID, "card")


async def test_form_submitted_through_action_submit_fallback(turns: Turns) -> None:
    form = await turns.say("allocate")
    data = _button_data(the_card(form), "Submit")
    data.update(quantity=6, product="TEAMS-SEATS", subscription="ACME-01")
    submit = turns.message("", replyToId=form.activity_id, value=data)
    del submit["text"]
    assert await turns.post(submit) == 201
    allocation = await Allocation.get(product__name="TEAMS-SEATS", subscription__code="ACME-01")
    assert allocation.quantity == 6
    # The answer replaces the clicked form card.
    [update] = await turns.connector.wait_for_async(1, kind="update")
    assert update.activity_id == form.activity_id
    assert facts(update.activity["attachments"][0]["content"])["Allocated"] == "0 → **6**"


async def test_another_tenant_is_refused_politely(
    empty_db_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
) -> None:
    async with running_bot(auth_settings(empty_db_url, idp, graph, connector)) as bot:
        await seed_ledger()
        before = await snapshot()
        activity = message("products", connector.service_url, tenant=OTHER_TENANT)
        resp = await bot.post(activity, idp.channel_token(APP_ID, connector.service_url))
        assert resp.status == 201
        [reply] = await connector.wait_for_async(1)
        card = the_card(reply)
        assert texts(card)[0] == "Not available here"
        assert "TEAMS-SEATS" not in " ".join(texts(card))
        assert await snapshot() == before
        assert await ConversationRef.all().count() == 0  # no reference kept for that tenant


NOT_AN_ACTIVITY: list[Any] = [
    [],
    "text",
    5,
    {"type": None},
    {"type": "message", "entities": "not a list"},
    {"type": "message", "from": "x", "conversation": 3, "serviceUrl": 7},
    {"type": "message", "timestamp": "not a date"},
]

ODD_BUT_HANDLED: list[tuple[dict[str, Any], int]] = [
    ({"type": "no-such-type"}, 201),
    ({"type": "message", "text": 12, "conversation": {"id": 5}}, 201),
    ({"type": "message", "entities": [{"type": "mention", "mentioned": "x", "text": 5}]}, 201),
    ({"type": "message", "channelData": "x", "value": [1]}, 201),
    ({"type": "invoke", "name": "adaptiveCard/action", "value": "x"}, 400),
    (
        {
            "type": "invoke",
            "name": "adaptiveCard/action",
            "value": {"action": {"type": "Action.Submit"}},
        },
        400,
    ),
    ({"type": "invoke", "name": "no/such/invoke", "value": {}}, 501),
    ({"type": "conversationUpdate", "membersRemoved": [{"id": None}]}, 201),
    ({"type": "installationUpdate", "action": 5}, 201),
]


async def test_bodies_of_any_shape_never_get_a_500(empty_db_url: str) -> None:
    with FakeBotConnector(None) as plain:
        async with running_bot(dev_settings(empty_db_url, plain)) as bot:
            for body in NOT_AN_ACTIVITY:
                assert (await bot.post(body)).status == 400, body  # type: ignore[arg-type]
            for fields, status in ODD_BUT_HANDLED:
                activity = message("help", plain.service_url)
                activity.update(fields)
                assert (await bot.post(activity)).status == status, fields

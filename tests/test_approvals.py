"""Approvals (SPEC §5) through the card actions and the commands, on SQLite and PostgreSQL.

Card actions go through `bot.teams.card_actions.handle_card_action` with a real botbuilder
TurnContext over a TestAdapter: an Action.Execute invoke or an Action.Submit message, the
actor built as the edge builds it (from the authenticated activity), the real DevPolicy
(approvers = the listed admins). Every refusal asserts that nothing changed: ledger rows,
approval rows, audit chain.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botbuilder.core import TurnContext
from botbuilder.core.adapters import TestAdapter
from botbuilder.schema import Activity, ChannelAccount, ConversationAccount

from bot.auth.actor import Actor
from bot.auth.policy import DevPolicy
from bot.commands.dispatch import run_text
from bot.commands.registry import Context
from bot.commands.reply import Approval, Changed, Error
from bot.config import Settings
from bot.domain import approvals, ledger
from bot.domain.change import verify_chain
from bot.domain.models import (
    Allocation,
    ApprovalRequest,
    ApprovalStatus,
    AuditEvent,
    Product,
    ProductKind,
)
from bot.teams import render as r
from bot.teams.approval_cards import after_reply
from bot.teams.card_actions import handle_card_action
from tests.support.ledger_state import check_invariants, origin, snapshot
from tests.support.teams_env import trust_fakes

SETTINGS = Settings(approval_threshold=100, approval_ttl_hours=72)
POLICY = DevPolicy(("ada", "bob", "carol"))  # admins and approvers; "mallory" is neither
CONVERSATION = "19:ops@thread.v2"
CARD_MESSAGE = "msg-approval-card"
_ids = itertools.count(1)


def actor(who: str) -> Actor:
    return Actor(
        object_id=who,
        name=who.title(),
        tenant_id="tenant-1",
        source="chat",
        correlation_id=f"act-{next(_ids)}",
        conversation_id=CONVERSATION,
    )


def context(who: str) -> Context:
    return Context(actor=actor(who), settings=SETTINGS, policy=POLICY)


def turn(activity: Activity) -> tuple[TurnContext, TestAdapter]:
    adapter = TestAdapter()
    activity.channel_id = "msteams"
    activity.service_url = "https://smba.trafficmanager.net/emea/"
    activity.conversation = ConversationAccount(id=CONVERSATION)
    activity.recipient = ChannelAccount(id="bot")
    activity.id = activity.id or f"act-{next(_ids)}"
    return TurnContext(adapter, activity), adapter


def execute(who: str, verb: str, data: Any) -> Activity:
    return Activity(
        type="invoke",
        name="adaptiveCard/action",
        reply_to_id=CARD_MESSAGE,
        from_property=ChannelAccount(id=f"29:{who}", aad_object_id=who, name=who.title()),
        value={
            "action": {"type": "Action.Execute", "verb": verb, "data": data},
            "trigger": "manual",
        },
    )


def submit(who: str, data: Any) -> Activity:
    return Activity(
        type="message",
        reply_to_id=CARD_MESSAGE,
        value=data,
        from_property=ChannelAccount(id=f"29:{who}", aad_object_id=who, name=who.title()),
    )


async def click(who: str, verb: str, data: Any) -> tuple[dict[str, Any], TestAdapter]:
    """An Action.Execute click by `who`: (the card answered, the adapter)."""
    tc, adapter = turn(execute(who, verb, data))
    response = await handle_card_action(tc, actor(who), context(who))
    assert response is not None and response.status_code == 200
    assert response.type == r.CONTENT_TYPE
    return response.value, adapter


async def seed(capacity: int = 1000) -> None:
    ops = origin()
    await ledger.add_customer(ops, "Contoso Ltd")
    await ledger.add_subscription(ops, "ACME-01", "Contoso Ltd")
    await ledger.add_product(ops, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, capacity)


async def allocated() -> int:
    rows = await Allocation.all().values_list("quantity", flat=True)
    return int(sum(rows))  # type: ignore[arg-type]


async def state() -> dict[str, Any]:
    return {
        **await snapshot(),
        "approvals": await ApprovalRequest.all()
        .order_by("id")
        .values("id", "status", "decided_by_id", "decided_at", "reason", "expires_at"),
    }


async def request_allocation(who: str = "ada", quantity: int = 500) -> Approval:
    reply = await run_text(f"allocate {quantity} TEAMS-SEATS to ACME-01", context(who))
    assert isinstance(reply, Approval), reply
    assert reply.status == "pending" and reply.requester == who.title()
    return reply


def texts(card: Any) -> str:
    """All visible text of a card, for asserting what it says."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("text", "title", "value"):
                if isinstance(node.get(key), str):
                    out.append(node[key])
            for key, value in node.items():
                if key not in ("data",):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(card)
    return "\n".join(out)


def buttons(card: dict[str, Any]) -> list[str]:
    return [a.get("verb", "") for a in card.get("actions", [])]


async def decisions() -> list[AuditEvent]:
    return await AuditEvent.filter(action__startswith="approval.").exclude(
        action="approval.request"
    )


# ----- requests ------------------------------------------------------------------------------

both_databases = pytest.mark.usefixtures("database")


@both_databases
async def test_small_changes_go_ahead_large_ones_wait_for_approval() -> None:
    await seed()
    small = await run_text("allocate 100 TEAMS-SEATS to ACME-01", context("ada"))
    assert isinstance(small, Changed) and await allocated() == 100
    before = await snapshot()
    # A dry run above the threshold shows the change and says it would need approval.
    preview = await run_text("allocate 500 TEAMS-SEATS to ACME-01 --dry-run", context("ada"))
    assert isinstance(preview, Changed) and preview.dry_run and "approver" in preview.text
    assert await snapshot() == before and await ApprovalRequest.all().count() == 0

    reply = await request_allocation()
    assert await allocated() == 100  # nothing allocated yet
    assert reply.before == {"allocated": 100, "product_allocated": 100}
    assert reply.after == {"allocated": 600, "product_allocated": 600}
    stored = await ApprovalRequest.get(id=reply.request_id)
    assert stored.payload == {"quantity": 500, "product": "TEAMS-SEATS", "subscription": "ACME-01"}
    assert stored.requester_id == "ada" and stored.conversation_id == CONVERSATION
    assert abs(stored.expires_at - stored.created_at - timedelta(hours=72)) < timedelta(seconds=5)
    assert len(reply.request_id) == 10 and reply.request_id.isalnum()
    [event] = await AuditEvent.filter(action="approval.request")
    assert event.actor_id == "ada" and event.target == f"approval:{reply.request_id}"

    # A capacity change by more than the threshold waits too; by less, it goes ahead.
    held = await run_text("product capacity TEAMS-SEATS 2000", context("ada"))
    assert isinstance(held, Approval) and held.after == {"capacity": 2000}
    assert (await Product.get(name="TEAMS-SEATS")).capacity == 1000
    done = await run_text("product capacity TEAMS-SEATS 1050", context("ada"))
    assert isinstance(done, Changed) and (await Product.get(name="TEAMS-SEATS")).capacity == 1050


@both_databases
async def test_a_request_that_could_never_succeed_is_refused_at_once() -> None:
    await seed(capacity=300)
    before = await state()
    reply = await run_text("allocate 500 TEAMS-SEATS to ACME-01", context("ada"))
    assert isinstance(reply, Error) and "Only 300" in reply.text
    assert await state() == before


@both_databases
async def test_approve_by_card_carries_out_the_change_and_updates_the_card() -> None:
    await seed()
    request = await request_allocation()
    await approvals.set_card(request.request_id, CONVERSATION, "msg-original")
    card, adapter = await click(
        "bob",
        r.VERB_APPROVE,
        {"verb": r.VERB_APPROVE, "request_id": request.request_id, "reason": "budget ok"},
    )
    assert await allocated() == 500
    said = texts(card)
    assert "APPROVED" in said and "Bob" in said and "budget ok" in said
    assert buttons(card) == [] and "refresh" not in card
    stored = await ApprovalRequest.get(id=request.request_id)
    assert stored.status is ApprovalStatus.APPROVED and stored.decided_by_id == "bob"
    # The originally posted card is updated in place for everyone.
    [updated] = adapter.updated_activities
    assert updated.id == "msg-original"
    assert "APPROVED" in texts(updated.attachments[0].content)
    # Audited: the decision (source card) and the allocation (source approval), chain intact.
    [decision] = await decisions()
    assert (decision.action, decision.actor_id) == ("approval.approve", "bob")
    assert decision.source == "card"
    [alloc] = await AuditEvent.filter(action="allocation.allocate")
    assert (alloc.actor_id, alloc.source) == ("bob", "approval")
    assert (await verify_chain())[0]
    await check_invariants()


@both_databases
async def test_reject_by_submit_fallback_keeps_the_ledger_and_records_the_reason() -> None:
    await seed()
    request = await request_allocation()
    before = await snapshot()
    tc, adapter = turn(
        submit(
            "carol", {"verb": r.VERB_REJECT, "request_id": request.request_id, "reason": "too many"}
        )
    )
    assert await handle_card_action(tc, actor("carol"), context("carol")) is None
    # Action.Submit: the clicked card is replaced by the outcome.
    [updated] = adapter.updated_activities
    assert updated.id == CARD_MESSAGE and "REJECTED" in texts(updated.attachments[0].content)
    stored = await ApprovalRequest.get(id=request.request_id)
    assert (stored.status, stored.reason, stored.decided_by_id) == (
        ApprovalStatus.REJECTED,
        "too many",
        "carol",
    )
    after = await snapshot()
    assert after["allocations"] == before["allocations"]
    [decision] = await decisions()
    assert decision.action == "approval.reject"


@both_databases
async def test_approve_typed_as_a_command_updates_the_posted_card() -> None:
    await seed()
    request = await request_allocation()
    # The edge posts the request card and tells the card code where it went.
    post_tc, _ = turn(Activity(type="message", text="allocate 500 TEAMS-SEATS to ACME-01"))
    await after_reply(post_tc, request, "msg-posted")
    assert (await ApprovalRequest.get(id=request.request_id)).card_activity_id == "msg-posted"

    reply = await run_text(f"approve {request.request_id} fine by me", context("bob"))
    assert isinstance(reply, Approval) and reply.status == "approved"
    assert reply.reason == "fine by me"
    tc, adapter = turn(Activity(type="message", text=f"approve {request.request_id}"))
    await after_reply(tc, reply, "msg-answer")
    [updated] = adapter.updated_activities
    assert updated.id == "msg-posted" and "APPROVED" in texts(updated.attachments[0].content)


@both_databases
async def test_capacity_is_checked_again_when_deciding() -> None:
    await seed(capacity=1000)
    request = await request_allocation(quantity=600)
    # Meanwhile most of the pool is allocated elsewhere.
    await ledger.allocate(origin(), 50, "TEAMS-SEATS", "ACME-01")
    await ledger.set_capacity(origin(), "TEAMS-SEATS", 600)
    card, _ = await click("bob", r.VERB_APPROVE, {"request_id": request.request_id})
    assert await allocated() == 50
    stored = await ApprovalRequest.get(id=request.request_id)
    assert stored.status is ApprovalStatus.FAILED and "Only 550" in (stored.reason or "")
    assert "NOT CARRIED OUT" in texts(card)
    [decision] = await decisions()
    assert decision.action == "approval.fail"
    await check_invariants()


@both_databases
async def test_refresh_shows_each_viewer_what_they_may_do() -> None:
    await seed()
    request = await request_allocation()
    data = {"request_id": request.request_id}
    approver, _ = await click("bob", r.VERB_APPROVAL_REFRESH, data)
    assert buttons(approver) == [r.VERB_APPROVE, r.VERB_REJECT]
    assert approver["refresh"]["action"]["verb"] == r.VERB_APPROVAL_REFRESH
    requester, _ = await click("ada", r.VERB_APPROVAL_REFRESH, data)
    assert buttons(requester) == [] and "APPROVAL NEEDED" in texts(requester)
    outsider, _ = await click("mallory", r.VERB_APPROVAL_REFRESH, data)
    assert "TEAMS-SEATS" not in texts(outsider) and buttons(outsider) == []
    await run_text(f"reject {request.request_id}", context("bob"))
    decided, _ = await click("carol", r.VERB_APPROVAL_REFRESH, data)
    assert "REJECTED" in texts(decided) and "refresh" not in decided


@both_databases
async def test_expired_requests_are_shown_as_such_and_cannot_be_decided() -> None:
    await seed()
    request = await request_allocation()
    await ApprovalRequest.filter(id=request.request_id).update(
        expires_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    before = await snapshot()
    card, _ = await click("bob", r.VERB_APPROVE, {"request_id": request.request_id})
    assert "EXPIRED" in texts(card) and "expired" in texts(card)
    assert buttons(card) == []
    assert (await ApprovalRequest.get(id=request.request_id)).status is ApprovalStatus.EXPIRED
    after = await snapshot()
    assert after["allocations"] == before["allocations"]
    # Expiry is audited once, by the system; the refused approval writes nothing.
    assert [e.action for e in await decisions()] == ["approval.expire"]
    listed = await run_text("approvals", context("bob"))
    assert listed.rows == []  # type: ignore[attr-defined]


# ----- the table of refusals: each changes nothing and says why ------------------------------

REFUSALS = [
    # (case, who, verb, data factory, words the answer contains)
    (
        "requester approves own request",
        "ada",
        r.VERB_APPROVE,
        lambda rid: {"request_id": rid},
        "cannot decide it",
    ),
    (
        "requester rejects own request",
        "ada",
        r.VERB_REJECT,
        lambda rid: {"request_id": rid},
        "cannot decide it",
    ),
    ("not an approver", "mallory", r.VERB_APPROVE, lambda rid: {"request_id": rid}, "Not allowed"),
    (
        "unknown request id",
        "bob",
        r.VERB_APPROVE,
        lambda rid: {"request_id": "zzzzzzzzzz"},
        "No approval request",
    ),
    (
        "request id of another type",
        "bob",
        r.VERB_APPROVE,
        lambda rid: {"request_id": 12345},
        "does not name an approval request",
    ),
    (
        "request id as an object",
        "bob",
        r.VERB_APPROVE,
        lambda rid: {"request_id": {"$ne": None}},
        "does not name an approval request",
    ),
    ("no request id", "bob", r.VERB_APPROVE, lambda rid: {}, "does not name an approval request"),
    (
        "reason of a wrong type",
        "bob",
        r.VERB_APPROVE,
        lambda rid: {"request_id": rid, "reason": {"x": 1}},
        "wrong kind",
    ),
    ("unknown verb", "bob", "approval.force", lambda rid: {"request_id": rid}, "Unknown action"),
    ("verb missing", "bob", "", lambda rid: {"request_id": rid}, "Unknown action"),
    (
        "a change smuggled into a page button",
        "bob",
        r.VERB_PAGE,
        lambda rid: {"command": f"approve {rid}"},
        "does not name a list",
    ),
    (
        "identity in the card data is ignored",
        "mallory",
        r.VERB_APPROVE,
        lambda rid: {"request_id": rid, "from": "bob", "actor": "bob", "object_id": "bob"},
        "Not allowed",
    ),
]


@pytest.mark.parametrize(
    ("case", "who", "verb", "data", "words"), REFUSALS, ids=[c[0] for c in REFUSALS]
)
@both_databases
async def test_refused_card_actions_change_nothing(
    case: str, who: str, verb: str, data: Any, words: str
) -> None:
    await seed()
    request = await request_allocation()
    before = await state()
    card, adapter = await click(who, verb, data(request.request_id))
    assert words in texts(card), texts(card)
    assert await state() == before
    assert adapter.updated_activities == []


@both_databases
async def test_a_decided_request_is_not_decided_again() -> None:
    await seed()
    request = await request_allocation()
    await click("bob", r.VERB_REJECT, {"request_id": request.request_id})
    before = await state()
    for who, verb in [("carol", r.VERB_APPROVE), ("bob", r.VERB_APPROVE), ("carol", r.VERB_REJECT)]:
        card, _ = await click(who, verb, {"request_id": request.request_id})
        said = texts(card)
        assert "already rejected by Bob" in said and "REJECTED" in said
        assert buttons(card) == []
    typed = await run_text(f"approve {request.request_id}", context("carol"))
    assert isinstance(typed, Error) and "already rejected" in typed.text
    # By its short id and with the moment in words, never an ISO date.
    said = r"request A-\d+ was already rejected by Bob, \d{1,2} [A-Z][a-z]{2} \d\d:\d\d UTC;"
    assert re.search(said, typed.text), typed.text
    assert not re.search(r"\d{4}-\d\d-\d\d", typed.text), typed.text
    assert await state() == before


# ----- exactly once under concurrency (PostgreSQL) -------------------------------------------


@pytest.mark.postgres
@pytest.mark.usefixtures("unqueued_changes")
async def test_twenty_simultaneous_approvals_allocate_once(pg_database: str) -> None:
    await seed()
    request = await request_allocation()
    approvers = ["bob", "carol"] * 10

    async def one(who: str) -> dict[str, Any]:
        card, _ = await click(who, r.VERB_APPROVE, {"request_id": request.request_id})
        return card

    cards = await asyncio.gather(*(one(who) for who in approvers))
    assert await allocated() == 500
    assert len(await AuditEvent.filter(action="allocation.allocate")) == 1
    [decision] = await decisions()
    assert decision.action == "approval.approve"
    winners = [c for c in cards if "already approved" not in texts(c)]
    assert len(winners) == 1 and "APPROVED" in texts(winners[0])
    assert all("APPROVED" in texts(c) for c in cards)  # every clicker sees the outcome
    stored = await ApprovalRequest.get(id=request.request_id)
    assert stored.decided_by_id == decision.actor_id
    assert (await verify_chain())[0]
    await check_invariants()


@pytest.mark.postgres
@pytest.mark.usefixtures("unqueued_changes")
async def test_approve_and_reject_racing_decide_once(pg_database: str) -> None:
    await seed()
    request = await request_allocation()
    verbs = [r.VERB_APPROVE, r.VERB_REJECT] * 10
    await asyncio.gather(*(click("bob", v, {"request_id": request.request_id}) for v in verbs))
    [decision] = await decisions()
    stored = await ApprovalRequest.get(id=request.request_id)
    approved = stored.status is ApprovalStatus.APPROVED
    assert decision.action == ("approval.approve" if approved else "approval.reject")
    assert await allocated() == (500 if approved else 0)


@both_databases
async def test_requester_identity_comes_from_the_activity_not_the_context_data() -> None:
    """The actor handed to the card code wins over anything else (even a context built for
    someone else): the edge authenticates, the card data never says who is acting."""
    await seed()
    request = await request_allocation()
    tc, _ = turn(execute("ada", r.VERB_APPROVE, {"request_id": request.request_id}))
    response = await handle_card_action(tc, actor("ada"), replace(context("bob")))
    assert response is not None and "cannot decide it" in texts(response.value)
    assert (await ApprovalRequest.get(id=request.request_id)).status is ApprovalStatus.PENDING


# ----- through the real app: Teams activities in, cards at the (fake) Bot Connector ----------


async def test_request_in_chat_decided_in_the_approvals_channel_through_the_app(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice asks in her chat; the request card is also posted to the approvals channel; Bob
    approves there; Alice's card is updated in place; the change is made once."""
    from tests.fakes import FakeBotConnector
    from tests.support.teams_env import ADMIN_OID, dev_settings, message, running_bot, seed_ledger
    from tests.support.teams_env import texts as card_texts

    trust_fakes(monkeypatch)
    bob = "b0b00000-0000-4000-8000-000000000001"
    channel = "19:approvals@thread.tacv2"
    chat = "a:alice-personal-chat"
    connector = FakeBotConnector(None).start()
    try:
        settings = dev_settings(
            empty_db_url,
            connector,
            dev_admins=(ADMIN_OID, bob),
            approval_threshold=5,
            approvals_channel=channel,
        )
        async with running_bot(settings) as app:
            await seed_ledger()

            async def say(text: str, who: str, where: str) -> Any:
                before = len(connector.activities)
                activity = message(text, connector.service_url, sender=who, conversation=where)
                assert (await app.post(activity)).status == 201
                await connector.wait_for_async(before + 1)
                return activity

            await say("whoami", bob, channel)  # the bot is in the channel: reference stored
            await say("allocate 20 SIP-CHANNELS to ACME-01", ADMIN_OID, chat)
            [reply] = await connector.wait_for_async(1, conversation_id=chat, kind="reply")
            [copy] = await connector.wait_for_async(1, conversation_id=channel, kind="send")
            for card in (reply.attachments[0]["content"], copy.attachments[0]["content"]):
                assert "APPROVAL NEEDED" in card_texts(card)
            request = await ApprovalRequest.get()
            assert request.card_activity_id == reply.activity_id
            assert await allocated() == 0

            click = message(
                "",
                connector.service_url,
                sender=bob,
                conversation=channel,
                type="invoke",
                name="adaptiveCard/action",
                replyToId=copy.activity_id,
                value={
                    "action": {
                        "type": "Action.Execute",
                        "verb": r.VERB_APPROVE,
                        "data": {"verb": r.VERB_APPROVE, "request_id": request.id},
                    },
                    "trigger": "manual",
                },
            )
            del click["text"]
            answer = await app.post(click)
            assert answer.status == 200 and answer.body["statusCode"] == 200
            assert "APPROVED" in card_texts(answer.body["value"])
            assert await allocated() == 20
            # Alice's card in her chat now shows the outcome, for everyone who sees it.
            [update] = await connector.wait_for_async(1, conversation_id=chat, kind="update")
            assert update.activity_id == reply.activity_id
            assert "APPROVED" in card_texts(update.attachments[0]["content"])
            # The same click again (a replay) changes nothing and says so.
            again = await app.post({**click, "id": "replayed-click"})
            assert "already approved" in " ".join(card_texts(again.body["value"]))
            assert await allocated() == 20
    finally:
        connector.stop()

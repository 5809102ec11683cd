"""Replies honour Teams' limits (issue 16 item 8) through the process's one sender (issue 13
item 5): a turn's reply answered 429 is sent again after Retry-After within the turn's time
budget; a reply answered 403 marks the conversation inactive, so `digests` shows its digest
as skipped; replies and proactive posts are counted by the one rate limiter.

The bot runs for real (app factory, port 0) in local development mode; the Bot Connector is
the fake in its own thread, scripted to throttle or refuse.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from app import EDGE
from bot.domain.models import ConversationRef
from bot.teams.edge import TURN_BUDGET
from bot.teams.proactive import TURN, SendOutcome, Target, TurnBudget
from tests.fakes import Failure, FakeBotConnector, SentActivity
from tests.support.teams_env import (
    RunningBot,
    dev_settings,
    message,
    running_bot,
    seed_ledger,
    texts,
)
from tests.support.teams_env import the_card as card_of

CHAT = "a:chat-one"
OTHER = "a:chat-two"


@dataclass
class Door:
    bot: RunningBot
    connector: FakeBotConnector

    def activity(self, text: str, conversation: str = CHAT) -> dict[str, Any]:
        return message(text, self.connector.service_url, conversation=conversation)

    async def say(self, text: str, conversation: str = CHAT) -> tuple[int, list[SentActivity]]:
        before = len(self.connector.activities)
        posted = await self.bot.post(self.activity(text, conversation))
        return posted.status, self.connector.activities[before:]


@pytest_asyncio.fixture
async def door(empty_db_url: str) -> AsyncIterator[Door]:
    connector = FakeBotConnector(None).start()
    try:
        async with running_bot(dev_settings(empty_db_url, connector)) as bot:
            await seed_ledger()
            yield Door(bot, connector)
    finally:
        connector.stop()


async def test_a_reply_answered_429_is_sent_again_after_retry_after(door: Door) -> None:
    door.connector.fail_next(2, Failure.throttled(0.4), conversation_id=CHAT, kinds=("reply",))
    started = time.monotonic()
    status, sent = await door.say("products")
    assert status == 201
    assert [s.kind for s in sent] == ["reply"]  # delivered once
    replies = [r for r in door.connector.requests if r.method == "POST"]
    assert [r.status for r in replies] == [429, 429, 201]
    assert door.connector.retry_violations() == []
    assert time.monotonic() - started >= 0.8


async def test_a_reply_throttled_beyond_the_turns_budget_is_not_waited_for(door: Door) -> None:
    door.connector.fail_next(1, Failure.throttled(TURN_BUDGET * 3), conversation_id=CHAT)
    started = time.monotonic()
    status, sent = await door.say("products")
    took = time.monotonic() - started
    assert status == 201  # the turn ends; Teams is not made to redeliver it
    assert sent == []
    assert took < TURN_BUDGET
    # Nothing more went to the throttled conversation in this turn (not even an error note).
    assert len([r for r in door.connector.requests if r.method == "POST"]) == 1
    # The conversation is held, not forgotten: the next reply waits out the rest of the hold
    # within its own budget, or gives up at once when the hold is longer than that.
    sender = door.bot.server.app[EDGE].sender
    assert sender.limiter.delay(CHAT, None) > TURN_BUDGET


async def test_a_reply_answered_403_marks_the_conversation_and_digests_show_it(door: Door) -> None:
    status, sent = await door.say("digest here DAILY at 08:00")
    assert status == 201 and len(sent) == 1
    door.connector.remove_bot(CHAT)
    status, sent = await door.say("usage")
    assert status == 201 and sent == []
    assert [r.status for r in door.connector.requests if r.method == "POST"][-1] == 403
    stored = await ConversationRef.get(conversation_id=CHAT)
    assert stored.active is False
    # Asked from another conversation: the digest of the first is shown as skipped.
    _, [listing] = await door.say("digests", conversation=OTHER)
    shown = " ".join(texts(card_of(listing)))
    assert "bot removed — skipped" in shown, shown


async def test_replies_and_proactive_posts_share_one_rate_limiter(door: Door) -> None:
    # Teams allows 7 messages a second per conversation: 7 replies go at once...
    statuses = await asyncio.gather(*(door.say("whoami") for _ in range(7)))
    assert [s for s, _ in statuses] == [201] * 7
    first = min(a.at for a in door.connector.activities)
    # ...and the proactive post that follows (the app's sender, as the scheduler and the
    # approvals channel use it) waits for the window the replies filled.
    sender = door.bot.server.app[EDGE].sender
    result = await sender.post(Target(CHAT, door.connector.service_url), {"type": "message"})
    assert result.outcome is SendOutcome.SENT
    [posted] = [a for a in door.connector.activities if a.kind == "send"]
    assert posted.at - first >= 0.95
    assert result.waited > 0


@pytest.mark.parametrize("kind", ["update"])
async def test_update_replaces_a_posted_activity_through_the_one_sender(
    door: Door, kind: str
) -> None:
    sender = door.bot.server.app[EDGE].sender
    target = Target(OTHER, door.connector.service_url)
    posted = await sender.post(target, {"type": "message", "text": "first"})
    assert posted.outcome is SendOutcome.SENT and posted.activity_id
    updated = await sender.update(target, posted.activity_id, {"type": "message", "text": "2"})
    assert updated.outcome is SendOutcome.SENT
    [change] = [a for a in door.connector.activities if a.kind == kind]
    assert change.activity_id == posted.activity_id and change.text == "2"


@pytest.mark.parametrize(
    "answer", [b"[1, 2]", b'{"id": 5}', b"<html>ok</html>", b'"sent"', b"[" * 50_000]
)
async def test_a_malformed_answer_to_a_delivered_reply_is_read_before_use(
    door: Door, answer: bytes
) -> None:
    # The connector took the reply (201) but its answer is not a ResourceResponse: the turn
    # ends normally, with no second message ("Something went wrong") sent after the first.
    door.connector.fail_next(1, Failure.malformed(answer, 201), kinds=("reply",))
    status, _ = await door.say("products")
    assert status == 201
    await asyncio.sleep(0.1)
    assert [r.status for r in door.connector.requests if r.method == "POST"] == [201]
    sender = door.bot.server.app[EDGE].sender
    door.connector.fail_next(1, Failure.malformed(answer, 201), kinds=("send",))
    result = await sender.post(Target(OTHER, door.connector.service_url), {"type": "message"})
    assert result.outcome is SendOutcome.SENT and result.activity_id is None


async def test_a_turn_past_its_budget_still_sends_what_it_has(door: Door) -> None:
    # A long bulk operation's last update comes after the turn's 10 s: it is still sent (only
    # retries and long holds are cut short by the budget).
    sender = door.bot.server.app[EDGE].sender
    budget = TURN.set(TurnBudget(None, time.monotonic() - 5))
    try:
        result = await sender.post(Target(OTHER, door.connector.service_url), {"type": "message"})
    finally:
        TURN.reset(budget)
    assert result.outcome is SendOutcome.SENT


async def test_the_windows_can_be_lifted_for_a_connector_that_is_not_teams(
    empty_db_url: str,
) -> None:
    # FUSION_TEAMS_RATE_LIMITS=false (benchmarks against a fake connector): 12 replies in one
    # chat go at once; a 429 is still honoured.
    connector = FakeBotConnector(None).start()
    try:
        settings = dev_settings(empty_db_url, connector, teams_rate_limits=False)
        async with running_bot(settings) as bot:
            door = Door(bot, connector)
            await asyncio.gather(*(door.say("whoami") for _ in range(12)))
            times = sorted(a.at for a in connector.activities)
            assert len(times) == 12 and times[-1] - times[0] < 0.9
            connector.fail_next(1, Failure.throttled(0.3), conversation_id=CHAT)
            status, sent = await door.say("whoami")
            assert status == 201 and len(sent) == 1
            assert connector.retry_violations() == []
    finally:
        connector.stop()

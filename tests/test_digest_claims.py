"""Delivery claims as a domain service (issue 13 item 5): `bot.domain.digests.claim_due` and
`record_delivery`, without a scheduler or a sender, on SQLite and PostgreSQL. Instances that
claim at once share the due slots between them, each slot to one; a slot recorded sent is not
claimed again; a claim left pending by a dead instance is taken over once stale; changes are
reported since the last slot sent."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bot.domain import conversations, digests
from bot.domain.digests import PENDING, SENT, STALE_CLAIM, parse_schedule
from bot.domain.models import DigestDelivery, DigestSubscription
from tests.support.ledger_state import origin

pytestmark = pytest.mark.usefixtures("database")

SERVICE = "https://smba.trafficmanager.net/amer/"
LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 30, 8, 0, 30, tzinfo=UTC)  # just after a daily 08:00 slot


async def subscribe(conversation_id: str) -> int:
    reference = {"conversation": {"id": conversation_id}, "serviceUrl": SERVICE}
    await conversations.remember(reference, "tenant-1", SERVICE)
    await digests.subscribe(origin(), conversation_id, parse_schedule("daily", "08:00", "UTC"))
    sub = await DigestSubscription.get(conversation__conversation_id=conversation_id)
    await DigestSubscription.filter(id=sub.id).update(created_at=LONG_AGO)
    return sub.id


async def test_instances_claiming_at_once_get_each_slot_once() -> None:
    ids = {await subscribe(f"19:c{n}@thread.tacv2") for n in range(12)}
    found = await asyncio.gather(*(digests.claim_due(f"holder-{h}", NOW) for h in range(4)))
    claimed = [(c.digest_id, c.slot) for due in found for c in due.claims]
    assert sorted(d for d, _ in claimed) == sorted(ids)  # every slot once, none twice
    assert {slot for _, slot in claimed} == {datetime(2026, 11, 30, 8, 0, tzinfo=UTC)}
    assert all(due.next_slot == datetime(2026, 12, 1, 8, 0, tzinfo=UTC) for due in found)
    # Claimed again a moment later (a second tick, another instance): nothing left.
    again = await digests.claim_due("holder-9", NOW + timedelta(seconds=30))
    assert again.claims == []


async def test_a_slot_recorded_sent_is_reported_since_and_a_stale_claim_is_taken_over() -> None:
    first = await subscribe("19:a@thread.tacv2")
    second = await subscribe("19:b@thread.tacv2")
    yesterday = NOW - timedelta(days=1)
    [a, b] = sorted((await digests.claim_due("dead", yesterday)).claims, key=lambda c: c.digest_id)
    assert (a.digest_id, b.digest_id) == (first, second)
    await digests.record_delivery("dead", a, SENT, attempts=1, activity_id="1:x", at=yesterday)
    # `dead` never records b: its claim stays pending, and is not taken over while fresh...
    assert (await digests.claim_due("alive", yesterday + STALE_CLAIM / 2)).claims == []
    # ...but once stale it is (the one case where a slot may be posted twice).
    late = await digests.claim_due("alive", yesterday + STALE_CLAIM + timedelta(seconds=1))
    assert [(c.digest_id, c.slot) for c in late.claims] == [(second, b.slot)]
    row = await DigestDelivery.get(digest_id=second, slot=b.slot)
    assert (row.status, row.claimed_by) == (PENDING, "alive")
    # Today's slot reports changes since the slot last sent (yesterday's for a; b was never
    # sent, so one period back).
    today = {c.digest_id: c for c in (await digests.claim_due("alive", NOW)).claims}
    assert today[first].since == a.slot
    assert today[second].since == today[second].slot - timedelta(days=1)
    with pytest.raises(ValueError):
        await digests.record_delivery("alive", today[first], PENDING)

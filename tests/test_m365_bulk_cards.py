"""A bulk license answer in Teams (the public door) kept up to date: `license assign L to A,B,C`
and `pack assign P to A,B` typed in a chat, the one answer card saying the licenses are in the
ledger and being set up in Microsoft 365, and that same card drawn again — through the
process's one proactive sender — when the last of its jobs ends, with Microsoft 365's answer
per account. Where the card is lives with the jobs in the database: the instance that posted
it may be gone (stopped, restarted) and another instance's worker ends the jobs and updates
it. The bots run for real (app on 127.0.0.1, auth on) against the fake Bot Connector, Entra ID
and Graph, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot.domain.change import verify_chain
from bot.domain.models import BulkCard, JobState, LicenseAssignment, ProvisioningJob
from bot.teams.proactive import SendOutcome, SendResult
from bot.teams.provisioning import JobCards
from tests import cardcheck
from tests.fakes import SentActivity
from tests.support import licensing_env as env
from tests.support.licensing_env import CUSTOMER_TENANT, MCOEV, MCOPSTN1, SPE_E5, oid, upn
from tests.support.teams_env import (
    ProvisionedWorld,
    RunningBot,
    provisioned_world,
    running_bot,
    the_card,
    words,
)

World = ProvisionedWorld


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, empty_db_url: str) -> Iterator[World]:
    with provisioned_world(monkeypatch, empty_db_url, CUSTOMER_TENANT, env.ROLES) as made:
        yield made


def card_now(w: World, sent: SentActivity) -> dict[str, Any]:
    """The card as Teams shows it now: the last update of that activity, or the post."""
    updates = [
        s
        for s in w.connector.activities
        if s.kind == "update" and s.activity_id == sent.activity_id
    ]
    return the_card(updates[-1] if updates else sent)


def updates_of(w: World, sent: SentActivity) -> list[dict[str, Any]]:
    return [
        the_card(s)
        for s in w.connector.activities
        if s.kind == "update" and s.activity_id == sent.activity_id
    ]


async def wait_for(predicate: Any, what: str, wait: float = 30) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def holds(i: int) -> list[str]:
    rows = await LicenseAssignment.filter(account__upn=upn(i)).values_list(
        "product__name", flat=True
    )
    return sorted(str(r) for r in rows)


async def test_a_bulk_card_is_drawn_again_by_another_instance_after_a_restart(
    world: World, artifacts: Any
) -> None:
    w = world
    # Instance A runs no worker: it answers, stores where the card is, and is stopped before
    # any job has ended. Instance B, started afterwards, ends the jobs and updates the card.
    async with running_bot(w.settings, provision=False) as a:
        await env.seed(w.graph, users=4)
        w.graph.set_usage_location(oid(upn(0)), None)
        w.graph.fail_license(oid(upn(2)), "License assignment failed: MCOPSTN1 is not sold in XX.")
        single = await w.say(a, f"license assign M365-E5 to {upn(0)},{upn(1)},{upn(3)}")
        pack = await w.say(a, f"pack assign VOICE to {upn(2)},{upn(3)}")
        first_single, first_pack = the_card(single), the_card(pack)
        assert "being set up in Microsoft 365" in words(first_single)
        assert "being set up in Microsoft 365" in words(first_pack)
        assert await ProvisioningJob.filter(state=JobState.PENDING).count() == 5
        assert await BulkCard.all().count() == 2
    assert updates_of(w, single) == [] and updates_of(w, pack) == []

    async with running_bot(w.settings, provision=True):
        await wait_for(
            lambda: updates_of(w, single) and updates_of(w, pack), "the bulk cards were updated"
        )
        assert (
            await ProvisioningJob.filter(state__in=(JobState.PENDING, JobState.SENT)).count() == 0
        )
        # Drawn only once the last job had ended: no update shows a job still on its way.
        for drawn in [*updates_of(w, single), *updates_of(w, pack)]:
            assert "being set up in Microsoft 365" not in words(drawn), words(drawn)
        done_single, done_pack = card_now(w, single), card_now(w, pack)
        shown = words(done_single)
        assert "Microsoft 365 answered for every account." in shown
        assert f"{upn(1)} (set up in Microsoft 365)" in shown
        assert f"{upn(3)} (set up in Microsoft 365)" in shown
        assert upn(0) in shown and "invalid usage location" in shown
        assert "Kept in the ledger" in shown
        shown = words(done_pack)
        # The title counts Microsoft 365's refusal: one of the two has the pack in the end.
        assert "VOICE assigned to 1 of 2 account(s); Microsoft 365 refused 1." in shown, shown
        assert f"{upn(3)} (set up in Microsoft 365)" in shown
        assert upn(2) in shown and "not sold in XX" in shown and "taken back" in shown
        assert await holds(2) == [] and await holds(0) == ["M365-E5"]
        assert (await verify_chain())[0]
    assert w.graph.licenses(CUSTOMER_TENANT, oid(upn(1))) == {SPE_E5}
    assert w.graph.licenses(CUSTOMER_TENANT, oid(upn(3))) == {SPE_E5, MCOEV, MCOPSTN1}
    assert w.graph.licenses(CUSTOMER_TENANT, oid(upn(2))) == set()

    sequence = {
        "bulk-1-license-pending": first_single,
        "bulk-2-license-ended": done_single,
        "bulk-3-pack-pending": first_pack,
        "bulk-4-pack-ended": done_pack,
    }
    folder = artifacts / "m365-bulk"
    cardcheck.check_cards(sequence, out_dir=folder, conventions=True)
    if cardcheck.renderer_available():
        # Every card at 400 px (phone) and 800 px: no word broken, nothing overflowing.
        report = cardcheck.render_cards(sequence, folder, widths=(400, 800))
        for name, found in report.items():
            assert not found["errors"], (name, found["errors"])
            for width, seen in found["widths"].items():
                assert not seen["layout"], (name, width, seen["layout"])


async def test_two_instances_the_card_follows_whichever_ends_the_last_job(world: World) -> None:
    w = world
    # Both instances run workers: either may end any job, and the last to end draws the card.
    async with (
        running_bot(w.settings, provision=True) as a,
        running_bot(w.settings, provision=True),
    ):
        await env.seed(w.graph, users=6)
        w.graph.set_usage_location(oid(upn(4)), None)
        users = ",".join(upn(i) for i in range(6))
        sent = await w.say(a, f"license assign TEAMS-PHONE to {users}")
        await wait_for(lambda: updates_of(w, sent), "the bulk card was updated")
        assert (
            await ProvisioningJob.filter(state__in=(JobState.PENDING, JobState.SENT)).count() == 0
        )
        await asyncio.sleep(0.5)  # a second drawing (two ending at once) would be the same
        drawn = updates_of(w, sent)
        assert all(words(d) == words(drawn[-1]) for d in drawn)
        shown = words(card_now(w, sent))
        for i in (0, 1, 2, 3, 5):
            assert f"{upn(i)} (set up in Microsoft 365)" in shown, shown
        assert upn(4) in shown and "invalid usage location" in shown
    assert w.graph.consumed(CUSTOMER_TENANT, MCOEV) == 5


async def a_failed_bulk_card(w: World, running: RunningBot) -> SentActivity:
    """TEAMS-PHONE for users 0 and 1; Microsoft 365 refuses user 0 (no usage location). The
    card once it shows that."""
    await env.seed(w.graph, users=2)
    w.graph.set_usage_location(oid(upn(0)), None)
    sent = await w.say(running, f"license assign TEAMS-PHONE to {upn(0)},{upn(1)}")
    await wait_for(lambda: "invalid usage location" in words(card_now(w, sent)), "shown failed")
    return sent


async def test_a_retried_job_draws_the_bulk_card_again(world: World) -> None:
    w = world
    async with running_bot(w.settings, provision=True) as a:
        sent = await a_failed_bulk_card(w, a)
        job = await ProvisioningJob.get(upn=upn(0))
        assert job.state is JobState.FAILED
        w.graph.set_usage_location(oid(upn(0)), "GB")
        seen = len(updates_of(w, sent))
        await w.say(a, f"provisioning retry {job.id}")
        await wait_for(lambda: len(updates_of(w, sent)) > seen, "drawn again after the retry")
        shown = words(card_now(w, sent))
        assert f"{upn(0)} (set up in Microsoft 365)" in shown
        assert "invalid usage location" not in shown
    assert w.graph.licenses(CUSTOMER_TENANT, oid(upn(0))) == {MCOEV}


class _Overtaken:
    """The card's updates, as the Bot Connector would take them; while the first is on its
    way, another instance ends the failed job of the card (a hand retry that went through)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.drawn: list[dict[str, Any]] = []

    async def update(self, target: Any, activity_id: str, activity: dict[str, Any]) -> Any:
        if not self.drawn:
            await ProvisioningJob.filter(id=self.job_id).update(state=JobState.DONE, reason=None)
        self.drawn.append(activity["attachments"][0]["content"])
        return SendResult(SendOutcome.SENT)


async def test_a_bulk_card_whose_jobs_moved_while_it_was_drawn_is_drawn_again(
    world: World,
) -> None:
    """Two instances' drawings of one card can arrive in either order: the worker reads the
    jobs again after drawing, and draws once more when they moved, so the card ends as the
    jobs end."""
    w = world
    async with running_bot(w.settings, provision=True) as a:
        await a_failed_bulk_card(w, a)
        failed = await ProvisioningJob.get(upn=upn(0))
        ended = await ProvisioningJob.get(upn=upn(1))
        sender = _Overtaken(failed.id)
        await JobCards(sender)(ended)  # type: ignore[arg-type]
        assert len(sender.drawn) == 2, "drawn again after its jobs moved"
        assert "invalid usage location" in words(sender.drawn[0])
        assert "invalid usage location" not in words(sender.drawn[1])
        assert f"{upn(0)} (set up in Microsoft 365)" in words(sender.drawn[1])
        # Nothing moved since: one drawing.
        again = _Overtaken(failed.id)
        await JobCards(again)(ended)  # type: ignore[arg-type]
        assert len(again.drawn) == 1

"""Provisioning seen by the admin in Teams (the public door): `number assign` typed in a chat,
the answer card saying the number is in the ledger and being set up in Teams, the same card
updated in place when the job ends (done, or failed with Graph's reason and a Retry button),
and Retry clicked. The bot runs for real (app on 127.0.0.1, auth on, its worker beside it)
against the fake Bot Connector, Entra ID and Graph."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot.domain.models import JobState, ProvisioningJob
from tests import cardcheck
from tests.fakes import SentActivity
from tests.support import provisioning_env as env
from tests.support.provisioning_env import CUSTOMER_TENANT, e164, oid, upn
from tests.support.teams_env import (
    ADMIN_OID,
    APP_ID,
    OUTSIDER_OID,
    ProvisionedWorld,
    message,
    provisioned_world,
    running_bot,
    texts,
    the_card,
    words,
)

World = ProvisionedWorld


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, empty_db_url: str) -> Iterator[World]:
    with provisioned_world(
        monkeypatch, empty_db_url, CUSTOMER_TENANT, env.ROLES, operation_delay=0.3
    ) as made:
        yield made


async def update_of(w: World, activity_id: str, after: int, wait: float = 20) -> SentActivity:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = [
            s
            for s in w.connector.activities[after:]
            if s.kind == "update" and s.activity_id == activity_id
        ]
        if found:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"the card {activity_id} was not updated")


def buttons(card: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in card.get("actions", []) if a.get("type") == "Action.Execute"]


async def test_the_answer_card_follows_the_job_to_its_end(world: World, artifacts: Any) -> None:
    w = world
    async with running_bot(w.settings, provision=True) as bot:
        await env.seed(w.graph, users=2)
        reply = await w.say(bot, f"number assign {e164(1)} to {upn(0)}")
        first = the_card(reply)
        assert "being set up in Teams" in words(first)
        seen = len(w.connector.activities)
        update = await update_of(w, reply.activity_id, 0)
        done = the_card(update)
        assert f"{e164(1)} is assigned to {upn(0)} in the ledger and in Teams." in words(done)
        assert buttons(done) == []
        assert w.graph.assigned(CUSTOMER_TENANT) == {e164(1): oid(upn(0))}

        # A failure: Graph's reason on the card, and a Retry button that works.
        w.graph.fail_number(e164(2), "The number is not in the tenant's telephone inventory.")
        reply = await w.say(bot, f"number assign {e164(2)} to {upn(1)}")
        failed = the_card(await update_of(w, reply.activity_id, seen))
        assert "in the ledger, but not in Teams" in words(failed)
        assert "not in the tenant's telephone inventory" in words(failed)
        [retry] = buttons(failed)
        assert retry["title"] == "Retry"
        job = await ProvisioningJob.get(e164=e164(2))
        assert job.state is JobState.FAILED
        # /metrics counts the jobs by state: one done, one failed.
        async with bot.http.get(str(bot.server.make_url("/metrics"))) as resp:
            page = await resp.text()
        assert 'fusion_provisioning_jobs{state="done"} 1.0' in page
        assert 'fusion_provisioning_jobs{state="failed"} 1.0' in page

        seen = len(w.connector.activities)
        invoke = message(
            "",
            w.connector.service_url,
            tenant=w.idp.tenant_id,
            type="invoke",
            name="adaptiveCard/action",
            value={
                "action": {"type": "Action.Execute", "verb": retry["verb"], "data": retry["data"]}
            },
            replyToId=reply.activity_id,
        )
        invoke.pop("text")
        answer = await bot.post(invoke, w.idp.channel_token(APP_ID, w.connector.service_url))
        assert answer.status == 200
        assert "will be sent to Teams again" in " ".join(texts(answer.body["value"]))
        final = the_card(await update_of(w, reply.activity_id, seen))
        assert "in the ledger and in Teams" in words(final)
    assert w.graph.assigned(CUSTOMER_TENANT) == {e164(1): oid(upn(0)), e164(2): oid(upn(1))}
    # What the admin sees, in order: schema 1.5, buttons as the house does them, rendered by the
    # official renderer at full width and at 400 px (screenshots in test-artifacts/provisioning).
    sequence = {
        "1-assign-pending": first,
        "2-assign-done": done,
        "3-assign-failed": failed,
        "4-retried-done": final,
    }
    folder = artifacts / "provisioning"
    cardcheck.check_cards(sequence, out_dir=folder, conventions=True)
    if cardcheck.renderer_available():
        narrow = cardcheck.render_cards(
            {f"{k}-400px": v for k, v in sequence.items()}, folder, width=400
        )
        assert all(not r["errors"] for r in narrow.values()), narrow


async def test_provisioning_lists_jobs_in_teams(world: World) -> None:
    w = world
    async with running_bot(w.settings, provision=True) as bot:
        await env.seed(w.graph, users=1)
        reply = await w.say(bot, f"number assign {e164(3)} to {upn(0)}")
        await update_of(w, reply.activity_id, 0)
        listing = the_card(await w.say(bot, "provisioning ACME-01 --state done"))
        assert e164(3) in words(listing) and "done" in words(listing)


def retry_invoke(w: World, job_id: Any, sender: str = ADMIN_OID) -> dict[str, Any]:
    data = {"verb": "provisioning.retry", "job_id": job_id}
    invoke = message(
        "",
        w.connector.service_url,
        tenant=w.idp.tenant_id,
        sender=sender,
        type="invoke",
        name="adaptiveCard/action",
        value={"action": {"type": "Action.Execute", "verb": "provisioning.retry", "data": data}},
    )
    invoke.pop("text")
    return invoke


async def test_the_retry_button_is_checked_like_any_command(world: World) -> None:
    w = world
    async with running_bot(w.settings, provision=True) as bot:
        await env.seed(w.graph, users=1)
        w.graph.fail_number(e164(4), "scripted refusal")
        reply = await w.say(bot, f"number assign {e164(4)} to {upn(0)}")
        await update_of(w, reply.activity_id, 0)
        job = await ProvisioningJob.get(e164=e164(4))
        assert job.state is JobState.FAILED
        token = w.idp.channel_token(APP_ID, w.connector.service_url)
        # Someone who is not an administrator: refused, nothing retried.
        answer = await bot.post(retry_invoke(w, job.id, sender=OUTSIDER_OID), token)
        assert answer.status == 200
        assert (await ProvisioningJob.get(id=job.id)).state is JobState.FAILED
        # Card data of the wrong kind, or naming no job: refused, never a form or a crash.
        for bad in ("x", None, [1], 10**30, -1, 999):
            answer = await bot.post(retry_invoke(w, bad), token)
            assert answer.status == 200, bad
            shown = " ".join(texts(answer.body["value"]))
            assert "Something went wrong" not in shown, (bad, shown)
            assert (await ProvisioningJob.get(id=job.id)).state is JobState.FAILED

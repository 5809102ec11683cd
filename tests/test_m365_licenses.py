"""Licenses provisioned into the customer's Microsoft 365 tenant (SPEC §9, issue 18), on SQLite
and PostgreSQL, through the command door and the worker, against the Graph fake over https with
real msal: assignLicense round trips, the free-unit check, Graph's per-user errors, a pack kept
all-or-nothing per user in Microsoft 365 too, throttling and a lost answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator

import pytest

from bot.commands.dispatch import run_text
from bot.commands.reply import Changed, Error, Progress, Table
from bot.domain.change import verify_chain
from bot.domain.models import AuditEvent, JobAction, JobState, LicenseAssignment, ProvisioningJob
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support import licensing_env as env
from tests.support import provisioning_env as numbers_env
from tests.support.graph_env import trust_fakes
from tests.support.ledger_state import check_invariants
from tests.support.licensing_env import CUSTOMER_TENANT, MCOEV, MCOPSTN1, SPE_E3, SPE_E5, oid, upn

pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeIdentityProvider, FakeGraph]]:
    trust_fakes(monkeypatch)
    with env.fakes() as pair:
        yield pair


async def holds(i: int) -> list[str]:
    rows = await LicenseAssignment.filter(account__upn=upn(i)).values_list(
        "product__name", flat=True
    )
    return sorted(str(r) for r in rows)


async def test_license_assign_and_unassign_reach_microsoft_365_once_each(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=3)
    settings = env.settings_for(idp, graph)
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        reply = await run_text(f"license assign TEAMS-PHONE to {upn(0)},{upn(1)}", ctx)
        assert isinstance(reply, Progress) and reply.ok, reply
        assert "being set up in Microsoft 365" in reply.text
        rows = reply.data["succeeded"]
        assert all(isinstance(r["provisioning_job"], int) for r in rows)
        # Written with the ledger change: the job's audit event is beside license.assign.
        actions = await AuditEvent.all().order_by("id").values_list("action", flat=True)
        assert actions[-2:] == ["provisioning.job", "license.assign"]
        assert graph.licenses(CUSTOMER_TENANT, oid(upn(0))) == set()

        await numbers_env.drain(env.worker(client))
        assert graph.licenses(CUSTOMER_TENANT, oid(upn(0))) == {MCOEV}
        assert graph.licenses(CUSTOMER_TENANT, oid(upn(1))) == {MCOEV}
        [sent, _] = [r for r in graph.requests if r.info.get("kind") == "assignLicense"]
        assert sent.json == {
            "addLicenses": [{"skuId": MCOEV, "disabledPlans": []}],
            "removeLicenses": [],
        }

        reply = await run_text(f"license unassign TEAMS-PHONE from {upn(0)}", ctx)
        assert isinstance(reply, Changed) and reply.ok and "Microsoft 365" in reply.text
        await numbers_env.drain(env.worker(client))
    assert graph.licenses(CUSTOMER_TENANT, oid(upn(0))) == set()
    assert graph.count("assignLicense") == 3
    states = await ProvisioningJob.all().values_list("state", flat=True)
    assert set(states) == {JobState.DONE}
    assert (await verify_chain())[0]


async def test_a_license_without_a_sku_stays_ledger_only(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=1)
    settings = env.settings_for(idp, graph)
    reply = await run_text(f"license assign VOICEMAIL to {upn(0)}", env.ctx_for(settings))
    assert isinstance(reply, Progress) and reply.ok
    assert await ProvisioningJob.all().count() == 0
    assert graph.count() == 0  # not even the free-unit check: nothing of it goes to Graph


async def test_a_shortfall_of_free_units_is_refused_with_the_figures_and_changes_nothing(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=4, units=3)
    graph.give_license(CUSTOMER_TENANT, "someone-else", MCOEV)  # 1 of 3 consumed by hand
    settings = env.settings_for(idp, graph)
    before = await AuditEvent.all().count()
    reply = await run_text(
        f"license assign TEAMS-PHONE to {upn(0)},{upn(1)},{upn(2)}", env.ctx_for(settings)
    )
    assert isinstance(reply, Error), reply
    assert reply.text.startswith(
        "Contoso Ltd's Microsoft 365 has 2 free MCOEV (3 bought, 1 assigned); TEAMS-PHONE needs 3."
    ), reply.text
    assert await AuditEvent.all().count() == before
    assert await LicenseAssignment.all().count() == 0
    # Two fit; open jobs count against the free units until they are done.
    reply = await run_text(
        f"license assign TEAMS-PHONE to {upn(0)},{upn(1)}", env.ctx_for(settings)
    )
    assert reply.ok, reply
    reply = await run_text(f"pack assign VOICE to {upn(2)}", env.ctx_for(settings))
    assert isinstance(reply, Error) and "2 more being set up" in reply.text, reply


async def test_graph_unreachable_for_the_unit_check_changes_nothing(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=1)
    graph.down("503")
    settings = env.settings_for(idp, graph)
    reply = await run_text(f"license assign TEAMS-PHONE to {upn(0)}", env.ctx_for(settings))
    assert isinstance(reply, Error) and reply.code == "unavailable"
    assert "Nothing was changed; try again" in reply.text
    assert await LicenseAssignment.all().count() == 0


async def test_graphs_per_user_errors_are_shown_per_user(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=4)
    graph.set_usage_location(oid(upn(0)), None)
    graph.give_license(CUSTOMER_TENANT, oid(upn(1)), SPE_E3)
    graph.exclusive(SPE_E3, SPE_E5)
    graph.users.pop(oid(upn(2)))  # not (or no longer) in the tenant's directory
    settings = env.settings_for(idp, graph)
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        users = ",".join(upn(i) for i in range(4))
        reply = await run_text(f"license assign M365-E5 to {users}", ctx)
        assert isinstance(reply, Progress) and len(reply.succeeded) == 4
        await numbers_env.drain(env.worker(client))
        listed = await run_text("provisioning --state failed", ctx)
    assert isinstance(listed, Table)
    reasons = {v["account"]: v["reason"] for v in listed.data["jobs"]}
    assert set(reasons) == {upn(0), upn(1), upn(2)}
    assert "invalid usage location" in reasons[upn(0)]
    assert "SPE_E3 and SPE_E5 are mutually exclusive" in reasons[upn(1)]
    assert "does not exist" in reasons[upn(2)]
    assert all(r.startswith("Microsoft 365 did not add M365-E5 for") for r in reasons.values())
    assert ["M365-E5", upn(0)] == listed.rows[-1][2:4] or any(
        row[2] == "M365-E5" for row in listed.rows
    )
    assert graph.licenses(CUSTOMER_TENANT, oid(upn(3))) == {SPE_E5}
    # A single license stays in the ledger (the reconcile shows the difference); retry works
    # once the cause is fixed.
    assert await holds(0) == ["M365-E5"]
    graph.set_usage_location(oid(upn(0)), "GB")
    job = await ProvisioningJob.get(upn=upn(0))
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        retried = await run_text(f"provisioning retry {job.id}", ctx)
        assert retried.ok, retried
        await numbers_env.drain(env.worker(client))
    assert graph.licenses(CUSTOMER_TENANT, oid(upn(0))) == {SPE_E5}


@pytest.mark.parametrize("atomic", [True, False], ids=["graph-atomic", "graph-partial"])
async def test_a_pack_refused_in_microsoft_365_is_taken_back_whole(
    fakes: tuple[FakeIdentityProvider, FakeGraph], atomic: bool
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=2)
    graph.atomic = atomic
    # The calling plan (the pack's second SKU) fails for user 0 only.
    graph.fail_license(oid(upn(0)), "License assignment failed: MCOPSTN1 is not sold in XX.")
    settings = env.settings_for(idp, graph)
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        reply = await run_text(f"pack assign VOICE to {upn(0)},{upn(1)}", ctx)
        assert isinstance(reply, Progress) and len(reply.succeeded) == 2
        assert await holds(0) == ["CALLING-PLAN", "TEAMS-PHONE", "VOICEMAIL"]
        await numbers_env.drain(env.worker(client))
    # User 0: nothing of the pack anywhere; user 1: all of it in both.
    assert graph.licenses(CUSTOMER_TENANT, oid(upn(0))) == set()
    assert await holds(0) == []
    assert graph.licenses(CUSTOMER_TENANT, oid(upn(1))) == {MCOEV, MCOPSTN1}
    assert await holds(1) == ["CALLING-PLAN", "TEAMS-PHONE", "VOICEMAIL"]
    failed = await ProvisioningJob.get(upn=upn(0))
    assert failed.state is JobState.FAILED and failed.pack == "VOICE"
    assert "not sold in XX" in (failed.reason or "")
    assert "taken back from" in (failed.reason or "")
    event = await AuditEvent.filter(action="pack.takeback").get()
    assert event.source == "provisioning" and event.target == f"account:{upn(0)}"
    assert event.after["taken_back"] == ["CALLING-PLAN", "TEAMS-PHONE", "VOICEMAIL"]
    # Retrying the failed share is refused: the ledger no longer holds the pack.
    retried = await run_text(f"provisioning retry {failed.id}", env.ctx_for(settings))
    assert isinstance(retried, Error) and "no longer holds service pack VOICE" in retried.text
    await check_invariants()
    assert (await verify_chain())[0]


async def test_throttling_and_a_lost_answer_still_give_one_effect(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=2)
    settings = env.settings_for(idp, graph)
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        assert (await run_text(f"license assign TEAMS-PHONE to {upn(0)}", ctx)).ok
        graph.throttle(2, retry_after=0.2)
        await numbers_env.drain(env.worker(client))
        assert graph.licenses(CUSTOMER_TENANT, oid(upn(0))) == {MCOEV}
        assert any(r.status == 429 for r in graph.requests)

        # A crash after sending: the job is pending with an attempt, Microsoft 365 already
        # holds the license. The next taker reads licenseDetails and sends nothing.
        assert (await run_text(f"license assign TEAMS-PHONE to {upn(1)}", ctx)).ok
        job = await ProvisioningJob.get(upn=upn(1))
        await ProvisioningJob.filter(id=job.id).update(attempts=1)
        graph.give_license(CUSTOMER_TENANT, oid(upn(1)), MCOEV)
        calls = graph.count("assignLicense")
        await numbers_env.drain(env.worker(client))
    assert graph.count("assignLicense") == calls
    job = await ProvisioningJob.get(id=job.id)
    assert job.state is JobState.DONE and job.action is JobAction.LICENSE_ADD
    assert graph.consumed(CUSTOMER_TENANT, MCOEV) == 2


async def test_where_a_worker_runs_the_bulk_answer_shows_microsoft_365s_answer_per_user(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=3)
    graph.set_usage_location(oid(upn(0)), None)
    graph.fail_license(oid(upn(1)), "License assignment failed: MCOPSTN1 is not sold in XX.")
    settings = env.settings_for(idp, graph)
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        ctx.services = dataclasses.replace(ctx.services, m365_wait_seconds=20.0)
        running = asyncio.create_task(env.worker(client).run())
        try:
            single = await run_text(f"license assign M365-E5 to {upn(0)},{upn(2)}", ctx)
            pack = await run_text(f"pack assign VOICE to {upn(1)},{upn(2)}", ctx)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    assert isinstance(single, Progress) and not single.ok
    [(who, why)] = single.failed
    assert who == upn(0) and "invalid usage location" in why and "Kept in the ledger" in why
    assert single.succeeded == [f"{upn(2)} (set up in Microsoft 365)"]
    assert single.data["microsoft_365"][upn(0)]["state"] == "failed"
    assert isinstance(pack, Progress)
    [(who, why)] = pack.failed
    assert who == upn(1) and "not sold in XX" in why and "taken back" in why
    assert pack.succeeded == [f"{upn(2)} (set up in Microsoft 365)"]
    assert await holds(1) == [] and await holds(2) == [
        "CALLING-PLAN", "M365-E5", "TEAMS-PHONE", "VOICEMAIL"
    ]  # fmt: skip

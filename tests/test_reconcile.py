"""Reconcile (SPEC §9, issue 18), on SQLite and PostgreSQL, through the command door against the
Graph fake: every kind of difference between the tenant and the ledger is found, each fix works
either way and is audited, a fix into the ledger obeys the ledger's rules, fixing twice has one
effect, a fix racing an admin keeps every invariant, and Graph unavailable changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import pytest

from bot.commands.dispatch import run_text
from bot.commands.reconcile import DriftReport
from bot.commands.reply import Changed, Error
from bot.domain import db, ledger, licensing, numbers
from bot.domain.change import verify_chain
from bot.domain.models import (
    AuditEvent,
    Drift,
    DriftState,
    NumberState,
    PhoneNumber,
    ReconcileRun,
)
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support import licensing_env as env
from tests.support import provisioning_env as numbers_env
from tests.support.graph_env import trust_fakes
from tests.support.ledger_state import check_invariants
from tests.support.licensing_env import CUSTOMER_TENANT, OPS, oid, upn
from tests.support.provisioning_env import e164

pytestmark = pytest.mark.usefixtures("database")

ALL_KINDS = {
    "number-only-in-teams",
    "number-missing-in-teams",
    "number-failed-in-teams",
    "number-other-holder",
    "license-only-in-teams",
    "license-missing-in-teams",
}


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeIdentityProvider, FakeGraph]]:
    trust_fakes(monkeypatch)
    with env.fakes() as pair:
        yield pair


async def report(ctx: Any, words: str = "reconcile ACME-01") -> dict[str, Any]:
    reply = await run_text(words, ctx)
    assert isinstance(reply, DriftReport), reply
    [run] = reply.data["runs"]
    return {d["kind"]: d for d in run["differences"]} | {"_run": run}


async def test_every_kind_of_difference_is_found_and_each_fix_works_and_is_audited(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    async with env.drifted_tenant(idp, graph) as (ctx, client):
        found = await report(ctx)
        run = found.pop("_run")
        assert set(found) == ALL_KINDS and len(run["differences"]) == 6
        assert found["number-only-in-teams"]["number"] == e164(4)
        assert found["number-only-in-teams"]["teams"]["account"] == upn(4)
        assert found["number-only-in-teams"]["ledger"]["state"] == "available"
        assert found["number-missing-in-teams"]["ledger"]["account"] == upn(1)
        assert found["number-failed-in-teams"]["teams"]["state"] == "assignmentFailed"
        assert found["number-other-holder"]["teams"]["account"] == upn(5)
        assert found["number-other-holder"]["ledger"]["account"] == upn(3)
        assert found["license-only-in-teams"]["license"] == "TEAMS-PHONE"
        assert found["license-only-in-teams"]["ledger"]["account"] == upn(2)
        assert found["license-missing-in-teams"]["license"] == "CALLING-PLAN"
        # Paged like Graph: every page of the listings was read.
        assert run["graph_calls"] >= 3

        fixes = {
            "number-missing-in-teams": "teams",
            "number-failed-in-teams": "teams",
            "number-other-holder": "ledger",
            "number-only-in-teams": "ledger",
            "license-only-in-teams": "teams",
            "license-missing-in-teams": "ledger",
        }
        for kind, side in fixes.items():
            reply = await run_text(f"reconcile fix {found[kind]['id']} --to {side}", ctx)
            assert isinstance(reply, Changed) and reply.ok, (kind, reply)
        await numbers_env.drain(env.worker(client))
        again = await report(ctx)
        assert again.pop("_run")["differences"] == []
    assert graph.assigned(CUSTOMER_TENANT) == {
        e164(0): oid(upn(0)),
        e164(1): oid(upn(1)),
        e164(2): oid(upn(2)),
        e164(3): oid(upn(5)),
        e164(4): oid(upn(4)),
    }
    moved = await PhoneNumber.get(e164=e164(3)).prefetch_related("holder")
    assert moved.holder is not None and moved.holder.upn == upn(5)
    assert moved.state is NumberState.ASSIGNED  # moved, never through quarantine
    assert graph.licenses(CUSTOMER_TENANT, oid(upn(2))) == set()
    fixed = await AuditEvent.filter(action="reconcile.fix").count()
    assert fixed == 6
    assert await AuditEvent.filter(action="reconcile.run").count() == 2
    await check_invariants()
    assert (await verify_chain())[0]


async def test_fixing_twice_has_one_effect_and_the_other_button_says_so(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    async with env.drifted_tenant(idp, graph) as (ctx, client):
        found = await report(ctx)
        drift = found["number-only-in-teams"]["id"]
        assert (await run_text(f"reconcile fix {drift} --to ledger", ctx)).ok
        events = await AuditEvent.all().count()
        for side in ("ledger", "teams"):
            reply = await run_text(f"reconcile fix {drift} --to {side}", ctx)
            assert isinstance(reply, Error) and "already fixed (ledger side" in reply.text
            # When, as people read it (UTC for a reader whose zone Teams did not send).
            assert re.search(r", \d{1,2} [A-Z][a-z]{2} \d\d:\d\d UTC\)", reply.text), reply.text
        # In the reader's own time zone when Teams sent one.
        reader = dataclasses.replace(ctx.actor, timezone="Europe/Berlin")
        berlin = dataclasses.replace(ctx, actor=reader)
        reply = await run_text(f"reconcile fix {drift} --to ledger", berlin)
        assert isinstance(reply, Error)
        assert re.search(r", \d{1,2} [A-Z][a-z]{2} \d\d:\d\d CES?T\)", reply.text), reply.text
        assert await AuditEvent.all().count() == events
        # Two at once: one of them does it.
        other = found["license-missing-in-teams"]["id"]
        replies = await asyncio.gather(
            *(run_text(f"reconcile fix {other} --to ledger", ctx) for _ in range(3))
        )
        assert sum(r.ok for r in replies) == 1, replies
    assert await AuditEvent.filter(action="reconcile.fix").count() == 2
    await check_invariants()


async def test_a_fix_into_the_ledger_obeys_its_rules_or_is_refused_with_the_reason(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=6)
    settings = env.settings_for(idp, graph)
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        # A number Teams has but that the ledger keeps in quarantine.
        await numbers.assign_number(OPS, e164(6), upn(1))
        await numbers.release_number(OPS, e164(6), 30)
        graph.assign_by_hand(CUSTOMER_TENANT, e164(6), oid(upn(4)))
        # A license Microsoft 365 has beyond what the subscription was allocated.
        await licensing.assign_license(OPS, "M365-E5", [upn(i) for i in range(5)])
        await ledger.release(OPS, 5, "M365-E5", "ACME-01")  # 5 allocated, 5 in use
        for i in range(6):
            graph.give_license(CUSTOMER_TENANT, oid(upn(i)), env.SPE_E5)
        found = await report(ctx)
        before = await AuditEvent.all().count()
        reply = await run_text(
            f"reconcile fix {found['number-only-in-teams']['id']} --to ledger", ctx
        )
        assert isinstance(reply, Error) and "in quarantine until" in reply.text, reply
        reply = await run_text(
            f"reconcile fix {found['license-only-in-teams']['id']} --to ledger", ctx
        )
        assert isinstance(reply, Error), reply
        assert "ACME-01 has 0 of its 5 M365-E5 left (5 in use); 1 needed." in reply.text
        assert await AuditEvent.all().count() == before
        drift = await Drift.get(id=found["number-only-in-teams"]["id"])
        assert drift.state is DriftState.OPEN  # refused: still open, fixable the other way
        # The other way works: Teams lets go of it.
        assert found["license-only-in-teams"]["ledger"]["account"] == upn(5)
        assert (await run_text(f"reconcile fix {drift.id} --to teams", ctx)).ok
        await numbers_env.drain(env.worker(client))
    assert e164(6) not in graph.assigned(CUSTOMER_TENANT)
    await check_invariants()


async def test_graph_unavailable_gives_a_clear_answer_and_changes_nothing(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=2)
    settings = env.settings_for(idp, graph)
    events = await AuditEvent.all().count()
    graph.down("503")
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        reply = await run_text("reconcile", ctx)
    assert isinstance(reply, Error) and reply.code == "unavailable"
    assert "Nothing was compared or changed" in reply.text
    assert await ReconcileRun.all().count() == 0
    assert await AuditEvent.all().count() == events


async def test_reconcile_says_why_when_provisioning_is_off() -> None:
    from bot.config import Settings
    from tests.support.ledger_state import context

    reply = await run_text("reconcile", context(settings=Settings()))
    assert isinstance(reply, Error) and "FUSION_PROVISIONING=off" in reply.text


async def test_a_fix_racing_an_admins_change_keeps_every_invariant(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    """On PostgreSQL the fix and the admin's change run in concurrent transactions (the pool's
    connections); on SQLite they take turns. Either way one wins and the other is refused."""
    idp, graph = fakes
    await env.seed(graph, users=6)
    settings = env.settings_for(idp, graph)
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        for round_ in range(4 if db.dialect() == "postgres" else 2):
            number = e164(10 + round_)
            graph.assign_by_hand(CUSTOMER_TENANT, number, oid(upn(4)))
            found = await report(ctx)
            drift = found["number-only-in-teams"]["id"]
            fix, admin = await asyncio.gather(
                run_text(f"reconcile fix {drift} --to ledger", ctx),
                run_text(f"number assign {number} to {upn(5)}", ctx),
            )
            assert fix.ok != admin.ok, (fix, admin)  # one of them
            holder = await PhoneNumber.get(e164=number).prefetch_related("holder")
            assert holder.holder is not None
            assert holder.holder.upn == (upn(4) if fix.ok else upn(5))
            # Give the number back for the next round (both sides).
            await numbers.release_number(OPS, number, 0)
            graph.assign_by_hand(CUSTOMER_TENANT, number, None)
            await check_invariants()
    assert (await verify_chain())[0]


async def test_a_license_fix_racing_an_admin_for_the_last_unit_keeps_the_allocation(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=6)
    settings = env.settings_for(idp, graph)
    await licensing.assign_license(OPS, "M365-E5", [upn(0), upn(1)])
    await ledger.release(OPS, 7, "M365-E5", "ACME-01")  # 3 allocated, 2 in use: one left
    for i in (0, 1, 2):
        graph.give_license(CUSTOMER_TENANT, oid(upn(i)), env.SPE_E5)
    async with env.tenant_graph(settings) as client:
        ctx = env.ctx_for(settings, client)
        found = await report(ctx)
        drift = found["license-only-in-teams"]
        assert drift["ledger"]["account"] == upn(2)
        fix, admin = await asyncio.gather(
            run_text(f"reconcile fix {drift['id']} --to ledger", ctx),
            run_text(f"license assign M365-E5 to {upn(3)}", ctx),
        )
    admin_ok = admin.ok and not admin.data["failed"]
    assert fix.ok != admin_ok, (fix, admin)  # the last unit went to exactly one of them
    await check_invariants()
    assert (await verify_chain())[0]


async def test_every_linked_subscription_is_compared_reading_each_tenant_once(
    fakes: tuple[FakeIdentityProvider, FakeGraph],
) -> None:
    idp, graph = fakes
    await env.seed(graph, users=2)
    await ledger.add_subscription(OPS, "ACME-02", "Contoso Ltd")
    await ledger.add_customer(OPS, "Fabrikam")  # not linked: not compared
    await ledger.add_subscription(OPS, "FAB-01", "Fabrikam")
    settings = env.settings_for(idp, graph)
    async with env.tenant_graph(settings) as client:
        graph.clear_records()
        reply = await run_text("reconcile", env.ctx_for(settings, client))
    assert isinstance(reply, DriftReport), reply
    assert [r["subscription"] for r in reply.data["runs"]] == ["ACME-01", "ACME-02"]
    assert reply.title == "Teams and the ledger agree"
    calls = [graph.count(k) for k in ("numberAssignments", "users", "subscribedSkus")]
    assert calls == [1, 1, 1]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_fix_of_a_difference_cleaned_up_under_it_says_it_is_not_kept(
    fakes: tuple[FakeIdentityProvider, FakeGraph], db_url: str
) -> None:
    """A difference is deleted as `reconcile.prune` deletes it (in a transaction of its own, on
    another connection) while a fix of it waits for the row: committed once the fix is blocked,
    the fix finds nothing to mark and answers "not kept", changing nothing. It answered
    "Something went wrong" (the fix read the row again with .get())."""
    import asyncpg

    idp, graph = fakes
    async with env.drifted_tenant(idp, graph) as (ctx, client):
        drift = (await report(ctx))["number-only-in-teams"]["id"]
        events = await AuditEvent.all().count()
        other = await asyncpg.connect(db_url.replace("postgres://", "postgresql://", 1))
        try:
            deleting = other.transaction()
            await deleting.start()
            await other.execute("DELETE FROM drift WHERE id = $1", drift)
            fixing = asyncio.create_task(run_text(f"reconcile fix {drift} --to ledger", ctx))
            for _ in range(200):  # until the fix waits for the row the other holds
                waiting = await other.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND pid <> pg_backend_pid()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting, "the fix never waited for the row"
            await deleting.commit()
            reply = await fixing
        finally:
            await other.close()
        assert isinstance(reply, Error), reply
        assert f"Difference {drift} is not kept" in reply.text, reply.text
        assert await AuditEvent.all().count() == events

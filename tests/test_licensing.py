"""Customer licenses and service packs, on SQLite and PostgreSQL: one license per account at
most, never more in use than allocated, a pack all-or-nothing per account, and bulk answers
that say per account what happened and why."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.commands import licensing as licensing_commands
from bot.commands.dispatch import run_text
from bot.commands.registry import Services
from bot.commands.reply import Changed, Error, Progress
from bot.domain import directory, ledger, licensing
from bot.domain.change import verify_chain
from bot.domain.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from bot.domain.models import (
    Account,
    AccountKind,
    AuditEvent,
    LicenseAssignment,
    ProductKind,
    ServicePack,
    Subscription,
)
from bot.domain.usage import usage_report
from tests.support import ledger_state
from tests.support.ledger_state import check_invariants, context, origin, snapshot

pytestmark = pytest.mark.usefixtures("database")

OPS = origin()
ROOT = Path(__file__).resolve().parent.parent


async def state() -> dict[str, Any]:
    return {
        **await snapshot(),
        "assignments": await LicenseAssignment.all()
        .order_by("id")
        .values_list("product_id", "account_id"),
        "packs": await ServicePack.all().order_by("id").values_list("id", "name"),
    }


refused = functools.partial(ledger_state.refused, state=state)


async def seed(e5: int = 3, phone: int = 2) -> None:
    await ledger.add_customer(OPS, "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-02", "Contoso Ltd")
    await ledger.add_product(OPS, "M365-E5", ProductKind.LICENSE, 1000, sku="SPE_E5")
    await ledger.add_product(OPS, "TEAMS-PHONE", ProductKind.LICENSE, 1000)
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 1000)
    if e5:
        await ledger.allocate(OPS, e5, "M365-E5", "ACME-01")
    if phone:
        await ledger.allocate(OPS, phone, "TEAMS-PHONE", "ACME-01")
    for upn in ("alice@contoso.com", "bob@contoso.com", "carol@contoso.com"):
        await directory.add_account(OPS, upn, "ACME-01")
    await directory.add_account(OPS, "queue@contoso.com", "ACME-01", AccountKind.CALL_QUEUE)
    await directory.add_account(OPS, "eve@contoso.com", "ACME-02")


async def holds(upn: str) -> list[str]:
    rows = await LicenseAssignment.filter(account__upn=upn).values_list("product__name", flat=True)
    return sorted(str(r) for r in rows)


# ----- licenses --------------------------------------------------------------------------


async def test_assign_a_license_to_a_user_and_a_resource_account() -> None:
    await seed()
    out = await licensing.assign_license(OPS, "m365-e5", ["Alice@Contoso.com", "queue@contoso.com"])
    assert out.succeeded == ["Alice@Contoso.com", "queue@contoso.com"] and out.failed == []
    assert out.added == {"Alice@Contoso.com": ["M365-E5"], "queue@contoso.com": ["M365-E5"]}
    assert await holds("alice@contoso.com") == ["M365-E5"]
    report = {u.name: u for u in await usage_report()}
    assert report["M365-E5"].subscriptions[0].in_use == 2
    events = await AuditEvent.filter(action="license.assign").order_by("id")
    assert [e.target for e in events] == ["account:alice@contoso.com", "account:queue@contoso.com"]
    assert events[0].before == {"licenses": []} and events[0].after == {"licenses": ["M365-E5"]}


async def test_a_license_is_held_once_and_a_second_assignment_changes_nothing() -> None:
    await seed()
    await licensing.assign_license(OPS, "M365-E5", ["alice@contoso.com"])
    before = await state()
    out = await licensing.assign_license(OPS, "M365-E5", ["ALICE@contoso.com"])
    # Already done: not a failure, and nothing changes.
    assert out.failed == []
    assert out.succeeded == ["ALICE@contoso.com"] and out.added == {"ALICE@contoso.com": []}
    assert out.notes == {"ALICE@contoso.com": licensing.ALREADY_HELD}
    assert "assigned to 0 of 1 account(s); 1 already held it" in out.message
    assert await state() == before


async def test_the_last_license_unit_goes_to_one_account_only() -> None:
    await seed(e5=2)
    out = await licensing.assign_license(
        OPS, "M365-E5", ["alice@contoso.com", "bob@contoso.com", "carol@contoso.com"]
    )
    assert out.succeeded == ["alice@contoso.com", "bob@contoso.com"]
    assert out.failed == [
        ("carol@contoso.com", "ACME-01 has 0 of its 2 M365-E5 left (2 in use); 1 needed.")
    ]
    assert await holds("carol@contoso.com") == []
    # The allocation cannot now be released below what is in use.
    await refused(lambda: ledger.release(OPS, 1, "M365-E5", "ACME-01"), Conflict, "uses 2")
    await check_invariants()


async def test_license_assign_refusals() -> None:
    await seed()
    await refused(
        lambda: licensing.assign_license(OPS, "M365-E3", ["alice@contoso.com"]), NotFound, "M365-E5"
    )
    await refused(
        lambda: licensing.assign_license(OPS, "TEAMS-SEATS", ["alice@contoso.com"]),
        InvalidInput,
        "technical product",
    )
    await refused(lambda: licensing.assign_license(OPS, "M365-E5", [" ", ""]), InvalidInput)
    too_many = [f"u{i}@contoso.com" for i in range(licensing.MAX_BULK + 1)]
    await refused(
        lambda: licensing.assign_license(OPS, "M365-E5", too_many), InvalidInput, "at most"
    )
    out = await licensing.assign_license(OPS, "M365-E5", ["eve@contoso.com", "nobody@contoso.com"])
    assert out.succeeded == []
    reasons = dict(out.failed)
    assert "ACME-02 has no M365-E5 allocated" in reasons["eve@contoso.com"]
    assert "No user or resource account named 'nobody@contoso.com'" in reasons["nobody@contoso.com"]


async def test_unassign_a_license() -> None:
    await seed()
    await licensing.assign_license(OPS, "M365-E5", ["alice@contoso.com"])
    out = await licensing.unassign_license(OPS, "m365-e5", "Alice@contoso.com")
    assert out.before == {"licenses": ["M365-E5"]} and out.after == {"licenses": []}
    assert await holds("alice@contoso.com") == []
    await refused(
        lambda: licensing.unassign_license(OPS, "M365-E5", "alice@contoso.com"),
        Conflict,
        "does not hold M365-E5",
    )
    await refused(
        lambda: licensing.unassign_license(OPS, "M365-E5", "alce@contoso.com"), NotFound, "alice"
    )


# ----- service packs ---------------------------------------------------------------------


async def test_create_a_pack_and_its_refusals() -> None:
    await seed()
    out = await licensing.create_pack(OPS, "VOICE-STD", ["m365-e5", "TEAMS-PHONE"])
    assert out.after == {"name": "VOICE-STD", "licenses": ["M365-E5", "TEAMS-PHONE"]}
    assert await licensing.list_packs() == [("VOICE-STD", ["M365-E5", "TEAMS-PHONE"])]
    await refused(
        lambda: licensing.create_pack(OPS, "voice-std", ["M365-E5"]), InvalidInput, "naming"
    )
    await refused(lambda: licensing.create_pack(OPS, "VOICE-STD", ["M365-E5"]), AlreadyExists)
    await refused(
        lambda: licensing.create_pack(OPS, "VOICE-2", ["M365-E5", "m365-e5"]),
        InvalidInput,
        "more than once",
    )
    await refused(
        lambda: licensing.create_pack(OPS, "VOICE-2", ["TEAMS-SEATS"]), InvalidInput, "technical"
    )
    await refused(lambda: licensing.create_pack(OPS, "VOICE-2", ["TEAMS-PHONES"]), NotFound)
    await refused(lambda: licensing.create_pack(OPS, "VOICE-2", []), InvalidInput, "at least one")


async def test_a_pack_is_all_or_nothing_per_account() -> None:
    await seed(e5=3, phone=2)
    await licensing.create_pack(OPS, "VOICE", ["M365-E5", "TEAMS-PHONE"])
    await licensing.assign_license(OPS, "M365-E5", ["bob@contoso.com"])
    out = await licensing.assign_pack(
        OPS, "voice", ["alice@contoso.com", "bob@contoso.com", "carol@contoso.com"]
    )
    assert out.succeeded == ["alice@contoso.com", "bob@contoso.com"]
    assert out.added == {
        "alice@contoso.com": ["M365-E5", "TEAMS-PHONE"],
        "bob@contoso.com": ["TEAMS-PHONE"],
    }
    # carol could have had the last M365-E5 but not a TEAMS-PHONE: she gets neither.
    assert out.failed == [
        ("carol@contoso.com", "ACME-01 has 0 of its 2 TEAMS-PHONE left (2 in use); 1 needed.")
    ]
    assert await holds("carol@contoso.com") == []
    assert await holds("bob@contoso.com") == ["M365-E5", "TEAMS-PHONE"]
    again = await licensing.assign_pack(OPS, "VOICE", ["alice@contoso.com"])
    assert again.failed == []
    assert again.notes == {"alice@contoso.com": licensing.ALREADY_HELD}
    await check_invariants()


async def test_pack_assignment_to_500_accounts_where_some_fail() -> None:
    """460 get the whole pack; 40 get nothing, each with its reason; progress after each one."""
    await seed(e5=0, phone=0)
    acme1 = await Subscription.get(code="ACME-01")
    acme2 = await Subscription.get(code="ACME-02")
    await Account.bulk_create(
        [Account(upn=f"user{i:03d}@contoso.com", subscription_id=acme1.id) for i in range(480)]
        + [Account(upn=f"guest{i}@fabrikam.com", subscription_id=acme2.id) for i in range(10)]
    )
    await ledger.allocate(OPS, 480, "M365-E5", "ACME-01")
    await ledger.allocate(OPS, 460, "TEAMS-PHONE", "ACME-01")
    await licensing.create_pack(OPS, "VOICE", ["M365-E5", "TEAMS-PHONE"])
    early = [f"user{i:03d}@contoso.com" for i in range(20)]
    await licensing.assign_license(OPS, "M365-E5", early)  # these only lack TEAMS-PHONE

    upns = (
        [f"user{i:03d}@contoso.com" for i in range(480)]
        + [f"guest{i}@fabrikam.com" for i in range(10)]
        + [f"ghost{i}@contoso.com" for i in range(10)]
    )
    calls: list[tuple[int, int, int, int]] = []

    async def on_progress(done: int, total: int, ok: Any, failed: Any) -> None:
        calls.append((done, total, len(ok), len(failed)))

    audit_before = await AuditEvent.all().count()
    out = await licensing.assign_pack(OPS, "VOICE", upns, on_progress=on_progress)

    ok = [f"user{i:03d}@contoso.com" for i in range(460)]
    assert out.total == 500 and out.succeeded == ok
    assert [u for u, _ in out.failed] == upns[460:]
    reasons = dict(out.failed)
    for i in range(460, 480):
        assert reasons[f"user{i:03d}@contoso.com"] == (
            "ACME-01 has 0 of its 460 TEAMS-PHONE left (460 in use); 1 needed."
        )
    for i in range(10):
        assert "ACME-02 has no M365-E5 allocated" in reasons[f"guest{i}@fabrikam.com"]
        assert "ACME-02 has no TEAMS-PHONE allocated" in reasons[f"guest{i}@fabrikam.com"]
        assert "No user or resource account named" in reasons[f"ghost{i}@contoso.com"]
    assert out.added["user000@contoso.com"] == ["TEAMS-PHONE"]
    assert out.added["user459@contoso.com"] == ["M365-E5", "TEAMS-PHONE"]

    held: dict[str, set[str]] = {}
    rows = await LicenseAssignment.all().values_list("account__upn", "product__name")
    for upn, name in rows:
        held.setdefault(upn, set()).add(name)
    assert all(held[u] == {"M365-E5", "TEAMS-PHONE"} for u in ok)
    assert not any(u in held for u in upns[460:])  # the failed ones hold none of it
    assert len(rows) == 2 * 460

    assert [c[0] for c in calls] == list(range(1, 501))
    assert calls[-1] == (500, 500, 460, 40)
    # One audit event per account that got the pack, and the chain is intact.
    assert await AuditEvent.all().count() - audit_before == 460
    assert (await verify_chain())[0]
    await check_invariants()


async def test_dry_run_pack_assignment_predicts_the_real_one_and_changes_nothing() -> None:
    await seed(e5=3, phone=2)
    await licensing.create_pack(OPS, "VOICE", ["M365-E5", "TEAMS-PHONE"])
    upns = ["alice@contoso.com", "bob@contoso.com", "carol@contoso.com", "nobody@contoso.com"]
    before = await state()
    preview = await licensing.assign_pack(OPS, "VOICE", upns, dry_run=True)
    assert await state() == before
    # Only two TEAMS-PHONE: the preview counts what alice and bob would take.
    assert preview.succeeded == ["alice@contoso.com", "bob@contoso.com"]
    real = await licensing.assign_pack(OPS, "VOICE", upns)
    assert (real.succeeded, real.failed, real.added) == (
        preview.succeeded,
        preview.failed,
        preview.added,
    )


async def test_a_redelivered_bulk_request_redoes_nothing() -> None:
    await seed(e5=3, phone=3)
    await licensing.create_pack(OPS, "VOICE", ["M365-E5", "TEAMS-PHONE"])
    keyed = replace(OPS, idempotency_key="activity-42")
    first = await licensing.assign_pack(keyed, "VOICE", ["alice@contoso.com", "bob@contoso.com"])
    assert first.succeeded == ["alice@contoso.com", "bob@contoso.com"]
    before = await state()
    again = await licensing.assign_pack(keyed, "VOICE", ["alice@contoso.com", "bob@contoso.com"])
    assert again.succeeded == ["alice@contoso.com", "bob@contoso.com"] and again.failed == []
    assert set(again.notes.values()) == {"already done by an earlier delivery of this request"}
    assert await state() == before


# ----- through the command gate and the CLI ----------------------------------------------


async def test_pack_assign_command_reports_progress_as_it_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed(e5=3, phone=2)
    await licensing.create_pack(OPS, "VOICE", ["M365-E5", "TEAMS-PHONE"])
    monkeypatch.setattr(licensing_commands, "PROGRESS_INTERVAL_SECONDS", 0.0)
    updates: list[Progress] = []

    async def progress(reply: Progress) -> None:
        updates.append(reply)

    ctx = context()
    ctx.services = Services(progress=progress)
    reply = await run_text(
        "pack assign VOICE to alice@contoso.com,bob@contoso.com,carol@contoso.com", ctx
    )
    assert isinstance(reply, Progress) and reply.finished and not reply.ok
    assert reply.done == reply.total == 3
    assert reply.succeeded == ["alice@contoso.com", "bob@contoso.com"]
    assert reply.failed[0][0] == "carol@contoso.com" and "TEAMS-PHONE" in reply.failed[0][1]
    assert reply.data["failed"] == [{"upn": "carol@contoso.com", "reason": reply.failed[0][1]}]
    assert [(u.done, u.finished, len(u.succeeded)) for u in updates] == [
        (1, False, 1),
        (2, False, 2),
    ]

    # Without a progress service the command simply answers at the end.
    reply = await run_text("license assign M365-E5 to carol@contoso.com --dry-run", context())
    assert isinstance(reply, Progress) and reply.ok and reply.title.startswith("Dry run")


async def test_pack_commands_refuse_bad_input_with_the_usage() -> None:
    await seed()
    ctx = context()
    before = await state()
    reply = await run_text("pack create VOICE", ctx)
    assert isinstance(reply, Error) and reply.code == "usage" and "LICENSE is missing" in reply.text
    reply = await run_text("pack assign VOICE alice@contoso.com", ctx)
    assert isinstance(reply, Error) and "`to`" in reply.text
    reply = await run_text("pack assign VOCE to alice@contoso.com", ctx)
    assert isinstance(reply, Error) and reply.code == "not-found"
    reply = await run_text("license unassign M365-E5 from alice@contoso.com", ctx)
    assert isinstance(reply, Error) and "does not hold" in reply.text
    assert await state() == before
    reply = await run_text("pack create VOICE M365-E5 TEAMS-PHONE", ctx)
    assert isinstance(reply, Changed) and reply.after == {
        "name": "VOICE",
        "licenses": ["M365-E5", "TEAMS-PHONE"],
    }


async def cli(url: str, *words: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "Microsoft"))}
    env["DATABASE_URL"] = url
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", *words],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_license_and_pack_commands_as_json(database: str) -> None:
    await seed(e5=1, phone=5)
    created = await cli(database, "--json", "pack", "create", "VOICE", "M365-E5", "TEAMS-PHONE")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["after"]["licenses"] == ["M365-E5", "TEAMS-PHONE"]

    done = await cli(
        database,
        "--json",
        "--as",
        "ops@contoso.com",
        "license",
        "assign",
        "TEAMS-PHONE",
        "to",
        "alice@contoso.com,bob@contoso.com",
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["action"] == "license.assign" and body["failed"] == []
    assert [s["upn"] for s in body["succeeded"]] == ["alice@contoso.com", "bob@contoso.com"]

    # A bulk command where some accounts failed exits non-zero, the answer on standard error.
    partly = await cli(
        database, "--json", "pack", "assign", "VOICE", "to", "alice@contoso.com,carol@contoso.com"
    )
    assert partly.returncode == 1 and partly.stdout == ""
    body = json.loads(partly.stderr)
    assert [s["upn"] for s in body["succeeded"]] == ["alice@contoso.com"]
    assert body["succeeded"][0]["added"] == ["M365-E5"]
    assert body["failed"][0]["upn"] == "carol@contoso.com"
    event = await AuditEvent.filter(action="license.assign").order_by("id").first()
    assert event is not None and event.source == "cli" and event.actor_id == "ops@contoso.com"

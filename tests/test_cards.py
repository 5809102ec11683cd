"""Every card the bot can send: valid Adaptive Card 1.5 (official schema), the bot's button
convention (Action.Execute + Action.Submit fallback), ≤ 36 KB, and rendered without errors by
the official `adaptivecards` renderer in headless Chromium, with screenshots written to
test-artifacts/cards/bot-*.png.

The cards come from real commands run against a real (SQLite) ledger — help, lists with
paging, changes, dry runs, errors, forms, approvals in every state — plus one constructed
reply per Reply type for what no command produces yet (bulk progress).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.auth.actor import Actor
from bot.auth.policy import DevPolicy
from bot.commands import reply as replies
from bot.commands.approvals import approval_reply
from bot.commands.dispatch import run_text
from bot.commands.registry import Context
from bot.commands.reply import (
    Approval,
    Changed,
    Error,
    Form,
    FormField,
    Message,
    Progress,
    Reply,
    Table,
    Usage,
)
from bot.config import DEFAULT_NAMING_RULE, Settings
from bot.domain import approvals, db, ledger
from bot.domain.models import ApprovalRequest, NumberType, ProductKind
from bot.domain.naming import set_naming_rule
from bot.domain.usage import ProductUsage, SubscriptionUsage
from bot.teams import render as r
from bot.teams.card_actions import run_action
from tests import cardcheck
from tests.support import dbutil
from tests.support.ledger_state import origin

SETTINGS = Settings(approval_threshold=100)
#: Teams on a phone or beside a meeting (about 360–450 px), and a full-width desktop card.
NARROW_AND_FULL = (400, 800)
POLICY = DevPolicy(("ada", "bob"))
_ids = itertools.count(1)


def context(who: str = "ada") -> Context:
    actor = Actor(
        object_id=who,
        name={"ada": "Ada Lovelace", "bob": "Bob Kahn"}.get(who, who),
        tenant_id="t",
        correlation_id=f"c-{next(_ids)}",
        conversation_id="conv",
    )
    return Context(actor=actor, settings=SETTINGS, policy=POLICY)


async def say(text: str, who: str = "ada") -> Reply:
    return await run_text(text, context(who))


@pytest_asyncio.fixture
async def ledger_db(sqlite_url: str) -> AsyncIterator[None]:
    set_naming_rule(DEFAULT_NAMING_RULE)
    await db.open_database(sqlite_url, migrate=False)
    try:
        await dbutil.empty(sqlite_url)
        yield
    finally:
        await db.close_database()


async def seed() -> None:
    ops = origin()
    await ledger.add_customer(ops, "Contoso Ltd")
    await ledger.add_customer(ops, "Fabrikam, Inc.")
    await ledger.add_subscription(ops, "ACME-01", "Contoso Ltd")
    await ledger.add_subscription(ops, "FAB-01", "Fabrikam, Inc.")
    await ledger.add_product(ops, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 1000)
    await ledger.add_product(ops, "SIP-CHANNELS", ProductKind.SIP_CHANNELS, 200)
    for country, kind in [
        ("GB", NumberType.GEOGRAPHIC),
        ("GB", NumberType.MOBILE),
        ("US", NumberType.TOLL_FREE),
        ("DE", NumberType.NATIONAL),
    ]:
        await ledger.add_product(
            ops,
            f"NUMBERS-{country}-{kind.value.upper()}",
            ProductKind.NUMBERS,
            500,
            country=country,
            number_type=kind,
        )
    for i in range(24):
        await ledger.add_product(ops, f"M365-ADDON-{i:02}", ProductKind.LICENSE, None)
    await ledger.allocate(ops, 90, "TEAMS-SEATS", "ACME-01")
    await ledger.allocate(ops, 40, "SIP-CHANNELS", "FAB-01")
    await ledger.allocate(ops, 75, "NUMBERS-GB-GEOGRAPHIC", "ACME-01")


async def approval_in(status: str) -> Approval:
    reply = await say("allocate 300 TEAMS-SEATS to ACME-01")
    assert isinstance(reply, Approval), reply
    rid = reply.request_id
    if status == "pending":
        return reply
    if status == "approved":
        done = await say(f"approve {rid} within the Q3 budget", "bob")
    elif status == "rejected":
        done = await say(f"reject {rid} ACME asked for 30, not 300", "bob")
    elif status == "expired":
        await ApprovalRequest.filter(id=rid).update(expires_at=datetime.now(UTC) - timedelta(1))
        done = approval_reply(await approvals.current(rid))
    else:  # failed: the pool shrank before the approver got to it
        product = await ledger.find_product("TEAMS-SEATS")
        taken, _ = await ledger.allocation_totals(db.connection(), product.id)
        await ledger.set_capacity(origin(), "TEAMS-SEATS", taken)
        done = await say(f"approve {rid}", "bob")
        await ledger.set_capacity(origin(), "TEAMS-SEATS", 5000)
    assert isinstance(done, Approval) and done.status == status, done
    return done


async def busy_digest() -> Reply:
    """`digest now` over 15 pools with four weeks of daily snapshots: pools near exhaustion
    with a forecast, a trend, changes and pending approvals."""
    from datetime import date

    from bot.domain.models import Product, UsageSnapshot

    ops = origin()
    for i in range(15):
        name = f"POOL-{i:02}-{['GB-GEO', 'SIP', 'SEATS'][i % 3]}"
        await ledger.add_product(ops, name, ProductKind.CUSTOM, 1_000)
        await ledger.allocate(ops, 50 + 65 * i, name, "FAB-01")
    today = date.today()
    rows = []
    for product in await Product.filter(name__startswith="POOL-"):
        final = 50 + 65 * int(product.name[5:7])
        for back in range(28, 0, -1):
            rows.append(
                UsageSnapshot(
                    day=today - timedelta(days=back),
                    product_id=product.id,
                    capacity=1_000,
                    allocated=max(0, final - 6 * back),
                    in_use=0,
                )
            )
    await UsageSnapshot.bulk_create(rows)
    return await say("digest now")


def every_reply_type() -> dict[str, Reply]:
    """One constructed reply of each type (also the ones no command produces yet)."""
    return {
        "type-message": Message(
            title="Who you are",
            text="Plain information.",
            facts=[("Name", "Ada Lovelace"), ("Approver", "yes")],
        ),
        "type-table": Table(title="A list", columns=["Name", "Count"], rows=[["A", "1"]]),
        "type-changed": Changed(title="Changed", target="X", before={"a": 1}, after={"a": 2}),
        "type-error": Error(title="Usage: x", text="Something is missing.", usage="x N"),
        "type-form": Form(
            title="A form",
            command="allocate",
            usage="allocate N",
            form_id="f" * 16,
            fields=[
                FormField("quantity", "How many", kind="number"),
                FormField("flag", "A toggle", kind="toggle", required=False),
            ],
        ),
        "type-approval": Approval(
            title="Approval",
            request_id="abcdefghjk",
            summary="Something",
            requester="Ada",
            before={"x": 1},
            after={"x": 500},
            expires_at="2030-01-01 00:00 UTC",
        ),
        "type-progress-running": Progress(
            title="Assigning pack GOLD to 40 users",
            done=14,
            total=40,
            finished=False,
            succeeded=[f"user{i}@contoso.com" for i in range(12)],
            failed=[
                ("user12@contoso.com", "no Teams seat left in ACME-01"),
                ("user13@contoso.com", "no such user"),
            ],
        ),
        "type-usage": Usage(
            title="Usage",
            products=[
                ProductUsage(
                    "NUMBERS-GB-GEOGRAPHIC",
                    "technical",
                    "numbers",
                    "numbers",
                    "active",
                    1_750,
                    1_400,
                    612,
                    [SubscriptionUsage("CONTOSO-01", 1_400, 612)],
                )
            ],
        ),
        "type-progress-done": Progress(
            title="Pack GOLD assigned",
            done=3,
            total=3,
            succeeded=["a@contoso.com", "b@contoso.com", "c@contoso.com"],
            text="All three users now hold every license of GOLD.",
        ),
    }


async def gallery() -> dict[str, dict[str, Any]]:
    """name → card, for every kind of answer the bot gives."""
    await seed()
    out: dict[str, Reply] = {}
    out["help"] = await say("help")
    out["help-allocate"] = await say("help allocate")
    out["whoami"] = await say("whoami")
    out["whoami-not-admin"] = await say("whoami", "mallory")
    out["products-page-1"] = await say("products")
    out["products-page-2"] = await say("products --page 2")
    out["products-technical"] = await say("products technical")
    out["usage"] = await say("usage")
    out["usage-acme"] = await say("usage ACME-01")
    out["customers"] = await say("customers")
    out["subscriptions"] = await say("subscriptions")
    out["allocate"] = await say("allocate 10 TEAMS-SEATS to FAB-01")
    out["allocate-dry-run"] = await say("allocate 25 SIP-CHANNELS to ACME-01 --dry-run")
    out["release"] = await say("release 5 TEAMS-SEATS from FAB-01")
    out["product-add"] = await say(
        "product add NUMBERS-FR-GEO --kind numbers --country FR --capacity 50 --sku FR-GEO-50"
    )
    out["capacity-dry-run-over-threshold"] = await say(
        "product capacity SIP-CHANNELS 900 --dry-run"
    )
    out["error-usage"] = await say("allocate ten TEAMS-SEATS to ACME-01")
    out["error-unknown-command"] = await say("alocate 5 TEAMS-SEATS to ACME-01")
    out["error-not-found"] = await say("allocate 5 TEAMS-SEAT to ACME-01")
    out["error-conflict"] = await say("allocate 99 SIP-CHANNELS to ACME-01")
    out["error-not-allowed"] = await say("products", "mallory")
    out["error-naming-rule"] = await say("product add numbers_gb --kind custom --capacity 5")
    out["form-allocate"] = await say("allocate")
    out["form-product-add"] = await say("product add")
    out["form-subscription-add"] = await say("subscription add")
    submitted, _ = await run_action(
        r.VERB_FORM_SUBMIT,
        {
            "command": "allocate",
            "form_id": "form-with-errors",
            "quantity": "0",
            "product": "TEAMS-SEATS",
        },
        context(),
    )
    out["form-with-errors"] = submitted
    for status in ("pending", "approved", "rejected", "expired", "failed"):
        out[f"approval-{status}"] = await approval_in(status)
    out["approvals-list"] = await say("approvals --all")
    out["form-approve"] = await say("approve")
    pending = await approval_in("pending")
    refused, own = await run_action(r.VERB_APPROVE, {"request_id": pending.request_id}, context())
    assert own is False  # the requester gets no buttons
    outsider, _ = await run_action(
        r.VERB_APPROVAL_REFRESH, {"request_id": pending.request_id}, context("mallory")
    )
    out["approval-refresh-outsider"] = outsider
    duplicate = await run_text(
        "allocate 1 TEAMS-SEATS to ACME-01",
        dataclasses.replace(
            context(), actor=dataclasses.replace(context().actor, idempotency_key="activity-1")
        ),
    )
    out["allocate-once"] = duplicate
    again = await run_text(
        "allocate 1 TEAMS-SEATS to ACME-01",
        dataclasses.replace(
            context(), actor=dataclasses.replace(context().actor, idempotency_key="activity-1")
        ),
    )
    assert isinstance(again, Message) and again.data["duplicate"]
    out["allocate-duplicate-delivery"] = again
    out["numbers-add"] = await say("numbers add +442071234000-+442071234009")
    out["user-add"] = await say(
        'user add ada.lovelace@contoso.example --subscription ACME-01 --name "Ada Lovelace"'
    )
    out["number-assign"] = await say("number assign next GB to ada.lovelace@contoso.example")
    out["numbers"] = await say("numbers")
    out["users"] = await say("users")
    out["digest-now"] = await say("digest now")
    out["digest-15-products"] = await busy_digest()
    out["audit"] = await say("audit --limit 15")
    out["audit-verify"] = await say("audit verify")
    out.update(every_reply_type())
    cards = {f"bot-{name}": r.render(reply) for name, reply in out.items()}
    cards["bot-approval-pending-view-only"] = r.render(out["approval-pending"], actionable=False)
    cards["bot-approval-refused-own-request"] = r.render(refused, actionable=False)
    return cards


async def test_every_card_is_valid_adaptive_card_1_5_under_36_kb(ledger_db: None) -> None:
    cards = await gallery()
    problems = {
        name: cardcheck.card_problems(card) + cardcheck.universal_action_problems(card)
        for name, card in cards.items()
    }
    assert {k: v for k, v in problems.items() if v} == {}
    for name, card in cards.items():
        assert r.card_size(card) <= cardcheck.MAX_CARD_BYTES, name
    # What the cards say, for a few that matter.
    said = {name: json.dumps(card, ensure_ascii=False) for name, card in cards.items()}
    assert "allocate N PRODUCT to SUBSCRIPTION" in said["bot-error-usage"]
    assert "Monospace" in said["bot-error-usage"]
    assert "Did you mean" in said["bot-error-unknown-command"]
    assert "DRY RUN" in said["bot-allocate-dry-run"]
    assert "Page 1 of 2" in said["bot-products-page-1"]
    assert '"verb": "page"' in said["bot-products-page-1"]
    assert "APPROVAL NEEDED" in said["bot-approval-pending"]
    assert '"refresh"' in said["bot-approval-pending"]
    assert "EXPIRED" in said["bot-approval-expired"]
    assert '"refresh"' not in said["bot-approval-expired"]
    assert "Bob Kahn" in said["bot-approval-approved"]


@pytest.fixture(scope="module")
def renderer() -> None:
    try:
        ok = cardcheck.ensure_renderer()
    except cardcheck.RendererError as exc:
        pytest.fail(f"npm ci failed: {exc}")
    if not ok:
        reason = cardcheck.renderer_unavailable_reason()
        if os.environ.get("CARDCHECK_REQUIRE_RENDERER") == "1":
            pytest.fail(f"card renderer required but unavailable: {reason}")
        pytest.skip(f"card renderer unavailable: {reason}")


@pytest.mark.browser
@pytest.mark.slow
async def test_every_card_renders_in_the_adaptivecards_renderer(
    ledger_db: None, renderer: None, artifacts: Path
) -> None:
    cards = await gallery()
    report = await asyncio.to_thread(
        cardcheck.render_cards, cards, cardcheck.ARTIFACTS_DIR, widths=NARROW_AND_FULL
    )
    # Read as a person would, on a phone and at full width: no word broken across lines,
    # nothing wider than the card.
    problems = cardcheck.layout_problems(report)
    assert problems == {}, json.dumps(problems, indent=1, ensure_ascii=False)
    assert set(report) == set(cards)
    sizes = await asyncio.to_thread(
        lambda: {
            name: Path(e["screenshot"] or "/nonexistent").stat().st_size
            for name, e in report.items()
        }
    )
    for name, entry in report.items():
        assert entry["errors"] == [], name
        assert sizes[name] > 1000, name


def test_every_reply_type_has_a_card() -> None:
    types = {
        obj
        for obj in vars(replies).values()
        if isinstance(obj, type) and issubclass(obj, Reply) and obj is not Reply
    }
    made = {type(reply) for reply in every_reply_type().values()}
    # Subclasses of a rendered type (e.g. a digest is a Message) render as that type at least.
    assert all(any(issubclass(t, m) for m in made) for t in types), types - made
    for name, reply in every_reply_type().items():
        card = r.render(reply)
        assert cardcheck.card_problems(card) == [], name


def test_long_answers_are_cut_to_stay_under_the_limit() -> None:
    big = Table(
        title="Numbers",
        columns=["Number", "State", "Holder"],
        rows=[
            [f"+4420{i:08}", "assigned", "someone.with.a.long.name@contoso.com" * 3]
            for i in range(3000)
        ],
    )
    card = r.render(big)
    assert r.card_size(card) <= cardcheck.MAX_CARD_BYTES
    assert cardcheck.card_problems(card) == []
    assert "more are not shown" in json.dumps(card)
    busy = Progress(
        title="Bulk",
        done=5000,
        total=5000,
        succeeded=[f"user{i}@contoso.com" for i in range(5000)],
        failed=[(f"x{i}", "why " * 50) for i in range(5000)],
    )
    assert r.card_size(r.render(busy)) <= cardcheck.MAX_CARD_BYTES
    noisy = Error(title="E" * 10_000, text="x" * 100_000, usage="\n".join(["u" * 600] * 100))
    assert cardcheck.card_problems(r.render(noisy)) == []


def test_user_text_is_inserted_as_text_never_read_as_a_template() -> None:
    sneaky = Message(
        title="${actions}", text="${title} and ${tone}", facts=[("${text}", "${facts}")]
    )
    card = r.render(sneaky)
    assert card["body"][0]["items"][0]["text"] == "${actions}"
    assert card["body"][1]["text"] == "${title} and ${tone}"
    assert card["body"][2]["facts"] == [{"title": "${text}", "value": "${facts}"}]
    assert "actions" not in card


async def test_a_dry_run_goes_ahead_with_exactly_the_change_it_showed(ledger_db: None) -> None:
    await seed()
    preview = await say("allocate 25 SIP-CHANNELS to ACME-01 --dry-run")
    assert isinstance(preview, Changed) and preview.dry_run
    card = r.render(preview)
    (button,) = [a for a in card["actions"] if a["title"] == "Go ahead"]
    assert button["verb"] == r.VERB_FORM_SUBMIT and button["fallback"]["data"] == button["data"]
    data = {k: v for k, v in button["data"].items() if k != "verb"}
    assert data["dry_run"] is False and data["command"] == "allocate"
    assert {k: data[k] for k in ("quantity", "product", "subscription")} == {
        "quantity": "25",
        "product": "SIP-CHANNELS",
        "subscription": "ACME-01",
    }
    # The values stay in a form under the preview, to change and dry-run again.
    (edit,) = [a for a in card["actions"] if a["type"] == "Action.ShowCard"]
    values = {i["id"]: i.get("value") for i in edit["card"]["body"] if "id" in i}
    assert values["product"] == "SIP-CHANNELS" and values["subscription"] == "ACME-01"
    assert values["quantity"] == 25
    assert [a["title"] for a in edit["card"]["actions"]] == ["Submit", "Dry run"]
    done, _ = await run_action(r.VERB_FORM_SUBMIT, data, context())
    assert isinstance(done, Changed) and not done.dry_run
    assert done.after == {**(preview.after or {})}
    # A second click on the same button changes nothing again.
    again, _ = await run_action(r.VERB_FORM_SUBMIT, data, context())
    assert not (isinstance(again, Changed) and not again.dry_run and again.after != done.after)
    product = await ledger.find_product("SIP-CHANNELS")
    assert (await ledger.allocation_totals(db.connection(), product.id))[0] == 40 + 25
    # Above the approval threshold the go-ahead still becomes a request.
    big = await say("allocate 150 TEAMS-SEATS to ACME-01 --dry-run")
    assert isinstance(big, Changed) and big.go_ahead, big
    assert "will wait for an approver" in big.text
    command, fields = big.go_ahead
    held, _ = await run_action(
        r.VERB_FORM_SUBMIT,
        {**fields, "command": command, "form_id": "go-ahead-test-1", "dry_run": False},
        context(),
    )
    assert isinstance(held, Approval), held

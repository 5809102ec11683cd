"""Form cards: a mutating command typed alone opens a form; its submission is validated like a
typed command, errors come back next to the fields with the values kept, and the same form
sent twice has one effect and gets the same answer (SPEC §4, §8).

Submissions go through `handle_card_action` with a real TurnContext over a TestAdapter, as
Action.Execute invokes and as Action.Submit messages (the fallback).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from botbuilder.core import TurnContext
from botbuilder.core.adapters import TestAdapter
from botbuilder.schema import Activity, ChannelAccount, ConversationAccount

from bot.auth.actor import Actor
from bot.auth.policy import DevPolicy
from bot.commands.dispatch import run_text
from bot.commands.registry import Context
from bot.commands.reply import Form, Table
from bot.config import Settings
from bot.domain import ledger
from bot.domain.models import Allocation, ApprovalRequest, AuditEvent, ProductKind
from bot.teams import render as r
from bot.teams.card_actions import handle_card_action
from tests.support.ledger_state import origin, snapshot

pytestmark = pytest.mark.usefixtures("database")

SETTINGS = Settings(approval_threshold=100, page_size=5)
POLICY = DevPolicy(("ada", "bob"))
_ids = itertools.count(1)


def context(who: str = "ada") -> Context:
    actor = Actor(
        object_id=who,
        name=who.title(),
        tenant_id="t",
        correlation_id=f"a-{next(_ids)}",
        conversation_id="conv",
    )
    return Context(actor=actor, settings=SETTINGS, policy=POLICY)


def _turn(activity: Activity) -> tuple[TurnContext, TestAdapter]:
    adapter = TestAdapter()
    activity.channel_id = "msteams"
    activity.service_url = "https://smba.trafficmanager.net/emea/"
    activity.conversation = ConversationAccount(id="conv")
    activity.recipient = ChannelAccount(id="bot")
    activity.reply_to_id = "msg-form"
    activity.id = f"act-{next(_ids)}"
    return TurnContext(adapter, activity), adapter


async def execute(data: dict[str, Any], who: str = "ada") -> dict[str, Any]:
    """Click an Action.Execute button whose data (inputs merged in) is `data`."""
    verb = data.get("verb", "")
    tc, _ = _turn(
        Activity(
            type="invoke",
            name="adaptiveCard/action",
            from_property=ChannelAccount(id=f"29:{who}", aad_object_id=who),
            value={"action": {"type": "Action.Execute", "verb": verb, "data": data}},
        )
    )
    ctx = context(who)
    response = await handle_card_action(tc, ctx.actor, ctx)
    assert response is not None and response.status_code == 200
    return response.value


async def submit(data: dict[str, Any], who: str = "ada") -> dict[str, Any]:
    """The Action.Submit fallback: a message with `value`; the clicked card is replaced."""
    tc, adapter = _turn(
        Activity(
            type="message",
            value=data,
            from_property=ChannelAccount(id=f"29:{who}", aad_object_id=who),
        )
    )
    ctx = context(who)
    assert await handle_card_action(tc, ctx.actor, ctx) is None
    [updated] = adapter.updated_activities
    assert updated.id == "msg-form"
    return updated.attachments[0].content


def button(card: dict[str, Any], title: str) -> dict[str, Any]:
    [action] = [a for a in card["actions"] if a["title"] == title]
    assert action["type"] == "Action.Execute"
    assert action["fallback"]["type"] == "Action.Submit"
    assert action["fallback"]["data"] == action["data"]  # both paths carry the same data
    return dict(action["data"])


def inputs(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["id"]: e for e in card["body"] if isinstance(e, dict) and e["type"].startswith("Input.")
    }


def texts(card: Any) -> str:
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("text", "title", "value"):
                if isinstance(node.get(key), str):
                    out.append(node[key])
            for key, value in node.items():
                if key != "data":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(card)
    return "\n".join(out).replace("\u2060", "")  # as a reader sees it


async def seed() -> None:
    ops = origin()
    await ledger.add_customer(ops, "Contoso Ltd")
    await ledger.add_subscription(ops, "ACME-01", "Contoso Ltd")
    await ledger.add_subscription(ops, "ACME-02", "Contoso Ltd")
    await ledger.add_product(ops, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 1000)
    await ledger.add_product(ops, "OLD-SEATS", ProductKind.CUSTOM, 10)
    await ledger.retire_product(ops, "OLD-SEATS")


async def allocate_form() -> dict[str, Any]:
    reply = await run_text("allocate", context())
    assert isinstance(reply, Form) and reply.command == "allocate" and reply.form_id
    return r.render(reply)


async def allocated() -> int:
    rows = await Allocation.all().values_list("quantity", flat=True)
    return int(sum(rows))  # type: ignore[arg-type]


async def test_a_change_typed_alone_opens_a_form_with_choices_from_the_data() -> None:
    await seed()
    card = await allocate_form()
    fields = inputs(card)
    assert list(fields) == ["quantity", "product", "subscription"]
    assert fields["quantity"]["type"] == "Input.Number" and fields["quantity"]["isRequired"]
    assert [c["value"] for c in fields["product"]["choices"]] == ["TEAMS-SEATS"]  # retired left out
    assert [c["value"] for c in fields["subscription"]["choices"]] == ["ACME-01", "ACME-02"]
    assert fields["subscription"]["choices"][0]["title"] == "ACME-01 (Contoso Ltd)"
    data = button(card, "Submit")
    assert data["verb"] == r.VERB_FORM_SUBMIT and data["command"] == "allocate"

    product_add = r.render(await run_text("product add", context()))
    countries = {c["value"]: c["title"] for c in inputs(product_add)["country"]["choices"]}
    assert countries["GB"] == "GB (+44)" and countries["US"] == "US (+1)" and len(countries) > 200


async def test_submitting_the_same_form_twice_has_one_effect_and_the_same_answer() -> None:
    await seed()
    data = {
        **button(await allocate_form(), "Submit"),
        "quantity": "40",
        "product": "TEAMS-SEATS",
        "subscription": "ACME-01",
    }
    first = await execute(data)
    assert "Allocated 40" in texts(first) and await allocated() == 40
    again = await execute(data)  # e.g. a double click, or the same card on another device
    assert await allocated() == 40
    assert "Already done" in texts(again) and "already sent" in texts(again)
    # The same before → after as the first answer.
    assert first["body"][-1] == again["body"][-1]
    assert await AuditEvent.filter(action="allocation.allocate").count() == 1
    # Also through the Action.Submit fallback: still one effect.
    fallback = await submit(data)
    assert "Already done" in texts(fallback) and await allocated() == 40


async def test_the_submit_fallback_path_runs_the_command_too() -> None:
    await seed()
    data = {
        **button(await allocate_form(), "Submit"),
        "quantity": 7,
        "product": "TEAMS-SEATS",
        "subscription": "ACME-02",
    }
    card = await submit(data)
    assert "Allocated 7" in texts(card) and await allocated() == 7
    [event] = await AuditEvent.filter(action="allocation.allocate")
    assert (event.source, event.actor_id) == ("card", "ada")


async def test_dry_run_button_previews_without_using_up_the_form() -> None:
    await seed()
    card = await allocate_form()
    values = {"quantity": "12", "product": "TEAMS-SEATS", "subscription": "ACME-01"}
    before = await snapshot()
    preview = await execute({**button(card, "Dry run"), **values})
    assert "DRY RUN" in texts(preview) and await snapshot() == before
    done = await execute({**button(card, "Submit"), **values})
    assert "Allocated 12" in texts(done) and await allocated() == 12


async def test_invalid_values_come_back_next_to_the_fields_with_the_values_kept() -> None:
    await seed()
    card = await allocate_form()
    data = {
        **button(card, "Submit"),
        "quantity": "-3",
        "product": "TEAMS-SEATS",
        "subscription": "",
    }
    before = await snapshot()
    again = await execute(data)
    assert await snapshot() == before
    fields = inputs(again)
    assert fields["product"]["value"] == "TEAMS-SEATS"  # kept
    assert fields["quantity"]["value"] == -3.0
    body = again["body"]
    after_quantity = body[body.index(fields["quantity"]) + 1]
    assert after_quantity["color"] == "Attention"
    assert "positive whole number" in after_quantity["text"]
    after_subscription = body[body.index(fields["subscription"]) + 1]
    assert after_subscription["color"] == "Attention" and after_subscription["text"] == "Required"
    # Still the same form: correcting it and sending it again works, once.
    assert button(again, "Submit")["form_id"] == data["form_id"]
    fixed = {**data, "quantity": "3", "subscription": "ACME-02"}
    assert "Allocated 3" in texts(await execute(fixed)) and await allocated() == 3


async def test_a_refusal_by_the_ledger_shows_the_form_again_with_the_reason() -> None:
    await seed()
    card = await allocate_form()
    data = {
        **button(card, "Submit"),
        "quantity": "2000",
        "product": "TEAMS-SEATS",
        "subscription": "ACME-01",
    }
    again = await execute(data)
    assert "Only 1000" in texts(again) and inputs(again)["quantity"]["value"] == 2000.0
    tampered = {**data, "quantity": "1", "product": "NOPE"}
    again = await execute(tampered)
    assert "No product named 'NOPE'" in texts(again) and await allocated() == 0


async def test_a_rule_across_fields_is_shown_above_the_form() -> None:
    await seed()
    card = r.render(await run_text("product add", context()))
    data = {**button(card, "Submit"), "name": "NUMBERS-GB", "capacity": "10"}
    again = await execute(data)
    assert "say what it is" in texts(again) and inputs(again)["name"]["value"] == "NUMBERS-GB"


async def test_a_form_above_the_threshold_asks_for_approval_once() -> None:
    await seed()
    data = {
        **button(await allocate_form(), "Submit"),
        "quantity": "500",
        "product": "TEAMS-SEATS",
        "subscription": "ACME-01",
    }
    first = await execute(data)
    assert "APPROVAL NEEDED" in texts(first)
    again = await execute(data)
    assert "APPROVAL NEEDED" in texts(again) and "already sent" in texts(again)
    assert await ApprovalRequest.all().count() == 1 and await allocated() == 0
    request = await ApprovalRequest.first()
    assert request is not None
    # People read the short id; the buttons carry the opaque one.
    assert f"A-{request.number}" in texts(first) and f"A-{request.number}" in texts(again)
    assert request.id in json.dumps(first) and request.id in json.dumps(again)


TAMPERED = [
    ("no form id", {"form_id": None}, "no valid id"),
    ("form id of a wrong type", {"form_id": ["x" * 10]}, "no valid id"),
    ("a listing is not a form", {"command": "products"}, "does not have"),
    ("unknown command", {"command": "drop tables"}, "does not have"),
    ("command of a wrong type", {"command": {"name": "allocate"}}, "does not have"),
    ("a field the command does not have", {"owner": "mallory"}, "not permitted"),
    ("quantity of a wrong type", {"quantity": {"$gt": 0}}, "whole number"),
]


@pytest.mark.parametrize(("case", "change", "words"), TAMPERED, ids=[t[0] for t in TAMPERED])
async def test_tampered_submissions_are_refused_and_change_nothing(
    case: str, change: dict[str, Any], words: str
) -> None:
    await seed()
    data = {
        **button(await allocate_form(), "Submit"),
        "quantity": "5",
        "product": "TEAMS-SEATS",
        "subscription": "ACME-01",
        **change,
    }
    before = await snapshot()
    card = await execute(data)
    assert words in texts(card), texts(card)
    assert await snapshot() == before


async def test_a_non_admin_cannot_use_a_form_they_got_hold_of() -> None:
    await seed()
    data = {
        **button(await allocate_form(), "Submit"),
        "quantity": "5",
        "product": "TEAMS-SEATS",
        "subscription": "ACME-01",
    }
    before = await snapshot()
    card = await execute(data, who="mallory")
    assert "Not allowed" in texts(card) and "TEAMS-SEATS" not in texts(card)
    assert await snapshot() == before


async def test_next_page_button_shows_the_next_page_and_never_runs_a_change() -> None:
    await seed()
    for i in range(12):
        await ledger.add_product(origin(), f"CUSTOM-{i:02}", ProductKind.CUSTOM, 10)
    first = await run_text("products", context())
    assert isinstance(first, Table) and first.pages == 3
    card = r.render(first)
    data = button(card, "Next page")
    second = await execute(data)
    assert "Page 2 of 3" in texts(second)
    assert "CUSTOM-04" not in texts(second) and "CUSTOM-05" in texts(second)
    before = await snapshot()
    refused = await execute({**data, "command": "allocate 5 TEAMS-SEATS to ACME-01"})
    assert "does not name a list" in texts(refused) and await snapshot() == before


async def test_a_redelivered_command_gets_what_the_first_one_did() -> None:
    """Teams redelivers an activity it got no answer for: same activity id, one effect, and the
    answer shows the first delivery's before → after (not a bare "already done")."""
    from dataclasses import replace

    from bot.teams.card_actions import same_answer

    await seed()
    ctx = context()
    ctx = replace(ctx, actor=replace(ctx.actor, idempotency_key="activity-42"))
    first = await same_answer(await run_text("allocate 3 TEAMS-SEATS to ACME-01", ctx))
    again = await same_answer(await run_text("allocate 3 TEAMS-SEATS to ACME-01", ctx))
    assert await allocated() == 3
    assert r.render(again)["body"][-1] == r.render(first)["body"][-1]  # the same before → after
    assert "Already done" in texts(r.render(again))
    # Above the threshold, the answer is the approval request as it stands.
    held = await run_text(
        "allocate 300 TEAMS-SEATS to ACME-02",
        replace(ctx, actor=replace(ctx.actor, idempotency_key="activity-43")),
    )
    held_again = await same_answer(
        await run_text(
            "allocate 300 TEAMS-SEATS to ACME-02",
            replace(ctx, actor=replace(ctx.actor, idempotency_key="activity-43")),
        )
    )
    assert held_again.request_id == held.request_id  # type: ignore[attr-defined]
    assert await ApprovalRequest.all().count() == 1

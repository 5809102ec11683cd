"""Words, not data structures: every command's CLI text and card free of Python reprs, raw
event codes and `None`; dates in the reader's time zone; approval ids people can type."""

from __future__ import annotations

import json
import re

from botbuilder.schema import Activity, ChannelAccount, ConversationAccount, Entity

from bot.__main__ import to_text
from bot.commands.general import EXAMPLES
from bot.commands.reply import Approval, Changed, Error
from bot.commands.words import event_sentence, target_name, when
from bot.domain.models import ApprovalRequest
from bot.teams import render as r
from bot.teams.bot import actor_from
from tests.test_cards import context, ledger_db, say, seed  # noqa: F401

#: What only a program would write: a dict or list literal, None/True/False, an object repr.
REPR = re.compile(r"\{'|'\}|\['|'\]|\bNone\b|\bTrue\b|\bFalse\b|<[a-z_.]+ object|datetime\(")
#: An event code or a target code (`allocation.allocate`, `allocation:ACME-01/...`).
CODE = re.compile(r"\b(allocation|product|number|approval|account)[.:][a-z]")

#: Lines that exercise every command (after `seed()`); EXAMPLES cover most.
SESSION = [
    "help",
    "help allocate",
    "whoami",
    "products",
    "customers",
    "subscriptions",
    "usage",
    "usage ACME-01",
    "allocate 5 TEAMS-SEATS to ACME-01 --dry-run",
    "allocate 5 TEAMS-SEATS to ACME-01",
    "release 2 TEAMS-SEATS from ACME-01",
    "product capacity SIP-CHANNELS 900 --dry-run",
    "numbers add +442071234000-+442071234009",
    'user add ada@contoso.example --subscription ACME-01 --name "Ada Lovelace"',
    "number assign next GB to ada@contoso.example",
    "numbers",
    "users",
    "trunks",
    "packs",
    "allocate 300 TEAMS-SEATS to ACME-01",
    "approvals",
    "approvals --all",
    "audit",
    "audit verify",
    "digests",
    "digest now",
]


async def test_no_python_reprs_or_event_codes_in_any_answer(ledger_db: None) -> None:  # noqa: F811
    await seed()
    lines = SESSION + [EXAMPLES[k] for k in sorted(EXAMPLES) if k not in ("approve", "reject")]
    seen = set()
    for line in lines:
        reply = await say(line)
        seen.add(line.split()[0])
        cli = to_text(reply)
        card = json.dumps(r.render(reply), ensure_ascii=False).replace("\u2060", "")
        shown = [
            n["text"] if "text" in n else n.get("value", "")
            for n in _walk(json.loads(card))
            if n.get("type") in ("TextBlock", None)
            and isinstance(n.get("text", n.get("value")), str)
        ]
        assert not REPR.search(cli), (line, cli)
        for text in shown:
            assert not REPR.search(text), (line, text)
            assert not CODE.search(text), (line, text)
        assert not CODE.search(cli.replace("allocate.", "")), (line, cli)
    assert {"allocate", "audit", "usage", "digest", "approvals", "help"} <= seen


def _walk(node: object):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def test_events_are_sentences() -> None:
    assert (
        event_sentence(
            "Alex Wilber",
            "allocation.allocate",
            "allocation:CONTOSO-01/TEAMS-SEATS",
            {"allocated": 70},
            {"allocated": 75},
        )
        == "Alex Wilber allocated 5 TEAMS-SEATS to CONTOSO-01: 70 → 75"
    )
    assert target_name("allocation:CONTOSO-01/TEAMS-SEATS") == "TEAMS-SEATS → CONTOSO-01"
    assert target_name("Contoso: the firm") == "Contoso: the firm"


def test_dates_in_the_readers_time_zone_from_client_info() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert when(at, None, now) == "2 Dec 08:00 UTC"
    assert when(at, "Europe/Berlin", now) == "2 Dec 09:00 CET"
    assert when(at, "Not/AZone", now) == "2 Dec 08:00 UTC"
    activity = Activity(
        type="message",
        id="a1",
        text="audit",
        from_property=ChannelAccount(id="29:x", name="Ada", aad_object_id="oid"),
        conversation=ConversationAccount(id="c1"),
        entities=[
            Entity(type="clientInfo").deserialize(
                {"type": "clientInfo", "locale": "de-DE", "timezone": "Europe/Berlin"}
            )
        ],
    )
    assert actor_from(activity, "chat").timezone == "Europe/Berlin"
    activity.entities = [Entity().deserialize({"type": "clientInfo", "timezone": "Mars/Base"})]
    assert actor_from(activity, "chat").timezone is None


async def test_approvals_have_short_ids_that_are_typed_and_never_repeat(
    ledger_db: None,  # noqa: F811
) -> None:
    await seed()
    first = await say("allocate 300 TEAMS-SEATS to ACME-01")
    second = await say("allocate 150 SIP-CHANNELS to FAB-01")
    assert isinstance(first, Approval) and isinstance(second, Approval)
    assert re.fullmatch(r"A-\d+", first.short_id) and first.short_id != second.short_id
    assert f"approve {first.short_id}" in first.text
    # The same change asked again is not requested twice: the answer points at the first.
    again = await say("allocate 300 TEAMS-SEATS to ACME-01")
    assert isinstance(again, Approval) and again.request_id == first.request_id
    assert first.short_id in again.text
    assert await ApprovalRequest.all().count() == 2
    # Typed in any case, with or without the dash; the button still sends the opaque id.
    done = await say(f"approve {first.short_id.lower().replace('-', '')}", "bob")
    assert isinstance(done, Approval) and done.status == "approved", done
    card = r.render(second)
    assert second.short_id in json.dumps(card).replace("\\u2060", "")
    buttons = [a["data"] for a in card["actions"]]
    assert all(b["request_id"] == second.request_id for b in buttons)
    # `approvals` and `approvals --all` list in the same order (newest first).
    pending, every = await say("approvals"), await say("approvals --all")
    ids = [row[0] for row in pending.rows]  # type: ignore[attr-defined]
    assert ids == [row[0] for row in every.rows if row[0] in ids]  # type: ignore[attr-defined]
    assert not isinstance(done, (Changed, Error))


def _texts(reply: object) -> list[str]:
    card = json.loads(json.dumps(r.render(reply)).replace("\\u2060", ""))  # type: ignore[arg-type]
    return [n["text"] for n in _walk(card) if n.get("type") == "TextBlock"]


async def test_approval_events_name_the_request_as_people_type_it(
    ledger_db: None,  # noqa: F811
) -> None:
    """Audit and digest say "request A-1", never the opaque id the buttons carry."""
    await seed()
    asked = await say("allocate 300 TEAMS-SEATS to ACME-01")
    assert isinstance(asked, Approval)
    decided = await say(f"reject {asked.short_id} not this quarter", "bob")
    assert isinstance(decided, Approval) and decided.status == "rejected", decided
    for line in ("audit", "digest now"):
        shown = "\n".join(_texts(await say(line)))
        assert f"(request {asked.short_id})" in shown, (line, shown)
        assert f"rejected request {asked.short_id}" in shown, (line, shown)
        assert asked.request_id not in shown, (line, shown)


async def test_an_event_does_not_say_its_target_twice(ledger_db: None) -> None:  # noqa: F811
    await seed()
    added = await say("product add POOL-14-CHANNELS --kind custom --unit channel --capacity 40")
    assert isinstance(added, Changed), added
    sentences = [t for t in _texts(await say("audit")) if "POOL-14-CHANNELS" in t]
    assert sentences and all(t.count("POOL-14-CHANNELS") == 1 for t in sentences), sentences
    assert any("capacity 40" in t for t in sentences), sentences


def _audited_actions() -> set[str]:
    """Every action the code writes into the audit (`ch.record("x.y", ...)`)."""
    import ast
    from pathlib import Path

    found: set[str] = set()
    for path in Path("bot").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "record"
                and node.args
            ):
                found |= {
                    c.value
                    for c in ast.walk(node.args[0])
                    if isinstance(c, ast.Constant) and isinstance(c.value, str) and "." in c.value
                }
    # A job's move is written as f"provisioning.{state}": one action per state.
    from bot.domain.models import JobState

    if "provisioning." in found:
        found = (found - {"provisioning."}) | {f"provisioning.{s.value}" for s in JobState}
    return found


def test_every_audited_action_has_words() -> None:
    from bot.commands.words import _DID, _NOUNS

    actions = _audited_actions()
    assert {"allocation.allocate", "reconcile.run", "customer.link"} <= actions
    assert not actions - set(_DID) - {"allocation.allocate", "allocation.release"}
    assert not actions - set(_NOUNS)


def test_a_digest_sentence_leaves_the_fields_out_but_keeps_the_figures() -> None:
    assigned = ("number.assign", "number:+442071234000", {"state": "available"})
    after = {"state": "assigned", "holder": "ada@contoso.example"}
    full = event_sentence("Ada", *assigned, after)
    short = event_sentence("Ada", *assigned, after, details=False)
    assert full.startswith(short) and "available → assigned" in full
    assert short == "Ada assigned +442071234000"
    allocation = ("allocation.allocate", "allocation:ACME-01/TEAMS-SEATS")
    said = event_sentence("Ada", *allocation, {"allocated": 390}, {"allocated": 391}, details=False)
    assert said == "Ada allocated 1 TEAMS-SEATS to ACME-01: 390 → 391"

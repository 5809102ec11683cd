"""Teams users, resource accounts and SIP trunks: through the domain services and the command
gate (the same handlers Teams and the CLI use), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from bot.commands.dispatch import run_text
from bot.commands.reply import Changed, Error, Form, Table
from bot.domain import directory, ledger, trunks
from bot.domain.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from bot.domain.models import Account, AccountKind, AuditEvent, ProductKind, SipTrunk
from bot.domain.usage import usage_report
from tests.support.ledger_state import (
    check_invariants,
    context,
    dev_context,
    origin,
    refused,
    snapshot,
)

pytestmark = pytest.mark.usefixtures("database")

OPS = origin()


async def seed(channels: int = 30) -> None:
    await ledger.add_customer(OPS, "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-02", "Contoso Ltd")
    await ledger.add_product(OPS, "SIP-CHANNELS", ProductKind.SIP_CHANNELS, 100)
    if channels:
        await ledger.allocate(OPS, channels, "SIP-CHANNELS", "ACME-01")


# ----- accounts --------------------------------------------------------------------------


async def test_add_a_teams_user_and_a_resource_account() -> None:
    await seed()
    out = await directory.add_account(
        OPS, " Alice.Smith@Contoso.com ", "acme-01", display_name="Alice Smith"
    )
    assert out.after == {
        "upn": "Alice.Smith@Contoso.com",
        "name": "Alice Smith",
        "kind": "user",
        "subscription": "ACME-01",
    }
    await directory.add_account(OPS, "queue@contoso.com", "ACME-01", AccountKind.CALL_QUEUE)
    found = await directory.find_account("alice.smith@CONTOSO.COM")
    assert found.display_name == "Alice Smith" and found.kind is AccountKind.USER
    assert (await directory.find_account("QUEUE@contoso.com")).kind is AccountKind.CALL_QUEUE
    event = await AuditEvent.filter(action="account.add").order_by("id").first()
    assert event is not None and event.target == "account:Alice.Smith@Contoso.com"
    assert event.actor_id == OPS.actor_id and event.source == "chat"


async def test_a_upn_is_unique_whatever_its_case() -> None:
    await seed()
    await directory.add_account(OPS, "alice@contoso.com", "ACME-01")
    await refused(
        lambda: directory.add_account(OPS, "ALICE@Contoso.COM", "ACME-02"),
        AlreadyExists,
        "Teams user alice@contoso.com already exists in ACME-01",
    )


@pytest.mark.parametrize(
    "upn",
    [
        "alice",
        "alice@",
        "@contoso.com",
        "alice@contoso",
        "alice smith@contoso.com",
        "alice@@contoso.com",
        "alice@-contoso.com",
        "alice..smith@contoso.com",
        "álice@contoso.com",
        "alice@contoso.com\u200b",
        "a" * 65 + "@contoso.com",
        "alice@" + "c" * 120 + ".com",
        "alice@contoso.com; DROP TABLE account",
        "",
    ],
)
async def test_a_upn_must_look_like_an_email_address(upn: str) -> None:
    await seed()
    await refused(lambda: directory.add_account(OPS, upn, "ACME-01"), InvalidInput)


async def test_unknown_subscription_and_account_get_suggestions() -> None:
    await seed()
    error = await refused(lambda: directory.add_account(OPS, "bob@contoso.com", "ACME-1"), NotFound)
    assert "ACME-01" in error.suggestions
    await directory.add_account(OPS, "robert@contoso.com", "ACME-01")
    with pytest.raises(NotFound) as info:
        await directory.find_account("rober@contoso.com")
    assert info.value.suggestions == ["robert@contoso.com"]


async def test_display_names_are_checked() -> None:
    await seed()
    await refused(
        lambda: directory.add_account(OPS, "bob@contoso.com", "ACME-01", display_name="Bob\x00"),
        InvalidInput,
        "control",
    )
    await refused(
        lambda: directory.add_account(OPS, "bob@contoso.com", "ACME-01", display_name="B" * 257),
        InvalidInput,
        "at most 256",
    )


async def test_dry_run_adds_no_account() -> None:
    await seed()
    before = await snapshot()
    out = await directory.add_account(OPS, "bob@contoso.com", "ACME-01", dry_run=True)
    assert out.dry_run
    assert await snapshot() == before


async def test_list_accounts_pages_and_filters() -> None:
    await seed()
    for i in range(7):
        await directory.add_account(OPS, f"user{i}@contoso.com", "ACME-01")
    await directory.add_account(OPS, "aa@contoso.com", "ACME-02", AccountKind.AUTO_ATTENDANT)
    page = await directory.list_accounts(page=2, size=3)
    assert (page.total, page.page, page.pages) == (8, 2, 3)
    assert [r.upn for r in page.items] == [
        "user2@contoso.com",
        "user3@contoso.com",
        "user4@contoso.com",
    ]
    assert (await directory.list_accounts("ACME-02")).total == 1
    only = await directory.list_accounts(kind=AccountKind.AUTO_ATTENDANT)
    assert [r.as_json() for r in only.items] == [
        {
            "upn": "aa@contoso.com",
            "name": "",
            "kind": "auto-attendant",
            "subscription": "ACME-02",
            "number": None,
            "licenses": [],
        }
    ]


# ----- trunks ----------------------------------------------------------------------------


async def test_trunk_channels_use_the_sip_channel_allocation() -> None:
    await seed(channels=30)
    out = await trunks.add_trunk(OPS, "SBC-LON-01", "ACME-01", 20)
    assert out.after["channels_in_use"] == 20
    await trunks.add_trunk(OPS, "SBC-LON-02", "ACME-01", 10)
    await refused(
        lambda: trunks.add_trunk(OPS, "SBC-LON-03", "ACME-01", 1),
        Conflict,
        "ACME-01 has 0 of its 30 SIP-CHANNELS left (30 in use); 1 needed",
    )
    await refused(
        lambda: trunks.set_channels(OPS, "sbc-lon-01", 21), Conflict, "0 of its 30", "1 needed"
    )
    shrunk = await trunks.set_channels(OPS, "sbc-lon-01", 5)
    assert shrunk.before == {"channels": 20, "channels_in_use": 30}
    assert shrunk.after == {"channels": 5, "channels_in_use": 15}
    await trunks.set_channels(OPS, "SBC-LON-01", 20)
    report = {u.name: u for u in await usage_report()}
    assert report["SIP-CHANNELS"].subscriptions[0].in_use == 30
    # The allocation cannot be released below the channels in use.
    await refused(lambda: ledger.release(OPS, 1, "SIP-CHANNELS", "ACME-01"), Conflict, "uses 30")
    await check_invariants()


async def test_trunk_refusals() -> None:
    await seed(channels=10)
    await trunks.add_trunk(OPS, "SBC-1", "ACME-01", 5)
    await refused(lambda: trunks.add_trunk(OPS, "sbc-1", "ACME-01", 1), InvalidInput, "naming")
    await refused(lambda: trunks.add_trunk(OPS, "SBC-1", "ACME-01", 1), AlreadyExists)
    await refused(lambda: trunks.add_trunk(OPS, "SBC-2", "ACME-02", 1), Conflict, "ACME-02 has no")
    await refused(lambda: trunks.add_trunk(OPS, "SBC-2", "ACME-01", 0), InvalidInput)
    await refused(lambda: trunks.add_trunk(OPS, "SBC-2", "ACME-01", 10**6), InvalidInput)
    error = await refused(lambda: trunks.set_channels(OPS, "SBC-9", 1), NotFound)
    assert error.suggestions == ["SBC-1"]


async def test_trunk_without_a_sip_channels_product() -> None:
    await ledger.add_customer(OPS, "Contoso Ltd")
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    await refused(
        lambda: trunks.add_trunk(OPS, "SBC-1", "ACME-01", 1), Conflict, "no product for SIP"
    )


async def test_dry_run_trunk_changes_nothing() -> None:
    await seed()
    await trunks.add_trunk(OPS, "SBC-1", "ACME-01", 5)
    before = await snapshot()
    out = await trunks.set_channels(OPS, "SBC-1", 7, dry_run=True)
    assert out.dry_run and out.after["channels"] == 7
    await trunks.add_trunk(OPS, "SBC-2", "ACME-01", 5, dry_run=True)
    assert await snapshot() == before
    assert (await SipTrunk.get(name="SBC-1")).channels == 5


# ----- through the command gate ----------------------------------------------------------


async def test_commands_add_and_list_accounts() -> None:
    await seed()
    ctx = context()
    reply = await run_text(
        'user add Alice@Contoso.com --subscription ACME-01 --name "Alice A"', ctx
    )
    assert isinstance(reply, Changed) and reply.after is not None
    assert reply.after["name"] == "Alice A"
    reply = await run_text(
        "resource-account add reception@contoso.com --subscription ACME-01 --kind auto-attendant",
        ctx,
    )
    assert isinstance(reply, Changed)
    reply = await run_text("users ACME-01", ctx)
    assert isinstance(reply, Table)
    assert [row[0] for row in reply.rows] == ["Alice@Contoso.com", "reception@contoso.com"]
    assert reply.data["total"] == 2
    reply = await run_text("trunk add SBC-1 --subscription ACME-01 --channels 4", ctx)
    assert isinstance(reply, Changed)
    reply = await run_text("trunks", ctx)
    assert isinstance(reply, Table) and reply.data == [
        {"name": "SBC-1", "subscription": "ACME-01", "channels": 4}
    ]


async def test_commands_refuse_bad_input_with_the_usage() -> None:
    await seed()
    ctx = context()
    before = await snapshot()
    reply = await run_text(
        "resource-account add q@contoso.com --subscription ACME-01 --kind receptionist", ctx
    )
    assert isinstance(reply, Error) and reply.code == "usage"
    assert "--kind" in reply.text and reply.usage and "auto-attendant|call-queue" in reply.usage
    reply = await run_text("user add bob --subscription ACME-01", ctx)
    assert isinstance(reply, Error) and "email address" in reply.text
    reply = await run_text("user add bob@contoso.com", ctx)
    assert isinstance(reply, Error) and "--subscription is missing" in reply.text
    reply = await run_text("trunk set SBC-1 --channels many", ctx)
    assert isinstance(reply, Error) and reply.code == "usage"
    reply = await run_text("user add bob@contoso.com --subscription ACME-9", ctx)
    assert isinstance(reply, Error) and "ACME-01" in reply.suggestions
    assert await snapshot() == before


async def test_a_mutating_command_alone_opens_its_form() -> None:
    await seed()
    reply = await run_text("user add", context())
    assert isinstance(reply, Form)
    assert [f.name for f in reply.fields] == ["upn", "subscription", "name"]
    subscription = next(f for f in reply.fields if f.name == "subscription")
    assert [value for _, value in subscription.choices] == ["ACME-01", "ACME-02"]


async def test_non_admins_are_told_nothing() -> None:
    await seed()
    await directory.add_account(OPS, "alice@contoso.com", "ACME-01")
    outsider = dev_context(("someone-else",), object_id="oid-stranger")
    for text in ("users", "user add bob@contoso.com --subscription ACME-01", "trunks"):
        reply = await run_text(text, outsider)
        assert isinstance(reply, Error) and reply.code == "forbidden"
        assert "alice" not in reply.text and "ACME" not in reply.text
    assert await Account.all().count() == 1

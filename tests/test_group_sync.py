"""`users sync SUBSCRIPTION from-group GROUP-ID` through the one gate, against the Graph fake:
every page read, throttled pages waited out (or the run refused whole), a nextLink to another
host never followed, each added or updated account audited in the same transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from bot.auth.membership import GraphPolicy
from bot.commands.dispatch import run_text
from bot.commands.registry import Context, Services
from bot.commands.reply import Error, Message, Reply
from bot.domain import directory, ledger
from bot.domain.change import Origin, verify_chain
from bot.domain.directory_sync import DirectoryMember, sync_accounts
from bot.domain.models import Account, AccountKind, AuditEvent, ProductKind
from bot.domain.usage import usage_report
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support.graph_env import (
    GRAPH_ROLE,
    ScriptedGraph,
    actor,
    graph_client,
    identity_provider,
    make_settings,
    oid,
    populate,
    trust_fakes,
)

SYNC_GROUP = oid("group:acme-voice-users")
NESTED = oid("group:acme-sales")
PAGE = 5
DIRECT = [f"user{i:02d}" for i in range(1, 13)]  # 12 direct members
NESTED_USERS = ["sales1", "sales2", "sales3"]
USERS = DIRECT + NESTED_USERS  # 15 users, plus the nested group: 16 entries, 4 pages of 5


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdentityProvider]:
    yield from identity_provider()


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


@pytest.fixture
def graph(idp: FakeIdentityProvider) -> Iterator[ScriptedGraph]:
    with ScriptedGraph(idp, required_roles={GRAPH_ROLE}) as fake:
        populate(fake)
        for name in USERS:
            fake.add_user(oid(f"user:{name}"), f"{name}@acme.example", f"{name.title()} Example")
        fake.add_group(NESTED, [oid(f"user:{n}") for n in NESTED_USERS], display_name="Sales")
        fake.add_group(
            SYNC_GROUP,
            [oid(f"user:{n}") for n in DIRECT] + [NESTED, oid("user:sales1")],
            display_name="ACME voice users",
        )
        yield fake


@pytest.fixture
async def ledger_data(database: str) -> str:
    origin = Origin("setup", "Setup", "cli")
    await ledger.add_customer(origin, "Contoso")
    await ledger.add_subscription(origin, "ACME-01", "Contoso")
    await ledger.add_subscription(origin, "OTHER-01", "Contoso")
    await ledger.add_product(origin, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 100)
    return database


@asynccontextmanager
async def admin_context(
    idp: FakeIdentityProvider, graph: FakeGraph, **settings: Any
) -> AsyncIterator[Context]:
    config = make_settings(idp, graph, **settings)
    async with graph_client(config, page_size=PAGE) as client:
        yield Context(
            actor=actor("alice", idp.tenant_id),
            settings=config,
            policy=GraphPolicy(config, client),
            services=Services(graph=client),
        )


async def sync(
    ctx: Context, extra: str = "", group: str = SYNC_GROUP, sub: str = "ACME-01"
) -> Reply:
    return await run_text(f"users sync {sub} from-group {group} {extra}".strip(), ctx)


def pages(graph: FakeGraph) -> list[Any]:
    return [r for r in graph.requests if r.info.get("kind") == "transitiveMembers"]


async def accounts(code: str = "ACME-01") -> dict[str, Account]:
    rows = await Account.filter(subscription__code=code)
    return {a.upn: a for a in rows}


async def test_every_page_is_read_and_each_user_added_with_its_audit(
    idp: FakeIdentityProvider, graph: ScriptedGraph, ledger_data: str
) -> None:
    async with admin_context(idp, graph) as ctx:
        reply = await sync(ctx)
    assert isinstance(reply, Message), reply
    assert reply.data["added"] == 15 and reply.data["nested_groups"] == 1
    assert reply.data["updated"] == reply.data["unchanged"] == reply.data["skipped"] == 0
    assert ("Added", "15") in reply.facts

    listed = pages(graph)
    assert [r.status for r in listed] == [200, 200, 200, 200]
    assert [r.query.get("$skiptoken", "0") for r in listed] == ["0", "5", "10", "15"]
    assert all(r.query["$top"] == str(PAGE) for r in listed)
    assert set(listed[0].query["$select"].split(",")) == {"id", "userPrincipalName", "displayName"}
    assert all(r.path == f"/v1.0/groups/{SYNC_GROUP}/transitiveMembers" for r in listed)

    found = await accounts()
    assert sorted(found) == sorted(f"{n}@acme.example" for n in USERS)
    one = found["user07@acme.example"]
    assert one.object_id == oid("user:user07") and one.display_name == "User07 Example"
    assert one.kind is AccountKind.USER

    adds = await AuditEvent.filter(action="account.add").order_by("id")
    assert len(adds) == 15
    assert {e.target for e in adds} == {f"account:{n}@acme.example" for n in USERS}
    assert all(e.actor_id == ctx.actor.object_id and e.source == "chat" for e in adds)
    assert all(e.correlation_id == ctx.actor.correlation_id for e in adds)
    assert adds[0].before is None and adds[0].after["subscription"] == "ACME-01"
    run = await AuditEvent.get(action="directory.sync")
    assert run.target == "subscription:ACME-01"
    assert run.after["group"] == SYNC_GROUP and run.after["added"] == 15
    assert (await verify_chain())[0]
    # Adding accounts consumes nothing: seats are used by users holding an assigned number.
    seats = next(u for u in await usage_report() if u.name == "TEAMS-SEATS")
    assert seats.in_use == 0


async def test_throttled_pages_are_waited_out(
    idp: FakeIdentityProvider, graph: ScriptedGraph, ledger_data: str
) -> None:
    graph.throttle_page("5", 0.2)
    graph.throttle_page("10", 0.1, 0.1)
    async with admin_context(idp, graph, graph_retry_seconds=3.0) as ctx:
        reply = await sync(ctx)
    assert isinstance(reply, Message), reply
    assert reply.data["added"] == 15
    listed = pages(graph)
    assert [(r.query.get("$skiptoken", "0"), r.status) for r in listed] == [
        ("0", 200),
        ("5", 429),
        ("5", 200),
        ("10", 429),
        ("10", 429),
        ("10", 200),
        ("15", 200),
    ]
    waited = listed[2].at - listed[1].at
    assert waited >= 0.19  # Retry-After honoured
    assert len(await accounts()) == 15


async def test_a_page_throttled_beyond_the_bound_changes_nothing(
    idp: FakeIdentityProvider, graph: ScriptedGraph, ledger_data: str
) -> None:
    events_before = await AuditEvent.all().count()
    graph.throttle_page("10", 30)
    async with admin_context(idp, graph, graph_retry_seconds=2.0) as ctx:
        reply = await sync(ctx)
    assert isinstance(reply, Error) and reply.title == "Try again", reply
    assert "throttling" in reply.text and "Nothing was changed" in reply.text
    assert await Account.all().count() == 0
    assert await AuditEvent.all().count() == events_before


async def test_a_next_link_to_another_host_is_refused(
    idp: FakeIdentityProvider, graph: ScriptedGraph, ledger_data: str
) -> None:
    with FakeGraph(idp) as elsewhere:
        graph.next_link_origin = elsewhere.base_url  # same machine, another origin
        async with admin_context(idp, graph) as ctx:
            reply = await sync(ctx)
        assert isinstance(reply, Error), reply
        assert "outside the configured Graph URL" in reply.text
        assert elsewhere.call_count == 0  # the bot's token never went there
    assert len(pages(graph)) == 1
    assert await Account.all().count() == 0


async def test_a_second_run_updates_links_and_skips_with_reasons(
    idp: FakeIdentityProvider, graph: ScriptedGraph, ledger_data: str
) -> None:
    other_group = oid("group:other")
    graph.add_group(other_group, [oid("user:user02")])
    cq_group = oid("group:queues")
    graph.add_group(cq_group, [oid("user:user03")])
    async with admin_context(idp, graph) as ctx:
        assert isinstance(await sync(ctx, group=other_group, sub="OTHER-01"), Message)
        cq = await sync(ctx, "--kind call-queue", group=cq_group)
        assert isinstance(cq, Message) and cq.data["added"] == 1
        # Added by hand earlier, without an object id: the sync links it.
        await directory.add_account(
            Origin("op", "Operator", "cli"), "USER04@acme.example", "ACME-01"
        )
        first = await sync(ctx)
        assert isinstance(first, Message), first
        assert first.data["added"] == 12 and first.data["updated"] == 1
        assert first.data["skipped"] == 2
        skipped = dict((s["member"], s["reason"]) for s in first.data["skipped_members"])
        assert skipped["user02@acme.example"] == "belongs to subscription OTHER-01"
        assert "is a call-queue account here, not user" in skipped["user03@acme.example"]
        assert "Skipped:" in first.text and "belongs to subscription OTHER-01" in first.text

        graph.users[oid("user:user05")].display_name = "Renamed Five"
        graph.users[oid("user:user06")].user_principal_name = "user06.new@acme.example"
        events = await AuditEvent.all().count()
        second = await sync(ctx)
        assert isinstance(second, Message), second
        assert second.data["updated"] == 2 and second.data["added"] == 0
        assert second.data["unchanged"] == 11 and second.data["skipped"] == 2
        updates = await AuditEvent.filter(action="account.update").order_by("-id").limit(2)
        assert {u.target for u in updates} == {
            "account:user05@acme.example",
            "account:user06.new@acme.example",
        }
        five = next(u for u in updates if "user05" in u.target)
        assert five.before["name"] == "User05 Example"
        assert five.after["name"] == "Renamed Five"
        assert await AuditEvent.all().count() == events + 3  # two updates and the run

        third = await sync(ctx)
        assert isinstance(third, Message) and third.data["unchanged"] == 13
        assert await AuditEvent.all().count() == events + 3  # nothing changed: nothing audited

    found = await accounts()
    linked = found["user04@acme.example"]  # the directory's spelling wins
    assert linked.object_id == oid("user:user04") and linked.display_name == "User04 Example"
    assert found["user03@acme.example"].kind is AccountKind.CALL_QUEUE
    assert "user06.new@acme.example" in found and "user06@acme.example" not in found
    assert list(await accounts("OTHER-01")) == ["user02@acme.example"]
    assert (await verify_chain())[0]


async def test_dry_run_shows_the_run_and_changes_nothing(
    idp: FakeIdentityProvider, graph: ScriptedGraph, ledger_data: str
) -> None:
    events = await AuditEvent.all().count()
    async with admin_context(idp, graph) as ctx:
        reply = await sync(ctx, "--dry-run")
    assert isinstance(reply, Message) and reply.title.startswith("Dry run — nothing changed")
    assert reply.data["added"] == 15 and reply.data["dry_run"] is True
    assert await Account.all().count() == 0
    assert await AuditEvent.all().count() == events


async def test_resource_accounts_come_from_a_group_with_their_kind(
    idp: FakeIdentityProvider, graph: ScriptedGraph, ledger_data: str
) -> None:
    queues = oid("group:aa-accounts")
    graph.add_user(oid("user:aa-main"), "aa-main@acme.example", "Main line")
    graph.add_group(queues, [oid("user:aa-main")])
    async with admin_context(idp, graph) as ctx:
        reply = await sync(ctx, "--kind auto-attendant", group=queues)
    assert isinstance(reply, Message) and reply.data["kind"] == "auto-attendant"
    assert (await accounts())["aa-main@acme.example"].kind is AccountKind.AUTO_ATTENDANT


async def test_a_replayed_activity_syncs_once(
    idp: FakeIdentityProvider, graph: ScriptedGraph, ledger_data: str
) -> None:
    async with admin_context(idp, graph) as ctx:
        ctx.actor = replace(ctx.actor, idempotency_key="activity-42")
        first = await sync(ctx)
        again = await sync(ctx)
    assert isinstance(first, Message) and first.data["added"] == 15
    assert isinstance(again, Message) and again.title == "Already done"
    assert await AuditEvent.filter(action="directory.sync").count() == 1


async def test_wrong_group_subscription_or_no_graph_are_clear_answers(
    idp: FakeIdentityProvider, graph: ScriptedGraph, ledger_data: str
) -> None:
    async with admin_context(idp, graph) as ctx:
        missing = await sync(ctx, group=oid("group:nobody-made-this"))
        garbled = await sync(ctx, group="acme-voice-users")
        typo = await sync(ctx, sub="ACME-1")
        listed_before = len(pages(graph))
        no_graph = await run_text(
            f"users sync ACME-01 from-group {SYNC_GROUP}",
            Context(ctx.actor, ctx.settings, ctx.policy, services=Services()),
        )
    assert isinstance(missing, Error) and missing.title == "Not found"
    assert "Entra group" in missing.text
    assert isinstance(garbled, Error) and garbled.code == "usage"
    assert "not an Entra group object id" in garbled.text and garbled.usage
    assert isinstance(typo, Error) and typo.suggestions == ["ACME-01"]
    assert listed_before == 1  # only the missing group was asked for; the typo never reached Graph
    assert isinstance(no_graph, Error) and "not configured here" in no_graph.text
    assert await Account.all().count() == 0


async def test_what_is_not_a_usable_user_is_skipped_with_the_reason(ledger_data: str) -> None:
    members = [
        DirectoryMember(oid("user:ok"), "user", "Ok@Acme.example", "Ok\u0007 User"),
        DirectoryMember(
            oid("user:guest"), "user", "ann_fabrikam.com#EXT#@acme.onmicrosoft.com", "Ann"
        ),
        DirectoryMember(oid("user:ok"), "user", "ok@acme.example", "Ok User"),  # listed twice
        DirectoryMember(oid("user:twin"), "user", "OK@acme.example", "Twin"),
        DirectoryMember(oid("user:no-upn"), "user", None, "No Upn"),
        DirectoryMember(oid("user:bad-upn"), "user", "not an upn", "Bad Upn"),
        DirectoryMember(oid("device:1"), "device", None, "Lobby phone"),
        DirectoryMember("not-a-guid", "user", "x@acme.example", "X"),
        DirectoryMember(oid("group:n"), "group", None, "Nested"),
    ]
    origin = Origin(oid("user:alice"), "Alice", "chat")
    report = await sync_accounts(origin, "acme-01", SYNC_GROUP.upper(), members)
    assert report.added == ["Ok@Acme.example", "ann_fabrikam.com#EXT#@acme.onmicrosoft.com"]
    assert report.nested_groups == 1 and report.subscription == "ACME-01"
    assert report.group_id == SYNC_GROUP
    reasons = dict(report.skipped)
    assert reasons["OK@acme.example"] == "another member of the group has the same UPN"
    assert reasons["No Upn"] == "has no user principal name"
    assert "is not a UPN" in reasons["not an upn"]
    assert reasons["Lobby phone"] == "is a device, not a user"
    assert reasons["x@acme.example"] == "has no valid Entra object id"
    ok = (await accounts())["Ok@Acme.example"]
    assert ok.display_name == "Ok User"  # the control character is gone


async def test_concurrent_runs_never_add_an_account_twice(
    idp: FakeIdentityProvider, graph: ScriptedGraph, pg_database: str
) -> None:
    origin = Origin("setup", "Setup", "cli")
    await ledger.add_customer(origin, "Contoso")
    await ledger.add_subscription(origin, "ACME-01", "Contoso")
    async with admin_context(idp, graph) as ctx:
        results = await asyncio.gather(*(sync(ctx) for _ in range(4)))
        for reply in results:
            assert isinstance(reply, Message) or (
                isinstance(reply, Error)
                and reply.code == "conflict"
                and "nothing was changed" in reply.text
            ), reply
        assert sum(r.data["added"] for r in results if isinstance(r, Message)) == 15
        again = await sync(ctx)
    assert isinstance(again, Message) and again.data["unchanged"] == 15
    assert len(await accounts()) == 15
    assert await AuditEvent.filter(action="account.add").count() == 15
    assert (await verify_chain())[0]

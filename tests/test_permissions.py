"""Who may do what (SPEC §3): every registered command, for each kind of caller, through the one
gate (`run_text` with a real Context and GraphPolicy against the Graph fake, real msal tokens).

Roles: a non-admin, an admin (transitive member of the admin group), an approver (member of the
approver group only), a caller from another tenant (an admin in the directory, even), an admin
while Graph is down (connections refused, or answering 503), an admin while Graph throttles
(429 then answered within the retry bound) and while it throttles beyond the bound.
The table of results is written to test-artifacts/permissions.md.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.auth.membership import NOT_APPROVER, OTHER_TENANT, GraphPolicy
from bot.auth.policy import NOT_ADMIN
from bot.commands.dispatch import run_text
from bot.commands.registry import REGISTRY, Access, CommandSpec, Context, Services
from bot.commands.reply import Error, Reply
from bot.domain import ledger
from bot.domain.change import Origin
from bot.domain.models import AuditEvent, ProductKind
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support.graph_env import (
    APPROVER_GROUP,
    GRAPH_ROLE,
    actor,
    graph_client,
    identity_provider,
    make_settings,
    oid,
    populate,
    trust_fakes,
)
from tests.support.graph_env import OTHER_TENANT as OTHER_TENANT_ID

GATE_TITLES = {"Not allowed", "Not available here"}
SYNC_GROUP = oid("group:acme-voice-users")
SECRET_NAMES = ("Contoso", "ACME-01", "NUMBERS-GB-GEO", "acme", "numbers-gb-geo", "contoso")

# Arguments that make each command do real work for a caller who gets through the gate.
# Changes are dry runs, so every role meets the same data. Commands not listed run bare.
SAMPLE_ARGS = {
    "allocate": "5 NUMBERS-GB-GEO to ACME-01 --dry-run",
    "release": "1 NUMBERS-GB-GEO from ACME-01 --dry-run",
    "product add": "NUMBERS-FR-GEO --kind numbers --country FR --capacity 10 --dry-run",
    "product capacity": "NUMBERS-GB-GEO 500 --dry-run",
    "product retire": "NUMBERS-GB-GEO --dry-run",
    "customer add": "Fabrikam --dry-run",
    "subscription add": "FAB-01 --customer Contoso --dry-run",
    "subscriptions": "--customer Contoso",
    "usage": "ACME-01",
    "audit": "--target ACME-01",
    "users sync": f"ACME-01 from-group {SYNC_GROUP} --dry-run",
    "users": "ACME-01",
    "numbers": "ACME-01",
    "user add": "zoe@acme.example --subscription ACME-01 --dry-run",
    "help": "allocate",
}

# The same command about something that exists and something that does not: a refusal must
# not tell them apart.
LEAK_PAIRS = [
    ("usage ACME-01", "usage NOPE-99"),
    ("allocate 5 NUMBERS-GB-GEO to ACME-01", "allocate 5 NO-SUCH-POOL to NOPE-99"),
    ("product capacity NUMBERS-GB-GEO 50", "product capacity NO-SUCH-POOL 50"),
    ("subscriptions --customer Contoso", "subscriptions --customer Nobody"),
    ("audit --target ACME-01", "audit --target NOPE-99"),
    (f"users sync ACME-01 from-group {SYNC_GROUP}", f"users sync NOPE-99 from-group {oid('g:x')}"),
]


@dataclass
class Role:
    name: str
    who: str
    admin: bool  # expected: may run admin commands
    approver: bool  # expected: may run approver commands
    public: bool = True  # expected: may run help / whoami
    reason: str = ""  # what an admin-command refusal must say
    tenant: str = "home"
    settings: dict[str, Any] = field(default_factory=dict)
    trouble: Callable[[FakeGraph], None] | None = None  # before the role's commands
    each: Callable[[FakeGraph], None] | None = None  # before every command


ROLES = [
    Role("non-admin", "bob", admin=False, approver=False, reason=NOT_ADMIN),
    Role("admin", "alice", admin=True, approver=False),
    Role("approver", "carol", admin=False, approver=True, reason=NOT_ADMIN),
    Role(
        "other tenant",
        "dave",
        admin=False,
        approver=False,
        public=False,
        reason=OTHER_TENANT,
        tenant="other",
    ),
    Role(
        "Graph down (refused)",
        "alice",
        admin=False,
        approver=False,
        reason="Microsoft Graph could not be reached",
        settings={"graph_retry_seconds": 0.3},
        trouble=lambda g: g.down("refuse"),
    ),
    Role(
        "Graph down (503)",
        "alice",
        admin=False,
        approver=False,
        reason="Microsoft Graph is failing (HTTP 503",
        settings={"graph_retry_seconds": 0.3},
        trouble=lambda g: g.down("503"),
    ),
    Role(
        "Graph throttled, then answers",
        "alice",
        admin=True,
        approver=False,
        settings={"graph_retry_seconds": 2.0, "membership_cache_seconds": 0},
        each=lambda g: g.throttle(1, retry_after=0.05),
    ),
    Role(
        "Graph throttled beyond the bound",
        "alice",
        admin=False,
        approver=False,
        reason="Microsoft Graph is throttling the bot (it asked to wait 30 s)",
        settings={"graph_retry_seconds": 2.0},
        trouble=lambda g: g.throttle(100_000, retry_after=30),
    ),
]


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdentityProvider]:
    yield from identity_provider()


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """Authorization happens before any query: one database is enough here."""
    return sqlite_url


@pytest.fixture
async def seeded(database: str) -> str:
    origin = Origin("setup", "Setup", "cli")
    await ledger.add_customer(origin, "Contoso")
    await ledger.add_subscription(origin, "ACME-01", "Contoso")
    await ledger.add_product(origin, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 100, country="GB")
    await ledger.allocate(origin, 10, "NUMBERS-GB-GEO", "ACME-01")
    return database


@asynccontextmanager
async def context_for(
    idp: FakeIdentityProvider, role: Role
) -> AsyncIterator[tuple[Context, FakeGraph]]:
    with FakeGraph(idp, required_roles={GRAPH_ROLE}) as graph:
        populate(graph)
        graph.add_group(SYNC_GROUP, [oid("user:alice"), oid("user:bob")])
        settings = make_settings(idp, graph, approver_group_ids=(APPROVER_GROUP,), **role.settings)
        tenant = OTHER_TENANT_ID if role.tenant == "other" else idp.tenant_id
        async with graph_client(settings) as client:
            yield (
                Context(
                    actor=actor(role.who, tenant),
                    settings=settings,
                    policy=GraphPolicy(settings, client),
                    services=Services(graph=client),
                ),
                graph,
            )


def command_line(spec: CommandSpec) -> str:
    return f"{spec.name} {SAMPLE_ARGS.get(spec.name, '')}".strip()


def expected(role: Role, spec: CommandSpec) -> bool:
    if spec.access is Access.PUBLIC:
        return role.public
    return role.admin if spec.access is Access.ADMIN else role.approver


def refusal_reason(role: Role, spec: CommandSpec) -> str:
    if role.reason and role.reason != NOT_ADMIN:
        return role.reason  # another tenant, or Graph in trouble: whatever was asked
    return NOT_APPROVER if spec.access is Access.APPROVER else NOT_ADMIN


def refused(reply: Reply) -> bool:
    return isinstance(reply, Error) and reply.title in GATE_TITLES


def dump(reply: Reply) -> str:
    return json.dumps(asdict(reply), default=str, sort_keys=True)


async def test_role_by_command_table(
    idp: FakeIdentityProvider, seeded: str, artifacts: Path
) -> None:
    specs = sorted(REGISTRY.values(), key=lambda s: s.name)
    assert {"help", "whoami", "allocate", "users sync", "approve"} <= {s.name for s in specs}
    events_before = await AuditEvent.all().count()
    table: dict[str, dict[str, str]] = {}
    wrong: list[str] = []
    for role in ROLES:
        async with context_for(idp, role) as (ctx, graph):
            if role.trouble:
                role.trouble(graph)
            for spec in specs:
                if role.each:
                    role.each(graph)
                reply = await run_text(command_line(spec), ctx)
                got = not refused(reply)
                cell = "allowed" if got else "refused"
                table.setdefault(spec.name, {})[role.name] = cell
                if got != expected(role, spec):
                    wrong.append(f"{role.name} × {command_line(spec)}: {cell}: {dump(reply)}")
                    continue
                if got and isinstance(reply, Error) and reply.code == "internal":
                    wrong.append(f"{role.name} × {command_line(spec)}: crashed: {reply.text}")
                if not got:
                    assert isinstance(reply, Error)
                    want = refusal_reason(role, spec)
                    if want not in reply.text:
                        wrong.append(f"{role.name} × {spec.name}: reason {reply.text!r}")
                    if role.reason.startswith("Microsoft Graph") and "try again" not in reply.text:
                        wrong.append(f"{role.name} × {spec.name}: no 'try again' in {reply.text!r}")
                    leaked = [n for n in SECRET_NAMES if n in dump(reply)]
                    if leaked:
                        wrong.append(f"{role.name} × {spec.name}: refusal mentions {leaked}")
            if role.each:
                statuses = [r.status for r in graph.requests]
                assert 429 in statuses and statuses.count(200) >= statuses.count(429), statuses
            if not role.admin:
                # Refused callers caused no directory read and no change.
                assert graph.count("transitiveMembers") == 0
    assert await AuditEvent.all().count() == events_before  # dry runs and refusals only

    roles = [r.name for r in ROLES]
    lines = [
        "| command | access | " + " | ".join(roles) + " |",
        "|---|---|" + "---|" * len(roles),
    ]
    for spec in specs:
        cells = [table[spec.name][r] for r in roles]
        lines.append(
            f"| `{command_line(spec)}` | {spec.access.value} | " + " | ".join(cells) + " |"
        )
    (artifacts / "permissions.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("role", [r for r in ROLES if not r.admin], ids=lambda r: r.name)
async def test_refusals_say_nothing_about_the_data(
    idp: FakeIdentityProvider, seeded: str, role: Role
) -> None:
    async with context_for(idp, role) as (ctx, graph):
        if role.trouble:
            role.trouble(graph)
        for exists, missing in LEAK_PAIRS:
            a, b = await run_text(exists, ctx), await run_text(missing, ctx)
            assert refused(a) and refused(b), (exists, a, b)
            assert dump(a) == dump(b), (exists, missing)
            assert not [n for n in SECRET_NAMES if n in dump(a)], dump(a)


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
async def test_help_and_whoami_are_open_within_the_allowed_tenants(
    idp: FakeIdentityProvider, seeded: str, role: Role
) -> None:
    async with context_for(idp, role) as (ctx, graph):
        if role.trouble:
            role.trouble(graph)
        if role.each:
            role.each(graph)
        who = await run_text("whoami", ctx)
        helped = await run_text("help", ctx)
    if not role.public:
        assert refused(who) and refused(helped)
        assert isinstance(who, Error) and who.text == OTHER_TENANT
        return
    assert not refused(who) and not refused(helped)
    assert who.data["admin"] is role.admin and who.data["approver"] is role.approver
    assert who.data["object_id"] == ctx.actor.object_id
    if not role.admin:
        assert role.reason in who.data["reason"]
    listed = {row["command"] for row in helped.data}
    assert {"allocate", "users sync", "whoami"} <= listed
    assert not [n for n in SECRET_NAMES if n in dump(helped)]

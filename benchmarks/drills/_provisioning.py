"""What the provisioning drills and the benchmark share.

The fakes (Entra ID and Graph with Teams number management) run in this process, in their own
threads, on 127.0.0.1; the bot runs as `python app.py` (production settings, provisioning on,
its worker beside it) in one or more child processes against them and one database (a SQLite
file, or a database of its own on the PostgreSQL server at 127.0.0.1:5432). Assignments are
made here through the ledger's domain service — the job is written in the same transaction —
and the bots' workers carry them into the fake Teams tenant. At the end everything is read
back: the jobs, the audit chain, and what the fake tenant holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness import REPO, Child  # noqa: E402
from bot.domain import db, directory, ledger, licensing, numbers  # noqa: E402
from bot.domain import provisioning as jobs  # noqa: E402
from bot.domain.change import Origin, verify_chain  # noqa: E402
from bot.domain.models import (  # noqa: E402
    AuditEvent,
    JobAction,
    JobState,
    LicenseAssignment,
    NumberState,
    PhoneNumber,
    ProductKind,
    ProvisioningJob,
)
from tests.fakes import FakeGraph, FakeIdentityProvider, shared_tls  # noqa: E402
from tests.support import dbutil  # noqa: E402

APP_ID = "7b3f0c1e-2a4d-4e5f-8a9b-0c1d2e3f4a5b"
APP_SECRET = "provisioning-drill-secret"
ROLES = [
    "TeamsTelephoneNumber.ReadWrite.All",
    "User.Read.All",
    "GroupMember.Read.All",
    "LicenseAssignment.ReadWrite.All",
]
# Real SKU ids of Microsoft's catalogue: Teams Phone Standard, Domestic Calling Plan.
MCOEV = "e43b5b99-8dfb-405f-9987-dc307f34bcbd"
MCOPSTN1 = "0dab259f-bf13-4952-b7f8-7db8f131b28d"
SKUS = {"TEAMS-PHONE": MCOEV, "CALLING-PLAN": MCOPSTN1}
TENANT = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
FIRST = 442071230000
OPS = Origin(actor_id="drill", actor_name="Drill", source="cli", correlation_id="drill")
RULES = jobs.Rules(enabled=True, off_reason="", location_countries=frozenset({"US", "CA"}))


def e164(i: int) -> str:
    return f"+{FIRST + i}"


def upn(i: int) -> str:
    return f"user{i:05d}@contoso.com"


def oid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"entra-user:{name}"))


@contextmanager
def fakes(operation_delay: float = 0.5) -> Iterator[tuple[FakeIdentityProvider, FakeGraph]]:
    with FakeIdentityProvider() as idp:
        idp.add_tenant(TENANT)
        idp.register_app(APP_ID, APP_SECRET, roles=ROLES)
        with FakeGraph(idp) as graph:
            graph.operation_delay = operation_delay
            yield idp, graph


@contextmanager
def database(kind: str, work: Path) -> Iterator[str]:
    if kind == "sqlite":
        url = f"sqlite://{work / 'drill.sqlite3'}"
    else:
        url = f"{dbutil.SERVER_URL.rsplit('/', 1)[0]}/fusion_drill_{os.getpid()}"
    dbutil.prepare(url)
    try:
        yield url
    finally:
        if kind == "postgres":
            dbutil.drop(url)


def bot_env(url: str, idp: FakeIdentityProvider, graph: FakeGraph, **extra: str) -> dict[str, str]:
    bundle = str(shared_tls().ca_bundle)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))}
    env.update(
        {
            "DATABASE_URL": url,
            "HOST": "127.0.0.1",
            "PORT": "0",
            "MicrosoftAppId": APP_ID,
            "MicrosoftAppPassword": APP_SECRET,
            "MicrosoftAppTenantId": idp.tenant_id,
            "MicrosoftAppType": "SingleTenant",
            "FUSION_LOGIN_AUTHORITY": idp.base_url,
            "FUSION_GRAPH_URL": graph.graph_url,
            "FUSION_BOTFRAMEWORK_OPENID_METADATA": idp.channel_metadata_url,
            "FUSION_SCHEDULER": "false",
            "FUSION_PROVISIONING": "on",
            "FUSION_PROVISIONING_LEASE_SECONDS": "9",
            "REQUESTS_CA_BUNDLE": bundle,
            "SSL_CERT_FILE": bundle,
        }
    )
    env.update(extra)
    return env


def start_bot(work: Path, name: str, env: dict[str, str]) -> Child:
    return Child(
        name,
        [sys.executable, str(REPO / "app.py")],
        env,
        work / f"{name}.log",
        handshake=False,
    ).start()


async def workers_started(bots: list[Child], within: float = 60) -> None:
    """Wait until every bot's provisioning worker runs (its log says so), so that a drill of
    several instances gives each the same chance at the jobs."""
    deadline = time.monotonic() + within
    for bot in bots:
        while "provisioning worker started" not in bot.log_path.read_text(errors="replace"):
            if bot.proc is not None and bot.proc.poll() is not None:
                raise RuntimeError(f"{bot.name} exited; see {bot.log_path}:\n{bot.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{bot.name}'s worker did not start:\n{bot.tail()}")
            await asyncio.sleep(0.1)


async def seed(graph: FakeGraph, users: int) -> None:
    """Contoso (linked to the tenant) with ACME-01, `users` users in the ledger and the
    tenant's directory, enough numbers and seats."""
    await ledger.add_customer(OPS, "Contoso Ltd", TENANT)
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, users, country="GB")
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, users)
    await ledger.allocate(OPS, users, "NUMBERS-GB-GEO", "ACME-01")
    await ledger.allocate(OPS, users, "TEAMS-SEATS", "ACME-01")
    await numbers.add_numbers(OPS, f"{e164(0)}-{e164(users - 1)}")
    for i in range(users):
        await directory.add_account(OPS, upn(i), "ACME-01")
        graph.add_user(oid(upn(i)), upn(i), f"User {i}")


async def seed_licenses(graph: FakeGraph, users: int) -> None:
    """Licenses TEAMS-PHONE (MCOEV), CALLING-PLAN (MCOPSTN1) and VOICEMAIL (no SKU), pack VOICE
    of the three; the tenant bought enough units of each SKU."""
    for name, sku in (("TEAMS-PHONE", "MCOEV"), ("CALLING-PLAN", "MCOPSTN1"), ("VOICEMAIL", None)):
        await ledger.add_product(OPS, name, ProductKind.LICENSE, users * 2, sku=sku)
        await ledger.allocate(OPS, users * 2, name, "ACME-01")
    await licensing.create_pack(OPS, "VOICE", ["TEAMS-PHONE", "CALLING-PLAN", "VOICEMAIL"])
    graph.add_sku(TENANT, MCOEV, "MCOEV", users * 2)
    graph.add_sku(TENANT, MCOPSTN1, "MCOPSTN1", users * 2)


async def license_work(first: int, last: int) -> int:
    """License jobs for users first..last-1, through the ledger: every third user gets pack
    VOICE (one license-add of two SKUs), the others TEAMS-PHONE; every sixth user (from the
    second) has it taken away again at once (a license-remove after its license-add). Returns
    how many jobs were written."""
    written = 0
    for i in range(first, last):
        if i % 3 == 0:
            await licensing.assign_pack(OPS, "VOICE", [upn(i)], rules=RULES)
        else:
            await licensing.assign_license(OPS, "TEAMS-PHONE", [upn(i)], rules=RULES)
        written += 1
        if i % 6 == 1:
            await licensing.unassign_license(OPS, "TEAMS-PHONE", upn(i), rules=RULES)
            written += 1
    return written


async def license_open() -> int:
    return await ProvisioningJob.filter(
        action__in=(JobAction.LICENSE_ADD, JobAction.LICENSE_REMOVE),
        state__in=(JobState.PENDING, JobState.SENT),
    ).count()


async def license_checks(graph: FakeGraph, r: Reading) -> None:
    """Every license job done, each add and each remove took effect in Microsoft 365 exactly
    once (one accepted assignLicense per user and SKU each way), and Microsoft 365 holds what
    the ledger says."""
    lic = await ProvisioningJob.filter(
        action__in=(JobAction.LICENSE_ADD, JobAction.LICENSE_REMOVE)
    ).values_list("state", flat=True)
    r.figures["license jobs"] = dict(Counter(str(s) for s in lic))
    r.checks["every license job done"] = all(str(s) == "done" for s in lic)
    adds: Counter[tuple[str, str]] = Counter()
    removes: Counter[tuple[str, str]] = Counter()
    for x in graph.requests:
        if x.info.get("kind") != "assignLicense" or x.status != 200 or not isinstance(x.json, dict):
            continue
        user = x.path.split("/users/", 1)[1].split("/", 1)[0]
        for item in x.json.get("addLicenses", []):
            adds[(user, str(item["skuId"]).lower())] += 1
        for sku in x.json.get("removeLicenses", []):
            removes[(user, str(sku).lower())] += 1
    r.figures["assignLicense accepted"] = sum(
        1 for x in graph.requests if x.info.get("kind") == "assignLicense" and x.status == 200
    )
    r.figures["license effects more than once"] = sum(
        1 for c in [*adds.values(), *removes.values()] if c > 1
    )
    wanted_adds: Counter[tuple[str, str]] = Counter()
    wanted_removes: Counter[tuple[str, str]] = Counter()
    for job in await ProvisioningJob.filter(
        action__in=(JobAction.LICENSE_ADD, JobAction.LICENSE_REMOVE), state=JobState.DONE
    ):
        for entry in job.licenses or []:
            sku = SKUS.get(str(entry.get("product")))
            if sku is None:
                continue
            target = wanted_adds if job.action is JobAction.LICENSE_ADD else wanted_removes
            target[(oid(job.upn), sku)] += 1
    r.checks["each license add and remove took effect once"] = (
        adds == wanted_adds and removes == wanted_removes
    )
    held = await LicenseAssignment.all().values_list("account__upn", "product__name")
    ledger_view: dict[str, set[str]] = {}
    for who, name in held:
        if str(name) in SKUS:
            ledger_view.setdefault(oid(str(who)), set()).add(SKUS[str(name)])
    graph_view = {user: set(skus) for (tenant, user), skus in graph.user_licenses.items() if skus}
    r.checks["Microsoft 365 and the ledger agree"] = graph_view == ledger_view
    r.figures["users holding licenses"] = len(ledger_view)


async def assign(first: int, last: int) -> None:
    """Assign numbers first..last-1 (each to its user), through the ledger, jobs and all."""
    for i in range(first, last):
        await numbers.assign_number(OPS, e164(i), upn(i), rules=RULES)


async def ended() -> int:
    return await ProvisioningJob.filter(state__in=(JobState.DONE, JobState.FAILED)).count()


async def wait_ended(count: int, timeout: float) -> float:  # noqa: ASYNC109
    """Seconds until `count` jobs have ended (done or failed)."""
    started = time.monotonic()
    while await ended() < count:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"only {await ended()} of {count} jobs ended in {timeout:.0f} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


@dataclass
class Reading:
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


async def read_back(graph: FakeGraph, failures: dict[str, str]) -> Reading:
    """Every job ended once, Teams agrees with the ledger, failed jobs left Teams alone and say
    why, the audit chain verifies."""
    r = Reading()
    states = Counter(str(s) for s in await ProvisioningJob.all().values_list("state", flat=True))
    r.figures["jobs"] = dict(states)
    r.checks["every job ended"] = states.get("pending", 0) == states.get("sent", 0) == 0
    accepted = Counter(
        x.json["telephoneNumber"]
        for x in graph.requests
        if x.info.get("kind") == "assignNumber" and x.status == 202
    )
    twice = {n: c for n, c in accepted.items() if c > 1}
    r.figures["assignNumber accepted more than once"] = len(twice)
    r.checks["each assignment sent to Teams once"] = not twice and all(
        accepted.get(n, 0) == 1
        for n in await ProvisioningJob.filter(
            state=JobState.DONE, action=JobAction.ASSIGN
        ).values_list("e164", flat=True)
    )
    ends = Counter(
        str(t)
        for t in await AuditEvent.filter(
            action__in=("provisioning.done", "provisioning.failed")
        ).values_list("target", flat=True)
    )
    r.checks["each job ended once in the audit"] = len(ends) == sum(states.values()) and all(
        c == 1 for c in ends.values()
    )
    held = await PhoneNumber.filter(state=NumberState.ASSIGNED).prefetch_related("holder")
    wanted = {n.e164: oid(n.holder.upn) for n in held if n.holder and n.e164 not in failures}
    r.checks["Teams and the ledger agree"] = graph.assigned(TENANT) == wanted
    failed = await ProvisioningJob.filter(state=JobState.FAILED)
    r.checks["failed jobs are the scripted ones"] = {j.e164 for j in failed} == set(failures)
    r.checks["failed jobs left Teams alone"] = all(
        graph.teams_number(TENANT, n) is None for n in failures
    )
    r.checks["failed jobs say why"] = all(
        j.reason is not None and failures[j.e164] in j.reason for j in failed
    )
    intact, count, problem = await verify_chain()
    r.checks["audit chain verifies"] = intact
    r.figures["audit events"] = count
    if problem:
        r.figures["audit problem"] = problem
    endings = await AuditEvent.filter(
        action__in=("provisioning.done", "provisioning.failed")
    ).values_list("after", flat=True)
    r.figures["ended how"] = dict(Counter(str(a.get("how", "failed")) for a in endings))
    r.figures["ended by worker"] = sorted(
        Counter(str(a.get("worker")) for a in endings).values(), reverse=True
    )
    calls = Counter(str(x.info.get("kind")) for x in graph.requests)
    r.figures["graph calls"] = dict(calls)
    r.figures["graph 429s"] = sum(1 for x in graph.requests if x.status == 429)
    return r


async def open_db(url: str) -> None:
    await db.open_database(url, migrate=False)


def save(path: str | None, results: list[dict[str, Any]]) -> None:
    if path:
        Path(path).write_text(json.dumps({"results": results}, indent=1, default=str))

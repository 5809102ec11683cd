"""Entra ID and Microsoft Graph (Teams number management) for the provisioning tests.

The fakes run on 127.0.0.1 in their own threads; the bot side is real: msal client credentials
per customer tenant (`TenantTokens`), `TeamsNumbers` over https, the `Worker`, the ledger.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

import aiohttp

from bot.auth.credentials import client_ssl_context
from bot.config import Settings
from bot.domain import directory, ledger, numbers
from bot.domain import provisioning as jobs
from bot.domain.models import JobState, ProductKind, ProvisioningJob
from bot.provisioning.teams_numbers import TeamsNumbers, TenantPace
from bot.provisioning.tokens import TenantTokens
from bot.provisioning.worker import Worker
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support.ledger_state import origin

APP_ID = "7b3f0c1e-2a4d-4e5f-8a9b-0c1d2e3f4a5b"
APP_SECRET = "provisioning-test-secret"
ROLES = ["TeamsTelephoneNumber.ReadWrite.All", "User.Read.All", "GroupMember.Read.All"]
CUSTOMER_TENANT = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
OTHER_TENANT = "9e8d7c6b-5a49-4382-9716-0f1e2d3c4b5a"
LOCATION = "0b6a1f2e-3c4d-4e5f-9a8b-7c6d5e4f3a2b"
OPS = origin()
RULES = jobs.Rules(enabled=True, off_reason="", location_countries=frozenset({"US", "CA"}))
FIRST = 442071234000


def oid(upn: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"entra-user:{upn}"))


def upn(i: int) -> str:
    return f"user{i:04d}@contoso.com"


def e164(i: int) -> str:
    return f"+{FIRST + i}"


@contextmanager
def fakes(*, consented: bool = True) -> Iterator[tuple[FakeIdentityProvider, FakeGraph]]:
    """The fake Entra ID (the provider's tenant and the customer's) and Graph."""
    with FakeIdentityProvider() as idp:
        idp.add_tenant(CUSTOMER_TENANT)
        idp.add_tenant(OTHER_TENANT)
        tenants = None if consented else [idp.tenant_id]
        idp.register_app(APP_ID, APP_SECRET, roles=ROLES, tenants=tenants)
        with FakeGraph(idp) as graph:
            graph.operation_delay = 0.05
            yield idp, graph


def settings_for(idp: FakeIdentityProvider, graph: FakeGraph, **overrides: Any) -> Settings:
    base = Settings(
        app_id=APP_ID,
        app_password=APP_SECRET,
        app_tenant_id=idp.tenant_id,
        app_type="SingleTenant",
        login_authority=idp.base_url,
        graph_url=graph.graph_url,
        provisioning=True,
    )
    return replace(base, **overrides)


@asynccontextmanager
async def teams_numbers(
    settings: Settings, pace: TenantPace | None = None
) -> AsyncIterator[TeamsNumbers]:
    tokens = TenantTokens(settings)
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(), limit=100)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            yield TeamsNumbers(session, settings.graph_url, tokens, request_timeout=5, pace=pace)
    finally:
        tokens.close()


def worker(numbers: TeamsNumbers, **options: Any) -> Worker:
    options.setdefault("first_poll", 0.05)
    options.setdefault("idle_seconds", 0.05)
    options.setdefault("backoff_cap", 1.0)
    return Worker(numbers, **options)


async def seed(graph: FakeGraph, users: int = 5, *, tenant: str | None = CUSTOMER_TENANT) -> None:
    """Contoso (linked to the customer tenant) with ACME-01: GB numbers, seats, `users` users
    known to the tenant's directory by UPN."""
    await ledger.add_customer(OPS, "Contoso Ltd", tenant)
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    capacity = max(users, 10) + 10
    await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, capacity, country="GB")
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, capacity)
    await ledger.allocate(OPS, capacity, "NUMBERS-GB-GEO", "ACME-01")
    await ledger.allocate(OPS, capacity, "TEAMS-SEATS", "ACME-01")
    await numbers.add_numbers(OPS, f"{e164(0)}-{e164(capacity - 1)}")
    for i in range(users):
        await directory.add_account(OPS, upn(i), "ACME-01")
        graph.add_user(oid(upn(i)), upn(i), f"User {i}")


async def drain(w: Worker, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Run rounds until no job is pending or sent."""
    deadline = time.monotonic() + timeout
    while await ProvisioningJob.filter(state__in=jobs.OPEN).exists():
        if time.monotonic() > deadline:
            left = await ProvisioningJob.filter(state__in=jobs.OPEN).count()
            raise TimeoutError(f"{left} jobs still open after {timeout}s")
        if not await w.run_once():
            await asyncio.sleep(0.02)


async def states() -> dict[str, int]:
    found = await jobs.counts()
    return {k: v for k, v in found.items() if v}


async def done_numbers() -> dict[str, str]:
    """Number → UPN of every assign job that ended done."""
    rows = await ProvisioningJob.filter(state=JobState.DONE, action="assign").values_list(
        "e164", "upn"
    )
    return {str(n): str(u) for n, u in rows}

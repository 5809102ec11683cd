"""Microsoft 365 licenses and reconcile against the fake Entra ID and Graph (SPEC §9): the
customer tenant's SKUs, users, numbers; the bot side real (msal per tenant, https, the worker,
the ledger)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

from bot.config import Settings
from bot.domain import directory, ledger, licensing, numbers
from bot.domain.models import ProductKind
from bot.provisioning.session import open_tenant_graph
from bot.provisioning.tenant_graph import TenantGraph
from bot.provisioning.worker import Worker
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support import provisioning_env as numbers_env
from tests.support.ledger_state import context
from tests.support.provisioning_env import APP_ID, APP_SECRET, CUSTOMER_TENANT, OPS, e164, oid, upn

ROLES = [*numbers_env.ROLES, "LicenseAssignment.ReadWrite.All"]
# Real SKU ids of the public catalogue (Microsoft's "product names and service plan
# identifiers for licensing" list).
MCOEV = "e43b5b99-8dfb-405f-9987-dc307f34bcbd"  # Teams Phone Standard
MCOPSTN1 = "0dab259f-bf13-4952-b7f8-7db8f131b28d"  # Domestic Calling Plan
SPE_E5 = "06ebc4ee-1bb5-47dd-8120-11324bc54e06"  # Microsoft 365 E5
SPE_E3 = "05e9a617-0261-4cee-bb44-138d3ef5d965"  # Microsoft 365 E3


@contextmanager
def fakes() -> Iterator[tuple[FakeIdentityProvider, FakeGraph]]:
    with FakeIdentityProvider() as idp:
        idp.add_tenant(CUSTOMER_TENANT)
        idp.register_app(APP_ID, APP_SECRET, roles=ROLES)
        with FakeGraph(idp) as graph:
            graph.operation_delay = 0.02
            yield idp, graph


def settings_for(idp: FakeIdentityProvider, graph: FakeGraph, **overrides: Any) -> Settings:
    return numbers_env.settings_for(idp, graph, **overrides)


@asynccontextmanager
async def tenant_graph(settings: Settings) -> AsyncIterator[TenantGraph]:
    async with open_tenant_graph(settings, request_timeout=5) as graph:
        yield graph


def worker(graph: TenantGraph, **options: Any) -> Worker:
    return numbers_env.worker(graph, **options)


def ctx_for(settings: Settings, graph: TenantGraph | None = None) -> Any:
    ctx = context(settings=settings)
    if graph is not None:
        ctx.services = replace(ctx.services, tenant_graph=graph)
    return ctx


async def seed(graph: FakeGraph, users: int = 4, *, units: int = 10) -> None:
    """Contoso (linked) with ACME-01: numbers, seats (as `provisioning_env.seed`), licenses
    TEAMS-PHONE (MCOEV), CALLING-PLAN (MCOPSTN1), M365-E5 (by SKU id) and VOICEMAIL (no SKU);
    pack VOICE = TEAMS-PHONE + CALLING-PLAN + VOICEMAIL; the tenant bought `units` of each SKU."""
    await numbers_env.seed(graph, users=users)
    for name, sku in (
        ("TEAMS-PHONE", "MCOEV"),
        ("CALLING-PLAN", "mcopstn1"),
        ("M365-E5", SPE_E5),
        ("VOICEMAIL", None),
    ):
        await ledger.add_product(OPS, name, ProductKind.LICENSE, 1000, sku=sku)
        await ledger.allocate(OPS, max(users, 10), name, "ACME-01")
    await licensing.create_pack(OPS, "VOICE", ["TEAMS-PHONE", "CALLING-PLAN", "VOICEMAIL"])
    for sku_id, part in (
        (MCOEV, "MCOEV"),
        (MCOPSTN1, "MCOPSTN1"),
        (SPE_E5, "SPE_E5"),
        (SPE_E3, "SPE_E3"),
    ):
        graph.add_sku(CUSTOMER_TENANT, sku_id, part, units)


async def add_user(graph: FakeGraph, i: int) -> None:
    await directory.add_account(OPS, upn(i), "ACME-01")
    graph.add_user(oid(upn(i)), upn(i), f"User {i}")


@asynccontextmanager
async def drifted_tenant(
    idp: FakeIdentityProvider, graph: FakeGraph
) -> AsyncIterator[tuple[Any, TenantGraph]]:
    """Six users seeded and one difference of every kind (`drifted`): the admin's context,
    holding the customer tenant's Graph, and that Graph."""
    await seed(graph, users=6)
    settings = settings_for(idp, graph)
    async with tenant_graph(settings) as client:
        ctx = ctx_for(settings, client)
        await drifted(graph, client)
        yield ctx, client


async def drifted(graph: FakeGraph, client: TenantGraph) -> None:
    """Teams and the ledger agreeing on user 0's number and license, then one difference of
    every kind, made by hand on one side or the other."""
    await numbers.assign_number(OPS, e164(0), upn(0), rules=numbers_env.RULES)
    await licensing.assign_license(OPS, "TEAMS-PHONE", [upn(0)], rules=numbers_env.RULES)
    await numbers_env.drain(worker(client))
    assert graph.assigned(CUSTOMER_TENANT) == {e164(0): oid(upn(0))}
    # Ledger only (as if Teams had lost them):
    await numbers.assign_number(OPS, e164(1), upn(1))  # missing in Teams
    await numbers.assign_number(OPS, e164(2), upn(2))  # failed in Teams
    graph.assign_by_hand(CUSTOMER_TENANT, e164(2), oid(upn(2)), "assignmentFailed")
    await numbers.assign_number(OPS, e164(3), upn(3))  # someone else in Teams
    graph.assign_by_hand(CUSTOMER_TENANT, e164(3), oid(upn(5)))
    await licensing.assign_license(OPS, "CALLING-PLAN", [upn(1)])  # missing in Microsoft 365
    # Teams only (changed in the admin center):
    graph.assign_by_hand(CUSTOMER_TENANT, e164(4), oid(upn(4)))
    graph.give_license(CUSTOMER_TENANT, oid(upn(2)), MCOEV)


__all__ = ["CUSTOMER_TENANT", "OPS", "oid", "upn"]

"""Reading a customer's tenant for a reconcile: its number assignments, its users with their
licenses and its subscribed SKUs, every page of each (the three listings at once), then the
comparison with the ledger and the run kept (bot.domain.reconcile)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

from bot.domain import reconcile
from bot.domain.change import Origin
from bot.domain.models import ReconcileRun
from bot.provisioning.tenant_graph import TenantGraph


async def read_tenant(graph: TenantGraph, tenant: str) -> reconcile.TenantState:
    calls = graph.calls
    numbers, users, skus = await asyncio.gather(
        graph.number_assignments(tenant),
        graph.users(tenant),
        graph.subscribed_skus(tenant, fresh=True),
    )
    return reconcile.TenantState(
        numbers=[
            reconcile.TeamsNumber(
                a.telephone_number,
                a.target_id.lower() if a.target_id else None,
                a.activation_state,
            )
            for a in numbers
        ],
        users={u.object_id: (u.upn, u.sku_ids) for u in users},
        skus={s.sku_id: s.part_number for s in skus},
        graph_calls=graph.calls - calls,
    )


async def run(
    origin: Origin,
    graph: TenantGraph,
    subscription_code: str,
    trigger: str,
    read: dict[str, reconcile.TenantState] | None = None,
) -> ReconcileRun:
    """Compare one subscription with its tenant and keep what was found. Graph trouble
    (`Retryable`, `Refused`) propagates before anything is written. `read`: tenants already
    read in this round (several subscriptions of one customer share its tenant's answers)."""
    sub, tenant = await reconcile.tenant_of(subscription_code)
    started = datetime.now(UTC)
    state = read.get(tenant) if read is not None else None
    if state is None:
        state = await read_tenant(graph, tenant)
        if read is not None:
            read[tenant] = state
    else:
        state = replace(state, graph_calls=0)
    findings = await reconcile.compare(sub.code, state)
    return await reconcile.record(
        origin,
        sub.code,
        tenant,
        trigger,
        findings,
        started_at=started,
        graph_calls=state.graph_calls,
    )

"""What license commands need from the customer's Microsoft 365 tenant before they change the
ledger: the free units of each SKU they would use (SPEC §9: units checked against the tenant's
`subscribedSkus`), and a Graph client for the tenant (the front door's, or one made for the
command)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

from bot.commands.registry import Context
from bot.commands.reply import Error
from bot.domain import license_jobs
from bot.domain.models import JobState, Product, ProvisioningJob
from bot.domain.provisioning import Rules
from bot.provisioning.session import open_tenant_graph
from bot.provisioning.teams_numbers import Refused, Retryable
from bot.provisioning.tenant_graph import TenantGraph

# How long a bulk license command waits for Microsoft 365's per-user answers before it answers
# with what it has (Services.m365_wait_seconds), where the process runs the provisioning worker
# (the bot): quick answers make the first card; the card is drawn again when the last job ends
# (bot.teams.provisioning). The CLI does not wait (`provisioning` shows how each job ended).
WAIT_SECONDS = 2.0
POLL_SECONDS = 0.25


@asynccontextmanager
async def tenant_graph(ctx: Context) -> AsyncIterator[TenantGraph]:
    given = ctx.services.tenant_graph
    if isinstance(given, TenantGraph):
        yield given
        return
    async with open_tenant_graph(ctx.settings) as graph:
        yield graph


async def outcomes(ctx: Context, job_ids: Iterable[int]) -> dict[int, ProvisioningJob]:
    """The jobs of a bulk command as they stand once all ended or WAIT_SECONDS passed (at
    once, without waiting, where the front door runs no worker)."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    deadline = time.monotonic() + max(float(ctx.services.m365_wait_seconds), 0.0)
    while True:
        rows = {j.id: j for j in await ProvisioningJob.filter(id__in=wanted)}
        still = [j for j in rows.values() if j.state in (JobState.PENDING, JobState.SENT)]
        if not still or time.monotonic() >= deadline:
            return rows
        await asyncio.sleep(POLL_SECONDS)


async def shortfall(
    ctx: Context, rules: Rules, upns: Sequence[str], products: Sequence[Product]
) -> Error | None:
    """None when every tenant has the free units the request needs; else the refusal, with the
    figures (or why Microsoft 365 could not be asked). Nothing has been changed either way."""
    wanted = await license_jobs.demand(upns, products, rules)
    if not wanted:
        return None
    short: list[str] = []
    try:
        async with tenant_graph(ctx) as graph:
            for need in wanted:
                sku = await graph.sku(need.tenant, need.sku, fresh=True)
                free = sku.free - need.waiting
                if need.needed > free:
                    waiting = f", {need.waiting} more being set up" if need.waiting else ""
                    short.append(
                        f"{need.customer}'s Microsoft 365 has {max(free, 0):,} free "
                        f"{sku.part_number} ({sku.enabled:,} bought, {sku.consumed:,} assigned"
                        f"{waiting}); {need.product} needs {need.needed:,}."
                    )
    except Retryable as exc:
        return Error(
            title="Microsoft 365 did not answer",
            text=f"The free licenses could not be checked: {exc.message} Nothing was changed; "
            "try again in a minute.",
            code="unavailable",
        )
    except Refused as exc:
        return Error(
            title="Microsoft 365 refused",
            text=f"The free licenses could not be checked: {exc.message} Nothing was changed.",
            code="refused",
        )
    if not short:
        return None
    return Error(
        title="Not enough licenses in Microsoft 365",
        text=" ".join(short) + " Nothing was changed: buy more there, or assign fewer.",
        code="conflict",
    )

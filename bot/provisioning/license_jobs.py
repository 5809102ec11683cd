"""One step of a license job (bot.domain.license_jobs), taken by the provisioning worker.

assignLicense answers at once (200 with the user), so a license job goes pending → done |
failed in one step; throttling and outages (`Retryable`) are left to the worker, which holds the
job (and the tenant, on a 429) and tries again.

Exactly once: the attempt is counted before the call leaves; a job found pending with attempts
first reads the user's licenses (licenseDetails) and is done without a second call when
Microsoft 365 already holds what it wants.

A pack: when Microsoft 365 refuses an account's share of a service pack, whatever of it did
reach the account is removed again there (assignLicense is meant to be all or nothing, but the
bot does not rely on it), and the ledger takes the whole share back (`take_back`), saying why.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.domain import license_jobs
from bot.domain import provisioning as jobs
from bot.domain.models import JobAction, ProvisioningJob
from bot.provisioning.teams_numbers import Refused, Retryable
from bot.provisioning.tenant_graph import TenantGraph

log = logging.getLogger("bot.provisioning.license_jobs")
# `worker` below is the bot.provisioning.worker.Worker taking the step (not imported: it
# imports this module).


async def step(worker: Any, job: ProvisioningJob) -> None:
    graph = worker.numbers
    if not isinstance(graph, TenantGraph):
        raise Refused("This bot instance's worker was not given a Microsoft 365 license client.")
    tenant, adding = job.tenant_id, job.action is JobAction.LICENSE_ADD
    what = license_jobs.names(job)
    try:
        object_id = job.object_id
        if not object_id and job.account_id is not None:
            object_id = await jobs.account_object_id(job.account_id)
        if not object_id:
            object_id = await graph.user_id(tenant, job.upn)
        skus = [await graph.sku(tenant, ref) for ref in license_jobs.sku_refs(job)]
        ids = [s.sku_id for s in skus]
        if job.attempts > 0:
            # It may have reached Microsoft 365 before: look before asking again.
            held = await graph.license_ids(tenant, object_id)
            if held is not None and (set(ids) <= held if adding else not (set(ids) & held)):
                await worker._end(  # noqa: SLF001
                    job, jobs.mark_done(job, worker.name, "found as wanted in Microsoft 365")
                )
                return
        if not await jobs.note_attempt(job, worker.name, object_id):
            return  # the claim was lost to another worker
        worker._sending.add(job.id)  # noqa: SLF001  # a 429 to it: not taken (see Worker.step)
        if adding:
            await graph.assign_license(tenant, object_id, ids, [])
        else:
            held = await graph.license_ids(tenant, object_id) or frozenset()
            present = [i for i in ids if i in held]
            if present:
                await graph.assign_license(tenant, object_id, [], present)
    except Retryable:
        raise
    except Refused as exc:
        verb = "add" if adding else "remove"
        reason = f"Microsoft 365 did not {verb} {what} for {job.upn}: {exc.message}"
        await _refused(worker, graph, job, reason, adding)
        return
    await worker._end(job, jobs.mark_done(job, worker.name, "assignLicense succeeded"))  # noqa: SLF001


async def _refused(
    worker: Any, graph: TenantGraph, job: ProvisioningJob, reason: str, adding: bool
) -> None:
    if adding and job.pack:
        await _undo_partial(graph, job)
        reason += (
            f" The rest of service pack {job.pack} was taken back from {job.upn} in the ledger "
            "(a pack is all or nothing)."
        )
        await worker._end(job, license_jobs.take_back(job, worker.name, reason))  # noqa: SLF001
        return
    await worker._end(job, jobs.mark_failed(job, worker.name, reason))  # noqa: SLF001


async def _undo_partial(graph: TenantGraph, job: ProvisioningJob) -> None:
    """Remove from Microsoft 365 whatever of a refused pack share reached the account."""
    tenant = job.tenant_id
    try:
        object_id = job.object_id or await graph.user_id(tenant, job.upn)
        ids = [(await graph.sku(tenant, ref)).sku_id for ref in license_jobs.sku_refs(job)]
        held = await graph.license_ids(tenant, object_id) or frozenset()
        present = [i for i in ids if i in held]
        if present:
            await graph.assign_license(tenant, object_id, [], present)
    except (Refused, Retryable) as exc:
        # The ledger still takes the pack back; a reconcile shows what Teams kept.
        log.warning("could not undo a refused pack share of job %s: %s", job.id, exc.message)

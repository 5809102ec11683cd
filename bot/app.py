"""The Teams bot's web server: settings → database → HTTP session → adapter and bot.

    fusion-bot             # (or python app.py in a checkout) serves POST /api/messages,
                           # GET /healthz, /readyz and /metrics on HOST:PORT

`create_app(settings)` builds the aiohttp application (tests start it on port 0). Resources
live in `cleanup_ctx`, opened in order and closed in reverse: the database, the one shared
HTTP session (Bot Connector, Graph, signing keys), the Bot Framework edge, and the background
tasks other modules register in `app[BACKGROUND_TASKS]` before the app starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from bot import metrics
from bot.auth.credentials import ClientCredentials, client_ssl_context
from bot.commands.registry import Services
from bot.config import ConfigError, Settings
from bot.domain import approvals, change, db, provisioning, reconcile
from bot.domain.models import DriftKind
from bot.domain.naming import set_naming_rule
from bot.logs import configure_logging
from bot.scheduler import run_scheduler
from bot.teams.approvals_channel import ApprovalsChannel
from bot.teams.edge import Edge, build_edge, build_sender
from bot.teams.provisioning import JobCards

if TYPE_CHECKING:
    from bot.teams.agents_edge import AgentsEdge

log = logging.getLogger("bot.app")

#: A background job: started once the app is up, cancelled when it shuts down.
BackgroundTask = Callable[[web.Application], Coroutine[Any, Any, None]]

SETTINGS = web.AppKey("settings", Settings)
HTTP = web.AppKey("http", aiohttp.ClientSession)
EDGE: web.AppKey[Edge | AgentsEdge] = web.AppKey("edge")  # FUSION_EDGE=botbuilder|agents
BACKGROUND_TASKS = web.AppKey("background_tasks", list[BackgroundTask])
METRICS_AUDIENCE = web.AppKey("metrics_audience", metrics.MetricsAudience)

HEALTH_TIMEOUT_SECONDS = 5
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


# ----- resources ----------------------------------------------------------------------------------


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    await db.open_database(settings.database_url, migrate=settings.migrate_on_start)
    try:
        yield
    finally:
        await db.close_database()


PROXY_VARIABLES = (
    "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"
)


async def _http(app: web.Application) -> AsyncIterator[None]:
    # One session for every outbound call: kept-alive connections, TLS trust from the environment.
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(), limit=100)
    # trust_env makes aiohttp look up ~/.netrc and the proxy variables in a worker thread for
    # every request (two thread hops per reply); only worth it when a proxy is configured.
    proxied = any(os.environ.get(name) for name in PROXY_VARIABLES)
    async with aiohttp.ClientSession(
        connector=connector, timeout=HTTP_TIMEOUT, trust_env=proxied
    ) as session:
        app[HTTP] = session
        yield


async def _edge(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    credentials = None if settings.dev_mode else ClientCredentials(settings)
    # One Bot Connector sender for the process (replies, approvals channel, scheduler), so
    # one rate limiter sees every send.
    sender = build_sender(settings, app[HTTP], credentials)
    services = Services()
    if settings.approvals_channel:
        # Copies of new approval requests go to the approvals channel.
        services = Services(approvals_channel=ApprovalsChannel(settings.approvals_channel, sender))
    tenant_tokens = None
    if not settings.provisioning_off_reason:
        # License commands and reconcile read customers' tenants (one client, tokens cached).
        from bot.commands.m365 import WAIT_SECONDS
        from bot.provisioning.tenant_graph import TenantGraph
        from bot.provisioning.tokens import TenantTokens

        tenant_tokens = TenantTokens(settings)
        # Where this process runs the worker, bulk answers wait for Microsoft 365's a moment.
        wait = WAIT_SECONDS if _provisioning in app[BACKGROUND_TASKS] else 0.0
        services = dataclasses.replace(
            services,
            tenant_graph=TenantGraph(app[HTTP], settings.graph_url, tenant_tokens),
            m365_wait_seconds=wait,
        )
    if settings.edge == "agents":
        # Imported only when chosen: the botbuilder edge runs without the Agents SDK loaded.
        from bot.teams.agents_edge import build_agents_edge

        app[EDGE] = build_agents_edge(settings, app[HTTP], credentials, services, sender)
    else:
        app[EDGE] = build_edge(settings, app[HTTP], credentials, services, sender)
    try:
        yield
    finally:
        if credentials is not None:
            credentials.close()
        if tenant_tokens is not None:
            tenant_tokens.close()


async def _background(app: web.Application) -> AsyncIterator[None]:
    tasks = [
        asyncio.create_task(job(app), name=getattr(job, "__name__", "job"))
        for job in app[BACKGROUND_TASKS]
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ----- routes -------------------------------------------------------------------------------------


async def messages(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await request.app[EDGE].receive(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.turn_answered(status, time.perf_counter() - started)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving HTTP (a load balancer's "restart me?" question)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """It can serve a turn (the "send me traffic?" question): the database answers, every
    migration is applied, and the Bot Framework signing keys are loaded (fetched now if not)."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(db.connection().execute_query("SELECT 1"), HEALTH_TIMEOUT_SECONDS)
        checks["database"] = "ok"
    except Exception as exc:  # any failure means the database cannot serve a turn
        checks["database"] = f"unavailable ({type(exc).__name__})"
    if checks["database"] == "ok":
        try:
            missing = await asyncio.wait_for(db.pending_migrations(), HEALTH_TIMEOUT_SECONDS)
            checks["migrations"] = "ok" if not missing else "pending: " + ", ".join(missing)
        except Exception as exc:
            checks["migrations"] = f"unknown ({type(exc).__name__})"
    keys = request.app[EDGE].signing_keys
    if keys is None:
        checks["signing_keys"] = "not needed (local development mode)"
    else:
        try:
            loaded = await asyncio.wait_for(keys.load(), HEALTH_TIMEOUT_SECONDS)
            checks["signing_keys"] = "ok" if loaded else "none published"
        except Exception as exc:
            checks["signing_keys"] = f"unavailable ({type(exc).__name__})"
    ready = all(v == "ok" or v.startswith("not needed") for v in checks.values())
    if not ready:
        log.warning("not ready", extra=checks)
    return web.json_response(
        {"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503
    )


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus text, to loopback and the networks FUSION_METRICS_NETWORKS names; 404 to
    anyone else (it is not there for them)."""
    if not request.app[METRICS_AUDIENCE].allows(request.remote):
        raise web.HTTPNotFound()
    try:
        waiting: int | None = len(await approvals.pending())
    except Exception:  # the page still answers; the gauge keeps its last value
        log.warning("metrics: could not count pending approvals", exc_info=True)
        waiting = None
    try:
        jobs: dict[str, int] | None = await provisioning.counts()
    except Exception:
        log.warning("metrics: could not count provisioning jobs", exc_info=True)
        jobs = None
    try:
        drift: dict[str, dict[str, int]] | None = await reconcile.open_differences(
            reconcile.RECENT
        )
    except Exception:
        log.warning("metrics: could not count reconcile differences", exc_info=True)
        drift = None
    kinds = [k.value for k in DriftKind]
    body = await asyncio.to_thread(metrics.exposition, waiting, jobs, drift, kinds)
    response = web.Response(body=body)
    response.headers["Content-Type"] = metrics.CONTENT_TYPE
    return response


async def _scheduler(app: web.Application) -> None:
    """Digests, usage snapshots, approval expiry and quarantine release (one leader at a time)."""
    await run_scheduler(app[SETTINGS], app[EDGE].sender)


def apply_settings(settings: Settings) -> None:
    """The settings that hold for the whole process: the naming convention and how many changes
    may be in a transaction at once."""
    set_naming_rule(settings.naming_rule)
    change.limit_writers(settings.max_concurrent_changes)


async def _provisioning(app: web.Application) -> None:
    """This instance's provisioning worker (every instance runs one; SPEC §9)."""
    from bot.provisioning.teams_numbers import TenantPace
    from bot.provisioning.tenant_graph import TenantGraph
    from bot.provisioning.tokens import TenantTokens
    from bot.provisioning.worker import Worker

    settings = app[SETTINGS]
    tokens = TenantTokens(settings)
    lease = float(settings.provisioning_lease_seconds)
    # A step's request ends well inside the claim, so no other instance can take the job while
    # its request may still reach Graph.
    rps = settings.provisioning_tenant_rps
    # Teams numbers and Microsoft 365 licenses (TenantGraph is a TeamsNumbers).
    numbers = TenantGraph(
        app[HTTP],
        settings.graph_url,
        tokens,
        request_timeout=min(30, lease / 3),
        pace=TenantPace(rps) if rps else None,
    )
    worker = Worker(
        numbers,
        concurrency=settings.provisioning_concurrency,
        idle_seconds=settings.provisioning_idle_seconds,
        lease_seconds=lease,
        on_finished=JobCards(app[EDGE].sender),
    )
    log.info("provisioning worker started", extra={"worker": worker.name})
    try:
        await worker.run()
    finally:
        tokens.close()


def create_app(
    settings: Settings, *, schedule: bool = False, provision: bool | None = None
) -> web.Application:
    """The bot's web app, with every setting applied (an app built in a test behaves like the
    running bot). `schedule` runs the scheduler beside it, `provision` the provisioning worker
    (default: with the scheduler, when the settings turn provisioning on). `python app.py`
    runs both; an app embedded in a test runs no background work unless it asks."""
    apply_settings(settings)
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS_AUDIENCE] = metrics.MetricsAudience(settings.metrics_networks)
    background: list[BackgroundTask] = [_scheduler] if schedule else []
    if (schedule if provision is None else provision) and not settings.provisioning_off_reason:
        background.append(_provisioning)
    app[BACKGROUND_TASKS] = background
    app.cleanup_ctx.extend([_database, _http, _edge, _background])
    app.router.add_post("/api/messages", messages)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app


def main() -> int:
    """`fusion-bot` (and `python app.py`): serve the bot until interrupted."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level or "INFO")
    log.info(
        "starting",
        extra={"host": settings.host, "port": settings.port, "dev_mode": settings.dev_mode},
    )
    if settings.provisioning and settings.provisioning_off_reason:
        log.warning(settings.provisioning_off_reason)
    app = create_app(settings, schedule=settings.scheduler_enabled, provision=True)
    app.on_startup.append(_freeze_startup_objects)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=_listening,
        loop=_event_loop(),
    )
    return 0


def _listening(message: str) -> None:
    """aiohttp's "Running on URL" (the bound port, also for PORT=0) as a log line."""
    for url in re.findall(r"https?://[^\s,]+", message):
        log.info("listening on %s/api/messages", url, extra={"url": f"{url}/api/messages"})


async def _freeze_startup_objects(app: web.Application) -> None:
    """What start-up made (modules, settings, the edge) lives as long as the process: moved out
    of the collector's reach, so that its full passes no longer walk it: under load they ran
    every few seconds and stalled every turn in flight (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()


def _event_loop() -> asyncio.AbstractEventLoop | None:
    """uvloop's event loop when it is installed (the same asyncio, less CPU per turn:
    docs/benchmarks.md), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


if __name__ == "__main__":
    raise SystemExit(main())

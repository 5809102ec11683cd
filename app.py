"""The Teams bot's web server: settings → database → HTTP session → adapter and bot.

    python app.py          # serves POST /api/messages and GET /healthz on HOST:PORT

`create_app(settings)` builds the aiohttp application (tests start it on port 0). Resources
live in `cleanup_ctx`, opened in order and closed in reverse: the database, the one shared
HTTP session (Bot Connector, Graph, signing keys), the Bot Framework edge, and the background
tasks other modules register in `app[BACKGROUND_TASKS]` before the app starts.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from bot.auth.credentials import ClientCredentials, client_ssl_context
from bot.config import ConfigError, Settings
from bot.domain import change, db
from bot.domain.naming import set_naming_rule
from bot.scheduler import run_scheduler
from bot.teams.cards import front_door_services
from bot.teams.connector import TrustedServiceUrls
from bot.teams.edge import CORRELATION_ID, Edge, build_edge
from bot.teams.proactive import ProactiveSender
from bot.teams.provisioning import JobCards

log = logging.getLogger("bot.app")

#: A background job: started once the app is up, cancelled when it shuts down.
BackgroundTask = Callable[[web.Application], Coroutine[Any, Any, None]]

SETTINGS = web.AppKey("settings", Settings)
HTTP = web.AppKey("http", aiohttp.ClientSession)
EDGE = web.AppKey("edge", Edge)
PROACTIVE = web.AppKey("proactive", ProactiveSender)
BACKGROUND_TASKS = web.AppKey("background_tasks", list[BackgroundTask])

HEALTH_TIMEOUT_SECONDS = 5
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


# ----- logging: one JSON object per line, with the turn's activity id ---------------------------

_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class CorrelationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = CORRELATION_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CorrelationFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


# ----- resources ----------------------------------------------------------------------------------


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    await db.open_database(settings.database_url, migrate=settings.migrate_on_start)
    change.limit_writers(settings.max_concurrent_changes)
    try:
        yield
    finally:
        await db.close_database()


PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
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
    # Approvals: the gate the ledger commands consult, and copies to the approvals channel.
    sender = ProactiveSender(
        app[HTTP],
        token=credentials.connector_token if credentials else None,
        is_trusted=TrustedServiceUrls(
            settings.trusted_service_urls, allow_loopback=settings.dev_mode
        ).trusts,
    )
    services = front_door_services(settings, sender)
    tenant_tokens = None
    if not settings.provisioning_off_reason:
        # License commands and reconcile read customers' tenants (one client, tokens cached).
        from bot.commands.m365 import SERVICE, WAIT, WAIT_SECONDS
        from bot.provisioning.tenant_graph import TenantGraph
        from bot.provisioning.tokens import TenantTokens

        tenant_tokens = TenantTokens(settings)
        services[SERVICE] = TenantGraph(app[HTTP], settings.graph_url, tenant_tokens)
        if _provisioning in app[BACKGROUND_TASKS]:
            services[WAIT] = WAIT_SECONDS  # this process's worker answers while it waits
    app[PROACTIVE] = sender
    app[EDGE] = build_edge(settings, app[HTTP], credentials, services)
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
    return await request.app[EDGE].receive(request)


async def healthz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(db.connection().execute_query("SELECT 1"), HEALTH_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure means the database cannot serve a turn
        log.warning("health check: database unavailable", extra={"error": repr(exc)})
        return web.json_response(
            {"status": "unavailable", "database": f"unavailable ({type(exc).__name__})"}, status=503
        )
    return web.json_response({"status": "ok", "database": "ok"})


async def _scheduler(app: web.Application) -> None:
    """Digests, usage snapshots, approval expiry and quarantine release (one leader at a time)."""
    edge = app[EDGE]
    await run_scheduler(
        app[SETTINGS],
        app[HTTP],
        edge.credentials.connector_token if edge.credentials else None,
        edge.connectors.trusted.trusts,
    )


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
        on_finished=JobCards(app[PROACTIVE]),
    )
    log.info("provisioning worker started", extra={"worker": worker.name})
    try:
        await worker.run()
    finally:
        tokens.close()


def create_app(
    settings: Settings, *, schedule: bool = False, provision: bool | None = None
) -> web.Application:
    """The bot's web app. `schedule` runs the scheduler beside it, `provision` the provisioning
    worker (default: with the scheduler, when the settings turn provisioning on). `python app.py`
    runs both; an app embedded in a test runs no background work unless it asks."""
    app = web.Application()
    app[SETTINGS] = settings
    background: list[BackgroundTask] = [_scheduler] if schedule else []
    if (schedule if provision is None else provision) and not settings.provisioning_off_reason:
        background.append(_provisioning)
    app[BACKGROUND_TASKS] = background
    app.cleanup_ctx.extend([_database, _http, _edge, _background])
    app.router.add_post("/api/messages", messages)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> int:
    configure_logging()
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    set_naming_rule(settings.naming_rule)
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
        print=None,
        loop=_event_loop(),
    )
    return 0


async def _freeze_startup_objects(app: web.Application) -> None:
    """What start-up made (modules, settings, the edge) lives as long as the process: moved out
    of the collector's reach, so that its full passes no longer walk it. Measured under load:
    full collections went from every few seconds, each stalling every turn in flight for
    40–100 ms, to rare and short."""
    gc.collect()
    gc.freeze()


def _event_loop() -> asyncio.AbstractEventLoop | None:
    """uvloop's event loop when it is installed (the same asyncio, less CPU per turn: about 8 %
    more turns per second in benchmarks/load.py), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


if __name__ == "__main__":
    raise SystemExit(main())

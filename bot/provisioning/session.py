"""A `TenantGraph` for a front door that has none of its own (the CLI, a test), for the time of
one command: its own HTTP session and per-tenant msal tokens, closed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from bot.auth.credentials import client_ssl_context
from bot.config import Settings
from bot.provisioning.tenant_graph import TenantGraph
from bot.provisioning.tokens import TenantTokens


@asynccontextmanager
async def open_tenant_graph(
    settings: Settings, *, request_timeout: float = 30.0
) -> AsyncIterator[TenantGraph]:
    tokens = TenantTokens(settings)
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(), limit=50)
    try:
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            yield TenantGraph(session, settings.graph_url, tokens, request_timeout=request_timeout)
    finally:
        tokens.close()

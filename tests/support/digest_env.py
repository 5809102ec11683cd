"""The Bot Connector side of the digest tests: the fake Entra ID (real msal tokens through the
bot's own `ClientCredentials`), the fake Bot Connector, and the bot's `ProactiveSender` wired the
way the app wires it (trusted service URLs, shared aiohttp session).

Import the fixtures into a test module: `from tests.support.digest_env import connector, ...`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.auth.credentials import ClientCredentials, client_ssl_context
from bot.config import Settings
from bot.teams.connector import TrustedServiceUrls
from bot.teams.proactive import ProactiveSender, Target
from tests.fakes import FakeBotConnector, FakeIdentityProvider, shared_tls

APP_ID = "3c6c2f0e-9d47-4b8a-a1f2-6e5d4c3b2a10"
APP_SECRET = "proactive-test-secret"
TENANT = "11111111-2222-4333-8444-555555555555"


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdentityProvider]:
    with FakeIdentityProvider() as fake:
        fake.register_app(APP_ID, APP_SECRET)
        yield fake


@pytest.fixture
def connector(idp: FakeIdentityProvider) -> Iterator[FakeBotConnector]:
    """A Bot Connector that accepts only this bot's token (audience api.botframework.com)."""
    with FakeBotConnector(idp, expected_app_id=APP_ID) as fake:
        yield fake


@pytest.fixture
def ca_bundle(monkeypatch: pytest.MonkeyPatch) -> str:
    """Trust the fakes' CA through the standard environment, as production trusts its CAs."""
    bundle = str(shared_tls().ca_bundle)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
    monkeypatch.setenv("SSL_CERT_FILE", bundle)
    return bundle


def bot_settings(idp: FakeIdentityProvider, **overrides: Any) -> Settings:
    """A multi-tenant bot whose token comes from the fake authority."""
    return Settings(
        app_id=APP_ID, app_password=APP_SECRET, login_authority=idp.base_url, **overrides
    )


@pytest.fixture
def credentials(idp: FakeIdentityProvider, ca_bundle: str) -> Iterator[ClientCredentials]:
    creds = ClientCredentials(bot_settings(idp))
    yield creds
    creds.close()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_ssl_context())
    ) as http:
        yield http


def make_sender(
    session: aiohttp.ClientSession,
    credentials: ClientCredentials,
    connector: FakeBotConnector,
    **kwargs: Any,
) -> ProactiveSender:
    trusted = TrustedServiceUrls((connector.service_url,))
    kwargs.setdefault("rng", random.Random(7))
    return ProactiveSender(
        session, token=credentials.connector_token, is_trusted=trusted.trusts, **kwargs
    )


def target(connector: FakeBotConnector, conversation_id: str) -> Target:
    return Target(conversation_id, connector.service_url, TENANT)

"""The bot's identity options (issue 15): `MicrosoftAppType` is validated, SingleTenant is the
default when a tenant id is set, and a UserAssignedMSI bot gets its tokens through msal's
managed identity client from the App Service / Container Apps identity endpoint (a local fake
speaking that protocol) — never with a secret."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.auth.credentials import ClientCredentials, CredentialsError
from bot.config import ConfigError, Settings
from tests.fakes import FakeBotConnector, FakeGraph, FakeIdentityProvider
from tests.fakes.managed_identity import FakeManagedIdentityEndpoint
from tests.support.teams_env import (
    APP_ID,
    auth_settings,
    message,
    running_bot,
    seed_ledger,
    texts,
    the_card,
    trust_fakes,
)

TENANT = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"


def from_env(**env: str) -> Settings:
    return Settings.from_env(env, env_file=None)


@pytest.mark.parametrize(
    ("env", "app_type"),
    [
        ({"MicrosoftAppTenantId": TENANT}, "SingleTenant"),
        ({}, "MultiTenant"),
        ({"MicrosoftAppType": "singletenant", "MicrosoftAppTenantId": TENANT}, "SingleTenant"),
        ({"MicrosoftAppType": "MultiTenant", "MicrosoftAppTenantId": TENANT}, "MultiTenant"),
    ],
)
def test_app_type_defaults_and_spelling(env: dict[str, str], app_type: str) -> None:
    settings = from_env(MicrosoftAppId=APP_ID, MicrosoftAppPassword="s", **env)
    assert settings.app_type == app_type


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MicrosoftAppType": "Multi"}, "MicrosoftAppType must be one of SingleTenant"),
        ({"MicrosoftAppType": "SingleTenant"}, "MicrosoftAppTenantId is required"),
        (
            {"MicrosoftAppType": "UserAssignedMSI", "MicrosoftAppTenantId": TENANT},
            "has no password",
        ),
        ({"MicrosoftAppType": "UserAssignedMSI"}, "MicrosoftAppTenantId is required"),
    ],
)
def test_app_type_is_validated(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        from_env(MicrosoftAppId=APP_ID, MicrosoftAppPassword="s", **env)


def test_a_managed_identity_needs_no_password() -> None:
    settings = Settings.from_env(
        {
            "MicrosoftAppId": APP_ID,
            "MicrosoftAppType": "UserAssignedMSI",
            "MicrosoftAppTenantId": TENANT,
        },
        env_file=None,
    )
    assert settings.managed_identity and settings.app_password == ""
    with pytest.raises(ConfigError, match="MicrosoftAppPassword is required"):
        from_env(MicrosoftAppId=APP_ID, MicrosoftAppTenantId=TENANT)


@pytest.fixture
def managed_identity(
    idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeManagedIdentityEndpoint]:
    trust_fakes(monkeypatch)
    with FakeManagedIdentityEndpoint(idp, [APP_ID]) as fake:
        for name, value in fake.environment().items():
            monkeypatch.setenv(name, value)
        yield fake


async def test_a_user_assigned_managed_identity_bot_answers_through_the_protocol(
    empty_db_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
    managed_identity: FakeManagedIdentityEndpoint,
) -> None:
    settings = auth_settings(
        empty_db_url, idp, graph, connector, app_type="UserAssignedMSI", app_password=""
    )
    secret_requests = idp.token_request_count
    async with running_bot(settings) as bot:
        await seed_ledger()
        activity = message("products", connector.service_url, tenant=idp.tenant_id)
        posted = await bot.post(activity, idp.channel_token(APP_ID, connector.service_url))
        assert posted.status == 201
        sent = await connector.wait_for_async(1)
        # The reply reached the connector with the identity's token, and the admin check
        # went to Graph with one too: the admin saw the products.
        assert texts(the_card(sent[-1]))[0] == "Products"
        assert graph.count("checkMemberGroups") >= 1
    asked = [
        (r.query["resource"], r.query["client_id"], r.query["api-version"])
        for r in managed_identity.requests
    ]
    assert ("https://api.botframework.com", APP_ID, "2019-08-01") in asked
    assert ("https://graph.microsoft.com", APP_ID, "2019-08-01") in asked
    assert all(
        r.headers.get("X-IDENTITY-HEADER") == managed_identity.secret
        for r in managed_identity.requests
    )
    assert idp.token_request_count == secret_requests  # no client secret flow at all


async def test_an_identity_not_assigned_is_a_clear_error(
    empty_db_url: str,
    idp: FakeIdentityProvider,
    graph: FakeGraph,
    connector: FakeBotConnector,
    managed_identity: FakeManagedIdentityEndpoint,
) -> None:
    managed_identity.unassign(APP_ID)
    settings = auth_settings(
        empty_db_url, idp, graph, connector, app_type="UserAssignedMSI", app_password=""
    )
    credentials = ClientCredentials(settings)
    try:
        with pytest.raises(CredentialsError, match="managed identity") as refused:
            await credentials.connector_token()
        assert "No User Assigned" in str(refused.value)
    finally:
        credentials.close()

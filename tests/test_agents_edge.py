"""FUSION_EDGE: the setting, and that the protocol tests do run against the edge they name.

The protocol tests themselves (tests/support/teams_fixtures.py::PROTOCOL_MODULES) run once per edge;
this module checks what makes that true, and the parts of the Agents SDK edge a client cannot
see from outside.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from app import EDGE
from bot.config import ConfigError, Settings
from bot.teams.agents_edge import AgentsEdge, ConnectorClients, sdk_configuration
from bot.teams.edge import Edge
from tests.fakes import FakeBotConnector
from tests.support.teams_env import EDGES, dev_settings, message, running_bot, seed_ledger


def test_the_edge_is_botbuilder_unless_asked() -> None:
    assert Settings.from_env({}, env_file=None).edge == "botbuilder"
    assert Settings.from_env({"FUSION_EDGE": "agents"}, env_file=None).edge == "agents"
    assert Settings.from_env({"FUSION_EDGE": " Agents "}, env_file=None).edge == "agents"


@pytest.mark.parametrize("value", ["teams", "botframework", "agents-sdk"])
def test_an_unknown_edge_is_refused_with_the_choices(value: str) -> None:
    with pytest.raises(ConfigError, match="FUSION_EDGE must be one of botbuilder, agents"):
        Settings.from_env({"FUSION_EDGE": value}, env_file=None)


@pytest.mark.parametrize("edge", EDGES)
async def test_the_app_serves_the_edge_it_is_set_to(empty_db_url: str, edge: str) -> None:
    with FakeBotConnector(None) as plain:
        async with running_bot(replace(dev_settings(empty_db_url, plain), edge=edge)) as bot:
            await seed_ledger()
            served = bot.server.app[EDGE]
            assert isinstance(served, AgentsEdge if edge == "agents" else Edge)
            assert (await bot.post(message("help", plain.service_url))).status == 201
            [reply] = await plain.wait_for_async(1)
            assert reply.attachments
            if isinstance(served, AgentsEdge):
                assert isinstance(served.connectors, ConnectorClients)
                assert served.connectors.client_count == 1


def test_our_settings_in_the_sdks_names() -> None:
    settings = Settings.from_env(
        {
            "MicrosoftAppId": "app",
            "MicrosoftAppPassword": "secret",
            "MicrosoftAppTenantId": "tenant",
        },
        env_file=None,
    )
    found = sdk_configuration(settings)
    assert (found["CLIENTID"], found["CLIENTSECRET"], found["TENANTID"]) == (
        "app",
        "secret",
        "tenant",
    )
    assert found["AUTHORITY"] == "https://login.microsoftonline.com/tenant"
    assert found["SCOPES"] == ["https://api.botframework.com/.default"]
    assert found["ISSUERS"] == ["https://api.botframework.com"] and found["VALIDATE_ISSUER"]

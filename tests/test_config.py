"""Settings (SPEC §7): defaults, cloud presets and overrides, refusals that name the variable,
local development mode on loopback only, and the `.env` file under the real environment."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.config import CLOUDS, DEFAULT_NAMING_RULE, ConfigError, Settings

AUTH = {"MicrosoftAppId": "11111111-2222-3333-4444-555555555555", "MicrosoftAppPassword": "s3cret"}


def load(**env: str) -> Settings:
    return Settings.from_env(environ=env, env_file=None)


def test_defaults() -> None:
    s = load()
    assert s.database_url == "sqlite://fusion.sqlite3"
    assert (s.host, s.port) == ("127.0.0.1", 3978)
    assert s.dev_mode and s.app_id == "" and s.dev_admins == ()
    assert s.admin_group_ids == () and s.effective_approver_groups == ()
    assert s.effective_allowed_tenants == ()
    assert (s.approval_threshold, s.approval_ttl_hours, s.quarantine_days) == (100, 72, 30)
    assert s.naming_rule == DEFAULT_NAMING_RULE
    assert s.cloud == "public"
    assert s.login_authority == "https://login.microsoftonline.com"
    assert s.graph_url == "https://graph.microsoft.com/v1.0"
    assert s.botframework_openid_metadata == (
        "https://login.botframework.com/v1/.well-known/openidconfiguration"
    )
    assert s.trusted_service_urls == ("https://smba.trafficmanager.net/",)
    assert (s.alert_threshold_percent, s.page_size) == (90, 25)
    assert s.digest_enabled and s.migrate_on_start
    assert Settings() == s  # the dataclass defaults are the documented defaults


def test_settings_are_frozen_and_keep_the_secret_out_of_repr() -> None:
    s = load(**AUTH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize("cloud", ["public", "gcc", "gcch", "dod"])
def test_cloud_presets(cloud: str) -> None:
    s = load(FUSION_CLOUD=cloud.upper())
    preset = CLOUDS[cloud]
    assert s.cloud == cloud
    assert (s.login_authority, s.graph_url, s.botframework_openid_metadata) == (
        preset.login_authority,
        preset.graph_url,
        preset.botframework_openid_metadata,
    )
    assert s.trusted_service_urls == preset.trusted_service_urls
    assert (s.connector_scope, s.graph_scope, s.channel_issuer) == (
        preset.connector_scope,
        preset.graph_scope,
        preset.channel_issuer,
    )


def test_the_government_clouds_point_at_government_endpoints() -> None:
    gcch, dod = load(FUSION_CLOUD="gcch"), load(FUSION_CLOUD="dod")
    for s in (gcch, dod):
        assert s.login_authority == "https://login.microsoftonline.us"
        assert "botframework.azure.us" in s.botframework_openid_metadata
        assert all(".us/" in url for url in s.trusted_service_urls)
    assert gcch.graph_url == "https://graph.microsoft.us/v1.0"
    assert dod.graph_url == "https://dod-graph.microsoft.us/v1.0"
    assert load(FUSION_CLOUD="gcc").graph_url == "https://graph.microsoft.com/v1.0"


def test_overrides_win_over_the_preset() -> None:
    s = load(
        FUSION_CLOUD="gcch",
        FUSION_LOGIN_AUTHORITY="https://127.0.0.1:8443/",
        FUSION_GRAPH_URL="https://127.0.0.1:8444/v1.0/",
        FUSION_BOTFRAMEWORK_OPENID_METADATA="https://127.0.0.1:8445/openid",
        FUSION_TRUSTED_SERVICE_URLS=" http://127.0.0.1:9000/ , http://127.0.0.1:9001/teams/ ",
        FUSION_CONNECTOR_SCOPE="api://connector/.default",
        FUSION_GRAPH_SCOPE="api://graph/.default",
        FUSION_CHANNEL_ISSUER="https://issuer.test",
    )
    assert s.cloud == "gcch"
    assert s.login_authority == "https://127.0.0.1:8443"
    assert s.graph_url == "https://127.0.0.1:8444/v1.0"
    assert s.botframework_openid_metadata == "https://127.0.0.1:8445/openid"
    assert s.trusted_service_urls == ("http://127.0.0.1:9000/", "http://127.0.0.1:9001/teams/")
    assert (s.connector_scope, s.graph_scope, s.channel_issuer) == (
        "api://connector/.default",
        "api://graph/.default",
        "https://issuer.test",
    )


def test_project_settings_are_read() -> None:
    s = load(
        DATABASE_URL="postgres://fusion:pw@127.0.0.1:5432/fusion",
        PORT="8080",
        FUSION_ADMIN_GROUP_IDS="g-admins, g-ops,,",
        FUSION_ALLOWED_TENANTS="t-1,t-2",
        FUSION_APPROVAL_THRESHOLD="0",
        FUSION_QUARANTINE_DAYS="90",
        FUSION_NAMING_RULE="[a-z]+",
        FUSION_DIGESTS="off",
        FUSION_MIGRATE_ON_START="no",
        FUSION_DEV_ADMINS="*",
        **{"MicrosoftAppTenantId": "t-home"},
    )
    assert s.database_url == "postgres://fusion:pw@127.0.0.1:5432/fusion"
    assert s.port == 8080
    assert s.admin_group_ids == ("g-admins", "g-ops")
    assert s.effective_approver_groups == ("g-admins", "g-ops")  # default: the admin groups
    assert s.effective_allowed_tenants == ("t-1", "t-2")
    assert (s.approval_threshold, s.quarantine_days, s.naming_rule) == (0, 90, "[a-z]+")
    assert not s.digest_enabled and not s.migrate_on_start
    assert s.dev_admins == ("*",)
    assert load(MicrosoftAppTenantId="t-home").effective_allowed_tenants == ("t-home",)
    assert load(
        FUSION_APPROVER_GROUP_IDS="g-approvers", FUSION_ADMIN_GROUP_IDS="g-a"
    ).effective_approver_groups == ("g-approvers",)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "-1"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"FUSION_APPROVAL_THRESHOLD": "lots"}, "FUSION_APPROVAL_THRESHOLD"),
        ({"FUSION_APPROVAL_THRESHOLD": "-5"}, "FUSION_APPROVAL_THRESHOLD"),
        ({"FUSION_APPROVAL_TTL_HOURS": "0"}, "FUSION_APPROVAL_TTL_HOURS"),
        ({"FUSION_QUARANTINE_DAYS": "1.5"}, "FUSION_QUARANTINE_DAYS"),
        ({"FUSION_PAGE_SIZE": "0"}, "FUSION_PAGE_SIZE"),
        ({"FUSION_ALERT_THRESHOLD_PERCENT": "0"}, "FUSION_ALERT_THRESHOLD_PERCENT"),
        ({"FUSION_ALERT_THRESHOLD_PERCENT": "150"}, "FUSION_ALERT_THRESHOLD_PERCENT"),
        ({"FUSION_SCHEDULER_INTERVAL_SECONDS": "0"}, "FUSION_SCHEDULER_INTERVAL_SECONDS"),
        ({"FUSION_DIGESTS": "maybe"}, "FUSION_DIGESTS"),
        ({"FUSION_MIGRATE_ON_START": "2"}, "FUSION_MIGRATE_ON_START"),
        ({"FUSION_CLOUD": "moon"}, "FUSION_CLOUD"),
        ({"FUSION_NAMING_RULE": "[A-Z"}, "FUSION_NAMING_RULE"),
        ({"DATABASE_URL": "mysql://db/fusion"}, "DATABASE_URL"),
        ({"DATABASE_URL": "fusion.sqlite3"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite:///no/such/folder/fusion.sqlite3"}, "DATABASE_URL"),
        ({"MicrosoftAppId": "app"}, "MicrosoftAppPassword"),
        ({**AUTH, "FUSION_DEV_ADMINS": "*"}, "FUSION_DEV_ADMINS"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ=env, env_file=None)
    assert variable in str(info.value)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.5", "bot.contoso.example", "192.168.1.2"]
)
def test_development_mode_refuses_a_non_loopback_host(host: str) -> None:
    with pytest.raises(ConfigError, match="HOST") as info:
        load(HOST=host, FUSION_DEV_ADMINS="*")
    assert "loopback" in str(info.value)
    # With Bot Framework credentials requests are authenticated: any address will do.
    assert load(HOST=host, **AUTH).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"])
def test_development_mode_listens_on_loopback(host: str) -> None:
    s = load(HOST=host)
    assert s.dev_mode and s.host == host


def test_the_env_file_is_read_and_the_real_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# local settings\n"
        "FUSION_APPROVAL_THRESHOLD=7\n"
        "FUSION_ADMIN_GROUP_IDS=g-from-file\n"
        'FUSION_APPROVALS_CHANNEL="19:abc@thread.tacv2"\n'
        "MicrosoftAppTenantId=t-from-file\n"
    )
    from_file = Settings.from_env(environ={}, env_file=env_file)
    assert from_file.approval_threshold == 7
    assert from_file.admin_group_ids == ("g-from-file",)
    assert from_file.approvals_channel == "19:abc@thread.tacv2"
    assert from_file.effective_allowed_tenants == ("t-from-file",)

    both = Settings.from_env(environ={"FUSION_APPROVAL_THRESHOLD": "9"}, env_file=env_file)
    assert both.approval_threshold == 9
    assert both.admin_group_ids == ("g-from-file",)

    # A missing file is simply not there.
    assert Settings.from_env(environ={}, env_file=tmp_path / "absent.env") == load()


def test_the_process_environment_is_the_default_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FUSION_QUARANTINE_DAYS", "45")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("FUSION_QUARANTINE_DAYS=5\nFUSION_PAGE_SIZE=10\n")
    s = Settings.from_env()
    assert (s.quarantine_days, s.page_size) == (45, 10)


def test_postgresql_gets_a_pool_of_20_connections_unless_the_url_says_otherwise() -> None:
    from bot.domain.db import POSTGRES_POOL_SIZE, tortoise_config

    def url(database_url: str) -> str:
        return str(tortoise_config(database_url)["connections"]["postgres"])

    assert POSTGRES_POOL_SIZE == 20
    assert url("postgres://u@db:5432/fusion") == "postgres://u@db:5432/fusion?maxsize=20"
    assert url("postgres://u@db/f?ssl=true") == "postgres://u@db/f?ssl=true&maxsize=20"
    assert url("postgres://u@db/f?maxsize=50") == "postgres://u@db/f?maxsize=50"
    assert "maxsize" not in str(tortoise_config("sqlite://x.sqlite3")["connections"]["sqlite"])


@pytest.mark.postgres
async def test_turns_at_once_are_not_held_to_five_postgresql_connections(
    pg_database: str,
) -> None:
    """Twelve queries at once run on twelve connections: more than Tortoise's default 5."""
    import asyncio

    from bot.domain import db

    async def backend() -> int:
        rows = await db.connection().execute_query_dict(
            "SELECT pg_backend_pid() AS pid FROM pg_sleep(0.2)"
        )
        return int(rows[0]["pid"])

    pids = await asyncio.gather(*(backend() for _ in range(12)))
    assert len(set(pids)) == 12

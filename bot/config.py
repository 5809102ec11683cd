"""Settings: one frozen object read from the environment (and a `.env` file if present)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class CloudEndpoints:
    login_authority: str
    graph_url: str
    botframework_openid_metadata: str
    trusted_service_urls: tuple[str, ...]
    # Scopes the bot asks msal for when calling the connector and Graph.
    connector_scope: str
    graph_scope: str
    # Issuer of Bot Framework channel tokens in this cloud.
    channel_issuer: str
    # The Bot Framework token service (OAuth connections, Teams SSO token exchange).
    token_service_url: str = "https://token.botframework.com"


CLOUDS: dict[str, CloudEndpoints] = {
    "public": CloudEndpoints(
        login_authority="https://login.microsoftonline.com",
        graph_url="https://graph.microsoft.com/v1.0",
        botframework_openid_metadata="https://login.botframework.com/v1/.well-known/openidconfiguration",
        trusted_service_urls=("https://smba.trafficmanager.net/",),
        connector_scope="https://api.botframework.com/.default",
        graph_scope="https://graph.microsoft.com/.default",
        channel_issuer="https://api.botframework.com",
    ),
    "gcc": CloudEndpoints(
        login_authority="https://login.microsoftonline.com",
        graph_url="https://graph.microsoft.com/v1.0",
        botframework_openid_metadata="https://login.botframework.com/v1/.well-known/openidconfiguration",
        trusted_service_urls=("https://smba.infra.gcc.teams.microsoft.com/",),
        connector_scope="https://api.botframework.com/.default",
        graph_scope="https://graph.microsoft.com/.default",
        channel_issuer="https://api.botframework.com",
    ),
    "gcch": CloudEndpoints(
        login_authority="https://login.microsoftonline.us",
        graph_url="https://graph.microsoft.us/v1.0",
        botframework_openid_metadata="https://login.botframework.azure.us/v1/.well-known/openidconfiguration",
        trusted_service_urls=("https://smba.infra.gov.teams.microsoft.us/",),
        connector_scope="https://api.botframework.us/.default",
        graph_scope="https://graph.microsoft.us/.default",
        channel_issuer="https://api.botframework.us",
        token_service_url="https://tokengcch.botframework.azure.us",
    ),
    "dod": CloudEndpoints(
        login_authority="https://login.microsoftonline.us",
        graph_url="https://dod-graph.microsoft.us/v1.0",
        botframework_openid_metadata="https://login.botframework.azure.us/v1/.well-known/openidconfiguration",
        trusted_service_urls=("https://smba.infra.dod.teams.microsoft.us/",),
        connector_scope="https://api.botframework.us/.default",
        graph_scope="https://dod-graph.microsoft.us/.default",
        channel_issuer="https://api.botframework.us",
        token_service_url="https://apiDoD.botframework.azure.us",
    ),
}

DEFAULT_NAMING_RULE = r"[A-Z0-9]+(?:-[A-Z0-9]+)*"
#: The Azure Bot's identity types (MicrosoftAppType), as the Bot Framework spells them.
APP_TYPES = ("SingleTenant", "MultiTenant", "UserAssignedMSI")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


#: The SDKs an edge can be built on (FUSION_EDGE); the first is the default.
EDGES = ("botbuilder", "agents")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _csv(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    found = []
    for part in _csv(env.get(name)):
        try:
            found.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError as exc:
            raise ConfigError(
                f"{name}: {part!r} is not a network (CIDR such as 10.0.0.0/8)"
            ) from exc
    return tuple(found)


def _app_type(env: Mapping[str, str]) -> str:
    """MicrosoftAppType, validated; SingleTenant when a tenant id is set and no type is given
    (Azure no longer offers multi-tenant bots for new registrations)."""
    raw = (env.get("MicrosoftAppType") or "").strip()
    if not raw:
        return "SingleTenant" if (env.get("MicrosoftAppTenantId") or "").strip() else "MultiTenant"
    for known in APP_TYPES:
        if raw.lower() == known.lower():
            return known
    raise ConfigError(f"MicrosoftAppType must be one of {', '.join(APP_TYPES)}, got {raw!r}")


LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")


DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql", "asyncpg", "psycopg")


def _reconcile_at(raw: str) -> str:
    value = raw.strip().lower()
    if value == "off":
        return value
    hours, _, minutes = value.partition(":")
    digits = value.isascii() and hours.isdigit() and minutes.isdigit()
    if not (digits and int(hours) < 24 and int(minutes) < 60):
        raise ConfigError(f"FUSION_RECONCILE_AT must be HH:MM (UTC) or off, got {raw!r}")
    return f"{int(hours):02d}:{int(minutes):02d}"


def _database_url(url: str) -> str:
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() not in DATABASE_SCHEMES:
        raise ConfigError(
            "DATABASE_URL must be sqlite://PATH or postgres://USER:PASS@HOST:PORT/DB, "
            f"got {scheme!r}"
        )
    if scheme.lower() == "sqlite":
        path = rest.split("?", 1)[0]
        folder = Path(path).parent
        # Checked here: the database driver waits forever on a file it cannot create.
        if path != ":memory:" and not folder.is_dir():
            raise ConfigError(
                f"DATABASE_URL: the folder {str(folder)!r} of the SQLite file does not exist"
            )
    return url.strip()


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite://fusion.sqlite3"
    host: str = "127.0.0.1"
    port: int = 3978
    app_id: str = ""
    app_password: str = field(default="", repr=False)
    app_tenant_id: str = ""
    app_type: str = "MultiTenant"
    admin_group_ids: tuple[str, ...] = ()
    approver_group_ids: tuple[str, ...] = ()
    allowed_tenants: tuple[str, ...] = ()
    approval_threshold: int = 100
    approval_ttl_hours: int = 72
    approvals_channel: str = ""
    dev_admins: tuple[str, ...] = ()
    cloud: str = "public"
    login_authority: str = CLOUDS["public"].login_authority
    graph_url: str = CLOUDS["public"].graph_url
    botframework_openid_metadata: str = CLOUDS["public"].botframework_openid_metadata
    trusted_service_urls: tuple[str, ...] = CLOUDS["public"].trusted_service_urls
    connector_scope: str = CLOUDS["public"].connector_scope
    graph_scope: str = CLOUDS["public"].graph_scope
    channel_issuer: str = CLOUDS["public"].channel_issuer
    naming_rule: str = DEFAULT_NAMING_RULE
    quarantine_days: int = 30
    membership_cache_seconds: int = 300
    graph_retry_seconds: float = 10.0
    alert_threshold_percent: int = 90
    digest_enabled: bool = True
    scheduler_enabled: bool = True
    # Keep every send (replies included) inside Teams' documented per-chat and per-tenant
    # windows. Off only where the connector is not Teams' (a benchmark's fake); 429s are
    # honoured either way.
    teams_rate_limits: bool = True
    scheduler_interval_seconds: int = 30
    migrate_on_start: bool = True
    page_size: int = 25
    # Turns run at once; more wait their turn in arrival order (0: no limit). bot/teams/gate.py
    max_concurrent_turns: int = 8
    # Changes inside a database transaction at once; more wait in the process (0: no limit).
    # bot/domain/change.py
    max_concurrent_changes: int = 2
    # Teams SSO: the Application ID URI an SSO token may be meant for, besides the app id
    # (webApplicationInfo.resource in the app package). Default api://botid-APP_ID, as
    # Microsoft's bot SSO docs name it.
    sso_resource: str = ""
    # Which SDK carries the turns: "botbuilder" (bot/teams/edge.py) or "agents" (the
    # Microsoft 365 Agents SDK, bot/teams/agents_edge.py). FUSION_EDGE.
    edge: str = "botbuilder"
    # The Azure Bot's OAuth connection for Teams SSO; empty: no OAuth card is sent.
    sso_connection: str = ""
    token_service_url: str = CLOUDS["public"].token_service_url
    # Networks (CIDR) besides loopback that may read GET /metrics.
    metrics_networks: tuple[str, ...] = ()
    # Logs: `json` (one object per line) or `text` (readable, for local development).
    log_format: str = "json"
    # Empty: each front door's own (the bot and scheduler INFO, the CLI WARNING).
    log_level: str = ""
    # Provisioning into customers' Teams tenants (SPEC §9): off by default (ledger only).
    provisioning: bool = False
    # The Entra app whose tokens are asked for in each customer tenant (default: the bot's own).
    provisioning_app_id: str = ""
    provisioning_app_password: str = field(default="", repr=False)
    emergency_location_countries: tuple[str, ...] = ("US", "CA")
    provisioning_concurrency: int = 8
    provisioning_idle_seconds: float = 1.0
    # How long a worker's claim on a job lasts (a dead instance's jobs come back after it);
    # each Graph request of a step times out well inside it.
    provisioning_lease_seconds: int = 60
    # Graph requests a second to one customer tenant from one instance (0: no pacing; 429s
    # are honoured either way). Microsoft documents 30 rps per app per tenant for Teams.
    provisioning_tenant_rps: int = 30
    # Nightly reconcile of every linked subscription, at this UTC time ("HH:MM"; "off": none).
    # Off whenever provisioning is off.
    reconcile_at: str = "02:00"
    # Reconcile runs (and their differences) older than this many days are deleted by the
    # scheduler's leader; the newest run of each subscription is always kept.
    reconcile_keep_days: int = 30

    @property
    def provisioning_off_reason(self) -> str:
        """Why provisioning is off ("" when it is on)."""
        if not self.provisioning:
            return "Provisioning into Teams is off (FUSION_PROVISIONING=off): the ledger only."
        if self.cloud != "public":
            return (
                "Provisioning into Teams is off: Microsoft Graph's Teams number management exists "
                f"in the global cloud only, and this bot runs in FUSION_CLOUD={self.cloud}."
            )
        if self.managed_identity and not self.provisioning_app_id:
            return (
                "Provisioning into Teams is off: a managed identity gets no tokens in customers' "
                "tenants; name a multi-tenant app in FUSION_PROVISIONING_APP_ID and its password."
            )
        if not (self.provisioning_app_id or self.app_id):
            return (
                "Provisioning into Teams is off: it needs an Entra app (MicrosoftAppId and "
                "MicrosoftAppPassword, or FUSION_PROVISIONING_APP_ID and its password)."
            )
        return ""

    @property
    def dev_mode(self) -> bool:
        """Local development mode: no Bot Framework app id, so no inbound authentication."""
        return not self.app_id

    @property
    def managed_identity(self) -> bool:
        """The bot's tokens come from its user-assigned managed identity, not a secret."""
        return self.app_type == "UserAssignedMSI"

    @property
    def effective_approver_groups(self) -> tuple[str, ...]:
        return self.approver_group_ids or self.admin_group_ids

    @property
    def effective_allowed_tenants(self) -> tuple[str, ...]:
        if self.allowed_tenants:
            return self.allowed_tenants
        return (self.app_tenant_id,) if self.app_tenant_id else ()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read settings; real environment variables win over the `.env` file."""
        env: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        env.update(os.environ if environ is None else environ)

        cloud_name = env.get("FUSION_CLOUD", "public").strip().lower() or "public"
        if cloud_name not in CLOUDS:
            raise ConfigError(
                f"FUSION_CLOUD must be one of {', '.join(CLOUDS)}, got {cloud_name!r}"
            )
        cloud = CLOUDS[cloud_name]

        naming_rule = env.get("FUSION_NAMING_RULE") or DEFAULT_NAMING_RULE
        try:
            re.compile(naming_rule)
        except re.error as exc:
            raise ConfigError(
                f"FUSION_NAMING_RULE is not a valid regular expression: {exc}"
            ) from exc

        trusted = _csv(env.get("FUSION_TRUSTED_SERVICE_URLS")) or cloud.trusted_service_urls
        app_id = (env.get("MicrosoftAppId") or "").strip()
        sso_resource = (env.get("FUSION_SSO_RESOURCE") or "").strip() or (
            f"api://botid-{app_id}" if app_id else ""
        )
        settings = cls(
            database_url=_database_url(env.get("DATABASE_URL") or "sqlite://fusion.sqlite3"),
            host=env.get("HOST") or "127.0.0.1",
            port=_int(env, "PORT", 3978, minimum=0, maximum=65535),
            app_id=(env.get("MicrosoftAppId") or "").strip(),
            app_password=env.get("MicrosoftAppPassword") or "",
            app_tenant_id=(env.get("MicrosoftAppTenantId") or "").strip(),
            app_type=_app_type(env),
            admin_group_ids=_csv(env.get("FUSION_ADMIN_GROUP_IDS")),
            approver_group_ids=_csv(env.get("FUSION_APPROVER_GROUP_IDS")),
            allowed_tenants=_csv(env.get("FUSION_ALLOWED_TENANTS")),
            approval_threshold=_int(env, "FUSION_APPROVAL_THRESHOLD", 100),
            approval_ttl_hours=_int(env, "FUSION_APPROVAL_TTL_HOURS", 72, minimum=1),
            approvals_channel=env.get("FUSION_APPROVALS_CHANNEL") or "",
            dev_admins=_csv(env.get("FUSION_DEV_ADMINS")),
            cloud=cloud_name,
            login_authority=(env.get("FUSION_LOGIN_AUTHORITY") or cloud.login_authority).rstrip(
                "/"
            ),
            graph_url=(env.get("FUSION_GRAPH_URL") or cloud.graph_url).rstrip("/"),
            botframework_openid_metadata=env.get("FUSION_BOTFRAMEWORK_OPENID_METADATA")
            or cloud.botframework_openid_metadata,
            trusted_service_urls=trusted,
            connector_scope=env.get("FUSION_CONNECTOR_SCOPE") or cloud.connector_scope,
            graph_scope=env.get("FUSION_GRAPH_SCOPE") or cloud.graph_scope,
            channel_issuer=env.get("FUSION_CHANNEL_ISSUER") or cloud.channel_issuer,
            naming_rule=naming_rule,
            quarantine_days=_int(env, "FUSION_QUARANTINE_DAYS", 30),
            membership_cache_seconds=_int(env, "FUSION_MEMBERSHIP_CACHE_SECONDS", 300),
            graph_retry_seconds=float(_int(env, "FUSION_GRAPH_RETRY_SECONDS", 10)),
            alert_threshold_percent=_int(
                env, "FUSION_ALERT_THRESHOLD_PERCENT", 90, minimum=1, maximum=100
            ),
            digest_enabled=_bool(env, "FUSION_DIGESTS", True),
            scheduler_enabled=_bool(env, "FUSION_SCHEDULER", True),
            teams_rate_limits=_bool(env, "FUSION_TEAMS_RATE_LIMITS", True),
            scheduler_interval_seconds=_int(env, "FUSION_SCHEDULER_INTERVAL_SECONDS", 30, 1),
            migrate_on_start=_bool(env, "FUSION_MIGRATE_ON_START", True),
            page_size=_int(env, "FUSION_PAGE_SIZE", 25, minimum=1),
            max_concurrent_turns=_int(env, "FUSION_MAX_CONCURRENT_TURNS", 8, minimum=0),
            max_concurrent_changes=_int(env, "FUSION_MAX_CONCURRENT_CHANGES", 2, minimum=0),
            sso_resource=sso_resource,
            edge=(env.get("FUSION_EDGE") or "botbuilder").strip().lower(),
            sso_connection=(env.get("FUSION_SSO_CONNECTION") or "").strip(),
            token_service_url=(
                env.get("FUSION_TOKEN_SERVICE_URL") or cloud.token_service_url
            ).rstrip("/"),
            metrics_networks=_networks(env, "FUSION_METRICS_NETWORKS"),
            log_format=_choice(env, "FUSION_LOG_FORMAT", LOG_FORMATS, "json"),
            log_level=_choice(env, "FUSION_LOG_LEVEL", LOG_LEVELS, "").upper(),
            provisioning=_bool(env, "FUSION_PROVISIONING", False),
            provisioning_app_id=(env.get("FUSION_PROVISIONING_APP_ID") or "").strip(),
            provisioning_app_password=env.get("FUSION_PROVISIONING_APP_PASSWORD") or "",
            emergency_location_countries=tuple(
                c.upper() for c in _csv(env.get("FUSION_EMERGENCY_LOCATION_COUNTRIES", "US,CA"))
            ),
            provisioning_concurrency=_int(env, "FUSION_PROVISIONING_CONCURRENCY", 8, minimum=1),
            provisioning_lease_seconds=_int(env, "FUSION_PROVISIONING_LEASE_SECONDS", 60, 6),
            provisioning_tenant_rps=_int(env, "FUSION_PROVISIONING_TENANT_RPS", 30),
            reconcile_at=_reconcile_at(env.get("FUSION_RECONCILE_AT", "02:00")),
            reconcile_keep_days=_int(env, "FUSION_RECONCILE_KEEP_DAYS", 30, minimum=1),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse combinations that would open the bot to the world."""
        if self.edge not in EDGES:
            raise ConfigError(f"FUSION_EDGE must be one of {', '.join(EDGES)}, got {self.edge!r}")
        if self.dev_mode and not is_loopback(self.host):
            raise ConfigError(
                "local development mode (no MicrosoftAppId) accepts unauthenticated requests, "
                f"so it only listens on loopback; HOST={self.host!r} is refused. "
                "Set MicrosoftAppId/MicrosoftAppPassword to serve other addresses."
            )
        if self.app_type not in APP_TYPES:
            raise ConfigError(f"MicrosoftAppType must be one of {', '.join(APP_TYPES)}")
        if not self.dev_mode and self.app_type != "MultiTenant" and not self.app_tenant_id:
            raise ConfigError(f"MicrosoftAppTenantId is required for a {self.app_type} bot")
        if not self.dev_mode and self.managed_identity and self.app_password:
            raise ConfigError(
                "a UserAssignedMSI bot has no password (MicrosoftAppId is the managed "
                "identity's client id): remove MicrosoftAppPassword"
            )
        if not self.dev_mode and not self.managed_identity and not self.app_password:
            raise ConfigError("MicrosoftAppPassword is required when MicrosoftAppId is set")
        if self.provisioning_app_id and not self.provisioning_app_password:
            raise ConfigError(
                "FUSION_PROVISIONING_APP_PASSWORD is required with FUSION_PROVISIONING_APP_ID"
            )
        if self.dev_admins and not self.dev_mode:
            raise ConfigError("FUSION_DEV_ADMINS is only allowed in local development mode")

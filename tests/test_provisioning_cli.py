"""Provisioning through the command-line front door (a real subprocess), SQLite and
PostgreSQL: `customer link`, `number assign` writing its job, `--json provisioning`, and
`provisioning retry` of a failed job after the worker ran against the Graph fake."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.domain import db
from tests.support import provisioning_env as env
from tests.support.graph_env import trust_fakes
from tests.support.provisioning_env import CUSTOMER_TENANT, OTHER_TENANT, e164, upn

ROOT = Path(__file__).resolve().parent.parent


def cli(url: str, tmp: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))},
        "DATABASE_URL": url,
        "PYTHONPATH": str(ROOT),
        "MicrosoftAppId": env.APP_ID,
        "MicrosoftAppPassword": env.APP_SECRET,
        "FUSION_PROVISIONING": "on",
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=tmp,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(url: str, tmp: Path, *args: str, **extra: str) -> Any:
    done = cli(url, tmp, "--json", *args, **extra)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


def test_link_assign_list_and_retry(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust_fakes(monkeypatch)
    url = empty_db_url
    with env.fakes() as (idp, graph):

        async def seed() -> None:
            await db.open_database(url, migrate=False)
            try:
                await env.seed(graph, users=2, tenant=None)
            finally:
                await db.close_database()

        asyncio.run(seed())
        # Not linked yet: ledger only.
        ok(url, tmp_path, "number", "assign", e164(0), "to", upn(0))
        assert ok(url, tmp_path, "provisioning")["total"] == 0

        bad = cli(url, tmp_path, "customer", "link", "Contoso Ltd", "--tenant", "not-a-guid")
        assert bad.returncode != 0 and "GUID" in bad.stderr
        linked = ok(url, tmp_path, "customer", "link", "Contoso Ltd", "--tenant", OTHER_TENANT)
        assert linked["after"] == {"tenant": OTHER_TENANT, "provisioning": "on"}
        linked = ok(url, tmp_path, "customer", "link", "Contoso Ltd", "--tenant", CUSTOMER_TENANT)
        assert linked["before"]["tenant"] == OTHER_TENANT

        graph.fail_number(e164(1), "The number is not in the tenant's inventory.")
        assigned = ok(url, tmp_path, "number", "assign", e164(1), "to", upn(1))
        assert assigned["provisioning"] == {"job": 1, "state": "pending"}
        assert assigned["after"]["teams"] == "pending (job 1)"
        listed = ok(url, tmp_path, "provisioning", "ACME-01", "--state", "pending")
        assert [(j["id"], j["number"], j["state"]) for j in listed["jobs"]] == [
            (1, e164(1), "pending")
        ]

        async def work() -> None:
            await db.open_database(url, migrate=False)
            try:
                async with env.teams_numbers(env.settings_for(idp, graph)) as client:
                    await env.drain(env.worker(client))
            finally:
                await db.close_database()

        asyncio.run(work())
        [failed] = ok(url, tmp_path, "provisioning", "--state", "failed")["jobs"]
        assert "not in the tenant's inventory" in failed["reason"]
        text = cli(url, tmp_path, "provisioning", "--state", "failed")
        words = " ".join(text.stdout.split())  # the CLI wraps text to the terminal's width
        assert text.returncode == 0 and "not in the tenant's inventory" in words
        retried = ok(url, tmp_path, "provisioning", "retry", "1")
        assert retried["after"] == {"state": "pending", "reason": None}
        again = cli(url, tmp_path, "provisioning", "retry", "1")
        assert again.returncode != 0 and "only a failed job" in again.stderr
        asyncio.run(work())
        assert graph.assigned(CUSTOMER_TENANT) == {e164(1): env.oid(upn(1))}

        # In a US government cloud provisioning is off, and says why.
        off = ok(url, tmp_path, "provisioning", FUSION_CLOUD="gcch")
        assert off["total"] == 1
        text = cli(url, tmp_path, "provisioning", FUSION_CLOUD="gcch")
        assert "global cloud only" in text.stdout


def test_a_dry_run_says_what_teams_would_get_and_writes_no_job(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust_fakes(monkeypatch)
    url = empty_db_url
    with env.fakes() as (_, graph):

        async def seed() -> None:
            await db.open_database(url, migrate=False)
            try:
                await env.seed(graph, users=1)
            finally:
                await db.close_database()

        asyncio.run(seed())
        shown = ok(url, tmp_path, "number", "assign", e164(0), "to", upn(0), "--dry-run")
        assert shown["dry_run"] is True and "provisioning" not in shown
        assert shown["after"]["teams"] == "would be set up"
        assert ok(url, tmp_path, "provisioning")["total"] == 0


def test_why_provisioning_is_off() -> None:
    from bot.config import Settings

    tenant = "11111111-2222-4333-8444-555555555555"
    on = Settings(app_id=env.APP_ID, app_password="s", app_tenant_id=tenant, provisioning=True)
    assert on.provisioning_off_reason == ""
    off = Settings(app_id=env.APP_ID, app_password="s")
    assert "FUSION_PROVISIONING=off" in off.provisioning_off_reason
    gov = Settings(app_id=env.APP_ID, app_password="s", provisioning=True, cloud="dod")
    assert "global cloud only" in gov.provisioning_off_reason
    msi = Settings(
        app_id=env.APP_ID, app_type="UserAssignedMSI", app_tenant_id=tenant, provisioning=True
    )
    assert "managed identity" in msi.provisioning_off_reason
    with_app = Settings(
        app_id=env.APP_ID,
        app_type="UserAssignedMSI",
        app_tenant_id=tenant,
        provisioning=True,
        provisioning_app_id=env.APP_ID,
        provisioning_app_password="s",
    )
    assert with_app.provisioning_off_reason == ""
    assert "needs an Entra app" in Settings(provisioning=True).provisioning_off_reason

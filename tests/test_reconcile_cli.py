"""Reconcile through the command-line front door (a real subprocess that gets its own msal
tokens and reads the Graph fake over https), on SQLite and PostgreSQL: `--json reconcile`, a
fix with its dry run, the second fix refused, the text output."""

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
from tests.fakes import FakeGraph, FakeIdentityProvider
from tests.support import licensing_env as env
from tests.support.graph_env import trust_fakes
from tests.support.provisioning_env import e164, upn

ROOT = Path(__file__).resolve().parent.parent


def cli(
    url: str, tmp: Path, idp: FakeIdentityProvider, graph: FakeGraph, *args: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))},
        "DATABASE_URL": url,
        "PYTHONPATH": str(ROOT),
        "MicrosoftAppId": env.APP_ID,
        "MicrosoftAppPassword": env.APP_SECRET,
        "MicrosoftAppTenantId": idp.tenant_id,
        "FUSION_LOGIN_AUTHORITY": idp.base_url,
        "FUSION_GRAPH_URL": graph.graph_url,
        "FUSION_PROVISIONING": "on",
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=tmp,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_reconcile_and_fix_from_the_command_line(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust_fakes(monkeypatch)
    url = empty_db_url
    with env.fakes() as (idp, graph):

        async def seed() -> None:
            await db.open_database(url, migrate=False)
            try:
                await env.seed(graph, users=6)
                async with env.tenant_graph(env.settings_for(idp, graph)) as client:
                    await env.drifted(graph, client)
            finally:
                await db.close_database()

        asyncio.run(seed())

        def ok(*args: str) -> Any:
            done = cli(url, tmp_path, idp, graph, "--json", *args)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
            return json.loads(done.stdout)

        [run] = ok("reconcile", "ACME-01")["runs"]
        assert run["subscription"] == "ACME-01" and run["open"] == 6
        assert set(run["counts"]) == {
            "number-only-in-teams",
            "number-missing-in-teams",
            "number-failed-in-teams",
            "number-other-holder",
            "license-only-in-teams",
            "license-missing-in-teams",
        }
        only = next(d for d in run["differences"] if d["kind"] == "number-only-in-teams")
        assert only["number"] == e164(4) and only["teams"]["account"] == upn(4)

        preview = ok("reconcile", "fix", str(only["id"]), "--to", "ledger", "--dry-run")
        assert preview["dry_run"] is True
        fixed = ok("reconcile", "fix", str(only["id"]), "--to", "ledger")
        assert fixed["after"]["done"] == f"assigned {e164(4)} to {upn(4)} in the ledger"
        again = cli(url, tmp_path, idp, graph, "reconcile", "fix", str(only["id"]), "--to", "teams")
        assert again.returncode == 1 and "already fixed (ledger side" in again.stderr

        text = cli(url, tmp_path, idp, graph, "reconcile")
        assert text.returncode == 0, text.stderr
        assert "5 differences between Teams and the ledger" in text.stdout
        assert "None" not in text.stdout
        bad = cli(url, tmp_path, idp, graph, "reconcile", "fix", "1", "--to", "sideways")
        assert bad.returncode != 0 and "teams" in bad.stderr

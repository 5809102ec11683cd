"""The command-line front door (SPEC §4), run as a real subprocess on SQLite and PostgreSQL:
`python -m bot [--json] [--as UPN] COMMAND ...` — exit status, where output goes, the
documented `--json` shapes (docs/cli.md), and the operator recorded in the audit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.domain import db, ledger
from bot.domain.change import Origin
from bot.domain.models import AuditEvent, ProductKind, SubscriptionMode

ROOT = Path(__file__).resolve().parent.parent


class CLI:
    def __init__(self, database_url: str, workdir: Path) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))},
            "DATABASE_URL": database_url,
            "PYTHONPATH": str(ROOT),
        }
        # Its own working folder: no developer .env is read.
        self.workdir = workdir

    def __call__(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot", *args],
            cwd=self.workdir,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert done.stderr == "", done.stderr
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args))

    def fails(self, *args: str, status: int = 1, env: dict[str, str] | None = None) -> str:
        done = self(*args, env=env)
        assert done.returncode == status, (args, done.returncode, done.stdout, done.stderr)
        assert done.stdout == ""
        assert done.stderr.strip()
        assert "Traceback" not in done.stderr
        return done.stderr


@pytest.fixture
def cli(empty_db_url: str, tmp_path: Path) -> CLI:
    return CLI(empty_db_url, tmp_path)


def seed_directly(database_url: str) -> None:
    """The same ledger as `seed`, written through the domain services (much faster than six
    CLI processes) for the tests about what comes after."""

    async def run() -> None:
        await db.open_database(database_url, migrate=False)
        try:
            ops = Origin("seed", "Seed", "system")
            await ledger.add_customer(ops, "Contoso Ltd")
            await ledger.add_subscription(ops, "ACME-01", "Contoso Ltd")
            await ledger.add_subscription(
                ops, "ACME-02", "Contoso Ltd", SubscriptionMode.OPERATOR_CONNECT
            )
            await ledger.add_product(ops, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 10, country="GB")
            await ledger.add_product(ops, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 20)
            await ledger.add_product(ops, "M365-E5", ProductKind.LICENSE, None, sku="SPE_E5")
        finally:
            await db.close_database()

    asyncio.run(run())


def seed(cli: CLI) -> None:
    cli.ok("customer", "add", "Contoso Ltd")
    cli.ok("subscription", "add", "ACME-01", "--customer", "Contoso Ltd")
    cli.ok(
        "subscription", "add", "ACME-02", "--customer", "contoso ltd", "--mode", "operator-connect"
    )
    cli.ok(
        "product",
        "add",
        "NUMBERS-GB-GEO",
        "--kind",
        "numbers",
        "--country",
        "GB",
        "--capacity",
        "10",
    )
    cli.ok("product", "add", "TEAMS-SEATS", "--kind", "teams-seats", "--capacity", "20")
    cli.ok("product", "add", "M365-E5", "--license", "--sku", "SPE_E5")


def test_a_session_with_json_output(cli: CLI) -> None:
    seed(cli)
    out = cli.ok("allocate", "6", "NUMBERS-GB-GEO", "to", "ACME-01")
    assert "Allocated 6 number(s) of NUMBERS-GB-GEO to ACME-01: 0 → 6." in out
    assert "allocated: 0 → 6" in out
    changed = cli.json("allocate", "4", "numbers-gb-geo", "TO", "acme-02")
    assert changed == {
        "action": "allocation.allocate",
        "target": "NUMBERS-GB-GEO → ACME-02",
        "before": {"allocated": 0, "product_allocated": 6},
        "after": {"allocated": 4, "product_allocated": 10},
        "dry_run": False,
    }
    cli.ok("allocate", "5", "TEAMS-SEATS", "to", "ACME-01")
    cli.ok("release", "1", "TEAMS-SEATS", "from", "ACME-01")

    usage = cli.json("usage")
    assert isinstance(usage, list)
    by_name = {p["name"]: p for p in usage}
    assert set(by_name) == {"M365-E5", "NUMBERS-GB-GEO", "TEAMS-SEATS"}
    for product in usage:
        assert {
            "name",
            "category",
            "kind",
            "capacity",
            "allocated",
            "in_use",
            "subscriptions",
        } <= set(product)
        for sub in product["subscriptions"]:
            assert {"code", "allocated", "in_use"} <= set(sub)
    numbers = by_name["NUMBERS-GB-GEO"]
    assert (numbers["category"], numbers["kind"], numbers["capacity"]) == (
        "technical",
        "numbers",
        10,
    )
    assert (numbers["allocated"], numbers["in_use"]) == (10, 0)
    assert [(s["code"], s["allocated"], s["in_use"]) for s in numbers["subscriptions"]] == [
        ("ACME-01", 6, 0),
        ("ACME-02", 4, 0),
    ]
    assert (
        by_name["TEAMS-SEATS"]["allocated"],
        by_name["TEAMS-SEATS"]["subscriptions"][0]["allocated"],
    ) == (4, 4)
    assert by_name["M365-E5"]["category"] == "license" and by_name["M365-E5"]["subscriptions"] == []

    one = cli.json("usage", "ACME-02")
    assert [(p["name"], [s["code"] for s in p["subscriptions"]]) for p in one] == [
        ("NUMBERS-GB-GEO", ["ACME-02"])
    ]
    assert [p["name"] for p in cli.json("usage", "TEAMS-SEATS")] == ["TEAMS-SEATS"]

    products = cli.json("products")
    assert [p["name"] for p in products] == ["M365-E5", "NUMBERS-GB-GEO", "TEAMS-SEATS"]
    assert set(products[1]) == {
        "name",
        "category",
        "kind",
        "unit",
        "capacity",
        "country",
        "type",
        "sku",
        "status",
        "allocated",
    }
    assert products[1] | {} == {
        "name": "NUMBERS-GB-GEO",
        "category": "technical",
        "kind": "numbers",
        "unit": "number",
        "capacity": 10,
        "country": "GB",
        "type": "geographic",
        "sku": None,
        "status": "active",
        "allocated": 10,
    }
    assert [p["name"] for p in cli.json("products", "licenses")] == ["M365-E5"]
    assert cli.json("subscriptions") == [
        {
            "code": "ACME-01",
            "customer": "Contoso Ltd",
            "mode": "direct-routing",
            "status": "active",
        },
        {
            "code": "ACME-02",
            "customer": "Contoso Ltd",
            "mode": "operator-connect",
            "status": "active",
        },
    ]
    assert cli.json("customers") == [{"name": "Contoso Ltd", "tenant": None}]
    assert cli.json("audit", "verify") == {"intact": True, "checked": 10, "problem": None}

    text = cli.ok("usage")
    header = text.splitlines()[1]
    assert all(column in header for column in ("Capacity", "Allocated", "In use", "Free"))
    assert "\n  ACME-01 " in text and "Unallocated" in text


def test_exit_status_and_errors_on_standard_error(cli: CLI, empty_db_url: str) -> None:
    seed_directly(empty_db_url)
    cli.ok("allocate", "10", "NUMBERS-GB-GEO", "to", "ACME-01")
    err = cli.fails("allocate", "1", "NUMBERS-GB-GEO", "to", "ACME-02")
    assert "Only 0 of NUMBERS-GB-GEO left to allocate" in err
    error = json.loads(cli.fails("--json", "allocate", "1", "NUMBERS-GB-GEO", "to", "ACME-02"))
    assert error == {"error": "conflict", "message": error["message"], "usage": None}
    assert "Only 0" in error["message"]

    err = cli.fails("allocate", "two", "NUMBERS-GB-GEO", "to", "ACME-02")
    assert "N must be a positive whole number" in err
    assert "usage: allocate N PRODUCT to SUBSCRIPTION [--dry-run]" in err
    error = json.loads(cli.fails("--json", "allocate", "1", "NUMBERS-GB-GEO"))
    assert error["error"] == "usage" and error["usage"].startswith("allocate N PRODUCT")
    err = cli.fails("allocate")  # a form in Teams; at the command line, the usage
    assert "Arguments are missing" in err and "allocate N PRODUCT" in err
    err = cli.fails("customer", "add", "Contoso", "Ltd")  # two words: quote them
    assert "Unexpected 'Ltd'" in err
    err = cli.fails("alocate", "1", "X", "to", "Y")
    assert "Did you mean allocate?" in err
    err = cli.fails("usage", "NUMBERS-GB")
    assert "Did you mean 'NUMBERS-GB-GEO'" in err
    err = cli.fails(status=2)
    assert "usage: fusion" in err
    err = cli.fails("--as", status=2)
    assert "--as needs a UPN" in err

    # Nothing above changed anything.
    assert len(cli.json("audit", "--limit", "500")) == 7


def test_as_upn_is_recorded_as_the_operator(cli: CLI) -> None:
    cli.ok("--as", "ops@contoso.example", "customer", "add", "Contoso Ltd")
    cli.ok("customer", "add", "O’Brien & Sons", "--as=lead@contoso.example")
    cli.ok("customer", "add", "Fabrikam")
    events = cli.json("audit")
    assert [(e["actor_id"], e["actor_name"], e["source"], e["target"]) for e in events] == [
        ("operator", "operator", "cli", "customer:Fabrikam"),
        ("lead@contoso.example", "lead@contoso.example", "cli", "customer:O’Brien & Sons"),
        ("ops@contoso.example", "ops@contoso.example", "cli", "customer:Contoso Ltd"),
    ]
    ids = [e["correlation_id"] for e in events]
    assert all(i.startswith("cli-") for i in ids) and len(set(ids)) == 3
    assert [e["action"] for e in cli.json("audit", "--actor", "ops@contoso.example")] == [
        "customer.add"
    ]
    who = cli.json("--as", "ops@contoso.example", "whoami")
    assert (who["name"], who["admin"]) == ("ops@contoso.example", True)


def test_dry_run_shows_before_and_after_and_changes_nothing(cli: CLI, empty_db_url: str) -> None:
    seed_directly(empty_db_url)
    cli.ok("allocate", "3", "TEAMS-SEATS", "to", "ACME-01")
    before = cli.json("audit", "export")
    text = cli.ok("allocate", "5", "TEAMS-SEATS", "to", "ACME-01", "--dry-run")
    assert text.startswith("Dry run — nothing changed. Would allocate 5")
    assert "allocated: 3 → 8" in text
    dry = cli.json("product", "capacity", "TEAMS-SEATS", "30", "--dry-run")
    assert dry == {
        "action": "product.capacity",
        "target": "TEAMS-SEATS",
        "before": {"capacity": 20},
        "after": {"capacity": 30},
        "dry_run": True,
    }
    # A dry run is refused like the change itself would be.
    err = cli.fails("product", "capacity", "TEAMS-SEATS", "2", "--dry-run")
    assert "3 allocated, 2 asked" in err
    assert cli.json("audit", "export") == before
    assert cli.json("usage", "TEAMS-SEATS")[0]["allocated"] == 3


def test_configuration_and_database_problems_are_clear(cli: CLI, tmp_path: Path) -> None:
    err = cli.fails("usage", env={"DATABASE_URL": "mysql://db/fusion"}, status=2)
    assert "DATABASE_URL" in err
    err = cli.fails(
        "usage", env={"DATABASE_URL": f"sqlite://{tmp_path}/missing/x.sqlite3"}, status=2
    )
    assert "DATABASE_URL" in err and "does not exist" in err
    err = cli.fails("usage", env={"FUSION_CLOUD": "moon"}, status=2)
    assert "FUSION_CLOUD" in err
    err = cli.fails("usage", env={"DATABASE_URL": "postgres://postgres@127.0.0.1:1/none"}, status=3)
    assert "connection refused" in err and "Nothing was changed" in err


def test_audit_verify_exits_non_zero_on_a_broken_chain(cli: CLI, empty_db_url: str) -> None:
    seed_directly(empty_db_url)
    assert cli.json("audit", "verify") == {"intact": True, "checked": 6, "problem": None}

    async def tamper() -> None:
        await db.open_database(empty_db_url, migrate=False)
        try:
            await AuditEvent.filter(id=3).update(actor_name="Mallory")
        finally:
            await db.close_database()

    asyncio.run(tamper())
    broken = json.loads(cli.fails("--json", "audit", "verify"))
    assert broken == {
        "intact": False,
        "checked": 2,
        "problem": "event 3: contents do not match its hash",
    }
    assert "Audit chain broken" in cli.fails("audit", "verify")

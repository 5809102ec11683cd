"""Benchmark: reconcile of one subscription with 10,000 numbers and 2,000 users against the
Graph fake, paged like Graph and throttled like Graph (issue 18).

    .venv/bin/python benchmarks/bench_reconcile.py [--numbers 10000] [--users 2000]
        [--database sqlite|postgres] [--rate 30] [--scales 0.25,0.5,1] [--json OUT]

For each scale the ledger is seeded through its services (the numbers, the users, one number
and two licenses each) and the fake tenant is given the same, then 1 % of each kind of
difference is made by hand on one side or the other. Then `reconcile SUBSCRIPTION` runs
through the command door: msal tokens for the tenant, every page of numberAssignments (500 a
page), users with their licenses (999 a page) and subscribedSkus, the comparison, the run kept.
The fake throttles the tenant to `--rate` requests a second (429 with Retry-After; 30 is
Microsoft's figure for Teams).

Printed per scale: wall time of the command, Graph calls and 429s, time reading the tenant,
time of the comparison alone (the same tenant answers compared again, without Graph) and per
item (numbers + users): flat across scales when the comparison grows no faster than the data.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.drills import _provisioning as p  # noqa: E402
from benchmarks.harness import work_folder  # noqa: E402
from bot.auth.actor import Actor  # noqa: E402
from bot.auth.policy import OperatorPolicy  # noqa: E402
from bot.commands import catalog  # noqa: E402, F401
from bot.commands.dispatch import run_text  # noqa: E402
from bot.commands.registry import Context, Services  # noqa: E402
from bot.config import DEFAULT_NAMING_RULE, Settings  # noqa: E402
from bot.domain import db, directory, ledger, licensing, numbers, reconcile  # noqa: E402
from bot.domain.models import ProductKind  # noqa: E402
from bot.domain.naming import set_naming_rule  # noqa: E402
from bot.provisioning import reconcile as reader  # noqa: E402
from bot.provisioning.session import open_tenant_graph  # noqa: E402
from tests.fakes import FakeGraph, shared_tls  # noqa: E402
from tests.support.querycount import count_queries  # noqa: E402

MCOEV = "e43b5b99-8dfb-405f-9987-dc307f34bcbd"
SPE_E5 = "06ebc4ee-1bb5-47dd-8120-11324bc54e06"
ROLES = [*p.ROLES, "LicenseAssignment.ReadWrite.All"]
OPS = p.OPS


def e164(i: int) -> str:
    return f"+{p.FIRST + i}"


async def seed(graph: FakeGraph, n_numbers: int, n_users: int) -> dict[str, int]:
    """Ledger and tenant agreeing, then 1 % of each kind of difference."""
    await ledger.add_customer(OPS, "Contoso Ltd", p.TENANT)
    await ledger.add_subscription(OPS, "ACME-01", "Contoso Ltd")
    await ledger.add_product(OPS, "NUMBERS-GB-GEO", ProductKind.NUMBERS, n_numbers, country="GB")
    await ledger.add_product(OPS, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, n_users)
    await ledger.add_product(OPS, "TEAMS-PHONE", ProductKind.LICENSE, n_users, sku="MCOEV")
    await ledger.add_product(OPS, "M365-E5", ProductKind.LICENSE, n_users, sku=SPE_E5)
    for name, units in (
        ("NUMBERS-GB-GEO", n_numbers),
        ("TEAMS-SEATS", n_users),
        ("TEAMS-PHONE", n_users),
        ("M365-E5", n_users),
    ):
        await ledger.allocate(OPS, units, name, "ACME-01")
    await numbers.add_numbers(OPS, f"{e164(0)}-{e164(n_numbers - 1)}")
    graph.add_sku(p.TENANT, MCOEV, "MCOEV", n_users + 100)
    graph.add_sku(p.TENANT, SPE_E5, "SPE_E5", n_users + 100)
    each = max(1, n_users // 100)  # 1 % of each kind
    holders = n_users - each  # the last `each` users hold no number in the ledger
    upns = [p.upn(i) for i in range(n_users)]
    for i, upn in enumerate(upns):
        await directory.add_account(OPS, upn, "ACME-01")
        graph.add_user(p.oid(upn), upn, f"User {i}")
    for i in range(holders):
        await numbers.assign_number(OPS, e164(i), upns[i])
    for start in range(0, n_users, licensing.MAX_BULK):
        chunk = upns[start : start + licensing.MAX_BULK]
        await licensing.assign_license(OPS, "TEAMS-PHONE", chunk)
        await licensing.assign_license(OPS, "M365-E5", chunk)
    for i in range(n_numbers):
        graph.assign_by_hand(p.TENANT, e164(i), p.oid(upns[i]) if i < holders else None)
    for upn in upns:
        graph.give_license(p.TENANT, p.oid(upn), MCOEV)
        graph.give_license(p.TENANT, p.oid(upn), SPE_E5)
    # The differences, `each` of every kind.
    for k in range(each):
        graph.assign_by_hand(p.TENANT, e164(k), None)  # missing in Teams
        graph.assign_by_hand(p.TENANT, e164(each + k), p.oid(upns[each + k]), "assignmentFailed")
        graph.assign_by_hand(p.TENANT, e164(2 * each + k), p.oid(upns[holders + k]))  # other
        graph.assign_by_hand(p.TENANT, e164(holders + k), p.oid(upns[holders + k]))  # Teams only
        graph.take_license(p.TENANT, p.oid(upns[3 * each + k]), MCOEV)  # missing in M365
    for k in range(each):  # in Microsoft 365 only
        await licensing.unassign_license(OPS, "M365-E5", upns[4 * each + k])
    return {"each_kind": each}


async def one(args: argparse.Namespace, scale: float, url: str) -> dict[str, Any]:
    n_numbers, n_users = round(args.numbers * scale), round(args.users * scale)
    result: dict[str, Any] = {"numbers": n_numbers, "users": n_users, "database": args.database}
    with p.fakes() as (idp, graph):
        idp.register_app(p.APP_ID, p.APP_SECRET, roles=ROLES)
        set_naming_rule(DEFAULT_NAMING_RULE)
        await db.open_database(url, migrate=False)
        try:
            started = time.monotonic()
            result.update(await seed(graph, n_numbers, n_users))
            result["seed_s"] = round(time.monotonic() - started, 1)
            settings = Settings(
                app_id=p.APP_ID,
                app_password=p.APP_SECRET,
                app_tenant_id=idp.tenant_id,
                app_type="SingleTenant",
                login_authority=idp.base_url,
                graph_url=graph.graph_url,
                provisioning=True,
            )
            graph.rate_limit(args.rate, per_seconds=1.0)
            graph.clear_records()
            async with open_tenant_graph(settings) as client:
                actor = Actor(object_id="bench", name="Bench", source="cli", correlation_id="b")
                ctx = Context(actor, settings, OperatorPolicy(), Services(tenant_graph=client))
                started = time.monotonic()
                reply = await run_text("reconcile ACME-01", ctx)
                wall = time.monotonic() - started
                assert reply.ok, reply
                [run] = reply.data["runs"]
                calls = Counter(str(r.info.get("kind")) for r in graph.requests)
                result.update(
                    {
                        "wall_s": round(wall, 2),
                        "graph_calls": run["graph_calls"],
                        "graph_requests_by_kind": dict(calls),
                        "throttled_429": sum(1 for r in graph.requests if r.status == 429),
                        "waited_for_429_s": round(client.waited, 1),
                        "differences": run["counts"],
                    }
                )
                graph.rate_limit(None)
                started = time.monotonic()
                state = await reader.read_tenant(client, p.TENANT)
                result["read_tenant_unthrottled_s"] = round(time.monotonic() - started, 2)
            timings = []
            for _ in range(3):
                with count_queries() as queries:
                    started = time.monotonic()
                    found = await reconcile.compare("ACME-01", state)
                    timings.append(time.monotonic() - started)
            result["compare_sql_statements"] = queries.count
            compare_s = min(timings)
            result["compare_s"] = round(compare_s, 3)
            result["compare_us_per_item"] = round(1e6 * compare_s / (n_numbers + n_users), 1)
            result["found"] = len(found)
        finally:
            await db.close_database()
    return result


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    bundle = str(shared_tls().ca_bundle)
    os.environ["REQUESTS_CA_BUNDLE"] = bundle
    os.environ["SSL_CERT_FILE"] = bundle
    results = []
    with work_folder() as work:
        for scale in [float(s) for s in args.scales.split(",")]:
            folder = work / f"s{scale}"
            folder.mkdir()
            with p.database(args.database, folder) as url:
                results.append(asyncio.run(one(args, scale, url)))
            print(_line(results[-1]), flush=True)
    return results


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['numbers']:>6,} numbers {r['users']:>5,} users ({r['database']}): "
        f"reconcile {r['wall_s']:.2f} s, {r['graph_calls']} Graph calls "
        f"({r['throttled_429']} 429s, {r['waited_for_429_s']} s waited), "
        f"read unthrottled {r['read_tenant_unthrottled_s']:.2f} s, compare {r['compare_s']:.3f} s "
        f"= {r['compare_us_per_item']} µs/item in {r['compare_sql_statements']} SQL statements; "
        f"{r['found']} differences "
        f"(seed {r['seed_s']} s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numbers", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rate", type=int, default=30)
    parser.add_argument("--scales", default="0.25,0.5,1")
    parser.add_argument("--json", default=None)
    arguments = parser.parse_args()
    found = main(arguments)
    p.save(arguments.json, found)

"""SPEC §2 invariants under real concurrency (SPEC §8): several OS processes, each with its own
connection pool and many concurrent tasks, hammer one product on PostgreSQL.

`select_for_update()` does nothing on SQLite, so PostgreSQL is the proof. What is checked after
each race: the invariants hold; what was allocated equals the sum of the attempts that said
they succeeded; there is exactly one audit event per successful change (matched by correlation
id); replaying the audit chain in order reproduces every before → after the services recorded
and never passes through a state that breaks an invariant; and the chain verifies.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bot.domain import ledger
from bot.domain.change import verify_chain
from bot.domain.errors import Conflict
from bot.domain.models import Allocation, AuditEvent, Product, ProductKind, SipTrunk, Subscription
from tests.support.ledger_state import check_invariants, origin

# Every attempt at the database at once (the workers do the same): its locks decide the races.
pytestmark = pytest.mark.usefixtures("unqueued_changes")

WORKER = Path(__file__).resolve().parent / "support" / "concurrency_worker.py"
ROOT = WORKER.parent.parent
OPS = origin()
POOL = "CONC-POOL"


async def run_workers(url: str, plans: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Start one process per plan, release them at the same moment, gather their results."""
    # A pool large enough for the tasks to really run at once (SQLite has one connection).
    pooled = url if url.startswith("sqlite") else f"{url}{'&' if '?' in url else '?'}maxsize=20"
    procs = {}
    for name, plan in plans.items():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            pooled,
            name,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(plan) + "\n").encode())
        await proc.stdin.drain()
        procs[name] = proc
    for name, proc in procs.items():
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            _, err = await proc.communicate()
            pytest.fail(f"worker {name} did not start: {line!r} {err.decode()[-2000:]}")
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    results: list[dict[str, Any]] = []
    for name, proc in procs.items():
        out, err = await asyncio.wait_for(proc.communicate(), 300)
        assert proc.returncode == 0, f"worker {name} failed: {err.decode()[-2000:]}"
        batch = json.loads(out.decode().strip().splitlines()[-1])
        results.extend({**r, "worker": name} for r in batch)
    crashes = [r for r in results if not r["ok"] and r["code"] not in {"conflict"}]
    assert not crashes, [(r["correlation_id"], r["code"], r["message"]) for r in crashes[:5]]
    return results


def overlapped_across_processes(results: list[dict[str, Any]]) -> bool:
    """Some attempt of one process ran while an attempt of another process was running."""
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        by_worker.setdefault(r["worker"], []).append((r["started"], r["finished"]))
    names = sorted(by_worker)
    for a in by_worker[names[0]]:
        for other in names[1:]:
            if any(a[0] < b[1] and b[0] < a[1] for b in by_worker[other]):
                return True
    return False


async def replay(
    product: str, capacity: int, allocated: dict[str, int]
) -> tuple[int, dict[str, int]]:
    """Walk the audit chain in order for one product, checking every recorded before → after
    against the state rebuilt so far and the invariants at every step."""
    total = sum(allocated.values())
    events = await AuditEvent.filter(target__endswith=product).order_by("id")
    for e in events:
        if e.action == "product.capacity":
            assert e.before == {"capacity": capacity}, e.id
            capacity = e.after["capacity"]
        elif e.action in {"allocation.allocate", "allocation.release"}:
            sub = e.target.removeprefix("allocation:").split("/")[0]
            assert e.before["allocated"] == allocated.get(sub, 0), e.id
            assert e.before["product_allocated"] == total, e.id
            allocated[sub] = e.after["allocated"]
            total = e.after["product_allocated"]
            assert total == sum(allocated.values()), e.id
            if e.action == "allocation.release":
                assert allocated[sub] >= e.before["in_use"], e.id
        else:
            continue
        assert 0 <= total <= capacity, f"event {e.id}: {total} allocated, capacity {capacity}"
    return capacity, allocated


async def setup_pool(
    capacity: int, subscriptions: int, kind: ProductKind = ProductKind.CUSTOM
) -> list[str]:
    await ledger.add_customer(OPS, "Contoso Ltd")
    codes = [f"SUB-{i:02d}" for i in range(subscriptions)]
    for code in codes:
        await ledger.add_subscription(OPS, code, "Contoso Ltd")
    await ledger.add_product(OPS, POOL, kind, capacity)
    return codes


async def pool_state() -> tuple[int, dict[str, int]]:
    product = await Product.get(name=POOL)
    rows = await Allocation.filter(product_id=product.id).values_list(
        "subscription__code", "quantity"
    )
    return product.capacity, {code: qty for code, qty in rows}


async def assert_audit_matches(results: list[dict[str, Any]], baseline_events: int) -> None:
    """One audit event per successful attempt, carrying that attempt's correlation id."""
    done = sorted(r["correlation_id"] for r in results if r["ok"])
    events = await AuditEvent.filter(id__gt=baseline_events).order_by("id")
    assert sorted(e.correlation_id or "" for e in events) == done
    assert {e.source for e in events} <= {"system"}
    ok, checked, problem = await verify_chain()
    assert (ok, problem) == (True, "")
    assert checked == baseline_events + len(done)


@pytest.mark.slow
async def test_concurrent_allocations_from_two_processes_never_exceed_capacity(
    pg_database: str,
) -> None:
    capacity = 150
    codes = await setup_pool(capacity, subscriptions=4)
    baseline = await AuditEvent.all().count()
    rng = random.Random(2)
    plans = {
        name: [
            {
                "op": "allocate",
                "quantity": rng.randint(1, 3),
                "product": POOL,
                "subscription": rng.choice(codes),
            }
            for _ in range(150)
        ]
        for name in ("p1", "p2")
    }
    results = await run_workers(pg_database, plans)
    assert len(results) == 300
    assert overlapped_across_processes(results)

    ok = [r for r in results if r["ok"]]
    refused = [r for r in results if not r["ok"]]
    assert ok and refused  # demand (about 600) is four times the capacity
    assert all("left to allocate" in r["message"] for r in refused)
    final_capacity, allocated = await pool_state()
    assert final_capacity == capacity
    assert sum(allocated.values()) == sum(r["quantity"] for r in ok) <= capacity
    # Every refusal asked for more than was free then, and free only shrinks here.
    assert capacity - sum(allocated.values()) < min(r["quantity"] for r in refused)
    for code in codes:
        assert allocated.get(code, 0) == sum(r["quantity"] for r in ok if r["subscription"] == code)

    await assert_audit_matches(results, baseline)
    assert Counter(e.action for e in await AuditEvent.filter(id__gt=baseline)) == {
        "allocation.allocate": len(ok)
    }
    assert await replay(POOL, capacity, {}) == (capacity, allocated)
    await check_invariants()


@pytest.mark.slow
async def test_capacity_lowering_races_allocations(pg_database: str) -> None:
    """Invariant 3: capacity never drops below what is allocated, whatever the interleaving."""
    capacity = 200
    codes = await setup_pool(capacity, subscriptions=3)
    baseline = await AuditEvent.all().count()
    rng = random.Random(3)

    def allocations(n: int) -> list[dict[str, Any]]:
        return [
            {
                "op": "allocate",
                "quantity": rng.randint(1, 2),
                "product": POOL,
                "subscription": rng.choice(codes),
            }
            for _ in range(n)
        ]

    lowering = [{"op": "capacity", "capacity": c, "product": POOL} for c in range(199, 59, -2)]
    plans = {"p1": allocations(120), "p2": lowering + allocations(40)}
    results = await run_workers(pg_database, plans)
    assert len(results) == 230
    assert overlapped_across_processes(results)

    ok_alloc = [r for r in results if r["ok"] and r["op"] == "allocate"]
    ok_capacity = [r for r in results if r["ok"] and r["op"] == "capacity"]
    refused_capacity = [r for r in results if not r["ok"] and r["op"] == "capacity"]
    assert ok_alloc and ok_capacity
    assert all("cannot go below what is allocated" in r["message"] for r in refused_capacity)
    final_capacity, allocated = await pool_state()
    assert sum(allocated.values()) == sum(r["quantity"] for r in ok_alloc) <= final_capacity

    await assert_audit_matches(results, baseline)
    assert await replay(POOL, capacity, {}) == (final_capacity, allocated)
    await check_invariants()


@pytest.mark.slow
async def test_releases_race_allocations_and_never_go_below_in_use(pg_database: str) -> None:
    capacity = 100
    await setup_pool(capacity, subscriptions=2, kind=ProductKind.SIP_CHANNELS)
    await ledger.allocate(OPS, 100, POOL, "SUB-00")
    # SUB-00 uses 30 channels: its allocation can never go below that.
    await SipTrunk.create(
        name="TRUNK-1", subscription=await Subscription.get(code="SUB-00"), channels=30
    )
    baseline = await AuditEvent.all().count()
    release = {"op": "release", "quantity": 1, "product": POOL, "subscription": "SUB-00"}
    allocate = {"op": "allocate", "quantity": 1, "product": POOL, "subscription": "SUB-01"}
    plans = {"p1": [release] * 60 + [allocate] * 60, "p2": [allocate] * 60 + [release] * 60}
    results = await run_workers(pg_database, plans)
    assert len(results) == 240
    assert overlapped_across_processes(results)

    released = [r for r in results if r["ok"] and r["op"] == "release"]
    granted = [r for r in results if r["ok"] and r["op"] == "allocate"]
    refused_release = [r for r in results if not r["ok"] and r["op"] == "release"]
    assert len(released) == 70  # 100 allocated, 30 in use: exactly 70 single releases can pass
    assert all("uses 30" in r["message"] for r in refused_release)
    _, allocated = await pool_state()
    assert allocated["SUB-00"] == 30
    assert allocated.get("SUB-01", 0) == len(granted) <= 70

    await assert_audit_matches(results, baseline)
    assert await replay(POOL, capacity, {}) == (capacity, allocated)
    await check_invariants()


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_processes_sharing_a_sqlite_file_take_turns(database: str) -> None:
    """The embedded default: the bot and the CLI on one SQLite file. Writers queue for the
    file's write lock instead of failing with "database is locked"."""
    capacity = 150
    codes = await setup_pool(capacity, subscriptions=4)
    baseline = await AuditEvent.all().count()
    plans = {
        name: [
            {"op": "allocate", "quantity": 1, "product": POOL, "subscription": codes[i % 4]}
            for i in range(100)
        ]
        for name in ("p1", "p2")
    }
    results = await run_workers(database, plans)  # fails on any "unavailable"
    ok = [r for r in results if r["ok"]]
    assert len(ok) == capacity
    _, allocated = await pool_state()
    assert sum(allocated.values()) == capacity
    await assert_audit_matches(results, baseline)
    assert await replay(POOL, capacity, {}) == (capacity, allocated)


async def test_concurrent_allocations_in_one_process(database: str) -> None:
    """The same race inside one process, on both databases (SQLite serialises its writers)."""
    capacity = 50
    codes = await setup_pool(capacity, subscriptions=2)

    async def attempt(i: int) -> int:
        try:
            await ledger.allocate(origin(correlation_id=f"t-{i}"), 1 + i % 2, POOL, codes[i % 2])
        except Exception as exc:  # noqa: BLE001
            assert "left to allocate" in str(exc), repr(exc)
            return 0
        return 1 + i % 2

    granted = await asyncio.gather(*(attempt(i) for i in range(80)))
    _, allocated = await pool_state()
    assert sum(allocated.values()) == sum(granted) <= capacity
    assert capacity - sum(allocated.values()) < 2
    assert await AuditEvent.filter(action="allocation.allocate").count() == sum(
        1 for g in granted if g
    )
    assert (await verify_chain())[0]
    await check_invariants()


async def test_the_same_name_added_concurrently_is_added_once(database: str) -> None:
    """Two admins add the same customer, subscription or product at the same moment: one wins,
    the other is refused as a conflict (never an internal error) and nothing is half-done."""
    await ledger.add_customer(OPS, "Contoso Ltd")
    attempts = [
        *(ledger.add_customer(origin(correlation_id=f"c-{i}"), "Fabrikam") for i in range(8)),
        *(
            ledger.add_subscription(origin(correlation_id=f"s-{i}"), "ACME-01", "Contoso Ltd")
            for i in range(8)
        ),
        *(
            ledger.add_product(origin(correlation_id=f"p-{i}"), "FAX", ProductKind.CUSTOM, 5)
            for i in range(8)
        ),
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(results) - len(errors) == 3
    assert all(isinstance(e, Conflict) for e in errors), errors
    assert (
        await AuditEvent.filter(
            action__in=["customer.add", "subscription.add", "product.add"]
        ).count()
        == 4
    )
    assert (await verify_chain())[0]

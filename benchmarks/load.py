"""Load generator: drives running bot processes the way the Bot Connector does, and the floors.

    .venv/bin/python benchmarks/load.py matrix   # usage/allocate/card × SQLite/PostgreSQL × 1…128
    .venv/bin/python benchmarks/load.py soak     # 20,000 turns, RSS at start / middle / end
    .venv/bin/python benchmarks/load.py scale    # one vs two bot processes on one PostgreSQL
    .venv/bin/python benchmarks/load.py matrix --edges botbuilder agents --levels 32 --rounds 3
                                                  # both edges (FUSION_EDGE) side by side

What runs, each in its own process, all on 127.0.0.1:
- the bot under test: `python app.py`, production mode (MicrosoftAppId/Password set), pointed at
  the fakes through its ordinary settings; SQLite in a temporary folder, or PostgreSQL in a
  private cluster started for the run (initdb + pg_ctl on a free port — never the machine's);
- the floors: the stock botbuilder echo bot (`floor_echo_bot.py`) and bare aiohttp
  (`floor_bare_aiohttp.py`), same settings;
- the identity provider and Graph fakes (`fakes_proc.py`): channel signing keys, the bot's
  msal token, group membership (one Graph call per administrator, then cached by the bot);
- the Bot Connector fake (`connector_proc.py`), alone: it checks the bot's token, and notes
  when each reply arrives and what its card says;
- this generator: N conversations at once (N = the concurrency), each sending its next
  activity when the previous one was answered. Every activity has a unique id and a channel
  token signed with the fake's channel key (the bot validates it the real way).

Latency of a message = POST sent → its reply received at the connector (same monotonic clock
across processes). A card submission (`adaptiveCard/action` invoke, verb form.submit) is
answered in the HTTP response itself: its latency is POST sent → response received. CPU per
turn = the bot process's user+system CPU time over the measured window / turns (from /proc).
Peak RSS = the bot's VmHWM over the window (reset through /proc/PID/clear_refs first).
Every cell is bounded: `--seconds` of measured load or `--max-turns`, whichever comes first,
after a short warm-up. Prints Markdown tables; `--json FILE` keeps every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import jwt  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.harness import ADMINS, APP_ID, CLOCK_TICKS, Child, PrivatePostgres  # noqa: E402
from benchmarks.seed import POOL, POOLS  # noqa: E402

BOT_ID = f"28:{APP_ID}"
SCENARIOS = ("usage", "allocate", "card")
#: `whoami`: the same round trip with no database work — what the edge and the SDK cost alone.
EXTRA_SCENARIOS = ("whoami",)
LEVELS = (1, 8, 32, 128)
#: What the first text of the answer card starts with when the turn did what was asked.
SUCCESS = {
    "usage": ("Usage",),
    "whoami": ("Who you are",),
    "allocate": ("Allocated",),
    "card": ("Allocated",),
    "echo": ("Echo:",),
}


# ----- what the Bot Connector sends ---------------------------------------------------------


class ChannelTokens:
    """Channel tokens as the Bot Connector sends them: RS256 with the channel key, one per
    service URL, reused until shortly before they expire."""

    def __init__(self, private_pem: str, kid: str) -> None:
        self._key = private_pem
        self._kid = kid
        self._tokens: dict[str, tuple[str, float]] = {}

    def __call__(self, service_url: str) -> str:
        token, renew_at = self._tokens.get(service_url, ("", 0.0))
        if time.time() < renew_at:
            return token
        now = int(time.time())
        claims = {
            "serviceurl": service_url,
            "nbf": now - 60,
            "exp": now + 3600,
            "iat": now,
            "iss": "https://api.botframework.com",
            "aud": APP_ID,
        }
        token = jwt.encode(
            claims, self._key, algorithm="RS256", headers={"kid": self._kid, "x5t": self._kid}
        )
        self._tokens[service_url] = (token, now + 3000)
        return token


@dataclass
class Traffic:
    """Builds the activities of one scenario."""

    service_url: str
    tenant_id: str
    subscriptions: list[str]
    run_id: str = field(default_factory=lambda: f"{int(time.time() * 1000) % 10**9:09d}")
    #: The products allocated from (conversation w uses pools[w % len]); one by default.
    pools: list[str] = field(default_factory=lambda: [POOL])

    def _base(self, kind: str, conversation: str, activity_id: str, worker: int) -> dict[str, Any]:
        sender = ADMINS[worker % len(ADMINS)]
        return {
            "type": kind,
            "id": activity_id,
            "timestamp": "2025-01-01T10:00:00.000Z",
            "serviceUrl": self.service_url,
            "channelId": "msteams",
            "from": {"id": f"29:{sender}", "aadObjectId": sender, "name": f"Admin {worker}"},
            "conversation": {
                "id": conversation,
                "conversationType": "personal",
                "tenantId": self.tenant_id,
            },
            "recipient": {"id": BOT_ID, "name": "Fusion Products"},
            "channelData": {"tenant": {"id": self.tenant_id}},
        }

    def activity(
        self, scenario: str, conversation: str, activity_id: str, worker: int
    ) -> dict[str, Any]:
        sub = self.subscriptions[worker % len(self.subscriptions)]
        pool = self.pools[worker % len(self.pools)]
        if scenario == "card":
            activity = self._base("invoke", conversation, activity_id, worker)
            activity["name"] = "adaptiveCard/action"
            activity["replyToId"] = f"card-{conversation}"
            activity["value"] = {
                "action": {
                    "type": "Action.Execute",
                    "verb": "form.submit",
                    "data": {
                        "command": "allocate",
                        "form_id": f"f{activity_id}",
                        "quantity": "1",
                        "product": pool,
                        "subscription": sub,
                        "dry_run": False,
                    },
                },
                "trigger": "manual",
            }
            return activity
        activity = self._base("message", conversation, activity_id, worker)
        if scenario in ("usage", "whoami"):
            text = scenario
        elif scenario == "allocate":
            text = f"allocate 1 {pool} to {sub}"
        else:
            text = f"echo {activity_id}"
        activity.update(text=text, textFormat="plain", entities=[])
        return activity


# ----- targets and measurements ---------------------------------------------------------------


@dataclass
class Target:
    """A server the load is sent to (one or several processes)."""

    name: str  # "fusion", "echo", "bare"
    database: str  # "sqlite", "postgres", "-"
    children: list[Child]
    urls: list[str]
    edge: str = "botbuilder"  # FUSION_EDGE of the bot under test

    def cpu(self) -> float:
        return sum(c.cpu_seconds() for c in self.children)

    def reset_peak(self) -> None:
        for c in self.children:
            c.reset_peak()

    def peak_rss(self) -> float:
        return max(c.peak_rss_mib() for c in self.children)


@dataclass
class Cell:
    target: str
    database: str
    scenario: str
    concurrency: int
    turns: int = 0
    seconds: float = 0.0
    throughput: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    cpu_ms_per_turn: float = 0.0
    peak_rss_mib: float = 0.0
    ok: int = 0
    failed: int = 0  # HTTP errors, missing replies, or answers that are not a success
    answers: dict[str, int] = field(default_factory=dict)  # most common first texts
    machine_busy: float = 0.0  # share of all CPUs busy during the window (0..1)
    cores: dict[str, float] = field(default_factory=dict)  # CPUs used, by process role
    round: int = 0
    edge: str = "botbuilder"


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


def process_cpu() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far), for every process on the machine."""
    found: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def cores_by_role(
    before: dict[int, tuple[int, float]],
    after: dict[int, tuple[int, float]],
    roles: dict[str, set[int]],
    elapsed: float,
) -> dict[str, float]:
    """CPUs (cores) each role used over the window (PostgreSQL: the postmaster's children too)."""
    used: dict[str, float] = {}
    for role, roots in roles.items():
        family = role == "postgres"
        pids = {p for p, (ppid, _) in after.items() if p in roots or (family and ppid in roots)}
        seconds = sum(after[p][1] - before.get(p, (0, after[p][1]))[1] for p in pids)
        used[role] = round(seconds / elapsed, 2) if elapsed else 0.0
    return used


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Generator:
    def __init__(
        self,
        traffic: Traffic,
        tokens: ChannelTokens,
        control_url: str,
        *,
        seconds: float,
        max_turns: int,
        warmup_turns: int = 2,
    ) -> None:
        self.traffic = traffic
        self.tokens = tokens
        self.control_url = control_url
        self.seconds = seconds
        self.max_turns = max_turns
        self.warmup_turns = warmup_turns
        self.http: aiohttp.ClientSession | None = None
        self._cell_no = 0
        #: Other processes whose CPU use is reported beside the bot's (role -> their pids).
        self.watch: dict[str, Callable[[], set[int]]] = {}

    async def __aenter__(self) -> Generator:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=300),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.http is not None
        await self.http.close()

    async def drain(self) -> dict[str, tuple[int, str]]:
        assert self.http is not None
        async with self.http.get(f"{self.control_url}/_control/drain") as resp:
            data = await resp.json()
        return {k: (int(v[0]), str(v[1])) for k, v in data["replies"].items()}

    async def post(self, url: str, activity: dict[str, Any]) -> tuple[int, int, int, Any]:
        """(status, sent ns, answered ns, invoke body or None)."""
        assert self.http is not None
        body = json.dumps(activity).encode()
        headers = {
            "Authorization": f"Bearer {self.tokens(activity['serviceUrl'])}",
            "Content-Type": "application/json",
        }
        sent = time.monotonic_ns()
        async with self.http.post(url, data=body, headers=headers) as resp:
            raw = await resp.read()
            answered = time.monotonic_ns()
            parsed = None
            if activity["type"] == "invoke" and resp.status == 200:
                with contextlib.suppress(ValueError):
                    parsed = json.loads(raw)
            return resp.status, sent, answered, parsed

    async def run_cell(
        self,
        target: Target,
        scenario: str,
        concurrency: int,
        *,
        turns_each: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Cell:
        """Warm up, then `concurrency` conversations for the window; figures for the window."""
        self._cell_no += 2
        warm_tag = f"{self.traffic.run_id}{self._cell_no - 1:04d}"
        tag = f"{self.traffic.run_id}{self._cell_no:04d}"
        conversations = [f"a:{target.name}-{target.database}-{w}" for w in range(concurrency)]

        async def conversation(
            w: int,
            count: int | None,
            deadline: float | None,
            budget: list[int],
            record: list[tuple[Any, ...]],
            tag: str = tag,
        ) -> None:
            url = target.urls[w % len(target.urls)]
            i = 0
            while True:
                if count is not None and i >= count:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if budget[0] <= 0:
                    return
                budget[0] -= 1
                aid = f"{tag}{w:03d}{i:07d}"
                i += 1
                activity = self.traffic.activity(scenario, conversations[w], aid, w)
                try:
                    status, sent, answered, invoke = await self.post(url, activity)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    record.append((aid, 0, time.monotonic_ns(), time.monotonic_ns(), repr(exc)))
                    continue
                record.append((aid, status, sent, answered, invoke))
                if on_progress is not None:
                    on_progress(1)

        # Warm-up: every conversation seen once or twice (stored reference, cached admin).
        warm: list[tuple[Any, ...]] = []
        await asyncio.gather(
            *(
                conversation(w, self.warmup_turns, None, [10**9], warm, warm_tag)
                for w in range(concurrency)
            )
        )
        await self.drain()

        record: list[tuple[Any, ...]] = []
        budget = [self.max_turns if turns_each is None else 10**12]
        target.reset_peak()
        cpu0, (busy0, total0), procs0 = target.cpu(), machine_ticks(), process_cpu()
        started = time.monotonic()
        deadline = None if turns_each is not None else started + self.seconds
        await asyncio.gather(
            *(conversation(w, turns_each, deadline, budget, record) for w in range(concurrency))
        )
        elapsed = time.monotonic() - started
        cpu1, (busy1, total1), procs1 = target.cpu(), machine_ticks(), process_cpu()
        replies = await self.drain()
        cell = self._figures(
            target,
            scenario,
            concurrency,
            record,
            replies,
            elapsed,
            cpu1 - cpu0,
            (busy1 - busy0) / max(1, total1 - total0),
        )
        bots = {c.pid for c in target.children}
        roles = {"bot": bots, "generator": {os.getpid()}}
        roles.update({name: pids() for name, pids in self.watch.items()})
        # Everything else this run started: idle servers, the fakes, the connector.
        ours = {p for p, (ppid, _) in procs1.items() if ppid == os.getpid()} - bots
        cell.cores = cores_by_role(procs0, procs1, {**roles, "ours": ours}, elapsed)
        cell.cores["all"] = round(cell.machine_busy * (os.cpu_count() or 1), 2)
        rig = cell.cores["generator"] + cell.cores.pop("ours")
        cell.cores["rig"] = round(rig, 2)
        known = cell.cores["bot"] + cell.cores.get("postgres", 0.0) + rig
        cell.cores["others"] = round(max(0.0, cell.cores["all"] - known), 2)
        return cell

    def _figures(
        self,
        target: Target,
        scenario: str,
        concurrency: int,
        record: list[tuple[Any, ...]],
        replies: dict[str, tuple[int, str]],
        elapsed: float,
        cpu: float,
        busy: float,
    ) -> Cell:
        latencies: list[float] = []
        answers: Counter[str] = Counter()
        ok = failed = 0
        wanted = SUCCESS["echo" if target.name != "fusion" else scenario]
        for aid, status, sent, answered, extra in record:
            if scenario == "card" and target.name == "fusion":
                text = _invoke_title(extra) if status == 200 else f"HTTP {status or extra}"
                done_at = answered if status == 200 else None
            else:
                reply = replies.get(aid)
                text = reply[1] if reply else f"no reply (HTTP {status or extra})"
                done_at = reply[0] if reply and status in (200, 201) else None
            answers[text.split(":", 1)[0][:40] if text else "(empty)"] += 1
            if done_at is None or not text.startswith(wanted):
                failed += 1
                continue
            ok += 1
            latencies.append((done_at - sent) / 1e6)
        latencies.sort()
        turns = len(record)
        return Cell(
            target=target.name,
            database=target.database,
            scenario=scenario if target.name == "fusion" else "echo",
            concurrency=concurrency,
            turns=turns,
            seconds=round(elapsed, 3),
            throughput=round(ok / elapsed, 1) if elapsed else 0.0,
            p50_ms=round(percentile(latencies, 0.50), 1),
            p95_ms=round(percentile(latencies, 0.95), 1),
            p99_ms=round(percentile(latencies, 0.99), 1),
            max_ms=round(latencies[-1], 1) if latencies else float("nan"),
            cpu_ms_per_turn=round(cpu * 1000 / turns, 2) if turns else float("nan"),
            peak_rss_mib=round(target.peak_rss(), 1),
            ok=ok,
            failed=failed,
            answers=dict(answers.most_common(4)),
            machine_busy=round(busy, 2),
            edge=target.edge,
        )


def _invoke_title(body: Any) -> str:
    from benchmarks.connector_proc import title_of

    if not isinstance(body, dict):
        return "(no body)"
    card = body.get("value")
    return title_of({"attachments": [{"content": card}]}) or str(body.get("type"))


# ----- the environment: fakes, databases, servers ---------------------------------------------


class Rig:
    """Everything the load runs against, started once and stopped at the end."""

    def __init__(
        self,
        work: Path,
        *,
        https_connector: bool = True,
        sqlite_params: str = "",
        postgres_params: str = "",
        bot_settings: dict[str, str] | None = None,
    ) -> None:
        self.work = work
        self.sqlite_params = sqlite_params
        self.postgres_params = postgres_params
        self.bot_settings = dict(bot_settings or {})
        self.tls = harness.tls_files(work / "tls")
        self.fakes = harness.start_fakes(work, self.tls)
        self.connector = harness.start_connector(work, self.tls, self.fakes, https=https_connector)
        self.postgres: PrivatePostgres | None = None
        self.children: list[Child] = [self.connector, self.fakes]
        self.subscriptions: list[str] = []

    def database(self, kind: str, name: str = "fusion_bench", limited: int = 1000) -> str:
        """A fresh, migrated and seeded database of `kind` (sqlite | postgres)."""
        if kind == "sqlite":
            url = f"sqlite://{self.work / (name + '.sqlite3')}"
            if self.sqlite_params:
                url += f"?{self.sqlite_params}"
        else:
            if self.postgres is None:
                self.postgres = PrivatePostgres()
                self.postgres.init()
                self.postgres.start()
            url = self.postgres.create_database(name)
            if self.postgres_params:
                url += f"?{self.postgres_params}"
        seeded = harness.seed(url, limited=limited)
        self.subscriptions = list(seeded["subscriptions"])
        return url

    def env(self, database_url: str, port: int, **extra: str) -> dict[str, str]:
        settings = {**self.bot_settings, **extra}
        return harness.bot_env(self.fakes, self.connector, self.tls, database_url, port, **settings)

    def start(
        self,
        name: str,
        database_url: str,
        script: str | None = None,
        port: int | None = None,
        **extra: str,
    ) -> tuple[Child, str]:
        port = port or harness.free_port()
        argv = [harness.PYTHON, str(harness.BENCH / script)] if script else None
        child = harness.start_bot(name, self.work, self.env(database_url, port, **extra), argv=argv)
        self.children.insert(0, child)
        return child, f"http://127.0.0.1:{port}/api/messages"

    def generator(self, **kwargs: Any) -> Generator:
        gen = Generator(self.traffic(), self.tokens(), self.connector.info["control_url"], **kwargs)
        gen.watch = {
            "connector": lambda: {self.connector.pid},
            "fakes": lambda: {self.fakes.pid},
            "postgres": lambda: self.postgres.pids() if self.postgres else set(),
        }
        return gen

    def traffic(self) -> Traffic:
        return Traffic(
            self.connector.info["service_url"], self.fakes.info["tenant_id"], self.subscriptions
        )

    def tokens(self) -> ChannelTokens:
        return ChannelTokens(self.fakes.info["channel_private_pem"], self.fakes.info["channel_kid"])

    def close(self) -> None:
        for child in self.children:
            with contextlib.suppress(Exception):
                child.stop()
        if self.postgres is not None:
            self.postgres.destroy()


@contextlib.contextmanager
def rig(
    keep: bool,
    https_connector: bool = True,
    sqlite_params: str = "",
    postgres_params: str = "",
    bot_settings: dict[str, str] | None = None,
) -> Iterator[Rig]:
    with harness.work_folder(keep) as work:
        r = Rig(
            work,
            https_connector=https_connector,
            sqlite_params=sqlite_params,
            postgres_params=postgres_params,
            bot_settings=bot_settings,
        )
        try:
            yield r
        finally:
            r.close()
            if keep:
                print(f"(work folder kept: {work})", file=sys.stderr)


# ----- reports --------------------------------------------------------------------------------


def _ratio(value: float, floor: float | None) -> str:
    return f"{value / floor:.1f}×" if floor else "–"


def _fmt(x: float, digits: int = 0) -> str:
    return "–" if x != x else f"{x:,.{digits}f}"  # NaN → dash


def _median_cells(cells: list[Cell]) -> Cell:
    """The cell of median throughput among repeated rounds (of two, the slower one)."""
    ordered = sorted(cells, key=lambda c: c.throughput)
    return ordered[(len(ordered) - 1) // 2]


def tables(cells: list[Cell]) -> str:
    if len({c.edge for c in cells if c.target == "fusion"}) > 1:
        return edge_tables(cells)
    groups: dict[tuple[str, str, str, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.target, c.database, c.scenario, c.concurrency), []).append(c)
    best = {k: _median_cells(v) for k, v in groups.items()}
    levels = sorted({k[3] for k in best})
    out: list[str] = []

    def floor(name: str, level: int) -> Cell | None:
        return best.get((name, "-", "echo", level))

    out.append("Floors (the same round trip: activity in, reply out to the connector)\n")
    out.append(
        "| conc. | echo bot turns/s | p50 / p95 / p99 ms | CPU ms/turn | peak RSS MiB "
        "| bare aiohttp turns/s | p50 / p95 / p99 ms | CPU ms/turn |"
    )
    out.append("|---:|---:|---|---:|---:|---:|---|---:|")
    for level in levels:
        line = [str(level)]
        for name in ("echo", "bare"):
            f = floor(name, level)
            if f is None:
                line += ["–"] * (4 if name == "echo" else 3)
                continue
            line += [
                _fmt(f.throughput),
                f"{_fmt(f.p50_ms, 1)} / {_fmt(f.p95_ms, 1)} / {_fmt(f.p99_ms, 1)}",
                _fmt(f.cpu_ms_per_turn, 2),
            ]
            if name == "echo":
                line.append(_fmt(f.peak_rss_mib, 0))
        out.append("| " + " | ".join(line) + " |")
    for database in sorted({k[1] for k in best if k[0] == "fusion"}):
        for scenario in SCENARIOS:
            rows = [best.get(("fusion", database, scenario, level)) for level in levels]
            if not any(rows):
                continue
            out.append(f"\nFusion bot — `{scenario}` on {database}\n")
            out.append(
                "| conc. | turns/s | × echo bot | % of bare | p50 ms | p95 ms | p99 ms "
                "| CPU ms/turn | peak RSS MiB | ok / failed | cores: bot · PostgreSQL · rig · "
                "others |"
            )
            out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
            for level, row in zip(levels, rows, strict=True):
                if row is None:
                    continue
                c = row
                e, b = floor("echo", level), floor("bare", level)
                pct_bare = (
                    f"{100 * c.throughput / b.throughput:.0f} %" if b and b.throughput else "–"
                )
                out.append(
                    f"| {level} | {_fmt(c.throughput)} | "
                    f"{_ratio(c.throughput, e.throughput if e else None)} | {pct_bare} | "
                    f"{_fmt(c.p50_ms, 1)} | {_fmt(c.p95_ms, 1)} | {_fmt(c.p99_ms, 1)} | "
                    f"{_fmt(c.cpu_ms_per_turn, 2)} | {_fmt(c.peak_rss_mib, 0)} | "
                    f"{c.ok} / {c.failed} | {_cores(c)} |"
                )
    failures = [c for c in cells if c.failed]
    if failures:
        out.append("\nCells with failed turns (first texts of the answers):")
        for c in failures:
            out.append(f"- {c.target}/{c.database}/{c.scenario}@{c.concurrency}: {c.answers}")
    return "\n".join(out)


def edge_tables(cells: list[Cell]) -> str:
    """Both edges side by side: per database, scenario and concurrency, the median round of
    each edge (cells alternate between the edges, so both see the same machine), with the
    spread over rounds (min–max turns/s) as the run's noise."""
    groups: dict[tuple[str, str, int, str], list[Cell]] = {}
    for c in cells:
        if c.target == "fusion":
            groups.setdefault((c.database, c.scenario, c.concurrency, c.edge), []).append(c)
    edges = sorted({k[3] for k in groups}, key=lambda e: (e != "botbuilder", e))
    out = [
        "Edges side by side (FUSION_EDGE), median round; turns/s range over rounds = noise\n",
        "| database | scenario | conc. | "
        + " | ".join(f"{e} turns/s (range) | {e} p50 / p99 ms | {e} CPU ms/turn" for e in edges)
        + " | "
        + " | ".join(f"{e} ÷ {edges[0]}" for e in edges[1:])
        + " |",
        "|---|---|---:|" + "---:|---|---:|" * len(edges) + "---:|" * (len(edges) - 1),
    ]
    for database, scenario, level in sorted({k[:3] for k in groups}):
        line = [database, f"`{scenario}`", str(level)]
        medians = {}
        for edge in edges:
            runs = groups.get((database, scenario, level, edge), [])
            if not runs:
                line += ["–"] * 3
                continue
            c = medians[edge] = _median_cells(runs)
            spread = sorted(r.throughput for r in runs)
            line += [
                f"{_fmt(c.throughput)} ({_fmt(spread[0])}–{_fmt(spread[-1])})",
                f"{_fmt(c.p50_ms, 1)} / {_fmt(c.p99_ms, 1)}",
                _fmt(c.cpu_ms_per_turn, 2),
            ]
        first = medians.get(edges[0])
        for edge in edges[1:]:
            other = medians.get(edge)
            ok = first and other and first.throughput
            line.append(f"{other.throughput / first.throughput:.2f}" if ok else "–")  # type: ignore[union-attr]
        out.append("| " + " | ".join(line) + " |")
    failures = [c for c in cells if c.failed]
    if failures:
        out.append("\nCells with failed turns (first texts of the answers):")
        for c in failures:
            out.append(
                f"- {c.edge}/{c.database}/{c.scenario}@{c.concurrency}: {c.failed} {c.answers}"
            )
    return "\n".join(out)


def _cores(c: Cell) -> str:
    """Cores used over the window: the bot · PostgreSQL · the rig (load generator, fakes,
    connector, idle servers) · other processes on the machine (not this run's)."""
    k = c.cores
    return " · ".join(f"{k.get(role, 0):.2f}" for role in ("bot", "postgres", "rig", "others"))


def _print(text: str) -> None:
    print(text, flush=True)


def _save(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=1))
        _print(f"\n(figures written to {path})")


def _describe_machine() -> str:
    cpus = os.cpu_count()
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{cpus} CPUs ({model}), Python {sys.version.split()[0]}"


# ----- commands -------------------------------------------------------------------------------


async def matrix(args: argparse.Namespace) -> None:
    cells: list[Cell] = []
    with _rig(args) as r:
        targets: list[Target] = []
        if not args.no_floors:
            echo, echo_url = r.start("floor-echo", "sqlite://unused", "floor_echo_bot.py")
            targets.append(Target("echo", "-", [echo], [echo_url]))
            bare, bare_url = r.start("floor-bare", "sqlite://unused", "floor_bare_aiohttp.py")
            targets.append(Target("bare", "-", [bare], [bare_url]))
        urls = {}
        for database in args.databases:
            # The edges interleaved: every level runs each edge in turn on the same machine.
            for edge in args.edges:
                label = database if len(args.edges) == 1 else f"{database}-{edge}"
                name = "fusion_bench" if len(args.edges) == 1 else f"fusion_bench_{edge}"
                urls[label] = url = r.database(database, name=name)
                bot, bot_url = r.start(
                    f"bot-{label}", url, FUSION_SCHEDULER="true", FUSION_EDGE=edge
                )
                targets.append(Target("fusion", database, [bot], [bot_url], edge=edge))
        _print(f"machine: {_describe_machine()}; work folder {r.work}")
        async with r.generator(
            seconds=args.seconds,
            max_turns=args.max_turns,
        ) as gen:
            for round_no in range(args.rounds):
                for level in args.levels:
                    for target in targets:
                        scenarios = args.scenarios if target.name == "fusion" else ["echo"]
                        for scenario in scenarios:
                            cell = await gen.run_cell(target, scenario, level)
                            cell.round = round_no
                            cells.append(cell)
                            _print(
                                f"  {target.name:6} {target.database:8} {cell.scenario:8} "
                                f"c={level:<3} {cell.throughput:7.1f}/s p50 {cell.p50_ms:7.1f} "
                                f"p99 {cell.p99_ms:7.1f} ms cpu {cell.cpu_ms_per_turn:5.2f} "
                                f"ms/turn rss {cell.peak_rss_mib:5.0f} MiB ok {cell.ok} "
                                f"failed {cell.failed} cores {_cores(cell)}"
                            )
        for database, url in urls.items():
            _print(f"\n{database}: {json.dumps(harness.ledger_check(url, POOL))}")
    _print("\n" + tables(cells))
    _save(args.json, {"machine": _describe_machine(), "cells": [asdict(c) for c in cells]})


async def soak(args: argparse.Namespace) -> None:
    """`--turns` turns of a mix (allocate, card, usage), bot RSS sampled as it goes."""
    with _rig(args) as r:
        url = r.database(args.database)
        bot, bot_url = r.start(f"bot-{args.database}", url)
        target = Target("fusion", args.database, [bot], [bot_url])
        samples: list[tuple[int, float]] = []
        async with r.generator(
            seconds=10**9,
            max_turns=10**12,
            warmup_turns=5,
        ) as gen:
            done = [0]
            step = max(1, args.turns // 20)

            def progress(n: int) -> None:
                done[0] += n
                if done[0] % step == 0:
                    samples.append((done[0], bot.rss_mib()))

            samples.append((0, bot.rss_mib()))
            rounds = 3
            per_conversation = -(-args.turns // (len(SCENARIOS) * rounds * args.concurrency))
            cells: list[Cell] = []
            for _ in range(rounds):  # so that every scenario runs early, mid-way and late
                for scenario in SCENARIOS:
                    cells.append(
                        await gen.run_cell(
                            target,
                            scenario,
                            args.concurrency,
                            turns_each=per_conversation,
                            on_progress=progress,
                        )
                    )
            samples.append((done[0], bot.rss_mib()))
            peak = max(c.peak_rss_mib for c in cells)  # each cell's window has its own peak
        check = harness.ledger_check(url, POOL)
    total = sum(c.turns for c in cells)
    failed = sum(c.failed for c in cells)
    start = samples[1] if len(samples) > 2 else samples[0]
    middle = min(samples, key=lambda s: abs(s[0] - total // 2))
    end = samples[-1]
    _print(
        f"soak on {args.database}: {total} turns at concurrency {args.concurrency}, failed {failed}"
    )
    _print("| turns done | RSS MiB |\n|---:|---:|")
    for n, rss in samples:
        _print(f"| {n} | {rss:.1f} |")
    _print(
        f"\nRSS after the first {start[0]} turns {start[1]:.1f} MiB, at {middle[0]} "
        f"{middle[1]:.1f} MiB, at the end ({end[0]}) {end[1]:.1f} MiB; "
        f"peak {peak:.1f} MiB"
    )
    _print(f"ledger: {json.dumps(check)}")
    _save(args.json, {"samples": samples, "cells": [asdict(c) for c in cells], "ledger": check})


async def scale(args: argparse.Namespace) -> None:
    """The same load against one, then two bot processes sharing one PostgreSQL database.

    Scenarios: `allocate` spread over `--pools` products (allocations of one product queue
    for its row lock, whatever the number of processes: that is the capacity invariant at
    work), the same on one product, `usage` (reads only) and `card`. Then the ledger is read
    back: every pool within capacity, allocations = audited increments, no activity applied
    twice, `usage --json` and `audit verify` through the CLI.
    """
    with _rig(args) as r:
        url = r.database("postgres", "fusion_scale")
        first, first_url = r.start("bot-pg-1", url)
        second, second_url = r.start("bot-pg-2", url, FUSION_MIGRATE_ON_START="false")
        one = Target("fusion", "postgres", [first], [first_url])
        two = Target("fusion", "postgres", [first, second], [first_url, second_url])
        results: list[tuple[str, str, Cell]] = []
        pools = POOLS[: max(1, args.pools)]
        loads = [
            (f"allocate, {len(pools)} products", "allocate", pools),
            ("allocate, 1 product", "allocate", [POOL]),
            ("usage", "usage", [POOL]),
            (f"card, {len(pools)} products", "card", pools),
        ]
        async with r.generator(seconds=args.seconds, max_turns=args.max_turns) as gen:
            for round_no in range(args.rounds):
                for load, scenario, products in loads:
                    gen.traffic.pools = products
                    for label, target in (("1 process", one), ("2 processes", two)):
                        cell = await gen.run_cell(target, scenario, args.concurrency)
                        cell.round = round_no
                        results.append((load, label, cell))
                        _print(
                            f"  {load:22} {label:11}: {cell.throughput:6.1f}/s "
                            f"p50 {cell.p50_ms:6.1f} p99 {cell.p99_ms:6.1f} ms ok {cell.ok} "
                            f"failed {cell.failed} cores {_cores(cell)}"
                        )
        usage = harness.cli(url, "--json", "usage")
        verify = harness.cli(url, "audit", "verify")
        checks = [harness.ledger_check(url, pool) for pool in pools]
    _print(f"\nPostgreSQL, {args.concurrency} conversations, median of {args.rounds} rounds\n")
    _print(
        "| load | bot processes | turns/s | × one process | p50 ms | p99 ms | ok / failed "
        "| cores: bots · PostgreSQL · rig · others |"
    )
    _print("|---|---|---:|---:|---:|---:|---|---:|")
    for load, _, _ in loads:
        base = _median_cells([c for ld, lbl, c in results if ld == load and lbl == "1 process"])
        for label in ("1 process", "2 processes"):
            picked = _median_cells([c for ld, lbl, c in results if ld == load and lbl == label])
            _print(
                f"| {load} | {label} | {picked.throughput:.0f} | "
                f"{picked.throughput / base.throughput:.2f} | {picked.p50_ms:.1f} | "
                f"{picked.p99_ms:.1f} | {picked.ok} / {picked.failed} | {_cores(picked)} |"
            )
    try:
        listed = {p["name"]: p for p in json.loads(usage.stdout)}
    except (ValueError, TypeError, KeyError):
        listed = {}
    _print(f"\n`python -m bot --json usage` (exit {usage.returncode}), the pools:")
    for pool in pools:
        row = listed.get(pool, {})
        _print(f"  {pool}: capacity {row.get('capacity')}, allocated {row.get('allocated')}")
    _print(f"`python -m bot audit verify` (exit {verify.returncode}): {verify.stdout.strip()}")
    for check in checks:
        _print(f"ledger: {json.dumps(check)}")
    held = (
        all(
            c["within_capacity"]
            and c["allocated_equals_audit"]
            and not c["applied_twice"]
            and c["chain_intact"]
            and listed.get(c["product"], {}).get("allocated") == c["allocated"]
            for c in checks
        )
        and verify.returncode == 0
    )
    _print(f"invariants intact: {held}")
    _save(
        args.json,
        {
            "cells": [dict(asdict(c), load=ld, label=lbl) for ld, lbl, c in results],
            "ledger": checks,
            "usage": usage.stdout,
            "verify": verify.stdout,
            "invariants": held,
        },
    )


async def profile(args: argparse.Namespace) -> None:
    """py-spy samples the bot process while one scenario runs; prints where the time goes."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(harness.PYTHON).parent / "py-spy")
    with _rig(args) as r:
        url = r.database(args.database)
        bot, bot_url = r.start(f"bot-{args.database}", url)
        target = Target("fusion", args.database, [bot], [bot_url])
        out = Path(args.out or (r.work / "profile.txt"))
        async with r.generator(
            seconds=args.seconds,
            max_turns=10**9,
        ) as gen:
            await gen.run_cell(target, args.scenario, args.concurrency)  # warm
            recorder = await asyncio.create_subprocess_exec(
                spy,
                "record",
                "--pid",
                str(bot.pid),
                "--duration",
                str(int(args.seconds) + 2),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
                "--gil",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await asyncio.sleep(1)
            cell = await gen.run_cell(target, args.scenario, args.concurrency)
            await recorder.wait()
        _print(
            f"{args.scenario} on {args.database} at {args.concurrency}: {cell.throughput}/s, "
            f"{cell.cpu_ms_per_turn} ms CPU/turn"
        )
        _print(summarize_profile(out, args.top))


def summarize_profile(path: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [
            f.split(" (", 1)[0] + " (" + f.split(" (", 1)[1].split(":", 1)[0] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        total += n
        self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    lines = [f"{total} samples", "", "self:"]
    lines += [f"  {100 * n / total:5.1f} %  {f}" for f, n in self_time.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f} %  {f}" for f, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def _rig(args: argparse.Namespace) -> contextlib.AbstractContextManager[Rig]:
    return rig(
        args.keep,
        not args.http_connector,
        args.sqlite_params,
        args.postgres_params,
        dict(args.set),
    )


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", help="write every figure to this file")
        p.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
        p.add_argument(
            "--http-connector",
            action="store_true",
            help="plain-http Bot Connector fake (default: https, as in production)",
        )
        p.add_argument("--app", help="the app.py to start (default: this checkout's)")
        p.add_argument(
            "--sqlite-params",
            default="",
            help="query string for the SQLite DATABASE_URL, e.g. synchronous=NORMAL",
        )
        p.add_argument(
            "--postgres-params",
            default="",
            help="query string for the PostgreSQL DATABASE_URL, e.g. maxsize=20",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            type=_setting,
            metavar="NAME=VALUE",
            help="a setting for the bot processes (repeatable), e.g. FUSION_MAX_CONCURRENT_TURNS=0",
        )

    m = sub.add_parser("matrix", help="scenarios × databases × concurrency, with the floors")
    common(m)
    m.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    m.add_argument(
        "--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS + EXTRA_SCENARIOS
    )
    m.add_argument("--levels", nargs="+", type=int, default=list(LEVELS))
    m.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell")
    m.add_argument("--max-turns", type=int, default=5000, help="at most this many turns per cell")
    m.add_argument("--rounds", type=int, default=1, help="repeat the matrix; medians reported")
    m.add_argument("--no-floors", action="store_true")
    m.add_argument(
        "--edges",
        nargs="+",
        default=["botbuilder"],
        choices=["botbuilder", "agents"],
        help="the bot's FUSION_EDGE; several: side by side, cells alternating",
    )

    s = sub.add_parser("soak", help="memory over a long run")
    common(s)
    s.add_argument("--database", default="sqlite", choices=["sqlite", "postgres"])
    s.add_argument("--turns", type=int, default=20_000)
    s.add_argument("--concurrency", type=int, default=32)

    c = sub.add_parser("scale", help="one vs two bot processes on one PostgreSQL database")
    common(c)
    c.add_argument("--concurrency", type=int, default=64)
    c.add_argument("--seconds", type=float, default=8.0)
    c.add_argument("--max-turns", type=int, default=20000)
    c.add_argument("--rounds", type=int, default=2)
    c.add_argument("--pools", type=int, default=8, help="products the allocations spread over")

    p = sub.add_parser("profile", help="sample the bot with py-spy while one scenario runs")
    common(p)
    p.add_argument("--database", default="sqlite", choices=["sqlite", "postgres"])
    p.add_argument("--scenario", default="allocate", choices=SCENARIOS + EXTRA_SCENARIOS)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--out", help="keep py-spy's collapsed stacks here")

    args = parser.parse_args()
    if args.app:
        harness.APP = Path(args.app).resolve()
    started = time.monotonic()
    commands = {"matrix": matrix, "soak": soak, "scale": scale, "profile": profile}
    asyncio.run(commands[args.command](args))
    _print(f"\n(total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()

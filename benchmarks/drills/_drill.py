"""What the drills share: sending activities as the Bot Connector does and reading the answers.

A drill runs the bot as `python app.py` against the fakes (see `benchmarks/load.py`), sends
allocations, does something unkind to it, and prints what it saw. Every activity's answer is
sorted into one of a few kinds by the text of the card that came back (at the connector for a
message, in the HTTP response for a card's invoke):

- `applied`: "Allocated …" — done now;
- `already`: "Already done" / "This was already done" — done by an earlier delivery;
- `refused`: refused by the ledger (e.g. not enough left to allocate);
- `try-again`: the database is not answering, nothing was changed;
- `unconfirmed`: the database stopped answering while the change was being committed: it may
  or may not have been made (sending the same activity again tells which, and does it once);
- `no-answer`: the HTTP request failed or no reply came (Teams would deliver it again);
- `other`: anything else (a drill reports these as failures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.load import Generator, Rig, _invoke_title  # noqa: E402

KINDS = ("applied", "already", "refused", "try-again", "unconfirmed", "no-answer", "other")


def kind_of(text: str | None) -> str:
    if not text:
        return "no-answer"
    lowered = text.lower()
    if text.startswith("Allocated"):
        return "applied"
    if "already done" in lowered or "already sent" in lowered:
        return "already"
    if text.startswith("Try again") or "| Try again" in text or "not answering" in lowered:
        return "try-again"
    if "not sure it was saved" in lowered or "may or may not have been made" in lowered:
        return "unconfirmed"
    if text.startswith("Refused") or "| Refused" in text or "left to allocate" in lowered:
        return "refused"
    return "other"


@dataclass
class Delivery:
    """Everything one activity got, delivery after delivery."""

    activity: dict[str, Any]
    answers: list[str] = field(default_factory=list)  # kinds, in order
    texts: list[str] = field(default_factory=list)
    http: list[str] = field(default_factory=list)  # status or error per delivery
    sent_at: list[float] = field(default_factory=list)  # time.monotonic() per delivery

    @property
    def aid(self) -> str:
        return str(self.activity["id"])

    @property
    def final(self) -> str:
        return self.answers[-1] if self.answers else "no-answer"

    @property
    def took_effect(self) -> bool:
        """Its change is in the ledger, by what the bot said (now or on a later delivery)."""
        return any(a in ("applied", "already") for a in self.answers)


class Courier:
    """Delivers activities to the bot and collects what came back, per activity."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.deliveries: dict[str, Delivery] = {}

    async def deliver(
        self,
        url: Callable[[], str],
        activities: list[dict[str, Any]],
        concurrency: int,
        *,
        stop: asyncio.Event | None = None,
        pause: float = 0.0,
    ) -> list[Delivery]:
        """POST each activity (`concurrency` at a time, in order) until done or `stop` is set;
        returns the deliveries made. Answers are filled in by `collect`."""
        queue = list(reversed(activities))
        done: list[Delivery] = []

        async def worker() -> None:
            while queue and not (stop is not None and stop.is_set()):
                done.append(await self.deliver_one(url(), queue.pop()))
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done

    async def deliver_one(self, url: str, activity: dict[str, Any]) -> Delivery:
        """POST one activity once; its answer is noted (a message's by `collect`)."""
        delivery = self.deliveries.setdefault(str(activity["id"]), Delivery(activity))
        delivery.texts.append("")
        delivery.sent_at.append(time.monotonic())
        slot = len(delivery.texts) - 1
        delivery.answers.append("pending")
        delivery.http.append("")
        try:
            status, _, _, invoke = await self.gen.post(url, activity)
            delivery.http[slot] = str(status)
            if activity["type"] == "invoke":
                text = _invoke_title(invoke) if status == 200 else None
                delivery.texts[slot] = text or ""
                delivery.answers[slot] = kind_of(text)
            elif status not in (200, 201):
                delivery.answers[slot] = "lost"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            delivery.http[slot] = type(exc).__name__
            delivery.answers[slot] = "lost"
        return delivery

    async def collect(self) -> None:
        """Match the replies the connector received to the deliveries still pending (a
        message delivered twice gets two replies: the connector keeps them apart)."""
        replies = await self.gen.drain()
        for delivery in self.deliveries.values():
            waiting = [i for i, a in enumerate(delivery.answers) if a in ("pending", "lost")]
            found = [replies.pop(key) for key in _reply_keys(delivery.aid) if key in replies]
            found.sort()  # by arrival
            for i, reply in zip(waiting, found + [None] * len(waiting), strict=False):
                text = reply[1] if reply else None
                delivery.texts[i] = text or ""
                # The HTTP request failed: whatever the connector saw, Teams delivers it again.
                answer = delivery.answers[i]
                delivery.answers[i] = kind_of(text) if answer == "pending" else "no-answer"

    def unanswered(self) -> list[dict[str, Any]]:
        """Activities whose last delivery got no answer: what Teams would deliver again."""
        return [d.activity for d in self.deliveries.values() if d.final == "no-answer"]

    def finals(self) -> Counter[str]:
        return Counter(d.final for d in self.deliveries.values())

    def all_answers(self) -> Counter[str]:
        return Counter(a for d in self.deliveries.values() for a in d.answers)


def _reply_keys(aid: str) -> list[str]:
    """The connector keeps the first reply to an activity under its id, later ones as id#n."""
    return [aid] + [f"{aid}#{n}" for n in range(2, 10)]


def samples(courier: Courier) -> list[str]:
    """One example answer text of each kind seen."""
    example: dict[str, str] = {}
    for delivery in courier.deliveries.values():
        for kind, text in zip(delivery.answers, delivery.texts, strict=False):
            example.setdefault(kind, text)
    return [f"e.g. {kind}: {text[:150]!r}" for kind, text in sorted(example.items())]


def allocations(
    rig: Rig, product: str, count: int, conversations: int, tag: str, *, card_every: int = 0
) -> list[dict[str, Any]]:
    """`count` allocations of 1 unit of `product`, spread over conversations and subscriptions;
    every `card_every`-th one a form submission (Action.Execute invoke) instead of a message."""
    traffic = rig.traffic()
    out = []
    for i in range(count):
        w = i % conversations
        aid = f"{tag}{i:07d}"
        scenario = "card" if card_every and i % card_every == card_every - 1 else "allocate"
        activity = traffic.activity(scenario, f"a:drill-{tag}-{w}", aid, w)
        if scenario == "card":
            activity["value"]["action"]["data"]["product"] = product
        else:
            activity["text"] = activity["text"].replace("BENCH-POOL", product)
        out.append(activity)
    return out


def ledger(url: str, product: str) -> dict[str, Any]:
    """The ledger read back, plus the operator's view: `usage --json` and `audit verify`."""
    check = harness.ledger_check(url, product)
    usage = harness.cli(url, "--json", "usage", product)
    verify = harness.cli(url, "audit", "verify")
    try:
        listed = json.loads(usage.stdout)
        row = listed[0] if isinstance(listed, list) and listed else {}
    except ValueError:
        row = {}
    check["cli_usage_allocated"] = row.get("allocated")
    check["cli_usage_capacity"] = row.get("capacity")
    check["cli_audit_verify_exit"] = verify.returncode
    check["cli_audit_verify"] = (verify.stdout or verify.stderr).strip().splitlines()[:2]
    return check


def report(title: str, lines: list[str], checks: dict[str, bool], extra: dict[str, Any]) -> bool:
    """Print what the drill saw and whether each check held; True if all did."""
    print(f"\n== {title}")
    for line in lines:
        print(f"   {line}")
    ok = all(checks.values())
    for name, held in checks.items():
        print(f"   [{'ok' if held else 'FAILED'}] {name}")
    print(f"   => {'PASSED' if ok else 'FAILED'}")
    extra.setdefault("checks", checks)
    extra["ok"] = ok
    return ok


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", help="write what was seen to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--quick", action="store_true", help="a smaller run (for the tests)")
    return parser


def save(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=1, default=str))

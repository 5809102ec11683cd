"""The approval threshold is a rule of the ledger (SPEC §3, §5), not something a front door
remembers to ask for: a Teams message, a card (form) submission, the CLI and a handler called
directly all turn an allocation or a capacity change above FUSION_APPROVAL_THRESHOLD into a
pending approval request, and change nothing else. Both databases.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.auth.actor import Actor
from bot.auth.policy import OperatorPolicy
from bot.commands.ledger import AllocationArgs, CapacityArgs, allocate, product_capacity
from bot.commands.registry import Context
from bot.commands.reply import Approval
from bot.config import Settings
from bot.domain import db
from bot.domain.models import Allocation, ApprovalRequest, ApprovalStatus, Product
from bot.teams.render import VERB_FORM_SUBMIT
from tests.fakes import FakeBotConnector
from tests.support.teams_env import (
    dev_settings,
    message,
    running_bot,
    seed_ledger,
    texts,
    trust_fakes,
)

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD = 5
# Each change is more than THRESHOLD units and could be carried out now (TEAMS-SEATS: 10).
CHANGES = {
    "allocate": (
        "allocation.allocate",
        ["allocate", "6", "TEAMS-SEATS", "to", "ACME-01"],
        {"quantity": 6, "product": "TEAMS-SEATS", "subscription": "ACME-01"},
    ),
    "product capacity": (
        "product.capacity",
        ["product", "capacity", "TEAMS-SEATS", "20"],
        {"name": "TEAMS-SEATS", "capacity": 20},
    ),
}


@pytest.fixture(autouse=True)
def _trust_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    trust_fakes(monkeypatch)


async def assert_held(action: str) -> None:
    """One pending request for `action`, and the ledger as seeded."""
    [request] = await ApprovalRequest.all()
    assert (request.action, request.status) == (action, ApprovalStatus.PENDING)
    assert not await Allocation.exists()
    assert (await Product.get(name="TEAMS-SEATS")).capacity == 10


@pytest.mark.parametrize("name", list(CHANGES))
async def test_a_handler_called_directly(database: str, name: str) -> None:
    action, _, fields = CHANGES[name]
    await seed_ledger()
    ctx = Context(
        actor=Actor(object_id="oid-ops", name="Olivia Ops", source="chat", correlation_id="a-1"),
        settings=Settings(approval_threshold=THRESHOLD),
        policy=OperatorPolicy(),
    )  # no services at all: nothing for the door to forget
    if name == "allocate":
        reply = await allocate(ctx, AllocationArgs.model_validate(fields))
    else:
        reply = await product_capacity(ctx, CapacityArgs.model_validate(fields))
    assert isinstance(reply, Approval) and reply.status == "pending"
    await assert_held(action)


@pytest.mark.parametrize("door", ["chat", "card"])
@pytest.mark.parametrize("name", list(CHANGES))
async def test_teams_messages_and_cards(empty_db_url: str, door: str, name: str) -> None:
    action, words, fields = CHANGES[name]
    connector = FakeBotConnector(None).start()
    try:
        settings = dev_settings(empty_db_url, connector, approval_threshold=THRESHOLD)
        async with running_bot(settings) as bot:
            await seed_ledger()
            if door == "chat":
                before = len(connector.activities)
                assert (await bot.post(message(" ".join(words), connector.service_url))).status
                [sent] = (await connector.wait_for_async(before + 1))[before:]
                [attachment] = sent.attachments
                card = attachment["content"]
            else:
                data = {"verb": VERB_FORM_SUBMIT, "command": name, "form_id": "doors-form-01"}
                invoke = message("", connector.service_url)
                del invoke["text"]
                invoke.update(
                    type="invoke",
                    name="adaptiveCard/action",
                    value={
                        "action": {
                            "type": "Action.Execute",
                            "verb": VERB_FORM_SUBMIT,
                            "data": {**data, **fields},
                        }
                    },
                )
                posted = await bot.post(invoke)
                assert posted.status == 200
                card = posted.body["value"]
            assert any("waits for an approver" in t for t in texts(card)), texts(card)
            await assert_held(action)
    finally:
        connector.stop()


@pytest.mark.parametrize("name", list(CHANGES))
def test_the_command_line(empty_db_url: str, tmp_path: Path, name: str) -> None:
    action, words, _ = CHANGES[name]

    async def seeded(check: Any = None) -> None:
        await db.open_database(empty_db_url, migrate=False)
        try:
            await (check() if check else seed_ledger())
        finally:
            await db.close_database()

    asyncio.run(seeded())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "FUSION_"))},
        "DATABASE_URL": empty_db_url,
        "PYTHONPATH": str(ROOT),
        "FUSION_APPROVAL_THRESHOLD": str(THRESHOLD),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--json", *words],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "pending"
    asyncio.run(seeded(lambda: assert_held(action)))

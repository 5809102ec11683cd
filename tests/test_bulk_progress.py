"""In Teams, a bulk assignment shows its progress by updating one card as it goes: the card is
posted with the first progress report, updated in place, and the final answer replaces it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.commands import licensing as licensing_commands
from bot.domain import directory, ledger, licensing
from bot.domain.models import LicenseAssignment, ProductKind
from tests.fakes import FakeBotConnector
from tests.support.teams_env import (
    SEED,
    dev_settings,
    message,
    running_bot,
    texts,
    the_card,
    trust_fakes,  # noqa: F401  (autouse: the bot trusts the fakes' CA)
)

USERS = 30


@pytest.fixture
def connector() -> Iterator[FakeBotConnector]:
    with FakeBotConnector(None) as plain:  # local development: replies carry no token
        yield plain


async def seed_pack() -> list[str]:
    await ledger.add_customer(SEED, "Contoso Ltd")
    await ledger.add_subscription(SEED, "ACME-01", "Contoso Ltd")
    for name in ("TEAMS-PHONE", "AUDIO-CONF"):
        await ledger.add_product(SEED, name, ProductKind.LICENSE, 1000)
    await ledger.allocate(SEED, USERS, "TEAMS-PHONE", "ACME-01")
    # Five users short of audio conferencing: those five get none of the pack.
    await ledger.allocate(SEED, USERS - 5, "AUDIO-CONF", "ACME-01")
    await licensing.create_pack(SEED, "VOICE-PACK", ["TEAMS-PHONE", "AUDIO-CONF"])
    upns = [f"user{i:03d}@contoso.example" for i in range(USERS)]
    for upn in upns:
        await directory.add_account(SEED, upn, "ACME-01")
    return upns


async def test_pack_assignment_updates_its_card_as_it_goes(
    empty_db_url: str, connector: FakeBotConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(licensing_commands, "PROGRESS_INTERVAL_SECONDS", 0.0)
    async with running_bot(dev_settings(empty_db_url, connector)) as bot:
        upns = await seed_pack()  # through the app's own database connection
        text = f"pack assign VOICE-PACK to {','.join(upns)}"
        posted = await bot.post(message(text, connector.service_url))
        assert posted.status in (200, 201)
        await connector.wait_for_async(2, timeout=20, kind="update")
        # The ledger: 25 whole packs, 5 users with nothing.
        assert await LicenseAssignment.all().count() == 2 * (USERS - 5)

    sent = [a for a in connector.activities if a.kind in ("reply", "send", "update")]
    first, *updates = sent
    # Teams' typing indicator, if the turn took long enough before its first card, comes
    # first and once; never after the progress card is showing.
    assert len(connector.typing) <= 1 and all(t.at <= first.at for t in connector.typing)
    # One card posted, then updated in place: the same activity every time.
    assert first.kind in ("reply", "send")
    assert len(updates) >= 2 and {u.kind for u in updates} == {"update"}
    ids = {u.activity_id for u in updates}
    assert len(ids) == 1
    # Progress counts up while it runs; the last update is the final answer.
    running = [" ".join(texts(the_card(a))) for a in [first, *updates[:-1]]]
    assert any(f"of {USERS}" in t for t in running), running
    final = " ".join(texts(the_card(updates[-1])))
    assert "AUDIO-CONF" in final and "user000@contoso.example" in final, final


async def test_a_turn_that_takes_a_while_shows_the_typing_indicator_first(
    empty_db_url: str, connector: FakeBotConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.teams import bot as teams_bot

    # Every turn "takes a while" from its first instant: the indicator goes before the answer.
    monkeypatch.setattr(teams_bot, "TYPING_AFTER_SECONDS", 0.0)
    async with running_bot(dev_settings(empty_db_url, connector)) as bot:
        posted = await bot.post(message("products", connector.service_url))
        assert posted.status in (200, 201)
        await connector.wait_for_async(1, timeout=20)
    [typing] = connector.typing
    [answer] = [a for a in connector.activities if a.kind in ("reply", "send")]
    assert typing.at <= answer.at and typing.kind == "reply"
    assert not typing.activity.get("attachments") and answer.activity["attachments"]

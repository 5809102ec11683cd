"""The turn gate: at most N turns at once, the rest first come first served, and a turn that
waits on something slow gives its place up."""

from __future__ import annotations

import asyncio

import pytest

from bot.config import ConfigError, Settings
from bot.teams.gate import TurnGate


async def _turn(gate: TurnGate, name: str, log: list[str], work: asyncio.Event) -> None:
    async with gate.place():
        log.append(f"in {name}")
        await work.wait()
        log.append(f"out {name}")


async def test_at_most_limit_turns_hold_a_place_and_the_rest_enter_in_arrival_order():
    gate = TurnGate(2, hold=60)
    log: list[str] = []
    done = {n: asyncio.Event() for n in "abcde"}
    tasks = []
    for n in "abcde":
        tasks.append(asyncio.create_task(_turn(gate, n, log, done[n])))
        await asyncio.sleep(0)  # arrive in this order
    await asyncio.sleep(0.01)
    assert log == ["in a", "in b"]
    assert (gate.running, gate.queued) == (2, 3)

    done["b"].set()
    await asyncio.sleep(0.01)
    assert log[-2:] == ["out b", "in c"]
    done["a"].set()
    await asyncio.sleep(0.01)
    assert log[-2:] == ["out a", "in d"]
    for n in "cde":
        done[n].set()
    await asyncio.gather(*tasks)
    assert [e for e in log if e.startswith("in")] == ["in a", "in b", "in c", "in d", "in e"]
    assert (gate.running, gate.queued) == (0, 0)


async def test_a_newcomer_never_takes_a_place_someone_is_waiting_for():
    gate = TurnGate(1, hold=60)
    log: list[str] = []
    first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(_turn(gate, "a", log, first))
    await asyncio.sleep(0)
    b = asyncio.create_task(_turn(gate, "b", log, second))
    await asyncio.sleep(0)
    first.set()
    second.set()
    # c arrives in the same loop iteration as a's place is handed to b
    c = asyncio.create_task(_turn(gate, "c", log, third))
    third.set()
    await asyncio.gather(a, b, c)
    assert [e for e in log if e.startswith("in")] == ["in a", "in b", "in c"]


async def test_a_turn_waiting_on_something_slow_gives_its_place_to_the_next():
    gate = TurnGate(1, hold=0.05)
    log: list[str] = []
    slow, quick = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(_turn(gate, "slow", log, slow))
    await asyncio.sleep(0)
    b = asyncio.create_task(_turn(gate, "quick", log, quick))
    await asyncio.sleep(0.01)
    assert log == ["in slow"]  # within its hold time it keeps its place
    await asyncio.sleep(0.1)
    assert log == ["in slow", "in quick"]  # past it: the next one runs beside it
    quick.set()
    await b
    slow.set()
    await a
    # Giving up early and finishing later frees the place once, not twice.
    assert (gate.running, gate.queued) == (0, 0)
    assert gate._free == 1


async def test_a_waiting_turn_that_is_cancelled_leaves_the_queue_and_loses_no_place():
    gate = TurnGate(1, hold=60)
    log: list[str] = []
    hold, never, last = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(_turn(gate, "a", log, hold))
    await asyncio.sleep(0)
    b = asyncio.create_task(_turn(gate, "b", log, never))
    c = asyncio.create_task(_turn(gate, "c", log, last))
    await asyncio.sleep(0.01)
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    hold.set()
    last.set()
    await asyncio.gather(a, c)
    assert log == ["in a", "out a", "in c", "out c"]
    assert gate._free == 1


async def test_a_failing_turn_frees_its_place():
    gate = TurnGate(1, hold=60)
    with pytest.raises(RuntimeError):
        async with gate.place():
            raise RuntimeError("boom")
    async with gate.place():
        assert gate.running == 1
    assert gate.running == 0


async def test_no_limit_lets_everyone_in():
    gate = TurnGate(0)
    log: list[str] = []
    work = asyncio.Event()
    tasks = [asyncio.create_task(_turn(gate, str(i), log, work)) for i in range(50)]
    await asyncio.sleep(0.01)
    assert len(log) == 50
    work.set()
    await asyncio.gather(*tasks)


def test_the_limit_is_a_setting():
    assert Settings.from_env({}, env_file=None).max_concurrent_turns == 8
    env = {"FUSION_MAX_CONCURRENT_TURNS": "0"}
    assert Settings.from_env(env, env_file=None).max_concurrent_turns == 0
    for bad in ("-1", "many"):
        with pytest.raises(ConfigError, match="FUSION_MAX_CONCURRENT_TURNS"):
            Settings.from_env({"FUSION_MAX_CONCURRENT_TURNS": bad}, env_file=None)
    with pytest.raises(ValueError):
        TurnGate(-1)


# ----- in the running app -----------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 0])
async def test_the_running_app_lets_in_only_as_many_turns_as_the_setting_says(
    limit: int, empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Turn A's reply is held at the connector. With one place, turn B (another conversation)
    waits until A is done; with no limit it runs beside A and its reply arrives first."""
    from app import EDGE
    from tests.fakes import FakeBotConnector
    from tests.support.teams_env import HeldProxy, dev_settings, message, running_bot, trust_fakes

    trust_fakes(monkeypatch)
    with (
        FakeBotConnector(None) as connector,
        HeldProxy(connector.base_url, hold=lambda r: "conv-slow" in r.path) as relay,
    ):
        service_url = f"{relay.base_url}/amer/"
        settings = dev_settings(
            empty_db_url,
            connector,
            trusted_service_urls=(service_url,),
            max_concurrent_turns=limit,
        )
        async with running_bot(settings) as bot:
            bot.server.app[EDGE].gate.hold = 30  # A waits on purpose: it keeps its place
            a = asyncio.create_task(
                bot.post(message("whoami", service_url, conversation="conv-slow"))
            )
            await relay.wait_held()
            b = asyncio.create_task(bot.post(message("whoami", service_url, conversation="conv-b")))
            if limit:
                await asyncio.sleep(0.5)
                assert not b.done() and connector.activities == []
            else:
                assert (await asyncio.wait_for(b, 10)).status == 201
                assert [s.conversation_id for s in connector.activities] == ["conv-b"]
            relay.release()
            assert (await asyncio.wait_for(a, 10)).status == 201
            assert (await asyncio.wait_for(b, 10)).status == 201
            order = [s.conversation_id for s in await connector.wait_for_async(2)]
            assert order == (["conv-slow", "conv-b"] if limit else ["conv-b", "conv-slow"])

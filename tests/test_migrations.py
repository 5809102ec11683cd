"""The migrations describe exactly the models: a model change without its migration fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from tortoise.cli.cli import tortoise_cli_context
from tortoise.exceptions import IntegrityError
from tortoise.migrations.autodetector import MigrationAutodetector

from bot.domain.change import Origin
from bot.domain.db import tortoise_config
from bot.domain.models import NumberState, PhoneNumber
from tests.support.ledger_state import one_user_with_a_number


async def test_models_and_migrations_agree(tmp_path: Path) -> None:
    config = tortoise_config(f"sqlite://{tmp_path / 'detect.sqlite3'}")
    async with tortoise_cli_context(config) as ctx:
        assert ctx.apps is not None
        # Tortoise's own `makemigrations` check, without writing any file.
        pending = await MigrationAutodetector(ctx.apps, config["apps"]).changes()
    assert not pending, (
        "bot/domain/models.py differs from its migrations; run `make migrations`: "
        + ", ".join(w.name for w in pending)
    )


@pytest.mark.usefixtures("database")
async def test_one_number_per_account_is_held_by_the_schema_too() -> None:
    """The unique index on phone_number.holder_id (migration 0009) that models.PhoneNumber
    declares: a second number for the same account is refused by the database itself, which
    numbers._give maps to "was given another number at the same moment"."""
    holder = await one_user_with_a_number(Origin(actor_id="t", actor_name="T", source="cli"))
    with pytest.raises(IntegrityError):
        await PhoneNumber.filter(e164="+442071230001").update(
            state=NumberState.ASSIGNED, holder_id=holder
        )
    assert await PhoneNumber.filter(holder_id=holder).count() == 1

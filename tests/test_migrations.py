"""The migrations describe exactly the models: a model change without its migration fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from tortoise.cli.cli import tortoise_cli_context
from tortoise.exceptions import IntegrityError
from tortoise.migrations.autodetector import MigrationAutodetector

from bot.domain import directory, ledger, numbers
from bot.domain.change import Origin
from bot.domain.db import tortoise_config
from bot.domain.models import NumberState, PhoneNumber, ProductKind


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
    origin = Origin(actor_id="t", actor_name="T", source="cli")
    await ledger.add_customer(origin, "Contoso Ltd")
    await ledger.add_subscription(origin, "ACME-01", "Contoso Ltd")
    await ledger.add_product(origin, "NUMBERS-GB-GEO", ProductKind.NUMBERS, 10, country="GB")
    await ledger.add_product(origin, "TEAMS-SEATS", ProductKind.TEAMS_SEATS, 10)
    await ledger.allocate(origin, 10, "NUMBERS-GB-GEO", "ACME-01")
    await ledger.allocate(origin, 10, "TEAMS-SEATS", "ACME-01")
    await numbers.add_numbers(origin, "+442071230000-+442071230001")
    await directory.add_account(origin, "user0@contoso.com", "ACME-01")
    await numbers.assign_number(origin, "+442071230000", "user0@contoso.com")
    holder = (await PhoneNumber.get(e164="+442071230000")).holder_id
    with pytest.raises(IntegrityError):
        await PhoneNumber.filter(e164="+442071230001").update(
            state=NumberState.ASSIGNED, holder_id=holder
        )
    assert await PhoneNumber.filter(holder_id=holder).count() == 1

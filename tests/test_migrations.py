"""The migrations describe exactly the models: a model change without its migration fails here."""

from __future__ import annotations

from pathlib import Path

from tortoise.cli.cli import tortoise_cli_context
from tortoise.migrations.autodetector import MigrationAutodetector

from bot.domain.db import tortoise_config


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

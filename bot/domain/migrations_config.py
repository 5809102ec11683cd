"""Configuration for Tortoise's own CLI (`make migrations` uses it):

tortoise -c bot.domain.migrations_config.TORTOISE_ORM makemigrations
"""

import os

from bot.domain.db import tortoise_config

TORTOISE_ORM = tortoise_config(os.environ.get("DATABASE_URL", "sqlite://fusion.sqlite3"))

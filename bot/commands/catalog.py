"""Imports every command module so that each registers its commands."""

from bot.commands import general, ledger  # noqa: F401
from bot.commands import approvals  # noqa: F401
from bot.commands import sync  # noqa: F401
from bot.commands import digests  # noqa: F401
from bot.commands import directory, licensing, numbers, trunks  # noqa: F401

"""Imports every command module so that each registers its commands."""

from bot.commands import (  # noqa: F401  # noqa: F401
    approvals,  # noqa: F401
    digests,  # noqa: F401
    directory,
    general,
    ledger,
    licensing,
    numbers,
    provisioning,
    reconcile,
    sync,  # noqa: F401
    trunks,
)

"""Where the data files the bot reads at run time are, in a checkout and once installed.

The card templates live in the repository's top-level `cards/` folder (data, not code); the
wheel carries them inside the package as `bot/cards/` (pyproject.toml), so an installed bot
needs no checkout.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def cards_folder() -> Path:
    """The Adaptive Card templates: `bot/cards/` when installed, else the checkout's `cards/`."""
    packaged = _PACKAGE / "cards"
    return packaged if packaged.is_dir() else _PACKAGE.parent / "cards"

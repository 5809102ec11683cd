"""`python app.py`: the bot's web server, run from a checkout (installed: `fusion-bot`).

The server itself lives in `bot/app.py` so that the installed package carries it.
"""

from bot.app import BACKGROUND_TASKS, EDGE, HTTP, SETTINGS, create_app, main

__all__ = ["BACKGROUND_TASKS", "EDGE", "HTTP", "SETTINGS", "create_app", "main"]

if __name__ == "__main__":
    raise SystemExit(main())

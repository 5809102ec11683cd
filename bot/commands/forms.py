"""Form cards: a mutating command typed without arguments opens a form with the same fields."""

from __future__ import annotations

import secrets

from bot.commands.registry import CommandSpec, Context
from bot.commands.reply import Form


async def build_form(spec: CommandSpec, ctx: Context) -> Form:
    return Form(
        title=spec.summary,
        command=spec.name,
        usage="\n".join(spec.usages),
        fields=list(spec.form),
        # One id per form shown: submitting the same form twice has one effect.
        form_id=secrets.token_urlsafe(12),
    )

"""The single gate every command passes through, from chat, a card or the CLI.

text or card data → command → tenant check → access check → typed arguments → handler → Reply.
Errors become replies: a malformed command gets what is wrong and its usage, a refused change
what rule it broke, an outage a "try again" — never a stack trace.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bot.commands import catalog as _catalog  # noqa: F401  (registers every command)
from bot.commands.args import describe_errors
from bot.commands.grammar import Parsed, UsageError, check_words, match, tokenize
from bot.commands.registry import REGISTRY, Access, CommandSpec, Context, find
from bot.commands.reply import Changed, Error, Form, Message, Reply
from bot.commands.words import when as moment_said
from bot.domain.change import OUTAGE
from bot.domain.db import is_outage
from bot.domain.errors import (
    DomainError,
    Duplicate,
    InvalidInput,
    NotFound,
    Unavailable,
    Unconfirmed,
    did_you_mean,
)

if TYPE_CHECKING:
    from bot.auth.actor import Actor

log = logging.getLogger("bot.commands")


async def run_text(text: str, ctx: Context) -> Reply:
    """Run one typed command."""
    try:
        tokens = tokenize(text)
    except UsageError as exc:
        return Error(title="Could not read that", text=exc.message, code="usage")
    return await run_words(tokens, ctx)


async def run_words(tokens: list[str], ctx: Context) -> Reply:
    """Run a command already split into words (the CLI gets them from the shell)."""
    try:
        check_words(tokens)
    except UsageError as exc:
        return Error(title="Could not read that", text=exc.message, code="usage")
    if not tokens:
        return Error(title="Nothing to do", text="Type `help` to see the commands.", code="usage")
    spec = find(tokens)
    if spec is None:
        return _unknown(tokens)

    refusal = await authorize(spec, ctx)
    if refusal is not None:
        return refusal

    rest = tokens[len(spec.pattern.verb) :]
    if not rest and spec.mutating and spec.form:
        return await open_form(spec, ctx)
    try:
        parsed = match(spec.pattern, rest, spec.name)
    except UsageError as exc:
        return usage_error(spec, exc.message)
    return await _run(spec, _fields(spec, parsed), ctx)


async def run_fields(name: str, data: dict[str, Any], ctx: Context) -> Reply:
    """Run a command from a card submission: `data` is untrusted client data."""
    spec = REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        return Error(
            title="Unknown action", text="This card asks for an action the bot does not have."
        )
    refusal = await authorize(spec, ctx)
    if refusal is not None:
        return refusal
    return await _run(spec, data, ctx, from_form=True)


async def authorize(spec: CommandSpec, ctx: Context) -> Reply | None:
    """The one authorization gate. Returns a refusal, or None to go ahead."""
    return await refusal(spec.access, ctx)


async def refusal(access: Access, ctx: Context) -> Error | None:
    """Why the caller may not have `access` (None: they may). The gate's one decision, also
    asked where a card shows what only some may see."""
    tenant = ctx.policy.tenant_allowed(ctx.actor)
    if not tenant.allowed:
        return Error(title="Not available here", text=tenant.reason, code="forbidden")
    if access is Access.PUBLIC:
        return None
    decision = (
        await ctx.policy.is_approver(ctx.actor)
        if access is Access.APPROVER
        else await ctx.policy.is_admin(ctx.actor)
    )
    if not decision.allowed:
        # Says nothing about the data: not even whether the names in the command exist.
        return Error(title="Not allowed", text=decision.reason, code="forbidden")
    return None


async def open_form(spec: CommandSpec, ctx: Context) -> Reply:
    from bot.commands.forms import build_form

    return await build_form(spec, ctx)


def _fields(spec: CommandSpec, parsed: Parsed) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for word, words in parsed.values.items():
        data[spec.field_for(word)] = words
    for option, setting in parsed.options.items():
        data[spec.field_for(option)] = setting
    return data


async def _run(
    spec: CommandSpec, data: dict[str, Any], ctx: Context, *, from_form: bool = False
) -> Reply:
    if not isinstance(data, dict):
        return usage_error(spec, "The submitted data is not a set of fields.")
    try:
        args = spec.args.model_validate(data)
    except ValidationError as exc:
        message = describe_errors(exc, spec.labels())
        if from_form and spec.form:
            form = await open_form(spec, ctx)
            if isinstance(form, Form):
                form.errors = _form_errors(exc)
                form.title = f"{spec.name}: please correct the form"
                return form
        return usage_error(spec, message)
    try:
        reply = await spec.handler(ctx, args)
        if isinstance(reply, Changed) and reply.dry_run and spec.form:
            # What "Go ahead" sends back: the same fields, for real (every rule re-checked).
            fields = {k: v for k, v in data.items() if k != "dry_run"}
            reply.go_ahead = (spec.name, fields)
            # The values typed stay in a form under the preview, to change and try again.
            from bot.commands.forms import build_form

            reply.form = await build_form(spec, ctx, fields)
        return reply
    except Duplicate as exc:
        return Message(
            title="Already done",
            text=exc.message,
            data={"duplicate": True, "outcome": exc.outcome},
            facts=[("Request", exc.key)],
        )
    except NotFound as exc:
        return Error(
            title="Not found",
            text=exc.message,
            code=exc.code,
            suggestions=exc.suggestions,
        )
    except InvalidInput as exc:
        return usage_error(spec, exc.message)
    except Unavailable as exc:
        return Error(title="Try again", text=exc.message, code=exc.code)
    except Unconfirmed as exc:
        return Error(title="Not sure it was saved", text=exc.message, code=exc.code)
    except DomainError as exc:
        text = exc.said(lambda at: moment_said(at, ctx.actor.timezone))
        return Error(title="Refused", text=text, code=exc.code)
    except Exception as exc:
        return failed(exc, "command", f"command {spec.name}", ctx.actor)


def failed(exc: Exception, what: str, where: str, actor: Actor) -> Error:
    """The answer to an exception nothing else answered (one transaction: nothing half-done):
    "try again" when the database is out, else "something went wrong" with the reference that
    finds the logged stack trace."""
    if is_outage(exc):
        log.warning("%s: database unavailable: %r", where, exc)
        return Error(title="Try again", text=OUTAGE, code="unavailable")
    log.error("%s failed", where, exc_info=exc)
    return Error(
        title="Something went wrong",
        text=f"The {what} could not be completed and nothing was changed. "
        f"Reference: {actor.correlation_id or '-'}.",
        code="internal",
    )


def _form_errors(exc: ValidationError) -> dict[str, str]:
    # A model-level error (no field) is keyed "": the form shows it above the fields.
    return {
        (str(e["loc"][0]) if e["loc"] else ""): e["msg"].removeprefix("Value error, ")
        for e in exc.errors()
    }


def usage_error(spec: CommandSpec, message: str) -> Error:
    return Error(
        title=f"Usage: {spec.name}",
        text=message,
        usage="\n".join(spec.usages),
        code="usage",
    )


def _unknown(tokens: list[str]) -> Error:
    typed = " ".join(tokens[:2]).lower()
    verbs = sorted(REGISTRY)
    guesses = did_you_mean(typed, verbs) or did_you_mean(tokens[0].lower(), verbs)
    text = f"There is no command {tokens[0]!r}."
    if guesses:
        text += " Did you mean " + " or ".join(f"`{g}`" for g in guesses) + "?"
    else:
        text += " Type `help` to see the commands."
    return Error(title="Unknown command", text=text, code="unknown-command", suggestions=guesses)

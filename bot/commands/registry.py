"""The command table: every command, its usage line (its grammar), who may run it, its handler.

Handlers are registered with `@command(...)`; a command matches exactly one entry (the
longest verb that the text starts with) or it is an error — never a fuzzy guess.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from bot.commands.args import Args
from bot.commands.grammar import Pattern, compile_usage
from bot.commands.reply import Approval, FormField, Progress, Reply

if TYPE_CHECKING:
    from bot.auth.actor import Actor
    from bot.auth.graph import GraphClient
    from bot.auth.policy import Policy
    from bot.config import Settings


class Access(Enum):
    PUBLIC = "public"  # help, whoami
    ADMIN = "admin"  # group administrators
    APPROVER = "approver"  # members of the approver groups


@dataclass(frozen=True)
class Services:
    """What a front door lends the handlers, each optional: a handler does without it where
    the door has none. Rules of the ledger (approvals among them) are never a service."""

    # Microsoft Graph, for `users sync` (only where the bot has its app credentials).
    graph: GraphClient | None = None
    # Shows a bulk command's progress while it runs (Teams: the card, updated in place).
    progress: Callable[[Progress], Awaitable[None] | None] | None = None
    # Posts a copy of a new approval request to the approvals channel.
    approvals_channel: Callable[[Approval], Awaitable[None]] | None = None
    # Customers' tenants in Microsoft Graph (license units, reconcile): a
    # bot.provisioning.tenant_graph.TenantGraph; without it a command opens its own.
    tenant_graph: Any = None
    # How long a bulk license command waits for Microsoft 365's per-user answers (set where the
    # process runs the provisioning worker; 0: answer at once).
    m365_wait_seconds: float = 0.0


@dataclass
class Context:
    """What a handler gets besides its arguments."""

    actor: Actor
    settings: Settings
    policy: Policy
    services: Services = field(default_factory=Services)


Handler = Callable[[Context, Any], Awaitable[Reply]]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    usage: str
    summary: str
    args: type[Args]
    handler: Handler
    access: Access = Access.ADMIN
    mutating: bool = False
    # Placeholder or option in the usage line → field of `args` (default: lower-cased name).
    fields: dict[str, str] = field(default_factory=dict)
    # Extra usage lines shown in help (when one grammar line covers several forms).
    more_usage: tuple[str, ...] = ()
    # Form fields for the card opened when the command is typed without arguments.
    form: tuple[FormField, ...] = ()
    pattern: Pattern = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", compile_usage(self.usage))

    @property
    def usages(self) -> list[str]:
        return [self.usage, *self.more_usage]

    def field_for(self, word: str) -> str:
        if word in self.fields:
            return self.fields[word]
        return word.lstrip("-").lower().replace("-", "_")

    def labels(self) -> dict[str, str]:
        """Field name → how the usage line names it, for error messages."""
        names = [s.word for s in _walk(self.pattern.slots) if s.kind in {"value", "rest"}]
        names += sorted(self.pattern.value_options | self.pattern.flag_options)
        return {self.field_for(n): n for n in names}


def _walk(slots: Any) -> Any:
    for s in slots:
        if s.kind == "optional":
            yield from _walk(s.items)
        else:
            yield s


REGISTRY: dict[str, CommandSpec] = {}


def command(
    name: str,
    usage: str,
    summary: str,
    args: type[Args],
    *,
    access: Access = Access.ADMIN,
    mutating: bool = False,
    fields: dict[str, str] | None = None,
    more_usage: tuple[str, ...] = (),
    form: tuple[FormField, ...] = (),
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        full_usage = usage
        if mutating and "--dry-run" not in usage:
            full_usage = f"{usage} [--dry-run]"
        if name in REGISTRY:
            raise ValueError(f"command {name!r} registered twice")
        spec = CommandSpec(
            name=name,
            usage=full_usage,
            summary=summary,
            args=args,
            handler=handler,
            access=access,
            mutating=mutating,
            fields=fields or {},
            more_usage=more_usage,
            form=form,
        )
        if spec.pattern.verb != tuple(name.split()):
            raise ValueError(f"usage of {name!r} must start with its verb: {usage!r}")
        REGISTRY[name] = spec
        return handler

    return register


def find(words: list[str]) -> CommandSpec | None:
    """The command whose verb is the longest prefix of `words` (case-insensitive)."""
    lowered = [w.lower() for w in words]
    for size in (3, 2, 1):
        spec = REGISTRY.get(" ".join(lowered[:size]))
        if spec is not None and len(lowered) >= size:
            return spec
    return None

"""What a handler answers. The Teams renderer turns a Reply into an Adaptive Card, the CLI into
text or JSON; handlers never format for one front door.

Every reply has `data`: the stable, documented JSON shape the CLI prints with `--json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    title: str
    data: Any = None
    ok: bool = True


@dataclass
class Message(Reply):
    """Plain information: a title, a text, and optional facts (label → value)."""

    text: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Record:
    """One entry of a list as people read it: a title line, a detail line under it, and the
    group it belongs to (a heading, shown once before the first record of the group)."""

    title: str
    detail: str = ""
    group: str = ""
    tone: str = ""  # "" | "good" | "warning" | "attention"


@dataclass
class Table(Reply):
    """A list. `rows` hold display strings; `data` the typed values for --json. `records`,
    when a handler gives them, say each row in words (cards show one block per record; the
    CLI prints the rows)."""

    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    records: list[Record] | None = None
    # Paging: the command to show the next page, if there is one.
    page: int = 1
    pages: int = 1
    next_command: str | None = None


@dataclass
class Changed(Reply):
    """A change carried out (or previewed with --dry-run): before → after per field."""

    text: str = ""
    target: str = ""
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    dry_run: bool = False
    #: For a dry run: the command and the fields that carry out exactly the change shown
    #: (set by the dispatcher; the card's "Go ahead" button sends them back).
    go_ahead: tuple[str, dict[str, Any]] | None = None
    #: For a dry run: the command's form with the values it ran with, to change and run again.
    form: Form | None = None


@dataclass
class Error(Reply):
    """A refusal or a malformed command: what is wrong, and how the command is used."""

    text: str = ""
    usage: str | None = None
    code: str = "invalid"
    suggestions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ok = False
        if self.data is None:
            self.data = {"error": self.code, "message": self.text, "usage": self.usage}


@dataclass
class FormField:
    name: str
    label: str
    kind: str = "text"  # text | number | choice | toggle
    required: bool = True
    choices: list[tuple[str, str]] = field(default_factory=list)  # (title, value)
    placeholder: str = ""
    value: str | None = None


@dataclass
class Form(Reply):
    """A form for a mutating command typed without arguments; submitting it runs the command."""

    command: str = ""
    usage: str = ""
    fields: list[FormField] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    form_id: str = ""


@dataclass
class Approval(Reply):
    """An approval request (pending or decided), shown as a card with Approve / Reject."""

    request_id: str = ""
    #: What people type and read aloud (A-17); buttons send `request_id`.
    short_id: str = ""
    summary: str = ""
    requester: str = ""
    status: str = "pending"
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    decided_by: str | None = None
    decided_at: str | None = None
    expires_at: str | None = None
    reason: str | None = None
    text: str = ""


@dataclass
class Progress(Reply):
    """A bulk operation: per item what succeeded and what did not (updated as it goes in Teams)."""

    done: int = 0
    total: int = 0
    succeeded: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (item, why)
    finished: bool = True
    text: str = ""


@dataclass
class Usage(Reply):
    """The `usage` report: per product (a `bot.domain.usage.ProductUsage`) capacity,
    allocated, unallocated, in use, free and utilisation, and its subscriptions."""

    products: list[Any] = field(default_factory=list)
    note: str = ""
    page: int = 1
    pages: int = 1
    next_command: str | None = None


@dataclass
class Digest(Message):
    """The usage digest (SPEC §6). `report` is a `bot.domain.digests.DigestReport`; the card
    shows its summary lists and page `page` of its products (`page_size` a page). `text` and
    `facts` carry the same summary in plain words for front doors without the digest layout."""

    report: Any = None
    page: int = 1
    pages: int = 1
    page_size: int = 25
    next_command: str | None = None

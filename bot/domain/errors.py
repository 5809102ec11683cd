"""Domain errors: each carries a message fit to show an administrator."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

#: Where a message says its moment (a control character: no name or input can contain it).
AT = "\x00at\x00"


class DomainError(Exception):
    """A refused request. Nothing was changed.

    A message may name one moment, written `AT` and given as `at`: each door says it in its
    reader's time zone through `said`; `message` says it in UTC.
    """

    code = "refused"

    def __init__(self, message: str, *, at: datetime | None = None) -> None:
        self.template = message
        self.at = at
        self.message = message if at is None else message.replace(AT, _in_utc(at))
        super().__init__(self.message)

    def said(self, moment: Callable[[datetime], str]) -> str:
        """The message with its moment written by `moment` (e.g. in the reader's zone)."""
        if self.at is None:
            return self.message  # as set, even if changed after (reconcile.gone)
        return self.template.replace(AT, moment(self.at))


def _in_utc(at: datetime) -> str:
    at = at.astimezone(UTC)
    return f"{at.day} {at:%b %Y %H:%M} UTC"


class InvalidInput(DomainError):
    code = "invalid"


class NotFound(DomainError):
    code = "not-found"

    def __init__(self, kind: str, name: str, candidates: Iterable[str] = ()) -> None:
        self.kind = kind
        self.name = name
        self.suggestions = did_you_mean(name, candidates)
        message = f"No {kind} named {name!r}."
        if self.suggestions:
            message += " Did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        super().__init__(message)


class Conflict(DomainError):
    """The change would break an invariant of the ledger."""

    code = "conflict"


class AlreadyExists(Conflict):
    code = "exists"


class Duplicate(DomainError):
    """The same request (activity id or card submission) was already carried out."""

    code = "duplicate"

    def __init__(self, key: str, outcome: object) -> None:
        super().__init__("This request was already carried out; nothing was changed again.")
        self.key = key
        self.outcome = outcome


class Unavailable(DomainError):
    """A dependency (database, Graph) is down; the user should try again."""

    code = "unavailable"


class Unconfirmed(DomainError):
    """The database stopped answering while a change was being committed: it may or may not
    have been made (the one case where "nothing was changed" cannot be promised)."""

    code = "unconfirmed"


class Forbidden(DomainError):
    code = "forbidden"


def did_you_mean(name: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    pool = list(candidates)
    by_lower = {c.lower(): c for c in pool}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=limit, cutoff=0.6)
    return [by_lower[c] for c in close]

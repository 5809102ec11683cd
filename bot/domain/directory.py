"""Teams users and resource accounts (auto attendants, call queues) of a subscription.

A UPN is case-insensitive (as in Entra ID): it is stored as given and looked up by lower(upn),
which a unique expression index (migration 0004) keeps to one account per UPN in any case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.functions import Lower
from tortoise.queryset import QuerySet

from bot.domain.change import Origin, change
from bot.domain.errors import AlreadyExists, InvalidInput, NotFound
from bot.domain.ledger import Outcome, find_subscription
from bot.domain.models import Account, AccountKind, LicenseAssignment, PhoneNumber, Subscription
from bot.domain.naming import check_free_text
from bot.domain.paging import Page, window

# Entra ID: a UPN is at most 113 characters, its local part at most 64; ASCII only.
MAX_UPN = 113
MAX_LOCAL = 64
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_UPN = re.compile(rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>(?:{_LABEL}\.)+[A-Za-z]{{2,63}})")
# How many accounts a "did you mean" looks through (near the name typed, never the whole directory).
_SUGGESTION_POOL = 500


def check_upn(upn: str) -> str:
    """A UPN shaped like an email address (returned trimmed, its case kept)."""
    text = upn.strip()
    if not text:
        raise InvalidInput("The UPN is empty.")
    if len(text) > MAX_UPN:
        raise InvalidInput(
            f"The UPN is {len(text)} characters long; at most {MAX_UPN} are allowed."
        )
    m = _UPN.fullmatch(text)
    if m is None:
        raise InvalidInput(
            f"{text!r} is not a UPN: it must look like an email address, e.g. alice@contoso.com."
        )
    if len(m.group("local")) > MAX_LOCAL:
        raise InvalidInput(f"The part of {text!r} before @ is longer than {MAX_LOCAL} characters.")
    return text


def by_upn(upn: str) -> QuerySet[Account]:
    """Accounts whose UPN is `upn` in any case (served by the lower(upn) index)."""
    return Account.annotate(upn_lower=Lower("upn")).filter(upn_lower=upn.strip().lower())


def describe(account: Account) -> str:
    kind = (
        "Teams user"
        if account.kind is AccountKind.USER
        else f"{account.kind.value} resource account"
    )
    return f"{kind} {account.upn}"


async def find_account(upn: str, conn: BaseDBAsyncClient | None = None) -> Account:
    """The account with this UPN (any case) and its subscription, or NotFound with the nearest
    UPNs."""
    account = await by_upn(upn).select_related("subscription").using_db(conn).first()
    if account is not None:
        return account
    local, _, domain = upn.strip().lower().partition("@")
    near = Q(upn__istartswith=local[:2]) if local else Q()
    if domain:
        near |= Q(upn__iendswith=f"@{domain}")
    candidates = (
        await Account.filter(near)
        .using_db(conn)
        .limit(_SUGGESTION_POOL)
        .values_list("upn", flat=True)
    )
    raise NotFound("user or resource account", upn.strip(), [str(c) for c in candidates])


async def add_account(
    origin: Origin,
    upn: str,
    subscription_code: str,
    kind: AccountKind = AccountKind.USER,
    display_name: str | None = None,
    *,
    dry_run: bool = False,
) -> Outcome:
    """Add a Teams user or a resource account to a subscription."""
    key = check_upn(upn)
    name = check_free_text(display_name, "display name", 256) if display_name is not None else ""
    async with change(origin, dry_run=dry_run) as ch:
        sub = await find_subscription(subscription_code, ch.conn)
        existing = await by_upn(key).using_db(ch.conn).prefetch_related("subscription").first()
        if existing is not None:
            raise AlreadyExists(
                f"{describe(existing)} already exists in {existing.subscription.code} "
                "(a UPN is the same whatever its case)."
            )
        try:
            await Account.create(
                using_db=ch.conn, upn=key, display_name=name, kind=kind, subscription_id=sub.id
            )
        except IntegrityError as exc:
            raise AlreadyExists(f"{key} was added by someone else at the same moment.") from exc
        after = {"upn": key, "name": name, "kind": kind.value, "subscription": sub.code}
        ch.record("account.add", f"account:{key}", None, after)
    what = "Teams user" if kind is AccountKind.USER else f"Resource account ({kind.value})"
    return Outcome("account.add", key, None, after, dry_run, f"{what} {key} added to {sub.code}.")


@dataclass
class AccountRow:
    upn: str
    name: str
    kind: str
    subscription: str
    number: str | None
    licenses: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "upn": self.upn,
            "name": self.name,
            "kind": self.kind,
            "subscription": self.subscription,
            "number": self.number,
            "licenses": self.licenses,
        }


async def list_accounts(
    subscription_code: str | None = None,
    kind: AccountKind | None = None,
    *,
    page: int = 1,
    size: int = 25,
) -> Page[AccountRow]:
    """One page of accounts (by UPN) with the number and licenses each holds, and the total."""
    query = Account.all()
    if subscription_code is not None:
        sub: Subscription = await find_subscription(subscription_code)
        query = query.filter(subscription_id=sub.id)
    if kind is not None:
        query = query.filter(kind=kind)
    total = await query.count()
    page, pages, offset = window(total, page, size)
    accounts = (
        await query.order_by("upn").offset(offset).limit(size).prefetch_related("subscription")
    )
    ids = [a.id for a in accounts]
    numbers = (
        dict(await PhoneNumber.filter(holder_id__in=ids).values_list("holder_id", "e164"))
        if ids
        else {}
    )
    licenses: dict[int, list[str]] = {}
    if ids:
        for account_id, name in (
            await LicenseAssignment.filter(account_id__in=ids)
            .order_by("product__name")
            .values_list("account_id", "product__name")
        ):
            licenses.setdefault(account_id, []).append(name)
    rows = [
        AccountRow(
            upn=a.upn,
            name=a.display_name,
            kind=a.kind.value,
            subscription=a.subscription.code,
            number=numbers.get(a.id),
            licenses=licenses.get(a.id, []),
        )
        for a in accounts
    ]
    return Page(total, page, pages, rows)

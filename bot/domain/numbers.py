"""The phone-number inventory: adding numbers, reserving, assigning, releasing, quarantine.

A number's life: available → reserved (held by a subscription) → assigned (held by a Teams
user or resource account) → quarantined (released; for `quarantine_days`) → available.
A reservation that is given back without ever being assigned goes straight back to available:
nobody has dialled it yet, so there is nothing to quarantine.

Country and type come from the number itself (Google's libphonenumber metadata through
`phonenumbers`):

- FIXED_LINE → geographic; FIXED_LINE_OR_MOBILE → geographic (NANP and a few other plans do not
  tell fixed from mobile; such numbers sit in geographic area codes and are sold as such);
- MOBILE → mobile; TOLL_FREE → toll-free;
- SHARED_COST, UAN, VOIP, PERSONAL_NUMBER → national (non-geographic numbers reachable nationwide);
- PREMIUM_RATE, PAGER, VOICEMAIL and numbers of no known type are refused, as are
  international non-geographic numbers (+800, +808, +870 …), which belong to no country.

Entitlements: a number reserved by or assigned in a subscription uses one of its number
entitlements of that country and type; assigning a number to a Teams user also uses one of
its Teams seats. Numbers picked for a subscription are locked (`SELECT … FOR UPDATE`, skipping
rows another transaction holds on PostgreSQL), so two admins never get the same number; the
unique index on the holder backs it up.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.queryset import QuerySet

from bot.domain import db, provisioning
from bot.domain.change import Change, Origin, change
from bot.domain.directory import describe, find_account
from bot.domain.entitlements import Entitlement, lock_entitlements, pool_product, require_active
from bot.domain.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from bot.domain.ledger import Outcome, find_subscription
from bot.domain.models import (
    Account,
    AccountKind,
    JobAction,
    NumberState,
    NumberType,
    PhoneNumber,
    ProductKind,
    Subscription,
)
from bot.domain.naming import check_country
from bot.domain.paging import Page, window

# At most this many numbers in one range or one reservation.
MAX_BATCH = 10_000
_INSERT_BATCH = 1_000
# ASCII digits only: `\d` would also take other scripts' digits.
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")

NUMBER_TYPES: dict[int, NumberType] = {
    PhoneNumberType.FIXED_LINE: NumberType.GEOGRAPHIC,
    PhoneNumberType.FIXED_LINE_OR_MOBILE: NumberType.GEOGRAPHIC,
    PhoneNumberType.MOBILE: NumberType.MOBILE,
    PhoneNumberType.TOLL_FREE: NumberType.TOLL_FREE,
    PhoneNumberType.SHARED_COST: NumberType.NATIONAL,
    PhoneNumberType.UAN: NumberType.NATIONAL,
    PhoneNumberType.VOIP: NumberType.NATIONAL,
    PhoneNumberType.PERSONAL_NUMBER: NumberType.NATIONAL,
}
REFUSED_TYPES: dict[int, str] = {
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.PAGER: "a pager number",
    PhoneNumberType.VOICEMAIL: "a voicemail access number",
}

# Namespace of the PostgreSQL advisory locks that make pickers of one pool take turns.
_POOL_LOCK_SPACE = 0x4E554D

SYSTEM_ORIGIN = Origin(actor_id="scheduler", actor_name="Scheduler", source="schedule")


@dataclass(frozen=True)
class NumberInfo:
    e164: str
    country: str
    number_type: NumberType


def _refuse_number(raw: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{raw} {reason}")


def parse_number(text: str) -> NumberInfo:
    """A valid E.164 number with the country and type it belongs to, or InvalidInput saying why."""
    raw = text.strip()
    if not _E164.fullmatch(raw):
        shown = raw if len(raw) <= 40 else raw[:37] + "…"
        raise InvalidInput(
            f"{shown!r} is not an E.164 number: write + then the country code and the number, "
            "digits only, no spaces (e.g. +442071234000)."
        )
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            raise _refuse_number(raw, "does not start with a known country code.") from exc
        raise _refuse_number(raw, "is not a phone number.") from exc
    canonical = phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
    if canonical != raw:
        raise _refuse_number(
            raw,
            f"is not in E.164 form: did you mean {canonical}? "
            "(no trunk prefix 0 after the country code)",
        )
    if not phonenumbers.is_valid_number(parsed):
        plan = phonenumbers.region_code_for_country_code(parsed.country_code or 0)
        if plan == phonenumbers.UNKNOWN_REGION:
            raise _refuse_number(raw, f"has no such country code (+{parsed.country_code}).")
        raise _refuse_number(
            raw, f"is not a valid number in the numbering plan of +{parsed.country_code} ({plan})."
        )
    region = phonenumbers.region_code_for_number(parsed)
    if region in (None, phonenumbers.UNKNOWN_REGION, phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY):
        raise _refuse_number(
            raw,
            "is an international non-geographic number (+800, +808 …): it belongs to no country.",
        )
    kind = phonenumbers.number_type(parsed)
    if kind in REFUSED_TYPES:
        raise _refuse_number(raw, f"is {REFUSED_TYPES[kind]}: it cannot be held by users.")
    number_type = NUMBER_TYPES.get(kind)
    if number_type is None:
        raise _refuse_number(
            raw, "is of no known number type (geographic, national, mobile, toll-free)."
        )
    return NumberInfo(raw, region, number_type)


def parse_range(text: str) -> list[NumberInfo]:
    """`+E164` or `+E164-+E164` (both ends included) → the numbers, every one valid, one country."""
    raw = text.strip()
    first, dash, last = raw.partition("-")
    if not dash:
        return [parse_number(raw)]
    if not last.strip():
        raise InvalidInput(
            f"The range {raw!r} has no end: write it as +442071234000-+442071234099."
        )
    low, high = parse_number(first), parse_number(last)
    if len(low.e164) != len(high.e164):
        raise InvalidInput(
            "Both ends of a range must have the same number of digits: "
            f"{low.e164} and {high.e164} do not."
        )
    start, end = int(low.e164[1:]), int(high.e164[1:])
    if end < start:
        raise InvalidInput(
            f"The range is reversed: {low.e164} comes after {high.e164}. "
            f"Write the lower number first: {high.e164}-{low.e164}."
        )
    count = end - start + 1
    if count > MAX_BATCH:
        raise InvalidInput(
            f"The range {low.e164}-{high.e164} holds {count:,} numbers; at most {MAX_BATCH:,} "
            "can be added at once. Split it into smaller ranges."
        )
    digits = len(low.e164) - 1
    found: list[NumberInfo] = []
    bad: list[str] = []
    for value in range(start, end + 1):
        e164 = f"+{value:0{digits}d}"
        try:
            found.append(parse_number(e164))
        except InvalidInput:
            bad.append(e164)
    if bad:
        sample = ", ".join(bad[:5]) + (" …" if len(bad) > 5 else "")
        raise InvalidInput(
            f"{len(bad):,} of the {count:,} numbers in {low.e164}-{high.e164} are not valid phone "
            f"numbers ({sample}); nothing was added. Check the range against the numbering plan."
        )
    countries = sorted({n.country for n in found})
    if len(countries) > 1:
        raise InvalidInput(
            f"The range {low.e164}-{high.e164} spans several countries ({', '.join(countries)}); "
            "add each country's numbers as its own range."
        )
    return found


def check_number_type(value: NumberType | str | None) -> NumberType:
    if value is None:
        return NumberType.GEOGRAPHIC
    if isinstance(value, NumberType):
        return value
    try:
        return NumberType(value.strip().lower())
    except ValueError as exc:
        kinds = ", ".join(t.value for t in NumberType)
        raise InvalidInput(f"{value!r} is not a number type: use one of {kinds}.") from exc


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def _free(now: datetime) -> Q:
    """Numbers that may be handed out: available, or out of a quarantine that has run its time."""
    return Q(state=NumberState.AVAILABLE) | Q(
        state=NumberState.QUARANTINED, quarantined_until__lte=now
    )


def _lock(query: QuerySet[PhoneNumber], *, skip_locked: bool) -> QuerySet[PhoneNumber]:
    # On PostgreSQL, rows another admin is picking right now are skipped rather than waited for.
    return query.select_for_update(skip_locked=skip_locked and db.dialect().skip_locked)


def number_view(n: PhoneNumber, now: datetime | None = None) -> dict[str, Any]:
    state = effective_state(n, _now(now))
    return {
        "number": n.e164,
        "country": n.country,
        "type": n.number_type.value,
        "state": state.value,
        "subscription": n.subscription.code if n.subscription_id and n.subscription else None,
        "holder": n.holder.upn if n.holder_id and n.holder else None,
        "quarantined_until": (
            n.quarantined_until.astimezone(UTC).isoformat()
            if state is NumberState.QUARANTINED and n.quarantined_until
            else None
        ),
    }


def effective_state(n: PhoneNumber, now: datetime) -> NumberState:
    if (
        n.state is NumberState.QUARANTINED
        and n.quarantined_until is not None
        and n.quarantined_until <= now
    ):
        return NumberState.AVAILABLE
    return n.state


async def find_number(text: str, conn: BaseDBAsyncClient | None = None) -> PhoneNumber:
    e164 = parse_number(text).e164
    number = await PhoneNumber.filter(e164=e164).using_db(conn).first()
    if number is None:
        # Suggest the inventory's nearest numbers on either side.
        below = PhoneNumber.filter(e164__lt=e164).order_by("-e164").limit(2)
        above = PhoneNumber.filter(e164__gt=e164).order_by("e164").limit(2)
        near = [
            str(n)
            for q in (below, above)
            for n in await q.using_db(conn).values_list("e164", flat=True)
        ]
        raise NotFound("number in the inventory", e164, near)
    return number


# ----- inventory -------------------------------------------------------------------------


async def add_numbers(
    origin: Origin, text: str, *, dry_run: bool = False, location: str | None = None
) -> Outcome:
    """Add one number or a range (up to MAX_BATCH) in one transaction; any duplicate refuses all.
    `location`: the emergency location id every number of the range carries into Teams."""
    numbers = parse_range(text)
    location_id = provisioning.check_location(location)
    wanted = {n.e164 for n in numbers}
    first, last = numbers[0].e164, numbers[-1].e164
    target = first if first == last else f"{first}-{last}"
    async with change(origin, dry_run=dry_run) as ch:
        # Same length, digits only: string order is number order, so one range scan finds them.
        existing = (
            await PhoneNumber.filter(e164__gte=first, e164__lte=last)
            .using_db(ch.conn)
            .values_list("e164", flat=True)
        )
        clash = sorted(wanted.intersection(existing))
        if clash:
            sample = ", ".join(clash[:10]) + (" …" if len(clash) > 10 else "")
            raise AlreadyExists(
                f"{len(clash):,} of these numbers are already in the inventory ({sample}); "
                "nothing was added."
            )
        try:
            await PhoneNumber.bulk_create(
                [
                    PhoneNumber(
                        e164=n.e164,
                        country=n.country,
                        number_type=n.number_type,
                        emergency_location_id=location_id,
                    )
                    for n in numbers
                ],
                batch_size=_INSERT_BATCH,
                using_db=ch.conn,
            )
        except IntegrityError as exc:
            raise AlreadyExists(
                "Some of these numbers were added by someone else at the same moment; "
                "nothing was added."
            ) from exc
        types: dict[str, int] = {}
        for n in numbers:
            types[n.number_type.value] = types.get(n.number_type.value, 0) + 1
        after = {
            "first": first,
            "last": last,
            "count": len(numbers),
            "country": numbers[0].country,
            "types": types,
            "state": NumberState.AVAILABLE.value,
        }
        if location_id:
            after["location"] = location_id
        ch.record("number.add", f"numbers:{target}", None, after)
    what = (
        f"{len(numbers):,} numbers ({first} to {last})" if len(numbers) > 1 else f"Number {first}"
    )
    kinds = ", ".join(f"{c:,} {t}" for t, c in types.items())
    return Outcome(
        "number.add",
        target,
        None,
        after,
        dry_run,
        f"{what} added to the inventory: {numbers[0].country}, {kinds}, available.",
    )


async def list_numbers(
    subscription_code: str | None = None,
    state: NumberState | None = None,
    country: str | None = None,
    number_type: NumberType | None = None,
    *,
    page: int = 1,
    size: int = 25,
    now: datetime | None = None,
) -> Page[PhoneNumber]:
    """One page of the inventory, ordered by number, and how many numbers match in all."""
    moment = _now(now)
    query = PhoneNumber.all()
    if subscription_code is not None:
        sub = await find_subscription(subscription_code)
        query = query.filter(subscription_id=sub.id)
    if state is NumberState.AVAILABLE:
        query = query.filter(_free(moment))
    elif state is NumberState.QUARANTINED:
        query = query.filter(state=state, quarantined_until__gt=moment)
    elif state is not None:
        query = query.filter(state=state)
    if country is not None:
        query = query.filter(country=check_country(country))
    if number_type is not None:
        query = query.filter(number_type=number_type)
    total = await query.count()
    page, pages, offset = window(total, page, size)
    rows = (
        await query.order_by("e164")
        .offset(offset)
        .limit(size)
        .prefetch_related("subscription", "holder")
    )
    return Page(total, page, pages, list(rows))


# ----- reserving and assigning -----------------------------------------------------------


async def reserve(
    origin: Origin,
    quantity: int,
    country: str,
    number_type: NumberType | str | None,
    subscription_code: str,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> Outcome:
    """Reserve `quantity` available numbers of a country and type for a subscription."""
    if (
        isinstance(quantity, bool)
        or not isinstance(quantity, int)
        or not 1 <= quantity <= MAX_BATCH
    ):
        raise InvalidInput(
            f"Reserve between 1 and {MAX_BATCH:,} numbers at a time, not {quantity}."
        )
    cc = check_country(country)
    nt = check_number_type(number_type)
    moment = _now(now)
    async with change(origin, dry_run=dry_run) as ch:
        sub = await find_subscription(subscription_code, ch.conn)
        require_active(sub)
        product = await pool_product(ch.conn, sub, ProductKind.NUMBERS, country=cc, number_type=nt)
        entitlement = (await lock_entitlements(ch.conn, sub, [product]))[product.id]
        entitlement.require(quantity)
        await lock_pool(ch.conn, cc, nt)
        # `.only()`, not `.values_list()`: Tortoise drops FOR UPDATE from values queries.
        picked = await _lock(
            PhoneNumber.filter(_free(moment), country=cc, number_type=nt)
            .order_by("e164")
            .limit(quantity)
            .only("id", "e164")
            .using_db(ch.conn),
            skip_locked=True,
        )
        if len(picked) < quantity:
            raise Conflict(
                f"Only {len(picked):,} {cc} {nt.value} numbers are available in the inventory; "
                f"{quantity:,} asked. Add numbers with `numbers add`."
            )
        ids = [row.id for row in picked]
        changed = (
            await PhoneNumber.filter(_free(moment), id__in=ids)
            .using_db(ch.conn)
            .update(state=NumberState.RESERVED, subscription_id=sub.id, quarantined_until=None)
        )
        if changed != quantity:
            raise Conflict("Someone else took some of these numbers at the same moment; try again.")
        e164s = [row.e164 for row in picked]
        before = {"in_use": entitlement.used, "allocated": entitlement.allocated}
        after = {
            "in_use": entitlement.used + quantity,
            "allocated": entitlement.allocated,
            "reserved": e164s,
        }
        ch.record("number.reserve", f"subscription:{sub.code}/{product.name}", before, after)
    shown = ", ".join(e164s[:5]) + (" …" if len(e164s) > 5 else "")
    return Outcome(
        "number.reserve",
        f"{product.name} → {sub.code}",
        before,
        after,
        dry_run,
        f"Reserved {quantity:,} {cc} {nt.value} number(s) for {sub.code}: {shown}. "
        f"{product.name} in use: {entitlement.used} → {entitlement.used + quantity} "
        f"of {entitlement.allocated}.",
    )


@dataclass
class _Draw:
    """What assigning a number to an account draws on, with its allocation rows locked."""

    account: Account
    subscription: Subscription
    numbers: Entitlement
    seats: Entitlement | None


async def _prepare(
    conn: BaseDBAsyncClient, account: Account, country: str, number_type: NumberType
) -> _Draw:
    """Lock what a number for `account` draws on and check what does not depend on the number."""
    sub = account.subscription
    require_active(sub)
    numbers_product = await pool_product(
        conn, sub, ProductKind.NUMBERS, country=country, number_type=number_type
    )
    products = [numbers_product]
    if account.kind is AccountKind.USER:
        products.append(await pool_product(conn, sub, ProductKind.TEAMS_SEATS))
    entitlements = await lock_entitlements(conn, sub, products)
    # Checked under the allocation locks, which every assignment in this subscription takes.
    # (A resource account takes no seat lock; the unique index on the holder backs it up.)
    existing = await PhoneNumber.filter(holder_id=account.id).using_db(conn).first()
    if existing is not None:
        raise Conflict(f"{account.upn} already holds {existing.e164}: release it first.")
    seats = entitlements[products[1].id] if len(products) > 1 else None
    if seats is not None:
        seats.require(1)
    return _Draw(account, sub, entitlements[numbers_product.id], seats)


async def lock_pool(conn: BaseDBAsyncClient, country: str, number_type: NumberType) -> None:
    """Take turns picking free numbers of one country and type (PostgreSQL).

    Skipping locked rows alone could leave a picker short while others hold rows they will
    not keep; taking turns makes "only N available" exact. Taken after the allocation rows and
    before any number row (SQLite runs one writer at a time already).
    """
    key = zlib.crc32(f"{country}:{number_type.value}".encode()) & 0x7FFFFFFF
    await db.advisory_lock(conn, _POOL_LOCK_SPACE, key)


async def assign_number(
    origin: Origin,
    number: str,
    upn: str,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    rules: provisioning.Rules | None = None,
    location: str | None = None,
) -> Outcome:
    """Assign a specific number of the inventory to a Teams user or resource account; with
    `rules` on, the Teams provisioning job is written in the same transaction."""
    e164 = parse_number(number).e164
    location_id = provisioning.check_location(location)
    moment = _now(now)
    async with change(origin, dry_run=dry_run) as ch:
        account = await find_account(upn, ch.conn)
        found = await find_number(e164, ch.conn)
        draw = await _prepare(ch.conn, account, found.country, found.number_type)
        # Locked after the allocations: the ledger's order (allocation rows, then numbers).
        row = await PhoneNumber.filter(id=found.id).select_for_update().using_db(ch.conn).get()
        await row.fetch_related("holder", "subscription", using_db=ch.conn)
        state = effective_state(row, moment)
        if state is NumberState.ASSIGNED:
            holder = row.holder.upn if row.holder else "someone"
            raise Conflict(f"{e164} is already assigned to {holder}: release it first.")
        if state is NumberState.QUARANTINED:
            until = row.quarantined_until.strftime("%Y-%m-%d") if row.quarantined_until else "later"
            raise Conflict(f"{e164} is in quarantine until {until} (it was released recently).")
        if state is NumberState.RESERVED and row.subscription_id != draw.subscription.id:
            other = row.subscription.code if row.subscription else "another subscription"
            raise Conflict(f"{e164} is reserved for {other}, not for {draw.subscription.code}.")
        if state is NumberState.AVAILABLE:
            draw.numbers.require(1)
        return await _give(ch, draw, row, state, moment, rules, location_id)


async def assign_next(
    origin: Origin,
    country: str,
    number_type: NumberType | str | None,
    upn: str,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    rules: provisioning.Rules | None = None,
    location: str | None = None,
) -> Outcome:
    """Assign the next number of a country and type: one the account's subscription has
    reserved if there is one (its entitlement is already counted), else an available one."""
    location_id = provisioning.check_location(location)
    cc = check_country(country)
    nt = check_number_type(number_type)
    moment = _now(now)
    async with change(origin, dry_run=dry_run) as ch:
        account = await find_account(upn, ch.conn)
        draw = await _prepare(ch.conn, account, cc, nt)
        sub = draw.subscription
        # The subscription's reservations are only picked under its numbers allocation lock.
        row = (
            await PhoneNumber.filter(
                state=NumberState.RESERVED, subscription_id=sub.id, country=cc, number_type=nt
            )
            .order_by("e164")
            .limit(1)
            .select_for_update()
            .using_db(ch.conn)
            .first()
        )
        if row is None:
            draw.numbers.require(1)
            await lock_pool(ch.conn, cc, nt)
            row = await _lock(
                PhoneNumber.filter(_free(moment), country=cc, number_type=nt)
                .order_by("e164")
                .limit(1)
                .using_db(ch.conn),
                skip_locked=True,
            ).first()
        if row is None:
            raise Conflict(
                f"No {cc} {nt.value} number is available in the inventory or reserved for "
                f"{sub.code}: add numbers with `numbers add`."
            )
        return await _give(ch, draw, row, effective_state(row, moment), moment, rules, location_id)


async def _give(
    ch: Change,
    draw: _Draw,
    row: PhoneNumber,
    state: NumberState,
    moment: datetime,
    rules: provisioning.Rules | None = None,
    location_id: str | None = None,
) -> Outcome:
    """Hand a locked, checked number to the account; then record it."""
    account, sub = draw.account, draw.subscription
    # A number the subscription reserved already counts against its entitlement.
    reserved = state is NumberState.RESERVED
    expected = Q(id=row.id) & (
        Q(state=NumberState.RESERVED, subscription_id=sub.id) if reserved else _free(moment)
    )
    try:
        changed = (
            await PhoneNumber.filter(expected)
            .using_db(ch.conn)
            .update(
                state=NumberState.ASSIGNED,
                subscription_id=sub.id,
                holder_id=account.id,
                quarantined_until=None,
            )
        )
    except IntegrityError as exc:
        raise Conflict(f"{account.upn} was given another number at the same moment.") from exc
    if changed != 1:
        raise Conflict(f"{row.e164} was taken by someone else at the same moment; try again.")
    before: dict[str, Any] = {
        "state": state.value,
        "subscription": sub.code if reserved else None,
        "holder": None,
        "numbers_in_use": draw.numbers.used,
    }
    after: dict[str, Any] = {
        "state": NumberState.ASSIGNED.value,
        "subscription": sub.code,
        "holder": account.upn,
        "numbers_in_use": draw.numbers.used + (0 if reserved else 1),
    }
    uses = "its reservation" if reserved else f"a {draw.numbers.product.name} entitlement"
    if draw.seats is not None:
        before["seats_in_use"] = draw.seats.used
        after["seats_in_use"] = draw.seats.used + 1
        uses += f" and a {draw.seats.product.name} seat"
    job = await provisioning.enqueue(ch, rules, JobAction.ASSIGN, sub, account, row, location_id)
    if job is not None:
        after["provisioning_job"] = job.id
    ch.record("number.assign", f"number:{row.e164}", before, after)
    return Outcome(
        "number.assign",
        f"{row.e164} → {account.upn}",
        before,
        after,
        ch.dry_run,
        f"{row.e164} assigned to {describe(account)} ({sub.code}), using {uses}.",
    )


async def release_number(
    origin: Origin,
    number: str,
    quarantine_days: int,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    rules: provisioning.Rules | None = None,
) -> Outcome:
    """Give a number back: an assigned one goes to quarantine, a reserved one back to available.
    With `rules` on, taking it from its holder writes the Teams job in the same transaction."""
    e164 = parse_number(number).e164
    moment = _now(now)
    async with change(origin, dry_run=dry_run) as ch:
        found = await find_number(e164, ch.conn)
        row = await PhoneNumber.filter(id=found.id).select_for_update().using_db(ch.conn).get()
        await row.fetch_related("holder", "subscription", using_db=ch.conn)
        state = effective_state(row, moment)
        if state not in (NumberState.RESERVED, NumberState.ASSIGNED):
            raise Conflict(
                f"{e164} is {state.value}: only a reserved or assigned number can be released."
            )
        before = {
            "state": state.value,
            "subscription": row.subscription.code if row.subscription else None,
            "holder": row.holder.upn if row.holder else None,
        }
        if state is NumberState.ASSIGNED and quarantine_days > 0:
            until: datetime | None = moment + timedelta(days=quarantine_days)
            new_state = NumberState.QUARANTINED
        else:
            until, new_state = None, NumberState.AVAILABLE
        await (
            PhoneNumber.filter(id=row.id)
            .using_db(ch.conn)
            .update(state=new_state, subscription_id=None, holder_id=None, quarantined_until=until)
        )
        after: dict[str, Any] = {
            "state": new_state.value,
            "subscription": None,
            "holder": None,
            "quarantined_until": until.isoformat() if until else None,
        }
        if row.holder is not None and row.subscription is not None:
            job = await provisioning.enqueue(
                ch, rules, JobAction.UNASSIGN, row.subscription, row.holder, row
            )
            if job is not None:
                after["provisioning_job"] = job.id
        ch.record("number.release", f"number:{e164}", before, after)
    if new_state is NumberState.QUARANTINED and until is not None:
        message = f"{e164} released; in quarantine until {until:%Y-%m-%d}, then available again."
    else:
        message = f"{e164} released; available again."
    return Outcome("number.release", e164, before, after, dry_run, message)


async def release_quarantined(now: datetime | None = None, origin: Origin = SYSTEM_ORIGIN) -> int:
    """Housekeeping: numbers whose quarantine has run out become available. Returns how many.

    Picking numbers already treats such numbers as available; this makes the inventory say so.
    """
    moment = _now(now)
    async with change(origin) as ch:
        due = await (
            PhoneNumber.filter(state=NumberState.QUARANTINED, quarantined_until__lte=moment)
            .only("id", "e164")
            .select_for_update()
            .using_db(ch.conn)
        )
        if not due:
            return 0
        await (
            PhoneNumber.filter(id__in=[d.id for d in due])
            .using_db(ch.conn)
            .update(state=NumberState.AVAILABLE, quarantined_until=None)
        )
        ch.record(
            "number.unquarantine",
            "numbers",
            {"state": NumberState.QUARANTINED.value, "count": len(due)},
            {"state": NumberState.AVAILABLE.value, "numbers": sorted(d.e164 for d in due)},
        )
    return len(due)


async def set_location(
    origin: Origin, number: str, location_id: str | None, *, dry_run: bool = False
) -> Outcome:
    """Set (or clear, with None) the emergency location a number carries into Teams."""
    location = provisioning.check_location(location_id)
    async with change(origin, dry_run=dry_run) as ch:
        found = await find_number(number, ch.conn)
        before = {"location": found.emergency_location_id}
        await (
            PhoneNumber.filter(id=found.id).using_db(ch.conn).update(emergency_location_id=location)
        )
        after = {"location": location}
        ch.record("number.location", f"number:{found.e164}", before, after)
    said = f"emergency location {location}" if location else "no emergency location"
    return Outcome(
        "number.location", found.e164, before, after, dry_run, f"{found.e164} now has {said}."
    )

"""Form cards: a mutating command typed without arguments opens a form with the same fields.

Choice fields are filled from the data as it is now (products, licenses, subscriptions,
customers, service packs, pending approvals) or from `phonenumbers` (countries). What comes
back is only ever a set of field values: it is validated by the command's Args model like
any typed command, and the form's id makes submitting the same form twice one change.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import phonenumbers

from bot.commands.registry import CommandSpec, Context
from bot.commands.reply import Form, FormField
from bot.domain.models import (
    ApprovalRequest,
    ApprovalStatus,
    Customer,
    Product,
    ProductKind,
    ProductStatus,
    ServicePack,
    Subscription,
)

#: A choice set longer than this becomes a text field (the card must stay small).
MAX_CHOICES = 250

Choices = list[tuple[str, str]]


async def _products() -> Choices:
    rows = await Product.all().order_by("name").values_list("name", "kind", "status")
    return [
        (f"{name} ({kind}{', retired' if status == ProductStatus.RETIRED else ''})", str(name))
        for name, kind, status in rows
    ]


async def _active_products() -> Choices:
    rows = (
        await Product.filter(status=ProductStatus.ACTIVE)
        .order_by("name")
        .values_list("name", "kind")
    )
    return [(f"{name} ({kind})", str(name)) for name, kind in rows]


async def _licenses() -> Choices:
    names = (
        await Product.filter(kind=ProductKind.LICENSE)
        .order_by("name")
        .values_list("name", flat=True)
    )
    return [(str(n), str(n)) for n in names]


async def _subscriptions() -> Choices:
    rows = await Subscription.all().order_by("code").values_list("code", "customer__name")
    return [(f"{code} ({customer})", str(code)) for code, customer in rows]


async def _customers() -> Choices:
    names = await Customer.all().order_by("name").values_list("name", flat=True)
    return [(str(n), str(n)) for n in names]


async def _packs() -> Choices:
    names = await ServicePack.all().order_by("name").values_list("name", flat=True)
    return [(str(n), str(n)) for n in names]


async def _pending_approvals() -> Choices:
    rows = (
        await ApprovalRequest.filter(status=ApprovalStatus.PENDING)
        .order_by("created_at")
        .values_list("id", "number", "summary", "requester_name")
    )
    return [
        (f"{f'A-{n}' if n else rid}: {summary} — {who}", str(rid)) for rid, n, summary, who in rows
    ]


async def _countries() -> Choices:
    regions = sorted(r for r in phonenumbers.SUPPORTED_REGIONS if r != "001")
    return [(f"{r} (+{phonenumbers.country_code_for_region(r)})", r) for r in regions]


ChoiceSource = Callable[[], Awaitable[Choices]]

# Field name → where its choices come from.
BY_FIELD: dict[str, ChoiceSource] = {
    "product": _products,
    "license": _licenses,
    "subscription": _subscriptions,
    "customer": _customers,
    "pack": _packs,
    "country": _countries,
    "id": _pending_approvals,
}
# Command → field → source, where the field name alone does not say it.
BY_COMMAND: dict[str, dict[str, ChoiceSource]] = {
    "allocate": {"product": _active_products},
    "product capacity": {"name": _products},
    "product retire": {"name": _active_products},
    "pack assign": {"name": _packs},
}


def source_for(command: str, field: str) -> ChoiceSource | None:
    return BY_COMMAND.get(command, {}).get(field) or BY_FIELD.get(field)


async def fill_choices(command: str, field: FormField) -> FormField:
    """The field with its choices filled from the data (if it is a choice without fixed ones)."""
    if field.kind != "choice" or field.choices:
        return field
    source = source_for(command, field.name)
    if source is None:
        return replace(field, kind="text")
    choices = await source()
    if len(choices) > MAX_CHOICES:
        return replace(field, kind="text", placeholder=field.placeholder or "Type the name")
    if not choices:
        return replace(field, kind="text", placeholder=field.placeholder or "None exist yet")
    return replace(field, choices=choices)


def _plain(message: str) -> str:
    """Pydantic's wording, as a form shows it next to a field."""
    return "Required" if message == "Field required" else message


async def build_form(
    spec: CommandSpec,
    ctx: Context,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    form_id: str | None = None,
) -> Form:
    """The form for `spec`; `values` are kept in the fields (a form shown again after errors)."""
    fields = []
    for field in spec.form:
        filled = await fill_choices(spec.name, field)
        value = (values or {}).get(field.name)
        if value is not None and isinstance(value, (str, int, float, bool)):
            filled = replace(filled, value=str(value))
        fields.append(filled)
    return Form(
        title=spec.summary,
        command=spec.name,
        usage="\n".join(spec.usages),
        fields=fields,
        errors={k: _plain(v) for k, v in (errors or {}).items()},
        # One id per form shown: submitting the same form twice has one effect.
        form_id=form_id or secrets.token_urlsafe(12),
        data={"error": "usage", "message": "arguments are missing", "usage": spec.usage},
    )

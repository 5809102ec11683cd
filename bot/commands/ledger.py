"""Commands over the products ledger: products, customers, subscriptions, allocations, usage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import model_validator

from bot.commands.answers import changed, next_page, paged
from bot.commands.approvals import answer_change, approval_rule
from bot.commands.args import Args, Count, Keyword, Quantity, Text
from bot.commands.registry import Context, command
from bot.commands.reply import FormField, Reply, Usage
from bot.domain import approvals, ledger
from bot.domain.models import (
    Category,
    Customer,
    NumberType,
    ProductKind,
    Subscription,
    SubscriptionMode,
)
from bot.domain.paging import window
from bot.domain.usage import usage_report

# ----- products --------------------------------------------------------------------------


class ProductsArgs(Args):
    category: Annotated[Literal["technical", "licenses"] | None, Keyword] = None
    kind: Annotated[ProductKind | None, Keyword] = None
    country: Text | None = None
    page: Quantity = 1


@command(
    "products",
    "products [CATEGORY] [--kind K] [--country CC] [--page N]",
    "List products with capacity, allocation and status",
    ProductsArgs,
    more_usage=("products [technical|licenses] [--kind K] [--country CC]",),
)
async def products(ctx: Context, args: ProductsArgs) -> Reply:
    category = None
    if args.category == "technical":
        category = Category.TECHNICAL
    elif args.category == "licenses":
        category = Category.LICENSE
    found = await ledger.list_products(category, args.kind, args.country)
    report = {u.name: u for u in await usage_report()}
    rows, data = [], []
    for p in found:
        u = report.get(p.name)
        allocated = u.allocated if u else 0
        where = f"{p.country} {p.number_type.value}" if p.country and p.number_type else ""
        rows.append(
            [p.name, p.kind.value, where, f"{p.capacity:,}", f"{allocated:,}", p.status.value]
        )
        data.append({**ledger.product_view(p), "allocated": allocated})
    return paged(
        "Products",
        ["Name", "Kind", "Country/type", "Capacity", "Allocated", "Status"],
        rows,
        data,
        args.page,
        ctx.settings.page_size,
        "products",
        note="" if rows else "No products yet. Add one with `product add`.",
    )


class ProductAddArgs(Args):
    name: Text
    kind: Annotated[ProductKind | None, Keyword] = None
    license: bool = False
    country: Text | None = None
    type: Annotated[NumberType | None, Keyword] = None
    capacity: Count | None = None
    unit: Text | None = None
    sku: Text | None = None

    @model_validator(mode="after")
    def _kind_or_license(self) -> ProductAddArgs:
        if self.license and self.kind not in (None, ProductKind.LICENSE):
            raise ValueError("use either --kind or --license, not both")
        if not self.license and self.kind is None:
            raise ValueError(
                "say what it is: --kind numbers|teams-seats|sip-channels|custom, or --license"
            )
        if self.kind is ProductKind.LICENSE:
            object.__setattr__(self, "license", True)
        return self


@command(
    "product add",
    "product add NAME [--kind K] [--license] [--country CC] [--type T] [--capacity N] "
    "[--unit U] [--sku REF]",
    "Add a product: a technical resource or a license",
    ProductAddArgs,
    mutating=True,
    more_usage=(
        "product add NAME --kind numbers --country CC "
        "[--type geographic|national|mobile|toll-free] "
        "--capacity N [--sku REF]",
        "product add NAME --kind teams-seats|sip-channels|custom [--unit U] --capacity N",
        "product add NAME --license [--capacity N] [--sku REF]",
    ),
    form=(
        FormField("name", "Name (e.g. NUMBERS-GB-GEO)"),
        FormField(
            "kind",
            "Kind",
            kind="choice",
            choices=[(k.value, k.value) for k in ProductKind],
        ),
        FormField("capacity", "Capacity", kind="number", required=False),
        FormField("country", "Country (numbers only)", kind="choice", required=False),
        FormField(
            "type",
            "Number type (numbers only)",
            kind="choice",
            required=False,
            choices=[(t.value, t.value) for t in NumberType],
        ),
        FormField("unit", "Unit (custom only)", required=False),
        FormField("sku", "External reference / SKU", required=False),
    ),
)
async def product_add(ctx: Context, args: ProductAddArgs) -> Reply:
    kind = ProductKind.LICENSE if args.license else args.kind
    assert kind is not None
    outcome = await ledger.add_product(
        ctx.actor.origin(),
        args.name,
        kind,
        args.capacity,
        country=args.country,
        number_type=args.type,
        unit=args.unit,
        sku=args.sku,
        dry_run=args.dry_run,
    )
    return changed(outcome)


class CapacityArgs(Args):
    name: Text
    capacity: Count


@command(
    "product capacity",
    "product capacity NAME N",
    "Change a product's capacity",
    CapacityArgs,
    mutating=True,
    fields={"N": "capacity"},
    form=(
        FormField("name", "Product", kind="choice"),
        FormField("capacity", "New capacity", kind="number"),
    ),
)
async def product_capacity(ctx: Context, args: CapacityArgs) -> Reply:
    result = await approvals.set_capacity(
        ctx.actor.origin(),
        approval_rule(ctx),
        args.name,
        args.capacity,
        dry_run=args.dry_run,
        conversation_id=ctx.actor.conversation_id,
    )
    return await answer_change(ctx, result)


class NameArgs(Args):
    name: Text


@command(
    "product retire",
    "product retire NAME",
    "Retire a product: no new allocations",
    NameArgs,
    mutating=True,
    form=(FormField("name", "Product", kind="choice"),),
)
async def product_retire(ctx: Context, args: NameArgs) -> Reply:
    return changed(await ledger.retire_product(ctx.actor.origin(), args.name, dry_run=args.dry_run))


# ----- customers and subscriptions -------------------------------------------------------


class PageArgs(Args):
    page: Quantity = 1


@command("customers", "customers [--page N]", "List customers", PageArgs)
async def customers(ctx: Context, args: PageArgs) -> Reply:
    found = await Customer.all().order_by("name")
    rows = [[c.name, c.tenant_id or ""] for c in found]
    data = [{"name": c.name, "tenant": c.tenant_id} for c in found]
    return paged(
        "Customers",
        ["Name", "Tenant"],
        rows,
        data,
        args.page,
        ctx.settings.page_size,
        "customers",
        note="" if rows else "No customers yet. Add one with `customer add`.",
    )


class CustomerAddArgs(Args):
    name: Text
    tenant: Text | None = None


@command(
    "customer add",
    "customer add NAME [--tenant TENANT-ID]",
    "Add a customer",
    CustomerAddArgs,
    mutating=True,
    form=(
        FormField("name", "Customer name"),
        FormField("tenant", "Entra tenant id", required=False),
    ),
)
async def customer_add(ctx: Context, args: CustomerAddArgs) -> Reply:
    return changed(
        await ledger.add_customer(ctx.actor.origin(), args.name, args.tenant, dry_run=args.dry_run)
    )


class SubscriptionsArgs(Args):
    customer: Text | None = None
    page: Quantity = 1


@command(
    "subscriptions",
    "subscriptions [--customer NAME] [--page N]",
    "List subscriptions",
    SubscriptionsArgs,
)
async def subscriptions(ctx: Context, args: SubscriptionsArgs) -> Reply:
    query = Subscription.all().prefetch_related("customer")
    if args.customer:
        customer = await ledger.find_customer(args.customer)
        query = query.filter(customer_id=customer.id)
    found = await query.order_by("code")
    rows = [[s.code, s.customer.name, s.mode.value, s.status.value] for s in found]
    data = [
        {
            "code": s.code,
            "customer": s.customer.name,
            "mode": s.mode.value,
            "status": s.status.value,
        }
        for s in found
    ]
    return paged(
        "Subscriptions",
        ["Code", "Customer", "Mode", "Status"],
        rows,
        data,
        args.page,
        ctx.settings.page_size,
        "subscriptions",
        note="" if rows else "No subscriptions yet. Add one with `subscription add`.",
    )


class SubscriptionAddArgs(Args):
    code: Text
    customer: Text
    mode: Annotated[SubscriptionMode, Keyword] = SubscriptionMode.DIRECT_ROUTING


@command(
    "subscription add",
    "subscription add CODE --customer NAME [--mode direct-routing|operator-connect]",
    "Add a subscription for a customer",
    SubscriptionAddArgs,
    mutating=True,
    form=(
        FormField("code", "Code (e.g. ACME-01)"),
        FormField("customer", "Customer", kind="choice"),
        FormField(
            "mode",
            "Mode",
            kind="choice",
            required=False,
            choices=[(m.value, m.value) for m in SubscriptionMode],
        ),
    ),
)
async def subscription_add(ctx: Context, args: SubscriptionAddArgs) -> Reply:
    return changed(
        await ledger.add_subscription(
            ctx.actor.origin(), args.code, args.customer, args.mode, dry_run=args.dry_run
        )
    )


# ----- allocations and usage -------------------------------------------------------------


class AllocationArgs(Args):
    quantity: Quantity
    product: Text
    subscription: Text


_ALLOCATION_FORM = (
    FormField("quantity", "How many", kind="number"),
    FormField("product", "Product", kind="choice"),
    FormField("subscription", "Subscription", kind="choice"),
)


@command(
    "allocate",
    "allocate N PRODUCT to SUBSCRIPTION",
    "Allocate units of a product to a subscription",
    AllocationArgs,
    mutating=True,
    fields={"N": "quantity"},
    form=_ALLOCATION_FORM,
)
async def allocate(ctx: Context, args: AllocationArgs) -> Reply:
    result = await approvals.allocate(
        ctx.actor.origin(),
        approval_rule(ctx),
        args.quantity,
        args.product,
        args.subscription,
        dry_run=args.dry_run,
        conversation_id=ctx.actor.conversation_id,
    )
    return await answer_change(ctx, result)


@command(
    "release",
    "release N PRODUCT from SUBSCRIPTION",
    "Release units of a product from a subscription",
    AllocationArgs,
    mutating=True,
    fields={"N": "quantity"},
    form=_ALLOCATION_FORM,
)
async def release(ctx: Context, args: AllocationArgs) -> Reply:
    return changed(
        await ledger.release(
            ctx.actor.origin(), args.quantity, args.product, args.subscription, dry_run=args.dry_run
        )
    )


class UsageArgs(Args):
    target: Text | None = None
    page: Quantity = 1


@command(
    "usage",
    "usage [SUBSCRIPTION|PRODUCT] [--page N]",
    "Capacity, allocated, in use and free, per product and subscription",
    UsageArgs,
    fields={"SUBSCRIPTION|PRODUCT": "target"},
)
async def usage(ctx: Context, args: UsageArgs) -> Reply:
    product_name = subscription_code = None
    if args.target:
        if await Subscription.filter(code__iexact=args.target).exists():
            subscription_code = args.target
        else:
            product_name = (await ledger.find_product(args.target)).name
    report = await usage_report(product_name, subscription_code)
    # One page holds products (with their subscriptions) and reads on a phone.
    size = ctx.settings.page_size
    page, pages, start = window(len(report), args.page, size)
    command = f"usage {args.target}" if args.target else "usage"
    return Usage(
        title="Usage" + (f" of {args.target}" if args.target else ""),
        products=report[start : start + size],
        data=[u.as_json() for u in report],
        note="" if report else "Nothing allocated yet.",
        page=page,
        pages=pages,
        next_command=next_page(command, page, pages),
    )

"""The ledger's tables. Quantities in use are never stored: they are derived by queries."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from tortoise import fields
from tortoise.models import Model


class Category(StrEnum):
    TECHNICAL = "technical"
    LICENSE = "license"


class ProductKind(StrEnum):
    NUMBERS = "numbers"
    TEAMS_SEATS = "teams-seats"
    SIP_CHANNELS = "sip-channels"
    CUSTOM = "custom"
    LICENSE = "license"


class NumberType(StrEnum):
    GEOGRAPHIC = "geographic"
    NATIONAL = "national"
    MOBILE = "mobile"
    TOLL_FREE = "toll-free"


class ProductStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"


class SubscriptionMode(StrEnum):
    DIRECT_ROUTING = "direct-routing"
    OPERATOR_CONNECT = "operator-connect"


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class NumberState(StrEnum):
    AVAILABLE = "available"
    RESERVED = "reserved"
    ASSIGNED = "assigned"
    QUARANTINED = "quarantined"


class AccountKind(StrEnum):
    USER = "user"
    AUTO_ATTENDANT = "auto-attendant"
    CALL_QUEUE = "call-queue"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    FAILED = "failed"


class Customer(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100, unique=True)
    tenant_id = fields.CharField(max_length=64, null=True)
    # Per-customer switch: with FUSION_PROVISIONING on, a linked customer's numbers are written
    # into its tenant unless this is off.
    provisioning = fields.BooleanField(default=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    subscriptions: fields.ReverseRelation[Subscription]

    class Meta:
        table = "customer"


class Subscription(Model):
    id = fields.IntField(primary_key=True)
    code = fields.CharField(max_length=100, unique=True)
    customer: fields.ForeignKeyRelation[Customer] = fields.ForeignKeyField(
        "models.Customer", related_name="subscriptions", on_delete=fields.RESTRICT
    )
    mode = fields.CharEnumField(
        SubscriptionMode, max_length=20, default=SubscriptionMode.DIRECT_ROUTING
    )
    status = fields.CharEnumField(
        SubscriptionStatus, max_length=20, default=SubscriptionStatus.ACTIVE
    )
    created_at = fields.DatetimeField(auto_now_add=True)

    customer_id: int
    allocations: fields.ReverseRelation[Allocation]

    class Meta:
        table = "subscription"


class Product(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100, unique=True)
    category = fields.CharEnumField(Category, max_length=20)
    kind = fields.CharEnumField(ProductKind, max_length=20)
    unit = fields.CharField(max_length=40, default="unit")
    capacity = fields.BigIntField()
    country = fields.CharField(max_length=2, null=True)
    number_type = fields.CharEnumField(NumberType, max_length=20, null=True)
    sku = fields.CharField(max_length=100, null=True)
    status = fields.CharEnumField(ProductStatus, max_length=20, default=ProductStatus.ACTIVE)
    created_at = fields.DatetimeField(auto_now_add=True)

    allocations: fields.ReverseRelation[Allocation]

    class Meta:
        table = "product"


class Allocation(Model):
    id = fields.IntField(primary_key=True)
    subscription: fields.ForeignKeyRelation[Subscription] = fields.ForeignKeyField(
        "models.Subscription", related_name="allocations", on_delete=fields.RESTRICT
    )
    product: fields.ForeignKeyRelation[Product] = fields.ForeignKeyField(
        "models.Product", related_name="allocations", on_delete=fields.RESTRICT
    )
    quantity = fields.BigIntField(default=0)
    updated_at = fields.DatetimeField(auto_now=True)

    subscription_id: int
    product_id: int

    class Meta:
        table = "allocation"
        unique_together = (("subscription", "product"),)


class Account(Model):
    """A Teams user or a resource account (auto attendant, call queue) of a subscription."""

    id = fields.IntField(primary_key=True)
    upn = fields.CharField(max_length=255, unique=True)
    object_id = fields.CharField(max_length=64, null=True, unique=True)
    display_name = fields.CharField(max_length=256, default="")  # Entra's displayName limit
    kind = fields.CharEnumField(AccountKind, max_length=20, default=AccountKind.USER)
    subscription: fields.ForeignKeyRelation[Subscription] = fields.ForeignKeyField(
        "models.Subscription", related_name="accounts", on_delete=fields.RESTRICT
    )
    created_at = fields.DatetimeField(auto_now_add=True)

    subscription_id: int

    class Meta:
        table = "account"


class PhoneNumber(Model):
    id = fields.IntField(primary_key=True)
    e164 = fields.CharField(max_length=20, unique=True)
    country = fields.CharField(max_length=2, db_index=True)
    number_type = fields.CharEnumField(NumberType, max_length=20)
    state = fields.CharEnumField(NumberState, max_length=20, default=NumberState.AVAILABLE)
    subscription: fields.ForeignKeyNullableRelation[Subscription] = fields.ForeignKeyField(
        "models.Subscription", related_name="numbers", null=True, on_delete=fields.RESTRICT
    )
    # One number per account: a Teams user or resource account has one line URI.
    holder: fields.ForeignKeyNullableRelation[Account] = fields.ForeignKeyField(
        "models.Account", related_name="numbers", null=True, unique=True, on_delete=fields.RESTRICT
    )
    quarantined_until = fields.DatetimeField(null=True)
    # The Teams emergency location (LIS location id) passed as `locationId` when provisioned.
    emergency_location_id = fields.CharField(max_length=64, null=True)
    updated_at = fields.DatetimeField(auto_now=True)

    subscription_id: int | None
    holder_id: int | None

    class Meta:
        table = "phone_number"
        indexes = (("country", "number_type", "state"),)


class SipTrunk(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100, unique=True)
    subscription: fields.ForeignKeyRelation[Subscription] = fields.ForeignKeyField(
        "models.Subscription", related_name="trunks", on_delete=fields.RESTRICT
    )
    channels = fields.IntField()
    created_at = fields.DatetimeField(auto_now_add=True)

    subscription_id: int

    class Meta:
        table = "sip_trunk"


class LicenseAssignment(Model):
    id = fields.IntField(primary_key=True)
    product: fields.ForeignKeyRelation[Product] = fields.ForeignKeyField(
        "models.Product", related_name="assignments", on_delete=fields.RESTRICT
    )
    account: fields.ForeignKeyRelation[Account] = fields.ForeignKeyField(
        "models.Account", related_name="licenses", on_delete=fields.RESTRICT
    )
    created_at = fields.DatetimeField(auto_now_add=True)

    product_id: int
    account_id: int

    class Meta:
        table = "license_assignment"
        unique_together = (("product", "account"),)


class ServicePack(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "service_pack"


class ServicePackLicense(Model):
    id = fields.IntField(primary_key=True)
    pack: fields.ForeignKeyRelation[ServicePack] = fields.ForeignKeyField(
        "models.ServicePack", related_name="licenses", on_delete=fields.CASCADE
    )
    product: fields.ForeignKeyRelation[Product] = fields.ForeignKeyField(
        "models.Product", related_name="packs", on_delete=fields.RESTRICT
    )

    pack_id: int
    product_id: int

    class Meta:
        table = "service_pack_license"
        unique_together = (("pack", "product"),)


class ApprovalRequest(Model):
    """A change above the approval threshold, waiting for an approver."""

    id = fields.CharField(max_length=16, primary_key=True)
    action = fields.CharField(max_length=40)
    payload: Any = fields.JSONField()
    summary = fields.CharField(max_length=500)
    before: Any = fields.JSONField(null=True)
    after: Any = fields.JSONField(null=True)
    requester_id = fields.CharField(max_length=255)
    requester_name = fields.CharField(max_length=256, default="")
    status = fields.CharEnumField(ApprovalStatus, max_length=20, default=ApprovalStatus.PENDING)
    created_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField()
    decided_by_id = fields.CharField(max_length=255, null=True)
    decided_by_name = fields.CharField(max_length=256, null=True)
    decided_at = fields.DatetimeField(null=True)
    reason = fields.CharField(max_length=500, null=True)
    conversation_id = fields.CharField(max_length=512, null=True)
    card_activity_id = fields.CharField(max_length=255, null=True)
    # What people type and read aloud: A-17 (never reused); buttons keep `id`.
    number = fields.IntField(null=True, unique=True)

    class Meta:
        table = "approval_request"


class AuditEvent(Model):
    """Append-only, hash-chained record of every change."""

    id = fields.BigIntField(primary_key=True)
    at = fields.DatetimeField()
    actor_id = fields.CharField(max_length=255)
    actor_name = fields.CharField(max_length=256, default="")
    source = fields.CharField(max_length=20)
    action = fields.CharField(max_length=60)
    target = fields.CharField(max_length=255)
    before: Any = fields.JSONField(null=True)
    after: Any = fields.JSONField(null=True)
    correlation_id = fields.CharField(max_length=255, null=True, db_index=True)
    prev_hash = fields.CharField(max_length=64)
    hash = fields.CharField(max_length=64)

    class Meta:
        table = "audit_event"


class AuditHead(Model):
    """One row whose lock serialises appends to the audit chain."""

    id = fields.IntField(primary_key=True)
    last_id = fields.BigIntField(default=0)
    last_hash = fields.CharField(max_length=64)

    class Meta:
        table = "audit_head"


class RequestKey(Model):
    """An activity id or card submission already carried out: the same one again has no effect."""

    # `activity:` + the hash of tenant, conversation and activity id (bot.teams.bot), or
    # `form:` + a card form's id; `legacy:` + a bare activity id written before migration 0005.

    key = fields.CharField(max_length=300, primary_key=True)
    outcome: Any = fields.JSONField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "request_key"


class ConversationRef(Model):
    """A stored conversation reference, so proactive sends survive restarts."""

    id = fields.IntField(primary_key=True)
    conversation_id = fields.CharField(max_length=512, unique=True)
    reference: Any = fields.JSONField()
    tenant_id = fields.CharField(max_length=64, null=True)
    service_url = fields.CharField(max_length=512)
    active = fields.BooleanField(default=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "conversation_ref"


class DigestSubscription(Model):
    id = fields.IntField(primary_key=True)
    conversation: fields.ForeignKeyRelation[ConversationRef] = fields.ForeignKeyField(
        "models.ConversationRef", related_name="digests", on_delete=fields.CASCADE
    )
    cron = fields.CharField(max_length=100)
    timezone = fields.CharField(max_length=64, default="UTC")
    description = fields.CharField(max_length=200, default="")
    created_by = fields.CharField(max_length=256, default="")
    active = fields.BooleanField(default=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    conversation_id: int

    class Meta:
        table = "digest_subscription"


class DigestDelivery(Model):
    id = fields.IntField(primary_key=True)
    digest: fields.ForeignKeyRelation[DigestSubscription] = fields.ForeignKeyField(
        "models.DigestSubscription", related_name="deliveries", on_delete=fields.CASCADE
    )
    slot = fields.DatetimeField()
    status = fields.CharField(max_length=20, default="pending")
    attempts = fields.IntField(default=0)
    sent_at = fields.DatetimeField(null=True)
    error = fields.CharField(max_length=500, null=True)
    # Which scheduler instance claimed the slot and when: a claim left pending by an instance
    # that died is taken over once it is stale.
    claimed_by = fields.CharField(max_length=100, null=True)
    claimed_at = fields.DatetimeField(null=True)
    # The id the Bot Connector gave the posted activity.
    activity_id = fields.CharField(max_length=255, null=True)

    digest_id: int

    class Meta:
        table = "digest_delivery"
        unique_together = (("digest", "slot"),)


class UsageSnapshot(Model):
    id = fields.IntField(primary_key=True)
    day = fields.DateField()
    product: fields.ForeignKeyRelation[Product] = fields.ForeignKeyField(
        "models.Product", related_name="snapshots", on_delete=fields.CASCADE
    )
    capacity = fields.BigIntField()
    allocated = fields.BigIntField()
    in_use = fields.BigIntField()

    product_id: int

    class Meta:
        table = "usage_snapshot"
        unique_together = (("day", "product"),)


class SchedulerLease(Model):
    """Leadership among bot instances: whoever holds an unexpired lease runs the schedule."""

    name = fields.CharField(max_length=50, primary_key=True)
    holder = fields.CharField(max_length=100)
    expires_at = fields.DatetimeField()

    class Meta:
        table = "scheduler_lease"


class JobState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DONE = "done"
    FAILED = "failed"


class JobAction(StrEnum):
    ASSIGN = "assign"
    UNASSIGN = "unassign"
    # Microsoft 365 licenses (assignLicense): `licenses` names what is added or removed.
    LICENSE_ADD = "license-add"
    LICENSE_REMOVE = "license-remove"


class ProvisioningJob(Model):
    """Outbox: a change the ledger made that is still to be written into the customer's tenant.

    Written in the same transaction as the ledger change; workers in every instance send it
    (pending → sent → done | failed). Jobs of one account or one number go in id order.
    """

    id = fields.BigIntField(primary_key=True)
    action = fields.CharEnumField(JobAction, max_length=20)
    state = fields.CharEnumField(JobState, max_length=20, default=JobState.PENDING)
    tenant_id = fields.CharField(max_length=64)
    subscription_code = fields.CharField(max_length=100)
    e164 = fields.CharField(max_length=20, db_index=True, null=True)  # None: a license job
    # The account the number goes to or comes from (its UPN kept: the account may go later).
    # None: a number held in Teams by someone the ledger does not know (a reconcile fix).
    account_id = fields.IntField(db_index=True, null=True)
    upn = fields.CharField(max_length=255)
    object_id = fields.CharField(max_length=64, null=True)
    number_type = fields.CharField(max_length=20)  # Graph's numberType
    location_id = fields.CharField(max_length=64, null=True)
    # License jobs: [{"product": NAME, "sku": PART-NUMBER-OR-ID}] added or removed in one
    # assignLicense call; `pack` when they are one account's share of a service pack (taken
    # back whole in the ledger if Microsoft 365 refuses any of them).
    licenses: Any = fields.JSONField(null=True)
    pack = fields.CharField(max_length=100, null=True)
    attempts = fields.IntField(default=0)
    due_at = fields.DatetimeField()
    # A worker's claim: nobody else takes the job until it runs out (a dead worker's claim
    # runs out too).
    claimed_by = fields.CharField(max_length=100, null=True)
    claimed_until = fields.DatetimeField(null=True)
    operation_url = fields.CharField(max_length=1000, null=True)
    reason = fields.CharField(max_length=1000, null=True)
    last_error = fields.CharField(max_length=1000, null=True)
    # Where the answer card is, to update it when the job ends.
    conversation_id = fields.CharField(max_length=512, null=True)
    card_activity_id = fields.CharField(max_length=255, null=True)
    # A bulk license answer's job: the card it shares with the other accounts' jobs (updated
    # when the last of them ends).
    bulk_card_id = fields.BigIntField(null=True, db_index=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "provisioning_job"
        indexes = (("state", "due_at"),)


class BulkCard(Model):
    """The answer card of a bulk license command (`license assign … to A,B,…`, `pack assign`)
    whose accounts' licenses go on into Microsoft 365: where it is, and what the ledger did per
    account, so whichever instance ends the last of its jobs (`ProvisioningJob.bulk_card_id`)
    can draw it again with Microsoft 365's answer per account, after a restart too."""

    id = fields.BigIntField(primary_key=True)
    conversation_id = fields.CharField(max_length=512)
    activity_id = fields.CharField(max_length=255)
    outcome: Any = fields.JSONField()  # bot.domain.licensing.BulkOutcome.as_json()
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "bulk_card"


class DriftKind(StrEnum):
    """A way the customer's tenant and the ledger disagree (reconcile)."""

    NUMBER_ONLY_IN_TEAMS = "number-only-in-teams"  # Teams has it assigned; the ledger does not
    NUMBER_MISSING_IN_TEAMS = "number-missing-in-teams"  # the ledger has it assigned; Teams not
    NUMBER_FAILED_IN_TEAMS = "number-failed-in-teams"  # Teams reports the assignment failed
    NUMBER_OTHER_HOLDER = "number-other-holder"  # both assigned, to different accounts
    LICENSE_ONLY_IN_TEAMS = "license-only-in-teams"
    LICENSE_MISSING_IN_TEAMS = "license-missing-in-teams"


class DriftState(StrEnum):
    OPEN = "open"
    FIXED = "fixed"


class ReconcileRun(Model):
    """One comparison of a subscription's tenant with the ledger."""

    id = fields.BigIntField(primary_key=True)
    subscription_code = fields.CharField(max_length=100, db_index=True)
    tenant_id = fields.CharField(max_length=64)
    trigger = fields.CharField(max_length=20)  # command | schedule
    started_at = fields.DatetimeField()
    finished_at = fields.DatetimeField(null=True)
    graph_calls = fields.IntField(default=0)
    differences = fields.IntField(default=0)
    error = fields.CharField(max_length=1000, null=True)

    class Meta:
        table = "reconcile_run"


class Drift(Model):
    """A difference a reconcile found, fixed once (either way)."""

    id = fields.BigIntField(primary_key=True)
    run: fields.ForeignKeyRelation[ReconcileRun] = fields.ForeignKeyField(
        "models.ReconcileRun", related_name="drifts", on_delete=fields.CASCADE
    )
    subscription_code = fields.CharField(max_length=100)
    kind = fields.CharEnumField(DriftKind, max_length=40)
    e164 = fields.CharField(max_length=20, null=True)
    license = fields.CharField(max_length=100, null=True)  # the ledger's product name
    sku = fields.CharField(max_length=100, null=True)
    # The account on each side: the ledger's UPN, and Teams' object id with its UPN if known.
    ledger_upn = fields.CharField(max_length=255, null=True)
    teams_object_id = fields.CharField(max_length=64, null=True)
    teams_upn = fields.CharField(max_length=255, null=True)
    ledger_state = fields.CharField(max_length=40, null=True)
    teams_state = fields.CharField(max_length=40, null=True)
    state = fields.CharEnumField(DriftState, max_length=20, default=DriftState.OPEN)
    fixed_to = fields.CharField(max_length=20, null=True)  # teams | ledger
    fixed_by = fields.CharField(max_length=255, null=True)
    fixed_at = fields.DatetimeField(null=True)

    run_id: int

    class Meta:
        table = "drift"

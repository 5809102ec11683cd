from typing import Any

from tortoise import migrations
from tortoise.migrations import operations as ops

#: The accounts that hold more than one number, with their numbers.
_SHARED_HOLDERS = """
SELECT a.upn, p.e164 FROM phone_number p JOIN account a ON a.id = p.holder_id
WHERE p.holder_id IN (
    SELECT holder_id FROM phone_number WHERE holder_id IS NOT NULL
    GROUP BY holder_id HAVING count(*) > 1
)
ORDER BY a.upn, p.e164
"""


async def _nothing_to_undo(apps: Any, schema_editor: Any) -> None:
    """Going back past 0009: the check changed nothing."""


class SharedNumbers(Exception):
    """The database breaks one number per account: the unique index cannot be made."""


async def _one_number_per_account(apps: Any, schema_editor: Any) -> None:
    """Stop, naming them, where an account already holds several numbers (data that broke
    SPEC §2.4 before the schema held it): the index would fail with a bare integrity error."""
    _, rows = await schema_editor.client.execute_query(_SHARED_HOLDERS)
    if not rows:
        return
    held: dict[str, list[str]] = {}
    for row in rows:
        held.setdefault(row["upn"], []).append(row["e164"])
    listed = "; ".join(f"{upn}: {', '.join(numbers)}" for upn, numbers in held.items())
    raise SharedNumbers(
        f"Migration 0009 stopped, nothing changed: {len(held)} account(s) hold more than one "
        f"number, which the ledger forbids ({listed}). Release all but one number of each "
        "(with the bot of the version before, or in the database), then start again."
    )


class Migration(migrations.Migration):
    """Indexes the ledger's checks need at scale, and the one number per account the model
    declares.

    - phone_number(holder_id), UNIQUE: models.PhoneNumber.holder says unique=True and the
      ledger relies on it (a resource account takes no seat lock; numbers._give maps the
      IntegrityError to "was given another number at the same moment"), but 0001 created no
      constraint for it (Tortoise 1.1.9 makes none for a unique foreign key). Without any index
      every assignment scanned the whole inventory for the account's number, and the seats
      count joined every assigned number with every account: seeding 2,000 users took 47 s
      for 800 on PostgreSQL and grew with the square of the data.
    - account(subscription_id): the seats and license counts and the directory per
      subscription.
    - license_assignment(account_id): a user's licenses (the unique index leads with the
      product).
    """

    dependencies = [("models", "0008_licenses_reconcile")]

    initial = False

    operations = [
        ops.RunPython(_one_number_per_account, _nothing_to_undo),
        ops.RunSQL(
            "CREATE UNIQUE INDEX phone_number_holder_uniq ON phone_number (holder_id)",
            reverse_sql="DROP INDEX phone_number_holder_uniq",
        ),
        ops.RunSQL(
            "CREATE INDEX account_subscription_idx ON account (subscription_id)",
            reverse_sql="DROP INDEX account_subscription_idx",
        ),
        ops.RunSQL(
            "CREATE INDEX license_assignment_account_idx ON license_assignment (account_id)",
            reverse_sql="DROP INDEX license_assignment_account_idx",
        ),
    ]

from tortoise import migrations
from tortoise.migrations import operations as ops


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

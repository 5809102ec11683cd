from tortoise import migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    """A UPN is case-insensitive (as in Entra ID): one account per UPN whatever its case.

    The expression index also serves the look-ups by lower(upn).
    """

    dependencies = [("models", "0003_digest_delivery_claim")]

    operations = [
        ops.RunSQL(
            "CREATE UNIQUE INDEX account_upn_lower_uniq ON account (lower(upn))",
            reverse_sql="DROP INDEX account_upn_lower_uniq",
        ),
    ]

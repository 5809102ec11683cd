from tortoise import migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    """The audit chain starts from one head row with the all-zero genesis hash."""

    dependencies = [("models", "0001_initial")]

    operations = [
        ops.RunSQL(
            "INSERT INTO audit_head (id, last_id, last_hash) VALUES "
            "(1, 0, '0000000000000000000000000000000000000000000000000000000000000000')",
            reverse_sql="DELETE FROM audit_head WHERE id = 1",
        ),
    ]

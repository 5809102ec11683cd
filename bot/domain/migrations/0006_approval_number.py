from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    """Approval requests get a short number people can type (A-17); existing requests are
    numbered in the order they were made."""

    dependencies = [("models", "0005_identity_lengths_and_scoped_request_keys")]

    initial = False

    operations = [
        ops.AddField(
            model_name="ApprovalRequest",
            name="number",
            field=fields.IntField(null=True, unique=True),
        ),
        ops.RunSQL(
            "UPDATE approval_request SET number = (SELECT COUNT(*) FROM approval_request AS o "
            "WHERE o.created_at < approval_request.created_at OR (o.created_at = "
            "approval_request.created_at AND o.id <= approval_request.id))",
            reverse_sql="UPDATE approval_request SET number = NULL",
        ),
    ]

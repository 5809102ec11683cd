from tortoise import migrations
from tortoise.migrations import operations as ops
from orjson import loads
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields

class Migration(migrations.Migration):
    """Bulk license answer cards kept up to date: where the card is and what the ledger did
    (bulk_card), and the card each license job belongs to."""

    dependencies = [('models', '0009_holder_and_account_indexes')]

    initial = False

    operations = [
        ops.CreateModel(
            name='BulkCard',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('conversation_id', fields.CharField(max_length=512)),
                ('activity_id', fields.CharField(max_length=255)),
                ('outcome', fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'bulk_card', 'app': 'models', 'pk_attr': 'id', 'table_description': 'The answer card of a bulk license command (`license assign … to A,B,…`, `pack assign`)'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='ProvisioningJob',
            name='bulk_card_id',
            field=fields.BigIntField(null=True, db_index=True),
        ),
    ]

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0002_audit_genesis')]

    initial = False

    operations = [
        ops.AddField(
            model_name='DigestDelivery',
            name='activity_id',
            field=fields.CharField(null=True, max_length=255),
        ),
        ops.AddField(
            model_name='DigestDelivery',
            name='claimed_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='DigestDelivery',
            name='claimed_by',
            field=fields.CharField(null=True, max_length=100),
        ),
    ]

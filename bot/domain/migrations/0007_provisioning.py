from tortoise import migrations
from tortoise.migrations import operations as ops
from bot.domain.models import JobAction, JobState
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    """Provisioning into the customer's tenant: the job outbox, the per-customer switch and
    the emergency location of a number."""

    dependencies = [('models', '0006_approval_number')]

    initial = False

    operations = [
        ops.CreateModel(
            name='ProvisioningJob',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('action', fields.CharEnumField(description='ASSIGN: assign\nUNASSIGN: unassign', enum_type=JobAction, max_length=20)),
                ('state', fields.CharEnumField(default=JobState.PENDING, description='PENDING: pending\nSENT: sent\nDONE: done\nFAILED: failed', enum_type=JobState, max_length=20)),
                ('tenant_id', fields.CharField(max_length=64)),
                ('subscription_code', fields.CharField(max_length=100)),
                ('e164', fields.CharField(db_index=True, max_length=20)),
                ('account_id', fields.IntField(db_index=True)),
                ('upn', fields.CharField(max_length=255)),
                ('object_id', fields.CharField(null=True, max_length=64)),
                ('number_type', fields.CharField(max_length=20)),
                ('location_id', fields.CharField(null=True, max_length=64)),
                ('attempts', fields.IntField(default=0)),
                ('due_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('claimed_by', fields.CharField(null=True, max_length=100)),
                ('claimed_until', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('operation_url', fields.CharField(null=True, max_length=1000)),
                ('reason', fields.CharField(null=True, max_length=1000)),
                ('last_error', fields.CharField(null=True, max_length=1000)),
                ('conversation_id', fields.CharField(null=True, max_length=512)),
                ('card_activity_id', fields.CharField(null=True, max_length=255)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
                ('finished_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'provisioning_job', 'app': 'models', 'indexes': [Index(fields=['state', 'due_at'])], 'pk_attr': 'id', 'table_description': "Outbox: a change the ledger made that is still to be written into the customer's tenant."},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Customer',
            name='provisioning',
            field=fields.BooleanField(default=True),
        ),
        ops.AddField(
            model_name='PhoneNumber',
            name='emergency_location_id',
            field=fields.CharField(null=True, max_length=64),
        ),
    ]

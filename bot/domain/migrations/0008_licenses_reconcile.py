from tortoise import migrations
from tortoise.migrations import operations as ops
from bot.domain.models import DriftKind, DriftState, JobAction
from orjson import loads
from tortoise.fields.base import OnDelete
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields

class Migration(migrations.Migration):
    """Licenses provisioned into Microsoft 365 (license jobs in the outbox: no number, the
    licenses and pack they carry) and reconcile (its runs and the differences found)."""

    dependencies = [('models', '0007_provisioning')]

    initial = False

    operations = [
        ops.CreateModel(
            name='ReconcileRun',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('subscription_code', fields.CharField(db_index=True, max_length=100)),
                ('tenant_id', fields.CharField(max_length=64)),
                ('trigger', fields.CharField(max_length=20)),
                ('started_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('finished_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('graph_calls', fields.IntField(default=0)),
                ('differences', fields.IntField(default=0)),
                ('error', fields.CharField(null=True, max_length=1000)),
            ],
            options={'table': 'reconcile_run', 'app': 'models', 'pk_attr': 'id', 'table_description': "One comparison of a subscription's tenant with the ledger."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Drift',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('run', fields.ForeignKeyField('models.ReconcileRun', source_field='run_id', db_constraint=True, to_field='id', related_name='drifts', on_delete=OnDelete.CASCADE)),
                ('subscription_code', fields.CharField(max_length=100)),
                ('kind', fields.CharEnumField(description='NUMBER_ONLY_IN_TEAMS: number-only-in-teams\nNUMBER_MISSING_IN_TEAMS: number-missing-in-teams\nNUMBER_FAILED_IN_TEAMS: number-failed-in-teams\nNUMBER_OTHER_HOLDER: number-other-holder\nLICENSE_ONLY_IN_TEAMS: license-only-in-teams\nLICENSE_MISSING_IN_TEAMS: license-missing-in-teams', enum_type=DriftKind, max_length=40)),
                ('e164', fields.CharField(null=True, max_length=20)),
                ('license', fields.CharField(null=True, max_length=100)),
                ('sku', fields.CharField(null=True, max_length=100)),
                ('ledger_upn', fields.CharField(null=True, max_length=255)),
                ('teams_object_id', fields.CharField(null=True, max_length=64)),
                ('teams_upn', fields.CharField(null=True, max_length=255)),
                ('ledger_state', fields.CharField(null=True, max_length=40)),
                ('teams_state', fields.CharField(null=True, max_length=40)),
                ('state', fields.CharEnumField(default=DriftState.OPEN, description='OPEN: open\nFIXED: fixed', enum_type=DriftState, max_length=20)),
                ('fixed_to', fields.CharField(null=True, max_length=20)),
                ('fixed_by', fields.CharField(null=True, max_length=255)),
                ('fixed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'drift', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A difference a reconcile found, fixed once (either way).'},
            bases=['Model'],
        ),
        ops.AlterField(
            model_name='ProvisioningJob',
            name='account_id',
            field=fields.IntField(null=True, db_index=True),
        ),
        ops.AlterField(
            model_name='ProvisioningJob',
            name='action',
            field=fields.CharEnumField(description='ASSIGN: assign\nUNASSIGN: unassign\nLICENSE_ADD: license-add\nLICENSE_REMOVE: license-remove', enum_type=JobAction, max_length=20),
        ),
        ops.AlterField(
            model_name='ProvisioningJob',
            name='e164',
            field=fields.CharField(null=True, db_index=True, max_length=20),
        ),
        ops.AddField(
            model_name='ProvisioningJob',
            name='licenses',
            field=fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads),
        ),
        ops.AddField(
            model_name='ProvisioningJob',
            name='pack',
            field=fields.CharField(null=True, max_length=100),
        ),
    ]

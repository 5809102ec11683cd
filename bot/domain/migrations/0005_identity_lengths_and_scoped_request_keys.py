from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Widen(ops.AlterField):
    """A longer VARCHAR. PostgreSQL changes the column in place (a longer varchar needs no
    rewrite). SQLite does not enforce a VARCHAR's length, and altering a column there rebuilds
    the table, which would drop the indexes other migrations made by hand (0004's): only the
    recorded state changes."""

    async def database_forward(self, app_label, old_state, new_state, state_editor=None):  # type: ignore[no-untyped-def]
        if state_editor is not None and state_editor.DIALECT != "sqlite":
            await super().database_forward(app_label, old_state, new_state, state_editor)

    async def database_backward(self, app_label, old_state, new_state, state_editor=None):  # type: ignore[no-untyped-def]
        if state_editor is not None and state_editor.DIALECT != "sqlite":
            await super().database_backward(app_label, old_state, new_state, state_editor)


# Keys written before this migration were an activity id alone, which Teams makes unique only
# within a conversation (issue 16 item 3). They cannot be rescoped (the conversation was not
# kept), so they are kept, outcomes and all, under `legacy:` where no new key can meet them.
# Card submissions keep their own `form:` keys (and `form:…#…` per user of a bulk operation).
RESCOPE = (
    "UPDATE request_key SET key = 'legacy:' || key "
    "WHERE key NOT LIKE 'form:%' AND key NOT LIKE 'activity:%' AND key NOT LIKE 'legacy:%'"
)
UNSCOPE = "UPDATE request_key SET key = substr(key, 8) WHERE key LIKE 'legacy:%'"


class Migration(migrations.Migration):
    """Identity text of any length Entra allows, and idempotency keys scoped to the activity.

    Display names hold 256 characters (Entra's displayName limit; the columns held 255, so a
    256-character name failed every change on PostgreSQL); requester and decider ids hold 255
    like the audit's actor id (they held 64, and were cut to fit). Request keys hold 300, room
    for the `legacy:` prefix of any key written before.
    """

    dependencies = [("models", "0004_account_upn_case_insensitive")]

    initial = False

    operations = [
        Widen(
            model_name="Account",
            name="display_name",
            field=fields.CharField(default="", max_length=256),
        ),
        Widen(
            model_name="ApprovalRequest",
            name="requester_id",
            field=fields.CharField(max_length=255),
        ),
        Widen(
            model_name="ApprovalRequest",
            name="requester_name",
            field=fields.CharField(default="", max_length=256),
        ),
        Widen(
            model_name="ApprovalRequest",
            name="decided_by_id",
            field=fields.CharField(null=True, max_length=255),
        ),
        Widen(
            model_name="ApprovalRequest",
            name="decided_by_name",
            field=fields.CharField(null=True, max_length=256),
        ),
        Widen(
            model_name="AuditEvent",
            name="actor_name",
            field=fields.CharField(default="", max_length=256),
        ),
        Widen(
            model_name="DigestSubscription",
            name="created_by",
            field=fields.CharField(default="", max_length=256),
        ),
        Widen(
            model_name="RequestKey",
            name="key",
            field=fields.CharField(primary_key=True, max_length=300),
        ),
        ops.RunSQL(RESCOPE, reverse_sql=UNSCOPE),
    ]

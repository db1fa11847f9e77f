"""identities and named limits: limits shared by all of a customer's keys

Revision ID: e5f9b3c7d2a1
Revises: d4e8a2b6c1f3
Create Date: 2026-12-06

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "e5f9b3c7d2a1"
down_revision = "d4e8a2b6c1f3"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "keyservice_identities",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("external_client_id", sa.String(length=200), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyservice_identities")),
        sa.UniqueConstraint("external_client_id", name=op.f("uq_keyservice_identities_external_client_id")),
    )
    op.create_table(
        "keyservice_named_limits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("identity_id", sa.String(length=16), nullable=True),
        sa.Column("key_id", sa.String(length=16), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("auto_apply", sa.Boolean(), nullable=False),
        sa.Column("rate_limit", sa.Integer(), nullable=True),
        sa.Column("period", sa.Integer(), nullable=True),
        sa.Column("remaining", sa.Integer(), nullable=True),
        sa.Column("refill_amount", sa.Integer(), nullable=True),
        sa.Column("refill_interval", sa.String(length=10), nullable=True),
        sa.Column("refilled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("low_threshold", sa.Integer(), nullable=True),
        sa.Column("low_announced", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("rate_limited_announced_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["keyservice_identities.id"],
            name=op.f("fk_keyservice_named_limits_identity_id_keyservice_identities"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["keyservice_api_keys.id"],
            name=op.f("fk_keyservice_named_limits_key_id_keyservice_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyservice_named_limits")),
        sa.UniqueConstraint("identity_id", "name", name=op.f("uq_keyservice_named_limits_identity_id")),
        sa.UniqueConstraint("key_id", "name", name=op.f("uq_keyservice_named_limits_key_id")),
    )
    with op.batch_alter_table("keyservice_named_limits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_keyservice_named_limits_identity_id"), ["identity_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_keyservice_named_limits_key_id"), ["key_id"], unique=False)
    with op.batch_alter_table("keyservice_key_changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client", sa.String(length=200), nullable=True))


def downgrade():
    with op.batch_alter_table("keyservice_key_changes", schema=None) as batch_op:
        batch_op.drop_column("client")
    with op.batch_alter_table("keyservice_named_limits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keyservice_named_limits_key_id"))
        batch_op.drop_index(batch_op.f("ix_keyservice_named_limits_identity_id"))
    op.drop_table("keyservice_named_limits")
    op.drop_table("keyservice_identities")

"""webhooks: endpoints, outbox, deliveries; usage_exhausted_at and expiry_announced_for

Revision ID: 6cbaba15cd63
Revises: 4d2a9c7e5b10
Create Date: 2026-12-01

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "6cbaba15cd63"
down_revision = "4d2a9c7e5b10"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "keyservice_webhook_endpoints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("external_client_id", sa.String(length=200), nullable=True),
        sa.Column("encrypted_secret", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyservice_webhook_endpoints")),
    )
    with op.batch_alter_table("keyservice_webhook_endpoints", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_keyservice_webhook_endpoints_external_client_id"), ["external_client_id"], unique=False
        )

    op.create_table(
        "keyservice_webhook_messages",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyservice_webhook_messages")),
    )
    with op.batch_alter_table("keyservice_webhook_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_keyservice_webhook_messages_key_id"), ["key_id"], unique=False)

    op.create_table(
        "keyservice_webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retry_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["keyservice_webhook_endpoints.id"],
            name=op.f("fk_keyservice_webhook_deliveries_endpoint_id_keyservice_webhook_endpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["keyservice_webhook_messages.id"],
            name=op.f("fk_keyservice_webhook_deliveries_message_id_keyservice_webhook_messages"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyservice_webhook_deliveries")),
        sa.UniqueConstraint("message_id", "endpoint_id", name=op.f("uq_keyservice_webhook_deliveries_message_id")),
    )
    with op.batch_alter_table("keyservice_webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_keyservice_webhook_deliveries_endpoint_id"), ["endpoint_id"], unique=False)
        batch_op.create_index(
            "ix_keyservice_webhook_deliveries_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )

    with op.batch_alter_table("keyservice_api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("usage_exhausted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("expiry_announced_for", sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table("keyservice_api_keys", schema=None) as batch_op:
        batch_op.drop_column("expiry_announced_for")
        batch_op.drop_column("usage_exhausted_at")

    with op.batch_alter_table("keyservice_webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_keyservice_webhook_deliveries_status_next_attempt_at")
        batch_op.drop_index(batch_op.f("ix_keyservice_webhook_deliveries_endpoint_id"))

    op.drop_table("keyservice_webhook_deliveries")
    with op.batch_alter_table("keyservice_webhook_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keyservice_webhook_messages_key_id"))

    op.drop_table("keyservice_webhook_messages")
    with op.batch_alter_table("keyservice_webhook_endpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keyservice_webhook_endpoints_external_client_id"))

    op.drop_table("keyservice_webhook_endpoints")

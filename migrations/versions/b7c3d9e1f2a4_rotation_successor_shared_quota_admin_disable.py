"""rotation successor, shared quota, disabled by admin

Revision ID: b7c3d9e1f2a4
Revises: 3fe168325262
Create Date: 2026-12-01

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "b7c3d9e1f2a4"
down_revision = "3fe168325262"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("keyservice_api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rotated_to", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("quota_key_id", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("disabled_by_admin", sa.Boolean(), server_default=sa.false(), nullable=False))
    # Who disabled a key before this revision is not known: only keys:admin may enable it again.
    op.execute("UPDATE keyservice_api_keys SET disabled_by_admin = true WHERE enabled = false")


def downgrade():
    with op.batch_alter_table("keyservice_api_keys", schema=None) as batch_op:
        batch_op.drop_column("disabled_by_admin")
        batch_op.drop_column("quota_key_id")
        batch_op.drop_column("rotated_to")

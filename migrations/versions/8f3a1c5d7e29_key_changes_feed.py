"""key changes: the feed every worker reads to forget its copies of changed keys

Revision ID: 8f3a1c5d7e29
Revises: a3f1c9d27b54
Create Date: 2026-12-02

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "8f3a1c5d7e29"
down_revision = "a3f1c9d27b54"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "keyservice_key_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=True),
        sa.Column("role", sa.String(length=100), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyservice_key_changes")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("keyservice_key_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_keyservice_key_changes_at"), ["at"], unique=False)


def downgrade():
    with op.batch_alter_table("keyservice_key_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keyservice_key_changes_at"))

    op.drop_table("keyservice_key_changes")

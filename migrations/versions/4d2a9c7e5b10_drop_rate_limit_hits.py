"""drop the rate-limit hits: windows now live in LMDB or Redis, in fixed space per key

Revision ID: 4d2a9c7e5b10
Revises: c6107f12b6d9
Create Date: 2026-12-03

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "4d2a9c7e5b10"
down_revision = "c6107f12b6d9"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_table("keyservice_ratelimit_hits")


def downgrade():
    op.create_table(
        "keyservice_ratelimit_hits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyservice_ratelimit_hits")),
    )
    with op.batch_alter_table("keyservice_ratelimit_hits", schema=None) as batch_op:
        batch_op.create_index("ix_keyservice_ratelimit_hits_key_at_seq", ["key", "at", "seq"], unique=False)

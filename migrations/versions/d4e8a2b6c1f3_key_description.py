"""key description: what a key is for, in its owner's words

Revision ID: d4e8a2b6c1f3
Revises: 8f3a1c5d7e29
Create Date: 2026-12-06

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "d4e8a2b6c1f3"
down_revision = "8f3a1c5d7e29"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("keyservice_api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("description", sa.String(length=1000), nullable=True))


def downgrade():
    with op.batch_alter_table("keyservice_api_keys", schema=None) as batch_op:
        batch_op.drop_column("description")

"""readiness probe: a one-row table /readyz writes

Revision ID: c6107f12b6d9
Revises: b7c3d9e1f2a4
Create Date: 2026-12-01

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "c6107f12b6d9"
down_revision = "b7c3d9e1f2a4"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "keyservice_readiness_probe",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("probed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyservice_readiness_probe")),
    )


def downgrade():
    op.drop_table("keyservice_readiness_probe")

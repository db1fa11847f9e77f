"""signing keys for access tokens

Revision ID: a3f1c9d27b54
Revises: 6cbaba15cd63
Create Date: 2026-12-08

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "a3f1c9d27b54"
down_revision = "6cbaba15cd63"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "keyservice_signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("algorithm", sa.String(length=10), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("encrypted", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activates_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_keyservice_signing_keys")),
        sa.UniqueConstraint("generation", name=op.f("uq_keyservice_signing_keys_generation")),
    )


def downgrade():
    op.drop_table("keyservice_signing_keys")

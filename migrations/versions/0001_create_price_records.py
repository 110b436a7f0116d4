"""Create price_records: one row per (ticker, timestamp), exact NUMERIC prices.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "price_records",
        sa.Column("ticker", sa.String(length=32), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), autoincrement=False, nullable=False),
        # TEXT on SQLite, whose NUMERIC would round through a float (see ExactDecimal).
        sa.Column("price", sa.Numeric().with_variant(sa.Text(), "sqlite"), nullable=False),
        sa.CheckConstraint("price > 0", name=op.f("ck_price_records_price_positive")),
        sa.PrimaryKeyConstraint("ticker", "timestamp", name=op.f("pk_price_records")),
    )


def downgrade():
    op.drop_table("price_records")

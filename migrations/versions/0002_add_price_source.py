"""Add price_records.source: 'live' (get_index_price) or 'backfill' (get_index_chart_data).

Existing rows are live. On PostgreSQL 11+ a column with a constant default is added without
rewriting the table (a catalogue change; 2.1 million rows: see docs/RELIABILITY.md), and the
CHECK is added NOT VALID, then validated under a lock that lets reads and writes go on. The
partial index serves `source=backfill` pages (few rows) without scanning the live ones.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHECK = "ck_price_records_source_known"
INDEX = "ix_price_records_backfill"


def upgrade():
    op.add_column(
        "price_records",
        sa.Column("source", sa.String(length=8), nullable=False, server_default="live"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE price_records ADD CONSTRAINT {CHECK}"
            " CHECK (source IN ('live', 'backfill')) NOT VALID"
        )
        op.execute(f"ALTER TABLE price_records VALIDATE CONSTRAINT {CHECK}")
    op.create_index(
        INDEX,
        "price_records",
        ["ticker", "timestamp"],
        postgresql_where=sa.text("source = 'backfill'"),
        sqlite_where=sa.text("source = 'backfill'"),
    )


def downgrade():
    op.drop_index(INDEX, table_name="price_records")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE price_records DROP CONSTRAINT {CHECK}")
    # SQLite (3.35+) drops a column in place when no index or constraint names it.
    op.drop_column("price_records", "source")

"""Every migration up and down on a populated table, on PostgreSQL and SQLite."""

import secrets

import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from tests.conftest import ADMIN_DATABASE_URL, ROOT, TEST_REDIS_URL, admin_connection
from tracker import create_app
from tracker.extensions import db

MIGRATIONS = str(ROOT / "migrations")
ROWS = [("btc_usd", 1763928000 + 60 * i, f"{86955 + i}.73") for i in range(100)]


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database(request, tmp_path):
    """A database with no schema at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    name = f"tracker_migrations_{secrets.token_hex(3)}"
    admin = admin_connection()
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(ADMIN_DATABASE_URL).set(database=name).render_as_string(False)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def table(app):
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM price_records ORDER BY timestamp"))
        return [tuple(row._mapping.values()) for row in rows], list(rows.keys())


def test_every_migration_goes_up_and_down_on_a_populated_table(empty_database):
    app = create_app({"DATABASE_URL": empty_database, "REDIS_URL": TEST_REDIS_URL})
    with app.app_context():
        upgrade(directory=MIGRATIONS, revision="0001")
        with db.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO price_records (ticker, timestamp, price) VALUES (:t, :ts, :p)"),
                [{"t": t, "ts": ts, "p": p} for t, ts, p in ROWS],
            )
        before, columns = table(app)

        upgrade(directory=MIGRATIONS)  # head: 0002 adds `source`
        after, columns_after = table(app)
        assert columns_after == [*columns, "source"]
        assert [row[:-1] for row in after] == before  # not a digit changed
        assert {row[-1] for row in after} == {"live"}  # existing rows are live
        indexes = {ix["name"] for ix in inspect(db.engine).get_indexes("price_records")}
        assert "ix_price_records_backfill" in indexes
        if db.engine.dialect.name == "postgresql":  # SQLite: validated in Python only
            with pytest.raises(IntegrityError, match="source_known"):
                with db.engine.begin() as connection:
                    connection.execute(
                        text("INSERT INTO price_records VALUES ('btc_usd', 1, 1, 'guess')")
                    )

        downgrade(directory=MIGRATIONS, revision="0001")
        assert table(app) == (before, columns)

        downgrade(directory=MIGRATIONS, revision="base")
        assert not inspect(db.engine).has_table("price_records")
        upgrade(directory=MIGRATIONS)
        assert inspect(db.engine).has_table("price_records")
        db.engine.dispose()

"""Every migration up, down and up again on a populated table, on PostgreSQL and SQLite."""

import secrets

import pytest
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from tests.conftest import ADMIN_DATABASE_URL, ROOT, TEST_REDIS_URL, admin_connection
from tracker import create_app
from tracker.extensions import db

MIGRATIONS = str(ROOT / "migrations")
SCRIPTS = ScriptDirectory(MIGRATIONS)
# Every revision, oldest first.
REVISIONS = [script.revision for script in reversed(list(SCRIPTS.walk_revisions()))]
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


def snapshot():
    """Every table but alembic's: its schema (columns, keys, indexes, checks) and sorted rows."""
    inspector = inspect(db.engine)
    tables = {}
    with db.engine.connect() as connection:
        for name in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
            columns = [
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)
            ]
            schema = {
                "columns": columns,
                "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
                "indexes": sorted(
                    (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                    for ix in inspector.get_indexes(name)
                ),
                "checks": sorted(
                    ck["name"] or ck["sqltext"] for ck in inspector.get_check_constraints(name)
                ),
            }
            rows = connection.execute(text(f'SELECT * FROM "{name}"'))
            # repr: Decimal('86955.730') differs from Decimal('86955.73'), as a price must.
            tables[name] = (schema, sorted(tuple(map(repr, row)) for row in rows))
    return tables


def kept(before, after):
    """The rows of `after`, cut down to the tables and columns `before` had."""
    result = {}
    for name, (schema, _) in before.items():
        after_schema, after_rows = after[name]
        names = [c[0] for c in after_schema["columns"]]
        positions = [names.index(c[0]) for c in schema["columns"]]
        result[name] = sorted(tuple(row[i] for i in positions) for row in after_rows)
    return result


def test_history_is_one_line_from_base_to_head():
    assert SCRIPTS.get_heads() == [REVISIONS[-1]]
    assert SCRIPTS.get_revision(REVISIONS[0]).down_revision is None
    for previous, revision in zip(REVISIONS, REVISIONS[1:], strict=False):
        assert SCRIPTS.get_revision(revision).down_revision == previous
    assert len(REVISIONS) == len(list((ROOT / "migrations" / "versions").glob("*.py")))


def test_every_migration_goes_up_and_down_on_a_populated_table(empty_database):
    """Walks every revision from the first to head: up one, down one, up again, rows in place.

    Generic over ScriptDirectory, so a new migration is covered without touching this test.
    """
    app = create_app({"DATABASE_URL": empty_database, "REDIS_URL": TEST_REDIS_URL})
    with app.app_context():
        upgrade(directory=MIGRATIONS, revision=REVISIONS[0])
        with db.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO price_records (ticker, timestamp, price) VALUES (:t, :ts, :p)"),
                [{"t": t, "ts": ts, "p": p} for t, ts, p in ROWS],
            )
        assert len(snapshot()["price_records"][1]) == len(ROWS)

        for previous, revision in zip(REVISIONS, REVISIONS[1:], strict=False):
            before = snapshot()
            upgrade(directory=MIGRATIONS, revision=revision)
            after = snapshot()
            # Up: not a row lost, not a digit changed in any column that was there.
            assert kept(before, after) == {name: rows for name, (_, rows) in before.items()}
            downgrade(directory=MIGRATIONS, revision=previous)
            assert snapshot() == before, f"{revision} down is not what {previous} was"
            upgrade(directory=MIGRATIONS, revision=revision)
            assert snapshot() == after, f"{revision} up again differs"

        downgrade(directory=MIGRATIONS, revision="base")
        assert snapshot() == {}
        upgrade(directory=MIGRATIONS)
        assert "price_records" in snapshot()
        db.engine.dispose()


def test_0002_marks_stored_rows_live_and_guards_the_source(empty_database):
    app = create_app({"DATABASE_URL": empty_database, "REDIS_URL": TEST_REDIS_URL})
    with app.app_context():
        upgrade(directory=MIGRATIONS, revision="0001")
        with db.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO price_records (ticker, timestamp, price) VALUES (:t, :ts, :p)"),
                [{"t": t, "ts": ts, "p": p} for t, ts, p in ROWS],
            )
        upgrade(directory=MIGRATIONS, revision="0002")
        schema, rows = snapshot()["price_records"]
        assert [c[0] for c in schema["columns"]][-1] == "source"
        assert {row[-1] for row in rows} == {repr("live")}  # existing rows are live
        assert "ix_price_records_backfill" in {ix[0] for ix in schema["indexes"]}
        if db.engine.dialect.name == "postgresql":  # SQLite: validated in Python only
            with pytest.raises(IntegrityError, match="source_known"):
                with db.engine.begin() as connection:
                    connection.execute(
                        text("INSERT INTO price_records VALUES ('btc_usd', 1, 1, 'guess')")
                    )
        db.engine.dispose()

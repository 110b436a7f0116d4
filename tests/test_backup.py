"""Backup and restore as docs/OPERATIONS.md says: pg_dump -Fc, pg_restore into a new database."""

import secrets
import shutil
import subprocess

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import ROOT, TEST_REDIS_URL, admin_connection, pg_connect
from tracker import create_app
from tracker.extensions import db

# Prices whose digits a lossy round trip would change: tiny, huge, trailing zeros kept. In 2017,
# where no other test writes: the table is shared with the rest of the session.
ROWS = [
    ("btc_usd", 1500000000, "86955.73", "live"),
    ("btc_usd", 1500000060, "86955.730", "backfill"),
    ("eth_usd", 1500000000, "0.000000000000000000000000000001", "live"),
    ("eth_usd", 1500000060, "123456789012345678901234567890.123456789", "live"),
] + [("btc_usd", 1500004000 + 60 * i, f"{87000 + i}.{i:02d}", "live") for i in range(200)]
TABLE = "SELECT ticker, timestamp, price::text, source FROM price_records ORDER BY 1, 2"
SCHEMA = """
    SELECT 'constraint', conname, contype::text FROM pg_constraint
     WHERE conrelid = 'price_records'::regclass
    UNION ALL
    SELECT 'index', indexname, indexdef FROM pg_indexes WHERE tablename = 'price_records'
    UNION ALL
    SELECT 'migration', version_num, '' FROM alembic_version
    ORDER BY 1, 2
"""


def query(database_url, sql):
    connection = pg_connect(database_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    finally:
        connection.close()


def run(argv):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{argv[0]}: {result.stderr}"


def test_a_dump_restored_into_a_fresh_database_has_every_row_exactly(postgres_url, tmp_path):
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump / pg_restore are not installed (Debian: postgresql-client)")
    assert "pg_dump -Fc" in (ROOT / "docs" / "OPERATIONS.md").read_text()
    fresh = f"tracker_restore_{secrets.token_hex(3)}"
    fresh_url = make_url(postgres_url).set(database=fresh).render_as_string(False)
    admin = admin_connection()
    connection = pg_connect(postgres_url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO price_records (ticker, timestamp, price, source)"
                " VALUES (%s, %s, %s, %s)",
                ROWS,
            )
        dump = tmp_path / "tracker.dump"
        run(["pg_dump", "-Fc", f"--file={dump}", f"--dbname={postgres_url}"])
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{fresh}"')
        run(
            ["pg_restore", "--no-owner", "--exit-on-error", "--single-transaction"]
            + [f"--dbname={fresh_url}", str(dump)]
        )

        restored = query(fresh_url, TABLE)
        assert restored == query(postgres_url, TABLE)
        assert set(ROWS) <= set(restored)  # every digit, as text (and any rows already there)
        assert query(fresh_url, SCHEMA) == query(postgres_url, SCHEMA)  # checks, keys, version
        for bad in ["('btc_usd', 1, 0, 'live')", "('btc_usd', 1, 1, 'guess')"]:  # checks work
            with pytest.raises(psycopg2.errors.CheckViolation):
                query(fresh_url, f"INSERT INTO price_records VALUES {bad}")
        app = create_app({"DATABASE_URL": fresh_url, "REDIS_URL": TEST_REDIS_URL})
        response = app.test_client().get("/api/v1/prices/at?ticker=eth_usd&timestamp=1500000060")
        assert '"price":123456789012345678901234567890.123456789,' in response.text
        with app.app_context():
            db.engine.dispose()
    finally:
        with connection, connection.cursor() as cursor:  # only ours: other rows may be in use
            cursor.executemany(
                "DELETE FROM price_records WHERE ticker = %s AND timestamp = %s",
                [row[:2] for row in ROWS],
            )
        connection.close()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
        admin.close()

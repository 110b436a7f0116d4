"""The price_records table, the queries everyone shares (latest, page, gaps, insert-ignore), and
the two ways to run a read: read() for a page, stream() for a whole range."""

import functools
import math
from decimal import Decimal

import psycopg2
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Index,
    Numeric,
    String,
    Text,
    TypeDecorator,
    bindparam,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from tracker.config import MAX_TICKER_LENGTH, READ_BIND
from tracker.extensions import db


class ExactDecimal(TypeDecorator):
    """A Decimal stored with exactly its digits: NUMERIC on PostgreSQL, TEXT on SQLite.

    SQLite has no decimal type; its NUMERIC would round through a float (2950.10 -> 2950.1,
    and anything past 15 digits). On PostgreSQL it adds nothing per row.
    """

    impl = Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def bind_processor(self, dialect):
        if dialect.name == "sqlite":
            return lambda value: None if value is None else str(value)
        return super().bind_processor(dialect)

    def result_processor(self, dialect, coltype):
        if dialect.name == "sqlite":
            return lambda value: None if value is None else Decimal(value)
        return super().result_processor(dialect, coltype)


class ExactSum:
    """SQLite aggregate exact_sum(price): the sum of stored decimal texts, exact, as text.

    SQLite's own sum() adds doubles; PostgreSQL's sum() of NUMERIC is exact already.
    """

    def __init__(self):
        self.total = None

    def step(self, value):
        if value is not None:
            self.total = Decimal(value) + (self.total or 0)

    def finalize(self):
        return None if self.total is None else str(self.total)


LIVE, BACKFILL = "live", "backfill"
SOURCES = (LIVE, BACKFILL)


class Price(db.Model):
    """One observation: the Deribit index price of a ticker at a UNIX second.

    (ticker, timestamp) is the primary key, so a re-run or a duplicate job can never store
    a second row for the same moment, and its index serves every query below.
    """

    __tablename__ = "price_records"
    __table_args__ = (
        CheckConstraint("price > 0", name="price_positive"),
        CheckConstraint("source IN ('live', 'backfill')", name="source_known"),
        Index(
            "ix_price_records_backfill",
            "ticker",
            "timestamp",
            postgresql_where=text("source = 'backfill'"),
            sqlite_where=text("source = 'backfill'"),
        ),
    )

    ticker = db.Column(String(MAX_TICKER_LENGTH), primary_key=True)
    timestamp = db.Column(BigInteger, primary_key=True, autoincrement=False)
    # Unconstrained NUMERIC keeps exactly the digits Deribit sent: no float, no fixed scale.
    price = db.Column(ExactDecimal(), nullable=False)
    # Where the price came from: LIVE (get_index_price in its slot) or BACKFILL (chart data).
    source = db.Column(String(8), nullable=False, server_default=LIVE)


# The window of the coverage figures (/tickers, /metrics).
DAY_SECONDS = 86400
# Rows per INSERT statement (SQLite allows 32,766 bound parameters; 4 a row).
INSERT_CHUNK_ROWS = 1000
# Earliest and latest timestamps a BIGINT holds: the bounds of a range left open.
FIRST, LAST = -(2**63), 2**63 - 1

# The API's queries, built once with bound parameters: building a statement per request and
# matching its result columns to the cached compiled form took a quarter of /prices/latest's
# time (profiled); a prebuilt statement is a plain cache hit.
_COLUMNS = (Price.ticker, Price.price, Price.timestamp, Price.source)
_NEWEST_AT = (
    select(*_COLUMNS)
    .where(Price.ticker == bindparam("ticker"), Price.timestamp <= bindparam("at"))
    .order_by(Price.timestamp.desc())
    .limit(1)
)
_OLDEST = (
    select(Price.timestamp)
    .where(Price.ticker == bindparam("ticker"))
    .order_by(Price.timestamp.asc())
    .limit(1)
)
_PAGE = (
    select(*_COLUMNS)
    .where(
        Price.ticker == bindparam("ticker"),
        Price.timestamp.between(bindparam("start"), bindparam("end")),
        Price.timestamp < bindparam("before"),
    )
    .order_by(Price.timestamp.desc())
    .limit(bindparam("limit"))
)
# A separate statement rather than "source = :source OR :source IS NULL", so that each plan is
# an index range scan: `source=backfill` reads the partial index of backfilled rows, not every
# live row before it.
_PAGE_OF_SOURCE = _PAGE.where(Price.source == bindparam("source"))
# The same rows with no limit: a whole range, for stream().
_RANGE = _PAGE.limit(None)
_RANGE_OF_SOURCE = _PAGE_OF_SOURCE.limit(None)
# The missing slots of [first_slot, last_slot] (slot = timestamp / interval) as ranges, in one
# pass over the primary-key index: each stored slot is compared with the one before it (the
# first with the slot before the range); the tail after the newest stored slot is the second
# part. Totals over all gaps ride along on every row, so `limit` cuts only the list.
_GAPS = text(
    """
    WITH observed AS (
        SELECT timestamp / :interval AS slot,
               lag(timestamp / :interval, 1, CAST(:first_slot - 1 AS BIGINT))
                   OVER (ORDER BY timestamp) AS previous
        FROM price_records
        WHERE ticker = :ticker AND timestamp BETWEEN :low AND :high
    ), gaps AS (
        SELECT previous + 1 AS first_missing, slot - 1 AS last_missing
        FROM observed WHERE slot > previous + 1
        UNION ALL
        SELECT coalesce(max(timestamp) / :interval + 1, :first_slot), :last_slot
        FROM price_records
        WHERE ticker = :ticker AND timestamp BETWEEN :low AND :high
        HAVING coalesce(max(timestamp) / :interval + 1, :first_slot) <= :last_slot
    )
    SELECT first_missing, last_missing, count(*) OVER (),
           sum(last_missing - first_missing + 1) OVER ()
    FROM gaps ORDER BY first_missing LIMIT :limit
    """
)
_SLOTS_BY_SOURCE = text(
    """
    SELECT source, count(DISTINCT timestamp / :interval) FROM price_records
    WHERE ticker = :ticker AND timestamp BETWEEN :low AND :high GROUP BY source
    """
)

# Every ticker with a row: one index probe per ticker (a loose index scan of the primary key)
# rather than a read of every row. TICKERS=all falls back on it when Deribit cannot be asked.
_STORED_TICKERS = text(
    """
    WITH RECURSIVE seen(ticker) AS (
        SELECT min(ticker) FROM price_records
        UNION ALL
        SELECT (SELECT min(ticker) FROM price_records WHERE ticker > seen.ticker)
        FROM seen WHERE seen.ticker IS NOT NULL
    )
    SELECT ticker FROM seen WHERE ticker IS NOT NULL
    """
)


def latest_price(ticker):
    """The newest (ticker, price, timestamp) of `ticker`, or None."""
    return price_at(ticker, None)


def price_at(ticker, timestamp):
    """The newest row of `ticker` at or before `timestamp` (any time when None), or None."""
    rows = read(_NEWEST_AT, ticker=ticker, at=LAST if timestamp is None else timestamp)
    return rows[0] if rows else None


def price_page(ticker, *, start=None, end=None, before=None, limit=100, source=None):
    """Rows of `ticker`, newest first, with start <= timestamp <= end and timestamp < before.

    Keyset pagination: `before` is the timestamp of the last row of the previous page, so a
    page deep in history is one index range scan, as cheap as the first. `source` keeps only
    live or only backfilled rows. Returns up to `limit` rows and whether more follow.
    """
    rows = read(
        _PAGE if source is None else _PAGE_OF_SOURCE,
        ticker=ticker,
        start=FIRST if start is None else start,
        end=LAST if end is None else end,
        before=LAST if before is None else before,
        limit=limit + 1,
        **({} if source is None else {"source": source}),
    )
    return rows[:limit], len(rows) > limit


def price_range(ticker, *, start=None, end=None, source=None):
    """The statement and parameters of every row of `ticker` in [start, end], newest first."""
    params = {
        "ticker": ticker,
        "start": FIRST if start is None else start,
        "end": LAST if end is None else end,
        "before": LAST,
    }
    if source is None:
        return _RANGE, params
    return _RANGE_OF_SOURCE, {**params, "source": source}


def oldest_timestamp(ticker, bind=READ_BIND):
    """The timestamp of the first stored row of `ticker`, or None."""
    rows = read(_OLDEST, bind=bind, ticker=ticker)
    return rows[0][0] if rows else None


def window_slots(interval, seconds, now):
    """The first and last slot of the `seconds` before `now`, the slot in progress left out."""
    return math.ceil((now - seconds) / interval), int(now) // interval - 1


def missing_slots(ticker, interval, first_slot, last_slot, limit=None, bind=READ_BIND):
    """The holes in `ticker`'s slots first_slot..last_slot (slot = timestamp // interval).

    Returns (ranges, gap_count, missing): up to `limit` (first, last) slot ranges with no row,
    oldest first, then how many ranges and slots are missing in all. Computed in the database
    in one pass over the range, never by loading its rows.
    """
    if last_slot < first_slot:
        return [], 0, 0
    rows = read(
        _GAPS,
        bind=bind,
        ticker=ticker,
        interval=interval,
        first_slot=first_slot,
        last_slot=last_slot,
        low=first_slot * interval,
        high=last_slot * interval + interval - 1,
        limit=LAST if limit is None else limit,
    )
    if not rows:
        return [], 0, 0
    return [(row[0], row[1]) for row in rows], rows[0][2], int(rows[0][3])


def stored_slots(ticker, interval, first_slot, last_slot):
    """How many slots of first_slot..last_slot hold a row of `ticker`, per source."""
    rows = read(
        _SLOTS_BY_SOURCE,
        ticker=ticker,
        interval=interval,
        low=first_slot * interval,
        high=last_slot * interval + interval - 1,
    )
    return {source: 0 for source in SOURCES} | dict(rows)


def stored_tickers(tickers, timestamp):
    """Which of `tickers` already have a row at `timestamp`."""
    query = select(Price.ticker).where(Price.ticker.in_(tickers), Price.timestamp == timestamp)
    return set(db.session.execute(query).scalars())


def stored_ticker_names():
    """Every ticker that has at least one stored price, sorted."""
    return sorted(row[0] for row in read(_STORED_TICKERS))


def read(query, *, bind=READ_BIND, **params):
    """The rows of a prebuilt read-only query, as tuples, on the autocommit read pool.

    One round trip to PostgreSQL (a session adds BEGIN and ROLLBACK, pre-ping a SELECT 1),
    and the statement runs on the pooled psycopg2 cursor: SQLAlchemy's result layer around
    it cost 60 of the 310 us of CPU /prices/latest took in-process (docs/PERFORMANCE.md).
    Errors become SQLAlchemy's, as from any other query. The read pool does not pre-ping
    (config.py): a connection a database restart killed fails once, is replaced, and the
    read runs again. `bind` WRITE_BIND reads on DATABASE_URL instead (what the jobs need).
    """
    engine = db.engines[bind]
    if engine.dialect.name != "postgresql":
        # SQLite (make run): no network round trips to save; SQLAlchemy's own path, whose
        # ExactDecimal turns the stored text back into Decimal.
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query, params)]
    sql, defaults = _compiled(query, engine.dialect)
    params = {**defaults, **params}
    for attempt in (1, 2):
        try:
            connection = engine.raw_connection()
        except psycopg2.Error as exc:
            raise DBAPIError.instance(sql, params, exc, psycopg2.Error) from exc
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        except psycopg2.Error as exc:
            if attempt == 1 and connection.dbapi_connection.closed:
                connection.invalidate(exc)
                engine.dispose()  # the others died with it: start a fresh pool
                continue
            raise DBAPIError.instance(sql, params, exc, psycopg2.Error) from exc
        finally:
            connection.close()
    raise AssertionError("unreachable")  # pragma: no cover


# Rows per fetch of a stream: ~0.5 MB of CSV, a few ms of work between two socket writes.
STREAM_BATCH_ROWS = 5000


def stream(query, params, batch_rows=STREAM_BATCH_ROWS):
    """The rows of a read-only query, in lists of up to `batch_rows`, however many there are.

    On PostgreSQL a server-side cursor (DECLARE ... FETCH) in a transaction on the read pool
    (so on the replica with READ_DATABASE_URL): the rows stay in the database until fetched,
    so memory is flat for a year of minutes or all of history, and each FETCH is its own
    statement under the statement timeout. SQLite's cursor steps through the rows as they are
    read. The connection goes back to its pool when the generator ends or is closed (a client
    that hung up).
    """
    engine = db.engines[READ_BIND]
    if engine.dialect.name != "postgresql":
        with engine.connect() as connection:
            result = connection.execution_options(yield_per=batch_rows).execute(query, params)
            for batch in result.partitions(batch_rows):
                yield [tuple(row) for row in batch]
        return
    sql, defaults = _compiled(query, engine.dialect)
    params = {**defaults, **params}
    for attempt in (1, 2):
        try:
            connection = engine.raw_connection()
        except psycopg2.Error as exc:
            raise DBAPIError.instance(sql, params, exc, psycopg2.Error) from exc
        cursor = None
        try:
            # The read pool is autocommit, and a cursor outside a transaction ends with its
            # DECLARE. psycopg2 switches this on the client alone (no round trip): BEGIN goes
            # with the DECLARE, and the pool gets the connection back in autocommit.
            connection.dbapi_connection.autocommit = False
            cursor = connection.cursor(name="stream")
            cursor.itersize = batch_rows
            cursor.execute(sql, params)
            batch = cursor.fetchmany(batch_rows)
            break
        except psycopg2.Error as exc:
            dead = connection.dbapi_connection.closed
            _end_stream(connection, cursor)
            # As in read(): no pre-ping on this pool, so a connection a database restart
            # killed fails here once, before any row was sent; the stream starts again.
            if attempt == 1 and dead:
                engine.dispose()
                continue
            raise DBAPIError.instance(sql, params, exc, psycopg2.Error) from exc
    try:
        while batch:
            yield batch
            batch = cursor.fetchmany(batch_rows)
    except psycopg2.Error as exc:
        raise DBAPIError.instance(sql, params, exc, psycopg2.Error) from exc
    finally:
        _end_stream(connection, cursor)


def _end_stream(connection, cursor):
    """Close a stream's cursor and transaction; its connection goes back to the read pool in
    autocommit, or is dropped if it died."""
    try:
        if cursor is not None:
            cursor.close()
        connection.dbapi_connection.rollback()
        connection.dbapi_connection.autocommit = True
    except psycopg2.Error:
        connection.invalidate()  # the pool opens a new one
    connection.close()


@functools.cache
def _compiled(query, dialect):
    compiled = query.compile(dialect=dialect)
    return compiled.string, compiled.params


def insert_prices(rows):
    """Insert {ticker, price, timestamp[, source]} rows, ignoring the ones already stored.

    One statement per 1,000 rows, one transaction; a stored row is never overwritten (a live
    price always wins over a later backfill of its slot). Returns the (ticker, timestamp) pairs
    actually inserted; the rest were duplicates.
    """
    if not rows:
        return []
    insert = sqlite.insert if db.engine.dialect.name == "sqlite" else postgresql.insert
    inserted = []
    for chunk in range(0, len(rows), INSERT_CHUNK_ROWS):
        statement = (
            insert(Price)
            .values(rows[chunk : chunk + INSERT_CHUNK_ROWS])
            .on_conflict_do_nothing(index_elements=["ticker", "timestamp"])
            .returning(Price.ticker, Price.timestamp)
        )
        inserted += [tuple(row) for row in db.session.execute(statement)]
    db.session.commit()
    return inserted

"""The price_records table and the queries everyone shares: latest, as-of, page, insert-ignore."""

import functools
from decimal import Decimal

import psycopg2
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Numeric,
    String,
    Text,
    TypeDecorator,
    bindparam,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from tracker.config import READ_BIND
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


class Price(db.Model):
    """One observation: the Deribit index price of a ticker at a UNIX second.

    (ticker, timestamp) is the primary key, so a re-run or a duplicate job can never store
    a second row for the same moment, and its index serves every query below.
    """

    __tablename__ = "price_records"
    __table_args__ = (CheckConstraint("price > 0", name="price_positive"),)

    ticker = db.Column(String(32), primary_key=True)
    timestamp = db.Column(BigInteger, primary_key=True, autoincrement=False)
    # Unconstrained NUMERIC keeps exactly the digits Deribit sent: no float, no fixed scale.
    price = db.Column(ExactDecimal(), nullable=False)


# Earliest and latest timestamps a BIGINT holds: the bounds of a range left open.
FIRST, LAST = -(2**63), 2**63 - 1

# The API's queries, built once with bound parameters: building a statement per request and
# matching its result columns to the cached compiled form took a quarter of /prices/latest's
# time (profiled); a prebuilt statement is a plain cache hit.
_NEWEST_AT = (
    select(Price.ticker, Price.price, Price.timestamp)
    .where(Price.ticker == bindparam("ticker"), Price.timestamp <= bindparam("at"))
    .order_by(Price.timestamp.desc())
    .limit(1)
)
_PAGE = (
    select(Price.ticker, Price.price, Price.timestamp)
    .where(
        Price.ticker == bindparam("ticker"),
        Price.timestamp.between(bindparam("start"), bindparam("end")),
        Price.timestamp < bindparam("before"),
    )
    .order_by(Price.timestamp.desc())
    .limit(bindparam("limit"))
)


def latest_price(ticker):
    """The newest (ticker, price, timestamp) of `ticker`, or None."""
    return price_at(ticker, None)


def price_at(ticker, timestamp):
    """The newest row of `ticker` at or before `timestamp` (any time when None), or None."""
    rows = read(_NEWEST_AT, ticker=ticker, at=LAST if timestamp is None else timestamp)
    return rows[0] if rows else None


def price_page(ticker, *, start=None, end=None, before=None, limit=100):
    """Rows of `ticker`, newest first, with start <= timestamp <= end and timestamp < before.

    Keyset pagination: `before` is the timestamp of the last row of the previous page, so a
    page deep in history is one index range scan, as cheap as the first. Returns up to
    `limit` rows and whether more follow.
    """
    rows = read(
        _PAGE,
        ticker=ticker,
        start=FIRST if start is None else start,
        end=LAST if end is None else end,
        before=LAST if before is None else before,
        limit=limit + 1,
    )
    return rows[:limit], len(rows) > limit


def stored_tickers(tickers, timestamp):
    """Which of `tickers` already have a row at `timestamp`."""
    query = select(Price.ticker).where(Price.ticker.in_(tickers), Price.timestamp == timestamp)
    return set(db.session.execute(query).scalars())


def read(query, **params):
    """The rows of a prebuilt read-only query, as tuples, on the autocommit read pool.

    One round trip to PostgreSQL (a session adds BEGIN and ROLLBACK, pre-ping a SELECT 1),
    and the statement runs on the pooled psycopg2 cursor: SQLAlchemy's result layer around
    it cost 60 of the 310 us of CPU /prices/latest took in-process (docs/PERFORMANCE.md).
    Errors become SQLAlchemy's, as from any other query. The read pool does not pre-ping
    (config.py): a connection a database restart killed fails once, is replaced, and the
    read runs again.
    """
    engine = db.engines[READ_BIND]
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


@functools.cache
def _compiled(query, dialect):
    compiled = query.compile(dialect=dialect)
    return compiled.string, compiled.params


def insert_prices(rows):
    """Insert {ticker, price, timestamp} rows in one statement, ignoring ones already stored.

    Returns the tickers actually inserted; the rest were duplicates.
    """
    if not rows:
        return set()
    insert = sqlite.insert if db.engine.dialect.name == "sqlite" else postgresql.insert
    statement = (
        insert(Price)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["ticker", "timestamp"])
        .returning(Price.ticker)
    )
    inserted = set(db.session.execute(statement).scalars())
    db.session.commit()
    return inserted

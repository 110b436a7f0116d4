"""The price_records table and the queries everyone shares: latest, as-of, page, insert-ignore."""

from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Numeric,
    String,
    Text,
    TypeDecorator,
    and_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

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


COLUMNS = (Price.ticker, Price.price, Price.timestamp)


def latest_price(ticker):
    """The newest row of `ticker`, or None."""
    return price_at(ticker, None)


def price_at(ticker, timestamp):
    """The newest row of `ticker` at or before `timestamp` (any time when None), or None."""
    query = select(*COLUMNS).where(Price.ticker == ticker)
    if timestamp is not None:
        query = query.where(Price.timestamp <= timestamp)
    return db.session.execute(query.order_by(Price.timestamp.desc()).limit(1)).first()


def price_page(ticker, *, start=None, end=None, before=None, limit=100):
    """Rows of `ticker`, newest first, with start <= timestamp <= end and timestamp < before.

    Keyset pagination: `before` is the timestamp of the last row of the previous page, so a
    page deep in history is one index range scan, as cheap as the first. Returns up to
    `limit` rows and whether more follow.
    """
    conditions = [Price.ticker == ticker]
    if start is not None:
        conditions.append(Price.timestamp >= start)
    if end is not None:
        conditions.append(Price.timestamp <= end)
    if before is not None:
        conditions.append(Price.timestamp < before)
    query = (
        select(*COLUMNS).where(and_(*conditions)).order_by(Price.timestamp.desc()).limit(limit + 1)
    )
    rows = db.session.execute(query).all()
    return rows[:limit], len(rows) > limit


def stored_tickers(tickers, timestamp):
    """Which of `tickers` already have a row at `timestamp`."""
    query = select(Price.ticker).where(Price.ticker.in_(tickers), Price.timestamp == timestamp)
    return set(db.session.execute(query).scalars())


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

"""Range queries computed in the database, one statement each: candles and a range's statistics."""

from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, text

from tracker.config import READ_BIND
from tracker.extensions import db
from tracker.models import ExactDecimal, read

# Candle intervals: the vocabulary of Binance's klines, in seconds.
INTERVALS = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "4h": 14400,
    "1d": 86400,
    "1w": 604800,
}
WEEK = INTERVALS["1w"]
# 1970-01-01 was a Thursday: Monday-aligned weeks start 4 days after a multiple of a week.
WEEK_OFFSET = 4 * 86400


def bucket_start(timestamp, width):
    """The start of the `width`-second bucket holding `timestamp`, aligned to the UTC epoch."""
    offset = WEEK_OFFSET if width == WEEK else 0
    return timestamp - (timestamp - offset) % width


def _shift(width):
    # The SQL below computes `timestamp - (timestamp + shift) % width`: with a non-negative
    # left operand, % agrees on PostgreSQL and SQLite (both truncate toward zero).
    return (-(WEEK_OFFSET if width == WEEK else 0)) % width


# The columns of a candle page, either query: exact prices, the bucket, and whether more follow.
CANDLE_COLUMNS = {
    "bucket": BigInteger,
    "open": ExactDecimal,
    "high": ExactDecimal,
    "low": ExactDecimal,
    "close": ExactDecimal,
    "observations": BigInteger,
    "more": Boolean,
}

# Candles of the buckets of [low, high], newest first, in one pass over the index range.
# Each row of the range learns its bucket's open/close (first/last by time) and low/high
# (first/last by value) from two windows, and one row per bucket is kept: ties for the high
# go to the latest row, for the low to the earliest. `price + 0` orders by value on both
# databases: NUMERIC on PostgreSQL (exact), and on SQLite, where the column is TEXT, a number
# (a double: prices differing only past the 15th digit compare equal). The price returned is
# always the stored text of the row picked, so its digits are exact (equal values may be
# stored with different digits: 86955.7 and 86955.70). `more` says whether the range
# [oldest, before] holds a row: one index lookup. The windows sort every row of the range
# twice, which costs ~1.6 us a row on PostgreSQL; that is the price of a CSV download (one
# pass, any number of buckets) and of SQLite's pages, but PostgreSQL's pages use the
# statement after this one.
_CANDLES = text(
    """
    WITH bucketed AS (
        SELECT timestamp - (timestamp + :shift) % :width AS bucket, timestamp, price
        FROM price_records
        WHERE ticker = :ticker AND timestamp BETWEEN :low AND :high
    ), ranked AS (
        SELECT bucket,
               row_number() OVER by_time AS position,
               count(*) OVER by_time AS observations,
               first_value(price) OVER by_time AS open,
               last_value(price) OVER by_value AS high,
               first_value(price) OVER by_value AS low,
               last_value(price) OVER by_time AS close
        FROM bucketed
        WINDOW by_time AS (PARTITION BY bucket ORDER BY timestamp
                           ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING),
               by_value AS (PARTITION BY bucket ORDER BY price + 0, timestamp
                            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    )
    SELECT bucket, open, high, low, close, observations,
           EXISTS (SELECT 1 FROM price_records
                   WHERE ticker = :ticker AND timestamp BETWEEN :oldest AND :before) AS more
    FROM ranked WHERE position = 1 ORDER BY bucket DESC
    """
).columns(**CANDLE_COLUMNS)
# A page on PostgreSQL: the same candles and `more`, for the buckets of [low, high] (`low` and
# high + 1 boundaries, at most 1,000 buckets apart), each aggregated over its own primary-key
# index range with no sort: 730 daily candles over 1.05 million rows take a fifth of the window
# form's time (docs/PERFORMANCE.md). max/min of ARRAY[price, timestamp] compare the NUMERIC
# exactly, then the time, so they pick the same rows as the windows (the latest of equal highs,
# the earliest of equal lows), and keep the picked row's NUMERIC with its digits. OFFSET 0 keeps
# the subquery from being merged into the aggregate, so each row's array is built once, not
# once for max and again for min (a third less time). Open and close are primary-key lookups of
# the first and last timestamp. A bucket without a row still costs an index probe: fine for a
# page, not for a CSV of a million one-minute buckets, which keeps the window form.
_CANDLE_PAGE_POSTGRESQL = text(
    """
    SELECT bucket,
           (SELECT price FROM price_records
            WHERE ticker = :ticker AND timestamp = totals.first) AS open,
           totals.high[1] AS high,
           totals.low[1] AS low,
           (SELECT price FROM price_records
            WHERE ticker = :ticker AND timestamp = totals.last) AS close,
           totals.observations,
           EXISTS (SELECT 1 FROM price_records
                   WHERE ticker = :ticker AND timestamp BETWEEN :oldest AND :before) AS more
    FROM generate_series(CAST(:low AS BIGINT), :high, :width) AS bucket
    CROSS JOIN LATERAL (
        SELECT count(*) AS observations, min(timestamp) AS first, max(timestamp) AS last,
               max(pair) AS high, min(pair) AS low
        FROM (SELECT timestamp, ARRAY[price, timestamp] AS pair
              FROM price_records
              WHERE ticker = :ticker AND timestamp BETWEEN bucket AND bucket + :width - 1
              OFFSET 0) AS observed
    ) AS totals
    WHERE totals.observations > 0
    ORDER BY bucket DESC
    """
).columns(**CANDLE_COLUMNS)
_CANDLE_PAGE = {"postgresql": _CANDLE_PAGE_POSTGRESQL, "sqlite": _CANDLES}
_NEWEST_IN = text(
    """
    SELECT timestamp FROM price_records
    WHERE ticker = :ticker AND timestamp BETWEEN :low AND :high
    ORDER BY timestamp DESC LIMIT 1
    """
)


def candle_page(ticker, width, low, high, limit):
    """Up to `limit` candles of `ticker` (newest first) from rows with low <= timestamp <= high.

    `low` and high + 1 must be bucket boundaries. The page covers the `limit` buckets counted
    back from the newest one holding a row, so it reads only their rows however large the
    table or the range; buckets without a row are left out. Returns (candles, older):
    each candle (time, open, high, low, close, count), and the start of the page's oldest
    bucket when older rows remain in the range (the next page ends before it), else None.
    """
    newest = read(_NEWEST_IN, ticker=ticker, low=low, high=high)
    if not newest:
        return [], None
    newest_bucket = bucket_start(newest[0][0], width)
    start = max(low, newest_bucket - (limit - 1) * width)
    rows = read(
        _CANDLE_PAGE[db.engines[READ_BIND].dialect.name],
        ticker=ticker,
        width=width,
        shift=_shift(width),
        low=start,
        high=newest_bucket + width - 1,  # nothing is stored after it: no empty buckets to probe
        oldest=low,
        before=start - 1,
    )
    return [row[:6] for row in rows], (start if rows[0][6] else None)


def candle_statement(ticker, width, low, high):
    """The statement and parameters of every candle of [low, high], newest first (for CSV)."""
    params = {"ticker": ticker, "width": width, "shift": _shift(width), "low": low, "high": high}
    return _CANDLES, {**params, "oldest": 1, "before": 0}  # an empty range: `more` is false


# count, sum, first, last, lowest and highest of a range in one statement. The range's rows
# are read once (PostgreSQL materialises a CTE used three times); first and last are primary
# key lookups. Ties for the lowest or highest go to the earliest row. {sum} is the one
# difference between the databases: PostgreSQL sums NUMERIC exactly; SQLite's sum() would go
# through doubles, so there it is exact_sum(), a Python aggregate over Decimal (models.py).
_STATS = """
    WITH observed AS (
        SELECT timestamp, price FROM price_records
        WHERE ticker = :ticker AND timestamp BETWEEN :low AND :high
    ), totals AS (
        SELECT count(*) AS observations, {sum}(price) AS total,
               min(timestamp) AS first_timestamp, max(timestamp) AS last_timestamp
        FROM observed
    ), lowest AS (
        SELECT timestamp, price FROM observed ORDER BY price + 0, timestamp LIMIT 1
    ), highest AS (
        SELECT timestamp, price FROM observed ORDER BY price + 0 DESC, timestamp LIMIT 1
    )
    SELECT totals.observations, totals.total,
           totals.first_timestamp, opening.price, totals.last_timestamp, closing.price,
           lowest.timestamp, lowest.price, highest.timestamp, highest.price
    FROM totals
    LEFT JOIN price_records AS opening
        ON opening.ticker = :ticker AND opening.timestamp = totals.first_timestamp
    LEFT JOIN price_records AS closing
        ON closing.ticker = :ticker AND closing.timestamp = totals.last_timestamp
    LEFT JOIN lowest ON 1 = 1
    LEFT JOIN highest ON 1 = 1
"""
_STATS_BY_DIALECT = {
    "postgresql": text(_STATS.format(sum="sum")),
    "sqlite": text(_STATS.format(sum="exact_sum")),
}


def range_stats(ticker, low, high):
    """Statistics of `ticker`'s rows with low <= timestamp <= high, in one statement.

    Returns count, the exact sum (None when empty), and (timestamp, price) of the first,
    last, lowest and highest row (None when empty).
    """
    dialect = db.engines[READ_BIND].dialect.name
    row = read(_STATS_BY_DIALECT[dialect], ticker=ticker, low=low, high=high)[0]
    stats = {"count": row[0], "sum": None if row[1] is None else Decimal(str(row[1]))}
    for name, column in (("first", 2), ("last", 4), ("min", 6), ("max", 8)):
        found = row[column] is not None
        stats[name] = (row[column], Decimal(str(row[column + 1]))) if found else None
    return stats

"""Marshmallow schemas: the API's query arguments and responses."""

import base64
import binascii
import math
import re
from datetime import UTC, date, datetime
from http import HTTPStatus

from flask import current_app
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from tracker.models import SOURCES

# UNIX seconds the API accepts: 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
MIN_TIME = 0
MAX_TIME = 253402300799
TIME_HELP = "UNIX seconds (1763928000) or ISO 8601 (2026-11-23, 2026-11-23T20:00:00Z)"
CURSOR_RE = re.compile(r"([a-z0-9]+_[a-z0-9]+):(\d{1,12})")
# "...T01:00:00 01:00": a "+01:00" offset whose "+" an unencoded query string turned into a space.
SPACED_OFFSET_RE = re.compile(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:\d\d)")


def error_body(status, message):
    """A JSON error in flask-smorest's shape (ErrorSchema): {"code", "status", "message"}."""
    return {"code": status, "status": HTTPStatus(status).phrase, "message": message}


class TickerField(fields.String):
    """A tracked ticker, case-insensitive; loads as its lower-case name."""

    def _deserialize(self, value, attr, data, **kwargs):
        ticker = super()._deserialize(value, attr, data, **kwargs).strip().lower()
        tracked = current_app.config["TICKERS"]
        if ticker not in tracked:
            raise ValidationError(
                f"Unknown ticker {value!r}. Tracked tickers: {', '.join(tracked)}."
            )
        return ticker


class TimeField(fields.Field):
    """A moment as UNIX seconds or ISO 8601 (naive times and bare dates are UTC); loads as int.

    A fractional ISO time is rounded down, or up with `round_up` (a range's start), so a
    bound never lets in a second it excludes.
    """

    def __init__(self, *, round_up=False, **kwargs):
        super().__init__(**kwargs)
        self.round_up = round_up

    def _deserialize(self, value, attr, data, **kwargs):
        text = str(value).strip()
        if re.fullmatch(r"-?\d{1,20}", text):  # bounded: int() of a huge string is slow
            timestamp = int(text)
        else:
            text = SPACED_OFFSET_RE.sub(r"\1+\2", text)
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise ValidationError(f"Not a valid time {text!r}: use {TIME_HELP}.") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
            timestamp = math.ceil(seconds) if self.round_up else math.floor(seconds)
        if not MIN_TIME <= timestamp <= MAX_TIME:
            raise ValidationError(
                f"Time {text!r} is out of range: it must lie between "
                "1970-01-01T00:00:00Z (0) and 9999-12-31T23:59:59Z (253402300799)."
            )
        return timestamp


def encode_cursor(ticker, timestamp):
    """The opaque cursor for the page that follows a row of `ticker` at `timestamp`."""
    return base64.urlsafe_b64encode(f"{ticker}:{timestamp}".encode()).decode().rstrip("=")


class CursorField(fields.String):
    """A next_cursor from a previous page; loads as (ticker, timestamp)."""

    default_error_messages = {
        "invalid_cursor": "Invalid cursor: pass the next_cursor of a previous page unchanged."
    }

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
            match = CURSOR_RE.fullmatch(raw.decode("ascii"))
        except (binascii.Error, ValueError):
            match = None
        if match is None or int(match[2]) > MAX_TIME:
            raise self.make_error("invalid_cursor")
        return match[1], int(match[2])


class TickerArgsSchema(Schema):
    """The `ticker` query parameter every endpoint takes."""

    ticker = TickerField(
        required=True,
        metadata={
            "description": "A tracked Deribit index name, case-insensitive (see TICKERS).",
            "example": "btc_usd",
        },
    )


class PageArgsSchema(TickerArgsSchema):
    """Keyset pagination: `limit` and the `cursor` of the previous page."""

    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(min=1, max=1000),
        metadata={"description": "Items per page, 1 to 1000.", "example": 100},
    )
    cursor = CursorField(
        metadata={
            "description": "The `next_cursor` of the previous page; omit for the first page.",
            "example": encode_cursor("btc_usd", 1763928000),
        }
    )

    @validates_schema
    def cursor_matches_ticker(self, data, **kwargs):
        if "cursor" in data and data["cursor"][0] != data["ticker"]:
            raise ValidationError(
                f"This cursor belongs to ticker {data['cursor'][0]}, not {data['ticker']}.",
                "cursor",
            )


class PriceQueryArgsSchema(PageArgsSchema):
    """Arguments of /prices: ticker, optional inclusive time range, pagination."""

    start = TimeField(
        data_key="from",
        round_up=True,
        metadata={
            "description": f"Only prices at or after this time: {TIME_HELP}.",
            "example": "2026-11-23",
            "type": "string",
        },
    )
    end = TimeField(
        data_key="to",
        metadata={
            "description": f"Only prices at or before this time: {TIME_HELP}.",
            "example": "2026-11-24T00:00:00Z",
            "type": "string",
        },
    )

    source = fields.String(
        validate=validate.OneOf(SOURCES),
        metadata={
            "description": "Only `live` prices (fetched in their slot) or only `backfill` ones"
            " (filled later from Deribit's chart data); both when omitted.",
            "example": "live",
        },
    )

    @validates_schema
    def start_not_after_end(self, data, **kwargs):
        if "start" in data and "end" in data and data["start"] > data["end"]:
            raise ValidationError("`from` must not be after `to`.", "from")


class ByDateArgsSchema(PageArgsSchema):
    """Arguments of /prices/by-date: ticker, a UTC day, pagination."""

    date = fields.Date(
        required=True,
        validate=validate.Range(min=date(1970, 1, 1), max=date(9999, 12, 31)),
        metadata={"description": "A UTC day, YYYY-MM-DD.", "example": "2026-11-23"},
    )


class PriceAtArgsSchema(TickerArgsSchema):
    """Arguments of /prices/at: ticker and a moment."""

    timestamp = TimeField(
        required=True,
        metadata={
            "description": f"The moment: {TIME_HELP}.",
            "example": "1763928000",
            "type": "string",
        },
    )


class PriceSchema(Schema):
    """One stored observation."""

    ticker = fields.String(metadata={"example": "btc_usd"})
    price = fields.Decimal(
        metadata={
            "description": "The index price exactly as Deribit sent it (a JSON number).",
            "example": 86955.73,
        }
    )
    timestamp = fields.Integer(
        metadata={
            "description": "UNIX seconds (UTC): the start of the FETCH_INTERVAL slot it fills.",
            "example": 1763928000,
        }
    )
    source = fields.String(
        validate=validate.OneOf(SOURCES),
        metadata={
            "description": "`live`: fetched from get_index_price in its slot. `backfill`: filled"
            " later from get_index_chart_data (Deribit's average index price at that moment)"
            " because the slot had no live price.",
            "example": "live",
        },
    )


class PricePageSchema(Schema):
    """A page of observations, newest first."""

    ticker = fields.String(metadata={"example": "btc_usd"})
    items = fields.List(fields.Nested(PriceSchema))
    next_cursor = fields.String(
        allow_none=True,
        metadata={"description": "Pass as `cursor` for the next page; null on the last page."},
    )


class GapsArgsSchema(TickerArgsSchema):
    """Arguments of /prices/gaps: ticker, an inclusive time range, how many gaps to list."""

    start = TimeField(
        data_key="from",
        round_up=True,
        metadata={
            "description": f"Start of the range: {TIME_HELP}. Default: 24 hours before `to`.",
            "example": "2026-11-23",
            "type": "string",
        },
    )
    end = TimeField(
        data_key="to",
        metadata={
            "description": f"End of the range (inclusive): {TIME_HELP}. Default: now.",
            "example": "2026-11-24T00:00:00Z",
            "type": "string",
        },
    )
    limit = fields.Integer(
        load_default=1000,
        validate=validate.Range(min=1, max=10000),
        metadata={
            "description": "At most this many gaps are listed, oldest first (the totals count"
            " them all); 1 to 10000. For the rest, ask again from the last gap's `to`.",
            "example": 1000,
        },
    )

    @validates_schema
    def start_not_after_end(self, data, **kwargs):
        if "start" in data and "end" in data and data["start"] > data["end"]:
            raise ValidationError("`from` must not be after `to`.", "from")


class GapSchema(Schema):
    """A run of consecutive slots with no stored price."""

    start = fields.Integer(
        data_key="from",
        metadata={"description": "Start (UNIX seconds) of the first missing slot."},
    )
    end = fields.Integer(
        data_key="to", metadata={"description": "Start (UNIX seconds) of the last missing slot."}
    )
    missing_slots = fields.Integer(metadata={"description": "How many slots are missing."})


class CoverageSchema(Schema):
    """How many of the expected slots hold a price."""

    expected_slots = fields.Integer(
        metadata={"description": "Slots in the range (one per FETCH_INTERVAL)."}
    )
    stored_slots = fields.Integer()
    missing_slots = fields.Integer()
    coverage_percent = fields.Decimal(
        allow_none=True,
        metadata={
            "description": "stored / expected x 100, rounded down to 2 decimals (so 100 means"
            " complete); null when the range holds no slot.",
            "example": 99.93,
        },
    )


class GapReportSchema(CoverageSchema):
    """The holes in a ticker's history within a range."""

    ticker = fields.String(metadata={"example": "btc_usd"})
    start = fields.Integer(data_key="from", metadata={"description": "The range's start."})
    end = fields.Integer(data_key="to", metadata={"description": "The range's end."})
    interval = fields.Integer(metadata={"description": "FETCH_INTERVAL: seconds per slot."})
    gap_count = fields.Integer(metadata={"description": "How many gaps the range has in all."})
    gaps = fields.List(fields.Nested(GapSchema))
    truncated = fields.Boolean(metadata={"description": "True when `limit` cut the list."})


class RecentCoverageSchema(CoverageSchema):
    """Coverage of the last 24 hours, the slot in progress left out."""

    live_slots = fields.Integer(metadata={"description": "Slots filled by the live fetch."})
    backfill_slots = fields.Integer(metadata={"description": "Slots filled by the backfill."})


class TickerSummarySchema(Schema):
    """A tracked ticker: its newest price, how far back it goes, how complete the last day is."""

    ticker = fields.String(metadata={"example": "btc_usd"})
    price = fields.Decimal(
        allow_none=True,
        metadata={"description": "The newest price, exact; null while none is stored."},
    )
    timestamp = fields.Integer(allow_none=True, metadata={"description": "Its slot, UNIX seconds."})
    source = fields.String(allow_none=True, validate=validate.OneOf(SOURCES))
    age_seconds = fields.Integer(
        allow_none=True, metadata={"description": "Seconds since `timestamp`."}
    )
    first_timestamp = fields.Integer(
        allow_none=True, metadata={"description": "The oldest stored price's slot."}
    )
    coverage_24h = fields.Nested(RecentCoverageSchema)


class TickerListSchema(Schema):
    """Every tracked ticker (TICKERS), in configuration order."""

    interval = fields.Integer(metadata={"description": "FETCH_INTERVAL: seconds per slot."})
    tickers = fields.List(fields.Nested(TickerSummarySchema))


class HealthSchema(Schema):
    """The process is alive."""

    status = fields.String(metadata={"example": "ok"})


class CheckSchema(Schema):
    """One readiness check: whether it passed, and why not."""

    ok = fields.Boolean()
    error = fields.String(metadata={"description": "Why the check failed; absent when ok."})


class TickerFreshnessSchema(Schema):
    """The newest stored price of one ticker."""

    timestamp = fields.Integer(
        allow_none=True, metadata={"description": "UNIX seconds; null when none is stored."}
    )
    age_seconds = fields.Integer(allow_none=True, metadata={"example": 42})


class PricesCheckSchema(CheckSchema):
    """Every tracked ticker has a price younger than max_age_seconds (3 x FETCH_INTERVAL)."""

    max_age_seconds = fields.Integer(metadata={"example": 180})
    tickers = fields.Dict(keys=fields.String(), values=fields.Nested(TickerFreshnessSchema))


class ReadinessChecksSchema(Schema):
    """The three readiness checks."""

    database = fields.Nested(CheckSchema)
    redis = fields.Nested(CheckSchema)
    prices = fields.Nested(PricesCheckSchema)


class ReadinessSchema(Schema):
    """Whether the service can do its job, check by check."""

    status = fields.String(metadata={"description": "`ready` or `unavailable`."})
    failed = fields.List(
        fields.String(), metadata={"description": "The checks that failed.", "example": []}
    )
    checks = fields.Nested(ReadinessChecksSchema)

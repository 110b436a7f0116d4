"""Marshmallow schemas of the API's query arguments, and the fields and helpers they share."""

import base64
import binascii
import math
import re
from datetime import UTC, date, datetime
from http import HTTPStatus

from flask import current_app, request
from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from tracker.models import SOURCES
from tracker.queries import INTERVALS, bucket_start

# UNIX seconds the API accepts: 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
MIN_TIME = 0
MAX_TIME = 253402300799
TIME_HELP = "UNIX seconds (1763928000) or ISO 8601 (2026-11-23, 2026-11-23T20:00:00Z)"
# The forms of TIME_HELP within the range the API accepts (1970..9999), for the spec: a fuzzer
# or a client generator builds values from it. fromisoformat() takes a few more (week dates).
TIME_PATTERN = (
    r"^([0-9]{1,12}|(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?)$"
)
# A UNIX time in milliseconds (13 digits: 2001-09-09 .. 2286-11-20), which JavaScript's
# Date.now() and many exchanges give: as seconds it would be tens of thousands of years away.
MILLISECONDS = range(10**12, 10**13)
# An exact decimal as text: what str() of a stored price gives.
DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?(E[+-]?[0-9]+)?$"
CURSOR_RE = re.compile(r"([a-z0-9]+_[a-z0-9]+):(\d{1,12})")
# "...T01:00:00 01:00": a "+01:00" offset whose "+" an unencoded query string turned into a space.
SPACED_OFFSET_RE = re.compile(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:\d\d)")


def error_body(status, message):
    """A JSON error in flask-smorest's shape (ErrorSchema): {"code", "status", "message"}."""
    return {"code": status, "status": HTTPStatus(status).phrase, "message": message}


# What the paged endpoints answer in: pages of JSON, or the whole range as CSV.
FORMATS = ("json", "csv")
CSV_MIMETYPE = "text/csv"
# How JSON answers write prices: as numbers (86955.73) or strings ("86955.73").
PRICE_FORMATS = ("number", "string")


def _format(data):
    """The format asked for: the `format` parameter, else what the Accept header prefers."""
    if "format" in data:
        return data["format"]
    best = request.accept_mimetypes.best_match(["application/json", CSV_MIMETYPE])
    return "csv" if best == CSV_MIMETYPE else "json"


class TickerField(fields.String):
    """A tracked ticker, case-insensitive; loads as its lower-case name.

    The spec lists the tracked tickers (TICKERS) as its enum, so Swagger UI offers them in a
    drop-down and client generators and fuzzers send names that exist.
    """

    def openapi_properties(self, config, ret):
        return {"enum": list(config["TICKERS"])}

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
    bound never lets in a second it excludes. Milliseconds are refused with a hint.
    """

    def __init__(self, *, round_up=False, span_limit=None, metadata=None, **kwargs):
        metadata = {"type": "string", "pattern": TIME_PATTERN, **(metadata or {})}
        super().__init__(metadata=metadata, **kwargs)
        self.round_up = round_up
        self.span_limit = span_limit

    def openapi_properties(self, config, ret):
        # The maximum span is a setting: the spec says the value this server enforces.
        if self.span_limit is None:
            return {}
        return {"description": f"{ret['description']} {self.span_limit.describe(config)}"}

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
        if timestamp in MILLISECONDS:
            raise ValidationError(
                f"Time {text!r} looks like milliseconds; use seconds ({timestamp // 1000})."
            )
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

    def openapi_properties(self, config, ret):
        return {"pattern": "^[A-Za-z0-9_-]+$"}  # base64url, unpadded

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


class IntervalField(fields.String):
    """A candle interval (INTERVALS); the spec lists the ones FETCH_INTERVAL allows."""

    def __init__(self, **kwargs):
        super().__init__(validate=validate.OneOf(INTERVALS), **kwargs)

    def openapi_properties(self, config, ret):
        allowed = [name for name, width in INTERVALS.items() if width >= config["FETCH_INTERVAL"]]
        return {"enum": allowed}


class PriceField(fields.Decimal):
    """An exact price (or a value computed exactly from prices): a JSON number by default, a
    JSON string with `price_format=string`; the same digits either way.

    A view that was asked for strings hands over str() of the Decimal, which is written as
    it is; a Decimal is written as a number (ExactJSONProvider keeps its digits).
    """

    def _serialize(self, value, attr, obj, **kwargs):
        if isinstance(value, str):
            return value
        return super()._serialize(value, attr, obj, **kwargs)

    def openapi_properties(self, config, ret):
        # Either JSON type, so one schema fits both answers; in OpenAPI 3.0 `nullable`
        # applies to a `type` next to it, so a nullable price says it in both branches.
        nullable = {"nullable": True} if ret.pop("nullable", False) else {}
        ret.pop("type", None)
        return {
            "anyOf": [
                {"type": "number", **nullable},
                {"type": "string", "pattern": DECIMAL_PATTERN, **nullable},
            ]
        }


def as_price_format(value, price_format):
    """A Decimal as the client asked: itself (a JSON number) or its exact digits as text."""
    if value is None or price_format == "number":
        return value
    return str(value)


class NoArgsSchema(Schema):
    """No query parameters: any is an error, as on every endpoint (strict input)."""


class PriceFormatArgsSchema(Schema):
    """The `price_format` parameter of every endpoint that answers prices."""

    price_format = fields.String(
        load_default="number",
        validate=validate.OneOf(PRICE_FORMATS),
        metadata={
            "description": "How JSON answers write prices (and the statistics computed from"
            ' them): `number` (86955.73, the default) or `string` ("86955.73"), with the same'
            " digits. Strings keep every digit for clients that parse JSON numbers as"
            " floating point (most do). CSV is not affected.",
            "example": "string",
        },
    )


class SpanLimit:
    """The longest `from`..`to` a range may span, in days, held by a setting (MAX_RANGE_DAYS,
    MAX_CSV_DAYS): the spec describes it, and the view checks it (api.check_span).

    `csv_only`: it bounds CSV downloads only (a JSON page is bounded by its `limit`).
    `open_from`: a range without `from` starts at the first stored price (else the endpoint
    has a default `from` of its own).
    """

    def __init__(self, setting, *, csv_only=False, open_from=True):
        self.setting = setting
        self.csv_only = csv_only
        self.open_from = open_from

    def describe(self, config):
        scope = "In a CSV (`format=csv`), `to`" if self.csv_only else "`to`"
        open_from = ", or after the first stored price without `from`" if self.open_from else ""
        return (
            f"{scope} may be at most {config[self.setting]} days ({self.setting}) after"
            f" `from`{open_from}; more is a 422. A `to` after now counts as now."
        )


# A CSV is every row of its range; /prices/stats and /prices/gaps read every row of theirs.
CSV_SPAN = SpanLimit("MAX_CSV_DAYS", csv_only=True)
STATS_SPAN = SpanLimit("MAX_RANGE_DAYS")
GAPS_SPAN = SpanLimit("MAX_RANGE_DAYS", open_from=False)


def range_from(description, example, span_limit=None):
    """`from`: the inclusive start of a time range; a fractional second rounds up."""
    return TimeField(
        data_key="from",
        round_up=True,
        span_limit=span_limit,
        metadata={"description": description, "example": example},
    )


def range_to(description, example):
    """`to`: the inclusive end of a time range."""
    return TimeField(data_key="to", metadata={"description": description, "example": example})


def check_range(data):
    """`from` after `to` is a 422 naming `from`."""
    if "start" in data and "end" in data and data["start"] > data["end"]:
        raise ValidationError("`from` must not be after `to`.", "from")


class TickerArgsSchema(Schema):
    """The `ticker` query parameter every endpoint takes."""

    ticker = TickerField(
        required=True,
        metadata={
            "description": "A tracked Deribit index name, case-insensitive (see TICKERS).",
            "example": "btc_usd",
        },
    )


class TickerPriceArgsSchema(PriceFormatArgsSchema, TickerArgsSchema):
    """`ticker` and `price_format`: the arguments of /prices/latest."""


class PageArgsSchema(TickerPriceArgsSchema):
    """Keyset pagination (`limit`, the `cursor` of the previous page), or the whole range as CSV."""

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

    format = fields.String(
        validate=validate.OneOf(FORMATS),
        metadata={
            "description": "`json` (pages) or `csv` (the whole range in one download, streamed)."
            " Default: `csv` when the request's Accept header prefers `text/csv`, else `json`.",
            "example": "json",
        },
    )

    @validates_schema
    def cursor_matches_ticker(self, data, **kwargs):
        if "cursor" in data and data["cursor"][0] != data["ticker"]:
            raise ValidationError(
                f"This cursor belongs to ticker {data['cursor'][0]}, not {data['ticker']}.",
                "cursor",
            )

    @validates_schema(pass_original=True)
    def csv_is_the_whole_range(self, data, original, **kwargs):
        if _format(data) == "csv":
            for name in ("limit", "cursor"):
                if name in original:
                    raise ValidationError(
                        f"A CSV is the whole range from `from` to `to`, not a page: leave out"
                        f" `{name}`.",
                        name,
                    )

    @post_load
    def resolve_format(self, data, **kwargs):
        data["format"] = _format(data)
        return data


class PriceQueryArgsSchema(PageArgsSchema):
    """Arguments of /prices: ticker, optional inclusive time range, pagination."""

    start = range_from(f"Only prices at or after this time: {TIME_HELP}.", "2026-11-23", CSV_SPAN)
    end = range_to(f"Only prices at or before this time: {TIME_HELP}.", "2026-11-24T00:00:00Z")

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
        check_range(data)


class ByDateArgsSchema(PageArgsSchema):
    """Arguments of /prices/by-date: ticker, a UTC day, pagination."""

    date = fields.Date(
        required=True,
        validate=validate.Range(min=date(1970, 1, 1), max=date(9999, 12, 31)),
        error_messages={"invalid": "Not a valid date: use YYYY-MM-DD (2026-11-23)."},
        metadata={"description": "A UTC day, YYYY-MM-DD.", "example": "2026-11-23"},
    )


class PriceAtArgsSchema(TickerPriceArgsSchema):
    """Arguments of /prices/at: ticker and a moment."""

    timestamp = TimeField(
        required=True,
        metadata={
            "description": f"The moment: {TIME_HELP}.",
            "example": "1763928000",
        },
    )


class GapsArgsSchema(TickerArgsSchema):
    """Arguments of /prices/gaps: ticker, an inclusive time range, how many gaps to list."""

    start = range_from(
        f"Start of the range: {TIME_HELP}. Default: 24 hours before `to`.",
        "2026-11-23",
        GAPS_SPAN,
    )
    end = range_to(
        f"End of the range (inclusive): {TIME_HELP}. Default: now.", "2026-11-24T00:00:00Z"
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
        check_range(data)


class CandleArgsSchema(PageArgsSchema):
    """Arguments of /candles: ticker, interval, optional inclusive range of bucket starts, pages."""

    interval = IntervalField(
        required=True,
        metadata={
            "description": "Bucket width: " + ", ".join(f"`{name}`" for name in INTERVALS) + "."
            " Buckets are aligned to the UTC epoch: `1d` starts at 00:00 UTC, `1w` on Monday"
            " 00:00 UTC. An interval shorter than FETCH_INTERVAL is rejected.",
            "example": "1h",
        },
    )
    start = range_from(
        f"Only candles whose bucket starts at or after this time: {TIME_HELP}.",
        "2026-11-01",
        CSV_SPAN,
    )
    end = range_to(
        f"Only candles whose bucket starts at or before this time: {TIME_HELP}."
        " Default: now (the bucket still open is included, `complete: false`).",
        "2026-11-30",
    )

    @validates_schema
    def interval_fits(self, data, **kwargs):
        width = INTERVALS.get(data.get("interval"))
        if width is None:
            return
        fetch_interval = current_app.config["FETCH_INTERVAL"]
        if width < fetch_interval:
            raise ValidationError(
                f"Interval {data['interval']} is shorter than FETCH_INTERVAL ({fetch_interval} s):"
                " its buckets would mostly be empty.",
                "interval",
            )
        if "cursor" in data and bucket_start(data["cursor"][1], width) != data["cursor"][1]:
            raise ValidationError(
                f"This cursor is not from a page of {data['interval']} candles.", "cursor"
            )
        check_range(data)


class StatsArgsSchema(TickerPriceArgsSchema):
    """Arguments of /prices/stats: ticker and an optional inclusive time range."""

    start = range_from(
        f"Start of the range: {TIME_HELP}. Default: the first price.", "2026-01-01", STATS_SPAN
    )
    end = range_to(
        f"End of the range (inclusive): {TIME_HELP}. Default: now.", "2026-12-31T23:59:59Z"
    )

    @validates_schema
    def start_not_after_end(self, data, **kwargs):
        check_range(data)

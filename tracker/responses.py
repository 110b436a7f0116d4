"""Marshmallow schemas of the API's responses: every field present, prices exact."""

from marshmallow import Schema, fields, validate

from tracker.models import SOURCES
from tracker.schemas import PriceField


class ResponseSchema(Schema):
    """A response body. Its fields are always present (null when they have no value), so
    all are required: the spec's `required` lists, which client generators turn into
    non-optional attributes. A field that may be left out says so: metadata `optional`.
    """

    def on_bind_field(self, field_name, field_obj):
        if not field_obj.metadata.get("optional"):
            field_obj.required = True


class PriceSchema(ResponseSchema):
    """One stored observation."""

    ticker = fields.String(metadata={"example": "btc_usd"})
    price = PriceField(
        metadata={
            "description": "The index price exactly as Deribit sent it: a JSON number, or a"
            " string with `price_format=string`.",
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


class PricePageSchema(ResponseSchema):
    """A page of observations, newest first."""

    ticker = fields.String(metadata={"example": "btc_usd"})
    items = fields.List(fields.Nested(PriceSchema))
    next_cursor = fields.String(
        allow_none=True,
        metadata={"description": "Pass as `cursor` for the next page; null on the last page."},
    )


class CandleSchema(ResponseSchema):
    """One candle: the observations of one bucket."""

    time = fields.Integer(
        metadata={"description": "Start of the bucket, UNIX seconds.", "example": 1763924400}
    )
    open = PriceField(
        metadata={"description": "The bucket's first price, exact.", "example": 86955.73}
    )
    high = PriceField(metadata={"description": "Its highest price.", "example": 87010.5})
    low = PriceField(metadata={"description": "Its lowest price.", "example": 86890.1})
    close = PriceField(metadata={"description": "Its last price so far.", "example": 86990.02})
    count = fields.Integer(
        metadata={"description": "Prices stored in the bucket, live and backfilled.", "example": 60}
    )
    complete = fields.Boolean(
        metadata={"description": "False for the bucket that holds the current time."}
    )


class CandlePageSchema(ResponseSchema):
    """A page of candles, newest first."""

    ticker = fields.String(metadata={"example": "btc_usd"})
    interval = fields.String(metadata={"example": "1h"})
    items = fields.List(fields.Nested(CandleSchema))
    next_cursor = fields.String(
        allow_none=True,
        metadata={"description": "Pass as `cursor` for the next page; null on the last page."},
    )


class PricePointSchema(ResponseSchema):
    """A price and when it was observed."""

    price = PriceField(metadata={"example": 86955.73})
    timestamp = fields.Integer(metadata={"example": 1763928000})


class PriceStatsSchema(ResponseSchema):
    """Statistics of a ticker's prices in a range; every value is null when it holds none."""

    ticker = fields.String(metadata={"example": "btc_usd"})
    start = fields.Integer(
        data_key="from", allow_none=True, metadata={"description": "`from` as asked, if asked."}
    )
    end = fields.Integer(
        data_key="to", allow_none=True, metadata={"description": "`to` as asked, if asked."}
    )
    count = fields.Integer(metadata={"description": "Prices stored in the range."})
    first = fields.Nested(PricePointSchema, allow_none=True)
    last = fields.Nested(PricePointSchema, allow_none=True)
    min = fields.Nested(
        PricePointSchema,
        allow_none=True,
        metadata={"description": "The lowest price, and the first time it was reached."},
    )
    max = fields.Nested(
        PricePointSchema,
        allow_none=True,
        metadata={"description": "The highest price, and the first time it was reached."},
    )
    mean = PriceField(
        allow_none=True,
        metadata={
            "description": "The arithmetic mean of the prices: their exact sum / count, rounded"
            " half-even to 8 decimal places.",
            "example": 86912.41234568,
        },
    )
    change = PriceField(
        allow_none=True,
        metadata={"description": "last - first, exact.", "example": 34.29},
    )
    change_percent = PriceField(
        allow_none=True,
        metadata={
            "description": "(last - first) / first x 100, rounded half-even to 4 decimal places.",
            "example": 0.0394,
        },
    )


class GapSchema(ResponseSchema):
    """A run of consecutive slots with no stored price."""

    start = fields.Integer(
        data_key="from",
        metadata={"description": "Start (UNIX seconds) of the first missing slot."},
    )
    end = fields.Integer(
        data_key="to", metadata={"description": "Start (UNIX seconds) of the last missing slot."}
    )
    missing_slots = fields.Integer(metadata={"description": "How many slots are missing."})


class CoverageSchema(ResponseSchema):
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


class TickerSummarySchema(ResponseSchema):
    """A tracked ticker: its newest price, how far back it goes, how complete the last day is."""

    ticker = fields.String(metadata={"example": "btc_usd"})
    price = PriceField(
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


class TickerListSchema(ResponseSchema):
    """Every tracked ticker (TICKERS), in configuration order."""

    interval = fields.Integer(metadata={"description": "FETCH_INTERVAL: seconds per slot."})
    tickers = fields.List(fields.Nested(TickerSummarySchema))


class HealthSchema(ResponseSchema):
    """The process is alive."""

    status = fields.String(metadata={"example": "ok"})


class CheckSchema(ResponseSchema):
    """One readiness check: whether it passed, and why not."""

    ok = fields.Boolean()
    error = fields.String(
        metadata={"description": "Why the check failed; absent when ok.", "optional": True}
    )


class TickerFreshnessSchema(ResponseSchema):
    """The newest stored price of one ticker."""

    timestamp = fields.Integer(
        allow_none=True, metadata={"description": "UNIX seconds; null when none is stored."}
    )
    age_seconds = fields.Integer(allow_none=True, metadata={"example": 42})


class PricesCheckSchema(CheckSchema):
    """Every tracked ticker has a price younger than max_age_seconds (3 x FETCH_INTERVAL)."""

    max_age_seconds = fields.Integer(metadata={"example": 180})
    tickers = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(TickerFreshnessSchema),
        metadata={"description": "Absent when the database failed.", "optional": True},
    )
    never_priced = fields.List(
        fields.String(),
        metadata={
            "description": "With TICKERS=all only: tracked tickers that have no price stored"
            " yet (an index Deribit lists but does not price), not counted as a failure while"
            " any ticker has one.",
            "optional": True,
        },
    )


class ReadinessChecksSchema(ResponseSchema):
    """The three readiness checks."""

    database = fields.Nested(CheckSchema)
    redis = fields.Nested(CheckSchema)
    prices = fields.Nested(PricesCheckSchema)


class ReadinessSchema(ResponseSchema):
    """Whether the service can do its job, check by check."""

    status = fields.String(metadata={"description": "`ready` or `unavailable`."})
    failed = fields.List(
        fields.String(), metadata={"description": "The checks that failed.", "example": []}
    )
    checks = fields.Nested(ReadinessChecksSchema)

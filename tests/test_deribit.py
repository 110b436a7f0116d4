"""The Deribit client against the fake Deribit over real HTTP: parsing, retries, timeouts."""

import time
from decimal import Decimal

import pytest

from tests.fake_deribit import (
    Reply,
    chart_reply,
    error_reply,
    malformed_reply,
    missing_price_reply,
    price_reply,
)
from tracker.deribit import (
    DeribitClient,
    DeribitRejected,
    DeribitUnavailable,
    InvalidPrice,
    chart_range_for,
)


@pytest.fixture
def client(deribit):
    client = DeribitClient(deribit.base_url, timeout=0.5, attempts=3, backoff=0.01)
    yield client
    client.session.close()


@pytest.mark.parametrize(
    "raw", ["86955.73", "0.00001234", "123456789012.123456789", "2950.1", "86955", "8.695573e4"]
)
def test_price_is_the_exact_number_deribit_sent(client, deribit, raw):
    deribit.script("btc_usd", price_reply(raw))
    price = client.index_price("btc_usd")
    assert isinstance(price, Decimal)
    assert price == Decimal(raw)
    if "e" not in raw:
        assert str(price) == raw  # digit for digit, no float on the way


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('"86955.73"', "non_numeric"),
        ("true", "non_numeric"),
        ("null", "missing_price"),
        ("0", "non_positive"),
        ("0.0", "non_positive"),
        ("-5.5", "non_positive"),
        ("NaN", "not_finite"),
        ("Infinity", "not_finite"),
        ("-Infinity", "not_finite"),
        ("[1]", "non_numeric"),
        ("1E-100000", "out_of_range"),
        ("1E+40", "out_of_range"),
    ],
)
def test_garbage_prices_are_rejected_with_a_reason(client, deribit, raw, reason):
    deribit.script("btc_usd", price_reply(raw))
    with pytest.raises(InvalidPrice) as info:
        client.index_price("btc_usd")
    assert info.value.reason == reason
    assert len(deribit.requests_for("btc_usd")) == 1  # garbage is not retried


def test_missing_index_price_is_rejected(client, deribit):
    deribit.script("btc_usd", missing_price_reply())
    with pytest.raises(InvalidPrice, match="no index_price") as info:
        client.index_price("btc_usd")
    assert info.value.reason == "missing_price"


def test_malformed_json_is_rejected(client, deribit):
    deribit.script("btc_usd", malformed_reply())
    with pytest.raises(InvalidPrice) as info:
        client.index_price("btc_usd")
    assert info.value.reason == "malformed_json"


@pytest.mark.parametrize(
    "failure",
    [
        error_reply(10028, "too_many_requests", status=429),
        error_reply(10028, "too_many_requests", status=400),
        error_reply(13028, "temporarily_unavailable", status=200),
        Reply(500, "Internal Server Error"),
        malformed_reply(status=502),
        Reply(503, ""),
    ],
    ids=["429", "10028-in-400", "13028-in-200", "500", "502-html", "503-empty"],
)
def test_retryable_failures_are_retried_then_succeed(client, deribit, failure):
    deribit.script("btc_usd", failure, failure, price_reply("86955.73"))
    assert client.index_price("btc_usd") == Decimal("86955.73")
    assert len(deribit.requests_for("btc_usd")) == 3


def test_a_5xx_is_retried_even_when_its_deribit_code_is_not_retryable(client, deribit):
    # The server itself is failing; what it says about the request is no verdict on it.
    failure = error_reply(-32602, "Invalid params", status=502)
    deribit.script("btc_usd", failure, price_reply("86955.73"))
    assert client.index_price("btc_usd") == Decimal("86955.73")
    assert len(deribit.requests_for("btc_usd")) == 2


def test_attempts_back_off_exponentially(deribit):
    client = DeribitClient(deribit.base_url, timeout=0.5, attempts=3, backoff=0.2)
    failure = error_reply(10028, "too_many_requests", status=429)
    deribit.script("btc_usd", failure, failure, price_reply("86955.73"))
    assert client.index_price("btc_usd") == Decimal("86955.73")
    first, second, third = deribit.requests_for("btc_usd")
    assert second - first >= 0.2  # backoff
    assert third - second >= 0.4  # twice the backoff
    client.session.close()


def test_chart_retries_like_the_live_price(client, deribit):
    deribit.script_chart("btc_usd", error_reply(13028, "temporarily_unavailable", status=503))
    points, rejected = client.index_chart("btc_usd", "1h")
    assert points and rejected == []
    assert [name for name, _, _ in deribit.chart_requests] == ["btc_usd", "btc_usd"]


def test_chart_points_keep_their_exact_digits_in_time_order(client, deribit):
    deribit.script_chart(
        "btc_usd",
        chart_reply([(1763928000000, "86955.73"), (1763927940000, "123456789012.123456789")]),
    )
    points, rejected = client.index_chart("btc_usd", "1h")
    assert points == [
        (1763927940000, Decimal("123456789012.123456789")),
        (1763928000000, Decimal("86955.73")),
    ]
    assert str(points[0][1]) == "123456789012.123456789" and rejected == []


def test_garbage_chart_points_are_rejected_one_by_one_with_a_reason(client, deribit):
    deribit.script_chart(
        "btc_usd",
        Reply(
            200,
            '{"jsonrpc":"2.0","result":[[1763927880000,86950.1],[1763927940000,"86955.73"],'
            "[1763928000000,0],[1763928060000,NaN],[1763928120000],[true,5],[1.5e12,5],"
            "[-1,5],[1763928180000,null],{},[1763928240000,86960.5]]}",
        ),
    )
    points, rejected = client.index_chart("btc_usd", "1h")
    assert points == [(1763927880000, Decimal("86950.1")), (1763928240000, Decimal("86960.5"))]
    assert [position for position, _ in rejected] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [why.split(":")[0] for _, why in rejected] == [
        "non_numeric",
        "non_positive",
        "not_finite",
        "malformed_point",
        "bad_time",
        "bad_time",
        "bad_time",
        "missing_price",
        "malformed_point",
    ]


def test_chart_data_that_is_not_a_list_is_rejected(client, deribit):
    deribit.script_chart("btc_usd", Reply(200, '{"jsonrpc":"2.0","result":{"a":1}}'))
    with pytest.raises(InvalidPrice) as info:
        client.index_chart("btc_usd", "1h")
    assert info.value.reason == "malformed_chart"


@pytest.mark.parametrize(
    ("seconds", "name"),
    [(60, "1h"), (3600, "1h"), (3601, "1d"), (86401, "2d"), (172801, "1m"), (40 * 86400, "1y")],
)
def test_the_smallest_chart_range_that_covers_the_gap_is_asked_for(seconds, name):
    assert chart_range_for(seconds) == name
    assert chart_range_for(400 * 86400) == "all"


def test_retries_are_bounded(client, deribit):
    failure = error_reply(10028, "too_many_requests", status=429)
    deribit.script("btc_usd", *[failure] * 5)
    with pytest.raises(DeribitUnavailable, match="gave up after 3 attempts") as info:
        client.index_price("btc_usd")
    assert info.value.reason == "deribit_10028"
    assert len(deribit.requests_for("btc_usd")) == 3


def test_non_retryable_error_is_not_retried(client, deribit):
    deribit.script("btc_usd", error_reply(-32602, "Invalid params"))
    with pytest.raises(DeribitRejected, match="-32602: Invalid params") as info:
        client.index_price("btc_usd")
    assert info.value.reason == "deribit_-32602"
    assert len(deribit.requests_for("btc_usd")) == 1


def test_unknown_index_is_rejected(client, deribit):
    with pytest.raises(DeribitRejected):
        client.index_price("nope_usd")


def test_slow_answer_times_out_and_is_retried(client, deribit):
    slow = price_reply("1.5", delay=2.0)
    deribit.script("btc_usd", slow, price_reply("86955.73"))
    assert client.index_price("btc_usd") == Decimal("86955.73")
    assert len(deribit.requests_for("btc_usd")) == 2


def test_timeouts_give_up_with_reason(client, deribit):
    deribit.script("btc_usd", *[price_reply("1.5", delay=2.0)] * 3)
    with pytest.raises(DeribitUnavailable) as info:
        client.index_price("btc_usd")
    assert info.value.reason == "timeout"


def test_connection_refused_is_unavailable(deribit):
    client = DeribitClient("http://127.0.0.1:9/api/v2", timeout=0.5, attempts=2, backoff=0.01)
    with pytest.raises(DeribitUnavailable) as info:
        client.index_price("btc_usd")
    assert info.value.reason == "connection"


def test_deadline_bounds_the_whole_retry_loop(client, deribit):
    deribit.script("btc_usd", *[price_reply("1.5", delay=2.0)] * 3)
    deadline = time.monotonic() + 0.3
    with pytest.raises(DeribitUnavailable):
        client.index_price("btc_usd", deadline)
    # The request's timeout was cut to what was left of the deadline: one attempt, not three.
    assert len(deribit.requests_for("btc_usd")) == 1


def test_several_tickers_are_fetched_concurrently(client, deribit):
    deribit.latency = 0.3
    deribit.prices["sol_usd"] = "142.07"
    results = client.index_prices(["btc_usd", "eth_usd", "sol_usd"], time.monotonic() + 5)
    assert results == {
        "btc_usd": Decimal("86955.73"),
        "eth_usd": Decimal("2950.12"),
        "sol_usd": Decimal("142.07"),
    }
    assert deribit.max_in_flight == 3  # all three were being answered at once


def test_one_failing_ticker_does_not_stop_the_others(client, deribit):
    deribit.script("eth_usd", price_reply("NaN"))
    results = client.index_prices(["btc_usd", "eth_usd"], time.monotonic() + 5)
    assert results["btc_usd"] == Decimal("86955.73")
    assert isinstance(results["eth_usd"], InvalidPrice)


def test_connections_are_reused(client, deribit):
    for _ in range(3):
        client.index_price("btc_usd")
    assert len(deribit.requests_for("btc_usd")) == 3
    assert len(deribit.client_ports) == 1  # one kept-alive TCP connection served all three


def test_absurd_error_bodies_are_rejected_not_raised(client, deribit):
    deribit.script(
        "btc_usd",
        Reply(200, '{"jsonrpc":"2.0","error":{"code":[1],"message":"?"}}'),
        Reply(200, "[" * 100_000 + "]" * 100_000),
    )
    with pytest.raises(DeribitRejected, match="Deribit error None"):
        client.index_price("btc_usd")
    with pytest.raises(InvalidPrice) as info:
        client.index_price("btc_usd")
    assert info.value.reason == "malformed_json"

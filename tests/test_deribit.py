"""The Deribit client against the fake Deribit over real HTTP: parsing, retries, timeouts."""

import time
from decimal import Decimal

import pytest

from tests.fake_deribit import (
    Reply,
    error_reply,
    malformed_reply,
    missing_price_reply,
    price_reply,
)
from tracker.deribit import DeribitClient, DeribitRejected, DeribitUnavailable, InvalidPrice


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

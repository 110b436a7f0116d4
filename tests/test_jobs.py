"""The fetch job and `flask fetch` against the fake Deribit and the test PostgreSQL."""

import logging
import time
from decimal import Decimal

import pytest

from tests.fake_deribit import error_reply, price_reply
from tracker.extensions import db
from tracker.jobs import fetch_prices
from tracker.models import Price

NOW = 1795555200  # 2026-11-24T20:00:00Z, the start of a minute


def stored(app):
    with app.app_context():
        rows = db.session.execute(db.select(Price.ticker, Price.price, Price.timestamp)).all()
        return sorted((t, p, ts) for t, p, ts in rows)


def test_fetch_stores_every_ticker_exactly_once_per_slot(app, deribit):
    deribit.script("btc_usd", price_reply("86955.73"))
    deribit.script("eth_usd", price_reply("123456789.123456789"))
    with app.app_context():
        summary = fetch_prices()
    rows = stored(app)
    slot = summary["timestamp"]
    assert slot % 60 == 0 and abs(time.time() - slot) < 120
    assert rows == [
        ("btc_usd", Decimal("86955.73"), slot),
        ("eth_usd", Decimal("123456789.123456789"), slot),
    ]
    assert str(rows[1][1]) == "123456789.123456789"
    assert summary["stored"] == ["btc_usd", "eth_usd"]


def test_second_run_in_the_same_slot_neither_duplicates_nor_calls_deribit(app, deribit):
    with app.app_context():
        fetch_prices(now=NOW)
        requests_after_first = len(deribit.requests)
        second = fetch_prices(now=NOW + 59)
    assert len(deribit.requests) == requests_after_first  # stored tickers are not re-fetched
    assert second["stored"] == [] and second["duplicate"] == ["btc_usd", "eth_usd"]
    assert len(stored(app)) == 2


def test_forced_rerun_fetches_again_but_stores_no_duplicate(app, deribit):
    with app.app_context():
        fetch_prices(now=NOW)
        deribit.prices["btc_usd"] = "90000.01"
        second = fetch_prices(skip_stored=False, now=NOW + 30)
    assert second["prices"]["btc_usd"] == "90000.01"
    assert second["duplicate"] == ["btc_usd", "eth_usd"]
    assert [p for t, p, _ in stored(app) if t == "btc_usd"] == [Decimal("86955.73")]


def test_a_failing_ticker_does_not_stop_the_others_and_is_logged(app, deribit, caplog):
    deribit.script("eth_usd", *[error_reply(10028, "too_many_requests", status=429)] * 3)
    with app.app_context(), caplog.at_level(logging.INFO, logger="tracker.jobs"):
        summary = fetch_prices()
    assert [t for t, _, _ in stored(app)] == ["btc_usd"]
    assert summary["failed"]["eth_usd"].startswith("deribit_10028")
    (line,) = [r for r in caplog.records if r.name == "tracker.jobs"]
    assert line.levelno == logging.WARNING
    assert "stored=btc_usd:86955.73" in line.getMessage()
    assert "eth_usd=deribit_10028" in line.getMessage()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("0", "non_positive"),
        ("-1", "non_positive"),
        ("NaN", "not_finite"),
        ("Infinity", "not_finite"),
        ('"abc"', "non_numeric"),
        ("null", "missing_price"),
    ],
)
def test_garbage_is_never_stored_and_the_reason_is_logged(app, deribit, caplog, raw, reason):
    deribit.script("btc_usd", price_reply(raw))
    with app.app_context(), caplog.at_level(logging.INFO, logger="tracker.jobs"):
        summary = fetch_prices()
    assert [t for t, _, _ in stored(app)] == ["eth_usd"]
    assert summary["failed"]["btc_usd"].startswith(reason)
    assert f"btc_usd={reason}" in caplog.text


def test_a_retried_ticker_missing_from_the_slot_is_fetched_by_the_next_run(app, deribit):
    deribit.script("eth_usd", price_reply("NaN"))
    with app.app_context():
        fetch_prices(now=NOW)
        second = fetch_prices(now=NOW + 59)
    assert second["stored"] == ["eth_usd"] and second["duplicate"] == ["btc_usd"]
    assert [t for t, _, _ in stored(app)] == ["btc_usd", "eth_usd"]


def test_database_down_during_store_is_logged_with_the_lost_prices(make_app, deribit, caplog):
    app = make_app(DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")
    with app.app_context(), caplog.at_level(logging.INFO), pytest.raises(Exception) as info:
        fetch_prices(skip_stored=False)
    assert "OperationalError" in type(info.value).__name__
    assert "store FAILED, prices lost: btc_usd:86955.73,eth_usd:2950.12" in caplog.text


def test_fetch_command_prints_what_it_stored(runner, app, deribit):
    result = runner.invoke(args=["fetch"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert "btc_usd" in lines[0] and "86955.73" in lines[0] and lines[0].endswith("stored")
    assert "eth_usd" in lines[1] and "2950.12" in lines[1]


def test_fetch_command_exits_non_zero_when_a_ticker_fails(runner, app, deribit):
    deribit.script("btc_usd", error_reply(-32602, "Invalid params"))
    result = runner.invoke(args=["fetch"])
    assert result.exit_code == 1
    assert "btc_usd" in result.output and "FAILED deribit_-32602" in result.output
    assert "2950.12" in result.output


def test_a_run_that_starts_late_in_its_slot_never_overruns_into_the_next(app, deribit):
    """0.1 s before its slot ends, a 0.5 s answer cannot be filed under that slot."""
    deribit.latency = 0.5
    with app.app_context():
        summary = fetch_prices(now=NOW + 59.9)
    assert summary["stored"] == [] and set(summary["failed"]) == {"btc_usd", "eth_usd"}
    assert all(why.startswith(("timeout", "deadline")) for why in summary["failed"].values())
    assert stored(app) == []

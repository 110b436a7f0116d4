"""TICKERS=all: the indexes Deribit lists, asked once when a process starts; a list's pace."""

import logging

from sqlalchemy.exc import SQLAlchemyError

from tracker.config import ALL_TICKERS, ConfigError
from tracker.deribit import (
    BURST_REQUESTS,
    REQUESTS_PER_SECOND,
    DeribitClient,
    DeribitError,
    paced_seconds,
)
from tracker.extensions import db
from tracker.models import stored_ticker_names

log = logging.getLogger(__name__)

# Rejected entries of Deribit's list named in the log line; the count says how many in all.
LOGGED_REJECTS = 5


def resolve_tickers(app):
    """Replace TICKERS=all in the app's config by the list it stands for now; warn of a list
    too long for Deribit's rate limit at this FETCH_INTERVAL.

    Every process does this once, in create_app, before anything reads the list: the web
    (/tickers and the spec's enum), the worker (the fetch job), the scheduler. Deribit is asked
    with the client's retries (3 attempts with backoff, about 3 x DERIBIT_TIMEOUT at most).
    When it cannot answer, or lists nothing usable, the tickers already stored stand in, with a
    warning: the web keeps serving the history, the worker fetches what it fetched before, and
    the next start asks Deribit again. With nothing stored either, the process does not start:
    a ConfigError says why (wsgi.py and the flask CLI print it as one line).
    """
    config = app.config
    # Kept for /readyz: Deribit's list may hold indexes it never prices.
    config["TICKERS_ALL"] = config["TICKERS"] == ALL_TICKERS
    if config["TICKERS_ALL"]:
        config["TICKERS"] = _all_tickers(app)
    _warn_if_too_fast(config["TICKERS"], config["FETCH_INTERVAL"])


def _all_tickers(app):
    config = app.config
    client = DeribitClient(config["DERIBIT_BASE_URL"], timeout=config["DERIBIT_TIMEOUT"])
    try:
        names, rejected = client.index_names()
        why = "it listed no usable index name"
    except DeribitError as exc:
        names, rejected, why = [], [], f"{exc.reason}: {exc}"
    finally:
        # Nothing else is asked at start-up: keep no idle connection (Deribit counts them per
        # IP), and none in a gunicorn master that is about to fork.
        client.session.close()
    if rejected:
        shown = [f"entry {position}: {reason}" for position, reason in rejected[:LOGGED_REJECTS]]
        log.warning(
            "TICKERS=all: left out %d entries of Deribit's index list: %s%s",
            len(rejected),
            "; ".join(shown),
            " ..." if len(rejected) > LOGGED_REJECTS else "",
        )
    if names:
        log.info(
            "TICKERS=all: tracking the %d indexes Deribit lists: %s", len(names), ",".join(names)
        )
        return tuple(names)
    stored = _stored_tickers(app)
    if stored:
        log.warning(
            "TICKERS=all: Deribit's index list is unavailable (%s); tracking the %d tickers"
            " already stored until the next start: %s",
            why,
            len(stored),
            ",".join(stored),
        )
        return tuple(stored)
    raise ConfigError(
        f"TICKERS=all: Deribit's index list is unavailable ({why}) and no price is stored yet"
        " to stand in for it; start again once Deribit answers, or set TICKERS to a list"
        " such as btc_usd,eth_usd"
    )


def _stored_tickers(app):
    with app.app_context():
        try:
            return stored_ticker_names()
        except SQLAlchemyError as exc:
            log.warning("TICKERS=all: no stored tickers either: %s", str(exc).splitlines()[0])
            return []
        finally:
            # A gunicorn master forks after this: its children must not share a connection.
            for engine in db.engines.values():
                engine.dispose()


def _warn_if_too_fast(tickers, interval):
    """One warning when a fetch cycle of `tickers` cannot keep within Deribit's rate limit."""
    per_second = len(tickers) / interval
    pacing = paced_seconds(len(tickers))
    if per_second > REQUESTS_PER_SECOND or pacing >= 0.8 * interval:
        log.warning(
            "%d tickers every %d s: %.1f requests a second, each cycle paced for %.1f s"
            " (Deribit allows %d a second after a burst of %d); tickers whose turn comes after"
            " the cycle's deadline fail with reason 'paced'. Track fewer or fetch less often.",
            len(tickers),
            interval,
            per_second,
            pacing,
            REQUESTS_PER_SECOND,
            BURST_REQUESTS,
        )

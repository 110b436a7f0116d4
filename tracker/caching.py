"""HTTP caching of /api answers: strong ETags, 304 Not Modified, and a Cache-Control per answer."""

import hashlib
import time

from flask import current_app, g, request
from werkzeug.http import http_date

# A range that ended before the backfill window can no longer change (the backfill looks no
# further back and the live fetch writes only the current slot): a cache may keep it for hours.
SETTLED_MAX_AGE = 6 * 3600
# A fetch lands a moment after its slot starts (the Deribit round trip and the insert): an
# answer cached until exactly the slot would be fetched again before the new price is there.
FETCH_SETTLE_SECONDS = 5


def init_app(app):
    """Give every successful /api GET its validators and lifetime, and every error no-store."""
    app.after_request(_cache_headers)


def range_ends_at(timestamp):
    """Declare the last moment (UNIX seconds) the current answer covers; None: up to now."""
    g.range_end = timestamp


def _cache_headers(response):
    req = request._get_current_object()  # one LocalProxy lookup, not one per attribute
    if not req.path.startswith("/api/") or req.method not in ("GET", "HEAD"):
        return response
    if response.status_code != 200:
        # A 404 turns into data with the next fetch, a 429 or 503 passes: never keep them.
        response.headers["Cache-Control"] = "no-store"
        return response
    headers = response.headers
    # Which headers the view set, read once: `name in headers` raises and catches a KeyError
    # for every absent name, and set() scans the list, where add() appends.
    present = {name.lower() for name, _ in headers}
    # /prices, /prices/by-date and /candles answer JSON or CSV by the Accept header.
    if "vary" in present:
        response.vary.add("Accept")
    else:
        headers.add("Vary", "Accept")
    max_age = max_age_for(g.get("range_end"), time.time(), current_app.config)
    headers.set("Cache-Control", f"public, max-age={max_age}")
    if not response.is_streamed:  # a CSV download is streamed: hashing it would buffer it
        response.set_etag(hashlib.sha256(response.get_data()).hexdigest())
        if "HTTP_IF_NONE_MATCH" in req.environ or "content-length" not in present:
            response.make_conditional(req)  # If-None-Match that matches: 304, no body
        elif "date" not in present:
            # All make_conditional does without If-None-Match to a body of known length
            # (there is no Last-Modified to compare and no Range is served): add a Date.
            headers.add("Date", _http_date_now())
    return response


_date = (None, "")  # (whole second, its HTTP date), replaced as one tuple: threads


def _http_date_now():
    """werkzeug's http_date() of now, made once per second rather than once per answer."""
    global _date
    second, text = _date
    now = int(time.time())
    if second != now:
        second, text = now, http_date(now)
        _date = (second, text)
    return text


def max_age_for(range_end, now, config):
    """Seconds an answer stays right: hours once its range is settled, else until the next
    fetch has landed (never longer than FETCH_INTERVAL)."""
    if range_end is not None and range_end < now - config["BACKFILL_WINDOW"]:
        return SETTLED_MAX_AGE
    interval = config["FETCH_INTERVAL"]
    settle = min(FETCH_SETTLE_SECONDS, interval // 4)
    slot = now // interval * interval
    # Just after a slot starts its fetch may not have landed yet: only until it should have.
    due = slot + settle if now < slot + settle else slot + interval + settle
    return max(0, int(due - now))

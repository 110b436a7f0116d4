"""HTTP caching of /api answers: strong ETags, 304 Not Modified, and a Cache-Control per answer;
and their OpenAPI documentation."""

import hashlib
import time

from apispec import BasePlugin
from flask import current_app, g, request
from werkzeug.http import http_date

from tracker.deribit import paced_seconds

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
    # /prices, /prices/by-date and /candles answer JSON or CSV by the Accept header (cors.py adds
    # Origin when the answer depends on it).
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
    # A long list (TICKERS=all) is paced: its last tickers are asked that much later.
    settle = min(FETCH_SETTLE_SECONDS + paced_seconds(len(config["TICKERS"])), interval // 4)
    slot = now // interval * interval
    # Just after a slot starts its fetch may not have landed yet: only until it should have.
    due = slot + settle if now < slot + settle else slot + interval + settle
    return max(0, int(due - now))


# --- The OpenAPI documentation of the above, for every GET under /api/ --------------------------

ETAG_EXAMPLE = '"3f1c8e0b2a9d4c7e6f5a8b1c0d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e"'
CACHE_HEADERS = {
    "ETag": {
        "description": "The answer's strong validator (SHA-256 of the body): send it back in"
        " `If-None-Match`. Absent on a CSV download, which is streamed.",
        "schema": {"type": "string", "example": ETAG_EXAMPLE},
    },
    "Cache-Control": {
        "description": "`public, max-age=N`: until the next fetch should have landed (at most"
        " FETCH_INTERVAL), or 6 hours for a range that ended before BACKFILL_WINDOW.",
        "schema": {"type": "string", "example": "public, max-age=35"},
    },
}

NOT_MODIFIED = {
    "description": "Not Modified: the answer whose `ETag` you sent in `If-None-Match` is still"
    " the current one. No body.",
    "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in CACHE_HEADERS},
}


class CachingDocs(BasePlugin):
    """An apispec plugin: every GET under /api/ takes If-None-Match, may answer 304, and its 200
    carries ETag and Cache-Control. One place, as _cache_headers is for every such answer."""

    def init_spec(self, spec):
        for name, header in CACHE_HEADERS.items():
            spec.components.header(name, header)
        spec.components.parameter(
            "IfNoneMatch",
            "header",
            {
                "name": "If-None-Match",
                "description": "The `ETag` of the answer you hold: if it is still the current"
                " one, the answer is a 304 without a body.",
                "schema": {"type": "string", "example": ETAG_EXAMPLE},
            },
        )

    def operation_helper(self, path=None, operations=None, **kwargs):
        if not path.startswith("/api/") or "get" not in operations:
            return
        operation = operations["get"]
        # Components by name: apispec turns them into references.
        operation.setdefault("parameters", []).append("IfNoneMatch")
        responses = operation.setdefault("responses", {})
        ok = responses.get("200", responses.get(200))
        if ok is not None:
            ok.setdefault("headers", {}).update(NOT_MODIFIED["headers"])
        # flask-smorest registers a response per status, emitted once referenced; TrackerApi
        # makes this one NOT_MODIFIED.
        responses["304"] = "NOT_MODIFIED"

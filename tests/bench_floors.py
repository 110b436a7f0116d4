"""The benchmark's floors: what Flask on gunicorn, and psycopg2 + json.dumps, allow on this machine.

`constant_app` answers a constant small JSON; `raw_app` runs the SQL the API runs, with psycopg2
directly (one connection per worker, NUMERIC read as float) and `json.dumps`. Neither validates,
paginates with cursors or keeps prices exact: they are lower bounds on cost, not alternatives.
Run with the production settings: `gunicorn -c gunicorn.conf.py tests.bench_floors:raw_app`.
"""

import json
import os
import threading

import psycopg2
import psycopg2.extensions
from flask import Flask, Response, request
from sqlalchemy.engine import make_url

CONSTANT = {"ticker": "btc_usd", "price": 86955.73, "timestamp": 1763928000}
LATEST_SQL = (
    "SELECT ticker, price, timestamp FROM price_records"
    " WHERE ticker = %s ORDER BY timestamp DESC LIMIT 1"
)
AT_SQL = (
    "SELECT ticker, price, timestamp FROM price_records"
    " WHERE ticker = %s AND timestamp <= %s ORDER BY timestamp DESC LIMIT 1"
)
PAGE_SQL = (
    "SELECT ticker, price, timestamp FROM price_records"
    " WHERE ticker = %s AND timestamp >= %s AND timestamp <= %s AND timestamp < %s"
    " ORDER BY timestamp DESC LIMIT %s"
)
# NUMERIC as float: json.dumps cannot write Decimal, and a floor takes the cheapest path.
FLOAT_NUMERIC = psycopg2.extensions.new_type(
    psycopg2.extensions.DECIMAL.values,
    "FLOAT_NUMERIC",
    lambda v, _: None if v is None else float(v),
)

constant_app = Flask("constant_floor")
raw_app = Flask("raw_floor")
_local = threading.local()


@constant_app.get("/constant")
def constant():
    """A constant small JSON: the cost of Flask and gunicorn alone."""
    return CONSTANT


def _rows(sql, params):
    connection = getattr(_local, "connection", None)
    if connection is None:  # opened after gunicorn forks: one per worker (thread)
        url = make_url(os.environ["DATABASE_URL"])
        connection = psycopg2.connect(
            host=url.host, port=url.port, user=url.username, dbname=url.database
        )
        connection.autocommit = True
        psycopg2.extensions.register_type(FLOAT_NUMERIC, connection)
        _local.connection = connection
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _json(body, status=200):
    return Response(json.dumps(body), status, mimetype="application/json")


def _one(rows):
    if not rows:
        return _json({"message": "not found"}, 404)
    ticker, price, timestamp = rows[0]
    return _json({"ticker": ticker, "price": price, "timestamp": timestamp})


def query_for(endpoint, args):
    """The SQL and parameters a floor endpoint runs; the benchmark EXPLAINs the same."""
    ticker = args["ticker"]
    if endpoint == "latest":
        return LATEST_SQL, (ticker,)
    if endpoint == "at":
        return AT_SQL, (ticker, int(args["timestamp"]))
    bounds = [int(args.get(k, d)) for k, d in (("start", 0), ("end", 2**62), ("before", 2**62))]
    return PAGE_SQL, (ticker, *bounds, int(args.get("limit", 100)) + 1)


@raw_app.get("/latest")
def latest():
    """The newest row of a ticker."""
    return _one(_rows(*query_for("latest", request.args)))


@raw_app.get("/at")
def at():
    """The newest row at or before a timestamp."""
    return _one(_rows(*query_for("at", request.args)))


@raw_app.get("/page")
def page():
    """Up to `limit` rows, newest first, in [start, end] and before `before`, as a page."""
    limit = int(request.args.get("limit", 100))
    rows = _rows(*query_for("page", request.args))
    items = [{"ticker": t, "price": p, "timestamp": ts} for t, p, ts in rows[:limit]]
    next_before = rows[limit - 1][2] if len(rows) > limit else None
    return _json({"ticker": request.args["ticker"], "items": items, "next_before": next_before})

"""Extensions, created unbound and bound in create_app(); Redis and queue factories."""

import simplejson
from flask import current_app, json, request
from flask.json.provider import DefaultJSONProvider
from flask_cors import CORS
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from rq import Queue
from sqlalchemy import MetaData

# Stable constraint names, so Alembic migrations name them the same on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

QUEUE_NAME = "prices"


class PrefixAwareApi(Api):
    """flask-smorest's Api, whose /openapi.json names the URL prefix the request came through."""

    def _openapi_json(self):
        # flask-smorest builds the spec once, but the prefix is per request: behind a proxy at
        # https://example.com/tracker/ Swagger UI's "Try it out" must call /tracker/api/v1/...,
        # and it resolves paths against this server URL. Relative (just the path), so scheme and
        # host stay whatever the browser used.
        spec = {**self.spec.to_dict(), "servers": [{"url": request.script_root or "/"}]}
        return current_app.response_class(
            json.dumps(spec, indent=2, sort_keys=False), mimetype="application/json"
        )


db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
migrate = Migrate()
api = PrefixAwareApi()
cors = CORS()


class ExactJSONProvider(DefaultJSONProvider):
    """JSON that writes Decimal as a bare number with its exact digits (86955.73, never "86955.73").

    The standard library can only write Decimal as a string or through float; simplejson
    writes it verbatim, which is how a price Deribit sent comes back digit for digit.
    """

    sort_keys = False

    def dumps(self, obj, **kwargs):
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return simplejson.dumps(obj, use_decimal=True, **kwargs)


def redis_connection(url=None, **options):
    """A Redis client for the configured URL (RESP2: what RQ and rq-scheduler are written for)."""
    return Redis.from_url(url or current_app.config["REDIS_URL"], protocol=2, **options)


def rq_connection():
    """A Redis client for RQ and rq-scheduler that also works with `flask up`'s embedded Redis.

    RQ asks the server version with INFO, which fakeredis does not implement (it answers an
    error and drops the connection, failing whatever RQ was doing). RQ caches the version on
    the client, so when INFO is unknown we give it the version fakeredis emulates.
    """
    connection = redis_connection()
    try:
        connection.info("server")
    except ResponseError:
        setattr(connection, "__rq_redis_server_version", (7, 0, 0))
        connection.connection_pool.disconnect()  # the server closed that socket
    except RedisConnectionError:
        pass  # unreachable for now: RQ reports it and keeps retrying
    return connection


def fetch_queue(connection=None):
    """The RQ queue the fetch job runs on."""
    return Queue(QUEUE_NAME, connection=connection or redis_connection())

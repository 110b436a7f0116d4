"""Extensions, created unbound and bound in create_app(); the API's parser and error schema;
Redis and queue factories."""

from http import HTTPStatus

import flask_smorest
import simplejson
from flask import current_app, json, request
from flask.json.provider import DefaultJSONProvider
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from marshmallow import Schema, ValidationError, fields
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from rq import Queue
from sqlalchemy import MetaData
from webargs.flaskparser import FlaskParser

from tracker.caching import NOT_MODIFIED, CachingDocs

# Stable constraint names, so Alembic migrations name them the same on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

QUEUE_NAME = "prices"


class ErrorSchema(Schema):
    """Every error's body, as the Api writes it (handle_http_exception)."""

    code = fields.Integer(required=True, metadata={"description": "The HTTP status code."})
    status = fields.String(required=True, metadata={"description": "Its reason phrase."})
    message = fields.String(
        metadata={"description": "What is wrong. A 422 says it in `errors` instead."}
    )
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(keys=fields.String(), values=fields.List(fields.String())),
        metadata={
            "description": "422 only: for each location (`query`), each parameter at fault"
            " and what is wrong with it.",
            "example": {"query": {"ticker": ["Unknown ticker 'doge_usd'."]}},
        },
    )


# What a 422 looks like, shown in the spec next to the Error schema.
VALIDATION_ERROR_EXAMPLE = {
    "code": 422,
    "status": "Unprocessable Entity",
    "errors": {
        "query": {
            "ticker": ["Unknown ticker 'doge_usd'. Tracked tickers: btc_usd, eth_usd."],
            "limit": ["Must be greater than or equal to 1 and less than or equal to 1000."],
        }
    },
}


class StrictQueryParser(FlaskParser):
    """webargs' parser, refusing a single-valued query parameter given more than once.

    webargs would take the first of `ticker=btc_usd&ticker=eth_usd` and ignore the rest: a
    client's mistake answered with data it did not ask for. Parameters declared as lists
    (none yet) may repeat.
    """

    # Schemas whose parsed arguments depend on nothing but the query string and the app's
    # settings (no Accept header, no clock), by id: see query_args(remember=True).
    remembered = set()
    # Distinct query strings kept per app; clients choose them, so the memory is bounded.
    REMEMBERED_MAX = 256

    def parse(self, argmap, req=None, **kwargs):
        """webargs' parse; for a `remembered` schema, once per query string and app.

        Parsing and validating `ticker=btc_usd` with webargs and marshmallow was a tenth of
        /prices/latest's CPU in the app (docs/PERFORMANCE.md), and its answer for the same
        query string never changes. Only valid arguments are kept: an invalid query string is
        parsed, and refused, every time.
        """
        if id(argmap) not in self.remembered:
            return super().parse(argmap, req, **kwargs)
        parsed = current_app.extensions.setdefault("tracker_parsed_args", {})
        key = (id(argmap), (req or request).query_string)
        args = parsed.get(key)
        if args is None:
            args = super().parse(argmap, req, **kwargs)
            if len(parsed) >= self.REMEMBERED_MAX:
                parsed.clear()
            parsed[key] = args
        return dict(args)  # the view's own copy

    def load_querystring(self, req, schema):
        args = super().load_querystring(req, schema)  # webargs' proxy: knows the list fields
        known = {field.data_key or name for name, field in schema.fields.items()}
        repeated = {
            name: [f"Given {len(req.args.getlist(name))} times: give it once."]
            for name in req.args
            if name in known and name not in args.multiple_keys and len(req.args.getlist(name)) > 1
        }
        if repeated:
            raise ValidationError(repeated)
        return args


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, parsing query arguments with StrictQueryParser."""

    ARGUMENTS_PARSER = StrictQueryParser()


def _exactly_null_branch(converter, field, ret, **kwargs):
    """A nullable nested schema as "that schema or null", not "that schema or any object".

    apispec writes it `anyOf: [{type: object, nullable: true}, {$ref}]`, whose first branch
    accepts every object: a validator then accepts anything, and a generated client parses a
    PricePoint as an anonymous object. `enum: [null]` narrows that branch to null alone
    (OpenAPI 3.0.3's way to say "or null" next to a $ref).
    """
    branches = ret.get("anyOf", [])
    if {"type": "object", "nullable": True} not in branches:
        return {}
    references = [branch for branch in branches if "$ref" in branch]
    return {"anyOf": [*references, {"type": "object", "nullable": True, "enum": [None]}]}


class TrackerApi(Api):
    """flask-smorest's Api, with the spec our clients and their tools need.

    - /openapi.json names the URL prefix the request came through.
    - Fields whose values depend on the configuration (the tracked tickers, the intervals
      FETCH_INTERVAL allows) or that have two JSON forms (prices) document themselves through
      an `openapi_properties(config, ret)` method, read when each app builds its spec.
    - Errors are documented with our ErrorSchema, the 422 with an example.
    - Every GET under /api/ documents HTTP caching: If-None-Match, ETag, Cache-Control, 304.
    """

    ERROR_SCHEMA = ErrorSchema

    def _init_spec(self, **kwargs):
        # Every GET under /api/ documents its ETag, Cache-Control and 304 (tracker/caching.py).
        plugins = [*(kwargs.pop("extra_plugins", None) or ()), CachingDocs()]
        super()._init_spec(extra_plugins=plugins, **kwargs)
        config = self._app.config

        def configured_properties(converter, field, ret, **kwargs):
            describe = getattr(field, "openapi_properties", None)
            return describe(config, ret) if describe else {}

        self.ma_plugin.converter.add_attribute_function(configured_properties)
        self.ma_plugin.converter.add_attribute_function(_exactly_null_branch)

    def _register_responses(self):
        super()._register_responses()
        # flask-smorest registers one response per status lazily (only the referenced ones
        # appear); registering 422 again replaces that entry with one that has an example.
        self.spec.components.response(
            HTTPStatus(422).name,  # named as flask-smorest names it
            {
                "description": "A query parameter is missing, unknown, repeated or invalid:"
                " `errors` names each one and says why.",
                "content": {
                    "application/json": {
                        "schema": self.ERROR_SCHEMA,
                        "example": VALIDATION_ERROR_EXAMPLE,
                    }
                },
            },
            lazy=True,
        )
        self.spec.components.response(HTTPStatus(304).name, NOT_MODIFIED, lazy=True)

    def _register_pagination_header(self):
        """Nothing: flask-smorest's pagination (and its PaginationMetadata schema) is unused.

        The API pages with cursors (PricePageSchema, CandlePageSchema) instead.
        """

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
api = TrackerApi()


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

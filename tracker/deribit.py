"""The Deribit client: one session, timeouts, bounded retries, strict parsing, own errors.

It speaks three methods: get_index_price (the live price), get_index_chart_data (the recent
history the backfill fills holes from) and get_index_price_names (every index, for TICKERS=all).
All share the same retry rules and the same pace (Deribit's rate and connection limits).
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import requests
from requests.adapters import HTTPAdapter

from tracker.config import index_name as valid_index_name

# Deribit error codes worth another try: rate limits, overload, maintenance, timeouts.
RETRYABLE_CODES = frozenset({10028, 10040, 10041, 10047, 10066, 11051, 11094, 13028, 13888})
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# get_index_chart_data's `range` values and the span each covers, smallest first ("1m" is a
# month; 31 days covers every month). It has no start/end parameter.
CHART_RANGES = (
    ("1h", 3600),
    ("1d", 86400),
    ("2d", 2 * 86400),
    ("1m", 31 * 86400),
    ("1y", 366 * 86400),
    ("all", None),
)
# Chart points carry milliseconds; anything past 9999-12-31 is garbage, not a time.
MAX_MILLISECONDS = 253402300799999
# Deribit allows 32 simultaneous connections per IP and answers a 33rd with HTTP 429
# (docs.deribit.com/articles/connection-management-best-practices). A fetch cycle uses at most
# this many at once, leaving the rest to the other processes behind the same address.
MAX_CONNECTIONS = 25
# Public requests are rate-limited per IP with credits: 500 a request, 50,000 at most, 10,000
# refilled a second, i.e. 20 requests a second sustained and bursts of 100
# (docs.deribit.com/articles/rate-limits). Our own bucket allows half that burst, so that
# retries and the other processes keep a margin.
REQUESTS_PER_SECOND = 20
BURST_REQUESTS = 50


class DeribitError(Exception):
    """No usable price could be had from Deribit. `reason` is a short machine-readable tag."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


class DeribitUnavailable(DeribitError):
    """Deribit could not be reached or kept failing in a retryable way."""


class DeribitRejected(DeribitError):
    """Deribit answered with an error that another try would not fix (e.g. unknown index)."""


class InvalidPrice(DeribitError):
    """The answer held nothing usable: a price malformed, missing, non-numeric, <= 0 or not
    finite; chart data or an index list that is not a list."""


def paced_seconds(count):
    """How long RequestPace makes a cycle of `count` requests wait: the burst goes at once, the
    rest at the rate."""
    return max(0, count - BURST_REQUESTS) / REQUESTS_PER_SECOND


# The reason of a request refused its turn by RequestPace: never retried.
PACED = "paced"


class RequestPace:
    """A token bucket shared by every request of a client: `burst` at once, then `rate` a second.

    Each request takes a token; when none is left it waits for its turn, and a request whose
    turn would come after its deadline fails at once instead (reason `paced`).
    """

    def __init__(self, rate=REQUESTS_PER_SECOND, burst=BURST_REQUESTS):
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, deadline):
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            # Below zero is a queue: each waiter owns the turn its deficit says.
            self._tokens -= 1
            pause = max(0.0, -self._tokens / self.rate)
            if now + pause >= deadline:
                self._tokens += 1  # not taken after all
                raise DeribitUnavailable(
                    f"Deribit's rate limit leaves no turn before the deadline ({pause:.2f}s away)",
                    PACED,
                )
        if pause:
            time.sleep(pause)


class DeribitClient:
    """Fetches index prices from Deribit's public JSON-RPC-over-HTTP API."""

    def __init__(
        self, base_url, timeout=5.0, attempts=3, backoff=0.25, pool_size=MAX_CONNECTIONS, pace=None
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.pool_size = pool_size
        self.pace = pace or RequestPace()
        self.session = requests.Session()
        # One kept-alive connection per ticker fetched at once.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "deribit-price-tracker"

    def index_prices(self, index_names, deadline):
        """Fetch several index prices concurrently; returns {name: Decimal or DeribitError}.

        Up to `pool_size` requests are in flight at once (one round trip for that many
        tickers), each after its turn in the client's pace.
        """
        names = list(index_names)
        if not names:
            return {}
        workers = min(len(names), self.pool_size)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deribit") as pool:
            results = pool.map(lambda name: self._price_or_error(name, deadline), names)
            return dict(zip(names, results, strict=True))

    def _price_or_error(self, index_name, deadline):
        try:
            return self.index_price(index_name, deadline)
        except DeribitError as exc:
            return exc

    def index_price(self, index_name, deadline=None):
        """The current index price of `index_name`, retried until `deadline` (time.monotonic())."""
        params = {"index_name": index_name}
        return self._call("get_index_price", params, parse_index_price, deadline)

    def index_chart(self, index_name, chart_range, deadline=None):
        """get_index_chart_data: ([(milliseconds, Decimal)] in time order, [rejected points]).

        Each point is validated on its own, like a live price; a garbage point is left out and
        listed in the second item as (its position, reason), never stored.
        """
        params = {"index_name": index_name, "range": chart_range}
        return self._call("get_index_chart_data", params, parse_index_chart, deadline)

    def index_names(self, deadline=None):
        """get_index_price_names: ([index name] sorted, [rejected entries]).

        Deribit has documented the result both as plain names and as objects with a `name`
        (with `extended=true`); both are read. Each name must pass the same rule as TICKERS
        (config.index_name); an entry that does not is left out and listed in the second item
        as (its position, reason), never tracked.
        """
        return self._call("get_index_price_names", {}, parse_index_names, deadline)

    def _call(self, method, params, parse, deadline):
        """One public method, retried with exponential backoff while Deribit is unavailable."""
        if deadline is None:
            deadline = time.monotonic() + self.attempts * (self.timeout + self.backoff * 4)
        for attempt in range(1, self.attempts + 1):
            try:
                return self._request(method, params, parse, deadline)
            except DeribitUnavailable as exc:
                if exc.reason == PACED:
                    raise  # a later try's turn only comes later: fail at once, as documented
                pause = self.backoff * 2 ** (attempt - 1)
                if attempt == self.attempts or time.monotonic() + pause >= deadline:
                    raise DeribitUnavailable(
                        f"{exc} (gave up after {attempt} attempt{'s' * (attempt > 1)})", exc.reason
                    ) from exc
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(self, method, params, parse, deadline):
        if deadline <= time.monotonic():
            raise DeribitUnavailable("no time left for a request", "deadline")
        self.pace.wait(deadline)
        timeout = min(self.timeout, deadline - time.monotonic())
        if timeout <= 0:  # the turn came, but a sleep overshot the deadline
            raise DeribitUnavailable("no time left for a request", "deadline")
        try:
            response = self.session.get(
                f"{self.base_url}/public/{method}", params=params, timeout=(timeout, timeout)
            )
        except requests.Timeout as exc:
            raise DeribitUnavailable(f"timed out after {timeout:.1f}s", "timeout") from exc
        except requests.RequestException as exc:
            raise DeribitUnavailable(f"connection failed: {exc}", "connection") from exc
        return parse(response.status_code, response.content)


def chart_range_for(seconds):
    """The smallest get_index_chart_data range that reaches `seconds` back from now."""
    for name, span in CHART_RANGES:
        if span is None or seconds <= span:
            return name
    raise AssertionError("unreachable")  # pragma: no cover


def parse_index_price(status, body):
    """Turn Deribit's HTTP answer into an exact, positive, finite Decimal or raise DeribitError."""
    result = _result(status, body)
    price = result.get("index_price") if isinstance(result, dict) else None
    return validate_price(price)


def parse_index_chart(status, body):
    """Turn get_index_chart_data's answer into ([(milliseconds, Decimal)], [(position, reason)]).

    The result must be a list of [milliseconds, price] pairs; each pair is checked on its own
    (a whole-number time in range, a valid price), and the good ones come back in time order.
    """
    result = _result(status, body)
    if not isinstance(result, list):
        raise InvalidPrice("chart data is not a list of points", "malformed_chart")
    points, rejected = [], []
    for position, point in enumerate(result):
        try:
            if not isinstance(point, list) or len(point) != 2:
                raise InvalidPrice(f"not a [time, price] pair: {point!r:.60}", "malformed_point")
            milliseconds, price = point
            if isinstance(milliseconds, bool) or not isinstance(milliseconds, int):
                raise InvalidPrice(
                    f"time is not whole milliseconds: {milliseconds!r:.40}", "bad_time"
                )
            if not 0 <= milliseconds <= MAX_MILLISECONDS:
                raise InvalidPrice(f"time out of range: {milliseconds}", "bad_time")
            points.append((milliseconds, validate_price(price)))
        except InvalidPrice as exc:
            rejected.append((position, f"{exc.reason}: {exc}"))
    points.sort(key=lambda point: point[0])
    return points, rejected


def parse_index_names(status, body):
    """Turn get_index_price_names' answer into ([name] sorted, [(position, reason)]).

    The result must be a list; each entry is a name or an object with a `name`, checked on its
    own. Repeats are dropped quietly.
    """
    result = _result(status, body)
    if not isinstance(result, list):
        raise InvalidPrice("the index list is not a list", "malformed_names")
    names, rejected = set(), []
    for position, entry in enumerate(result):
        raw = entry.get("name") if isinstance(entry, dict) else entry
        name = valid_index_name(raw)
        if name is None:
            rejected.append((position, f"not an index name like btc_usd: {entry!r:.60}"))
        else:
            names.add(name)
    return sorted(names), rejected


def _result(status, body):
    """The `result` of a JSON-RPC answer; Deribit errors and HTTP failures as DeribitError."""
    try:
        # parse_float=Decimal keeps the digits exactly as sent; NaN/Infinity become Decimal too
        # so that they are rejected below with their own reason.
        document = json.loads(body, parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        if status in RETRYABLE_STATUSES:
            raise DeribitUnavailable(f"HTTP {status}", f"http_{status}") from exc
        raise InvalidPrice(f"malformed JSON (HTTP {status})", "malformed_json") from exc
    if not isinstance(document, dict):
        raise InvalidPrice("answer is not a JSON object", "malformed_json")

    error = document.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = error.get("message") if isinstance(error, dict) else error
        text = f"Deribit error {code}: {message}"
        # A 5xx is retried whatever code it carries: the server itself is failing.
        if code in RETRYABLE_CODES or status in RETRYABLE_STATUSES:
            raise DeribitUnavailable(text, f"deribit_{code}")
        raise DeribitRejected(text, f"deribit_{code}")
    if status in RETRYABLE_STATUSES:
        raise DeribitUnavailable(f"HTTP {status}", f"http_{status}")
    if status != 200:
        raise DeribitRejected(f"HTTP {status}", f"http_{status}")
    return document.get("result")


def validate_price(price):
    """Accept only a JSON number that is finite and > 0; anything else is garbage."""
    if price is None:
        raise InvalidPrice("no index_price in the answer", "missing_price")
    if isinstance(price, bool) or not isinstance(price, (int, Decimal)):
        raise InvalidPrice(f"index_price is not a number: {price!r}", "non_numeric")
    price = Decimal(price)
    if not price.is_finite():
        raise InvalidPrice(f"index_price is not finite: {price}", "not_finite")
    if price <= 0:
        raise InvalidPrice(f"index_price is not positive: {price}", "non_positive")
    if not -30 <= price.adjusted() <= 30:
        # 1E-100000 is "a positive number" but no index price; PostgreSQL's NUMERIC would
        # reject it and take the other tickers' rows of the same INSERT down with it.
        raise InvalidPrice(f"index_price is out of range: {price}", "out_of_range")
    return price

"""A fake Deribit on a real loopback socket: get_index_price, get_index_chart_data and
get_index_price_names.

Tests queue replies per method and index name (a price given as raw JSON text, a Deribit
error, a malformed or slow answer); with nothing queued it answers from its price history:
a constant price per index, or with `random_walk` a price that moves every second as a fixed
function of time, so the chart data of any past moment is the price it served live then.
Every index of its list (`index_names`, ~50 real names by default, sent as plain names or as
objects with a `name`) has a price. `outage = True` makes every answer an HTTP 503. Runnable on
its own for demos: `python -m tests.fake_deribit --port 8001 --random-walk`.
"""

import argparse
import hashlib
import json
import math
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PRICE_PATH = "/api/v2/public/get_index_price"
CHART_PATH = "/api/v2/public/get_index_chart_data"
NAMES_PATH = "/api/v2/public/get_index_price_names"
# What get_index_price_names lists by default: Deribit's documented indexes whose names are
# currency pairs (its list also holds names such as drbfix-btc_usdc, left out here), and a few
# more of the same kind, 50 in all.
INDEX_NAMES = (
    "btc_usd eth_usd ada_usdc algo_usdc avax_usdc bch_usdc bnb_usdc btc_usdc btcdvol_usdc"
    " buidl_usdc doge_usdc dot_usdc eurr_usdc eth_usdc ethdvol_usdc link_usdc ltc_usdc"
    " near_usdc paxg_usdc shib_usdc sol_usdc steth_usdc ton_usdc trump_usdc trx_usdc uni_usdc"
    " usde_usdc usyc_usdc xrp_usdc btc_usdt eth_usdt eurr_usdt sol_usdt steth_usdt usdc_usdt"
    " usde_usdt btc_eurr btc_usde btc_usyc eth_btc eth_eurr eth_usde eth_usyc steth_eth"
    " paxg_btc xrp_usdt doge_usdt ada_usdt avax_usdt link_usdt"
).split()
# The answer's shapes: ["btc_usd", ...] or [{"name": "btc_usd", ...}, ...] (extended=true).
NAMES_SHAPES = ("strings", "objects")
# The longest `hold_answers_until` keeps a request waiting for the rest of its wave.
HOLD_SECONDS = 2.0
# How far back each chart range reaches, and the default spacing of its points (Deribit does
# not document the spacing; its own example of "1m" is hourly).
CHART_SPANS = {"1h": 3600, "1d": 86400, "2d": 172800, "1m": 31 * 86400, "1y": 366 * 86400}
CHART_SPACING = {"1h": 60, "1d": 60, "2d": 60, "1m": 3600, "1y": 86400, "all": 86400}
# "all" starts this long before now.
ALL_HISTORY_SECONDS = 3 * 366 * 86400


@dataclass
class Reply:
    """One scripted answer: HTTP status, raw body text, and a delay before sending it."""

    status: int = 200
    body: str = ""
    delay: float = 0.0


def _envelope(payload):
    now = int(time.time() * 1_000_000)
    return (
        '{"jsonrpc":"2.0",' + payload + f',"usIn":{now},"usOut":{now + 120},"usDiff":120,'
        '"testnet":false}'
    )


def price_reply(raw_price, delay=0.0):
    """A normal answer whose index_price is `raw_price` written verbatim (e.g. "86955.73")."""
    result = f'"result":{{"index_price":{raw_price},"estimated_delivery_price":{raw_price}}}'
    return Reply(200, _envelope(result), delay)


def error_reply(code, message, status=400, delay=0.0):
    """A Deribit JSON-RPC error, e.g. 10028 too_many_requests or -32602 Invalid params."""
    error = json.dumps({"code": code, "message": message, "data": {"reason": message}})
    return Reply(status, _envelope(f'"error":{error}'), delay)


def chart_reply(points):
    """A get_index_chart_data answer: `points` as (milliseconds, raw JSON price text) pairs."""
    result = ",".join(f"[{ms},{raw}]" for ms, raw in points)
    return Reply(200, _envelope(f'"result":[{result}]'))


def moving_price(index_name, second, base="100"):
    """The demo's price of `index_name` at a UNIX second: a fixed function of time.

    A slow daily wave, an hourly one and a little per-second noise around `base`, written
    as Deribit's float serialiser would (86899.9, not 86899.90).
    """
    digest = hashlib.sha256(f"{index_name}:{second}".encode()).digest()
    noise = int.from_bytes(digest[:4], "big") / 2**32 - 0.5
    factor = 1 + 0.01 * math.sin(second * 2 * math.pi / 86400)
    factor += 0.002 * math.sin(second * 2 * math.pi / 3600) + 0.0004 * noise
    price = (Decimal(base) * Decimal(repr(factor))).quantize(Decimal("0.01"))
    return format(price.normalize(), "f")


def names_reply(entries, shape="strings"):
    """A get_index_price_names answer. With shape "objects" each string entry becomes an
    object with that `name`; any other entry (a test's garbage) is sent as it is."""
    if shape == "objects":
        entries = [
            {
                "name": e,
                "future_combo_creation_enabled": True,
                "option_combo_creation_enabled": False,
            }
            if isinstance(e, str)
            else e
            for e in entries
        ]
    return Reply(200, _envelope(f'"result":{json.dumps(entries)}'))


def missing_price_reply():
    """A well-formed answer whose result lacks index_price."""
    return Reply(200, _envelope('"result":{"estimated_delivery_price":1}'))


def malformed_reply(status=200):
    """A body that is not JSON at all."""
    return Reply(status, "<html>upstream hiccup</html>")


class FakeDeribit:
    """The fake server: start(), stop(); its `base_url` goes in DERIBIT_BASE_URL."""

    DEFAULT_PRICES = {"btc_usd": "86955.73", "eth_usd": "2950.12"}

    def __init__(self, host="127.0.0.1", port=0, prices=None, latency=0.0, random_walk=False):
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.reset(prices, latency, random_walk=random_walk)
        self._server = _Server((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = None

    @property
    def base_url(self):
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/api/v2"

    def reset(
        self,
        prices=None,
        latency=0.0,
        random_walk=False,
        chart_spacing=None,
        index_names=None,
        names_shape="strings",
    ):
        """Back to the given (or default) prices, no scripted replies, no recorded requests.

        `chart_spacing`: seconds between chart points, for every range (default per range).
        `index_names`: what get_index_price_names lists (any JSON values, for garbage), in the
        shape `names_shape` ("strings" or "objects"); every listed name has a price too.
        """
        assert names_shape in NAMES_SHAPES, names_shape
        with self._lock:
            self.prices = dict(prices or self.DEFAULT_PRICES)  # index name -> raw JSON number
            self.index_names = list(INDEX_NAMES if index_names is None else index_names)
            self.names_shape = names_shape
            self.names_requests = 0  # get_index_price_names requests
            self.latency = latency
            self.random_walk = random_walk
            self.chart_spacing = chart_spacing
            self.outage = False
            self.requests = []  # (index_name, time.time()) of every get_index_price
            self.chart_requests = []  # (index_name, range, time.time()) of every chart request
            self.client_ports = set()  # one per TCP connection a client opened
            self.in_flight = 0
            self.max_in_flight = 0  # most requests being answered at the same time
            # With a number N: no answer leaves until N requests are in flight (or HOLD_SECONDS
            # passed), so max_in_flight shows what the client sent at once, however slow the
            # machine. Each wave of N is let go together.
            self.hold_answers_until = None
            self._wave = 0
            self._scripts = defaultdict(deque)

    def price_at(self, index_name, second):
        """The raw price of `index_name` at a UNIX second: what live and chart answers say."""
        if self.random_walk:
            return moving_price(index_name, int(second), self._base_price(index_name))
        return self._base_price(index_name)

    def knows(self, index_name):
        return index_name in self.prices or index_name in self.index_names

    def _base_price(self, index_name):
        # A listed index without a price of its own: one of its own, by its place in the list.
        if index_name in self.prices:
            return self.prices[index_name]
        return f"{100 + self.index_names.index(index_name)}.5"

    def chart_points(self, index_name, chart_range, now):
        """The (milliseconds, raw price) points get_index_chart_data answers for `range`."""
        spacing = self.chart_spacing or CHART_SPACING[chart_range]
        span = CHART_SPANS.get(chart_range, ALL_HISTORY_SECONDS)
        last = int(now) // spacing * spacing
        first = last - span // spacing * spacing
        return [
            (second * 1000, self.price_at(index_name, second))
            for second in range(first, last + 1, spacing)
        ]

    def script(self, index_name, *replies):
        """Queue get_index_price replies for `index_name`, answered before the history."""
        with self._lock:
            self._scripts[index_name].extend(replies)

    def script_names(self, *replies):
        """Queue get_index_price_names replies, answered before the list."""
        with self._lock:
            self._scripts["names"].extend(replies)

    def script_chart(self, index_name, *replies):
        """Queue get_index_chart_data replies for `index_name`, answered before the history."""
        with self._lock:
            self._scripts["chart", index_name].extend(replies)

    def requests_for(self, index_name):
        with self._lock:
            return [at for name, at in self.requests if name == index_name]

    def _hold(self):
        """With hold_answers_until set, wait (the lock held) until this request's wave is full."""
        if not self.hold_answers_until:
            return
        if self.in_flight >= self.hold_answers_until:
            self._wave += 1
            self._arrived.notify_all()
        else:
            wave = self._wave
            self._arrived.wait_for(lambda: self._wave != wave, timeout=HOLD_SECONDS)

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self, path, query):
        index_name = query.get("index_name", [""])[0]
        now = time.time()
        with self._lock:
            if path == NAMES_PATH:
                self.names_requests += 1
                script = self._scripts["names"]
                if script:
                    return script.popleft()
                if self.outage:
                    return error_reply(13028, "temporarily_unavailable", status=503)
                return names_reply(self.index_names, self.names_shape)
            if path == PRICE_PATH:
                self.requests.append((index_name, now))
                script = self._scripts[index_name]
            else:
                chart_range = query.get("range", [""])[0]
                self.chart_requests.append((index_name, chart_range, now))
                script = self._scripts["chart", index_name]
            if script:
                return script.popleft()
            if self.outage:
                return error_reply(13028, "temporarily_unavailable", status=503)
            if not self.knows(index_name):
                return error_reply(-32602, "Invalid params")
            if path == PRICE_PATH:
                return price_reply(self.price_at(index_name, now))
            if chart_range not in CHART_SPACING:
                return error_reply(-32602, "Invalid params")
            return chart_reply(self.chart_points(index_name, chart_range, now))

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Deribit does
            # Headers and body go out in two writes: with Nagle on, the second waits for the
            # client's delayed ACK (40 ms) on a kept-alive connection, which Deribit does not add.
            disable_nagle_algorithm = True

            def do_GET(self):  # noqa: N802 - the name http.server dispatches to
                url = urlsplit(self.path)
                if url.path not in (PRICE_PATH, CHART_PATH, NAMES_PATH):
                    self._send(Reply(404, _envelope('"error":{"code":-32601,"message":"no"}')))
                    return
                reply = fake._next_reply(url.path, parse_qs(url.query))
                with fake._lock:
                    fake.client_ports.add(self.client_address[1])
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    fake._hold()
                try:
                    time.sleep(fake.latency + reply.delay)
                    self._send(reply)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _send(self, reply):
                body = reply.body.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test); nothing to answer

            def log_message(self, *args):
                pass

        return Handler


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a burst of 25 new connections (a fetch cycle's
    # first) would overflow it and wait a second for the SYN to be sent again.
    request_queue_size = 128


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    parser.add_argument(
        "--random-walk",
        action="store_true",
        help="prices move every second (a fixed function of time)",
    )
    args = parser.parse_args()
    fake = FakeDeribit(args.host, args.port, latency=args.latency, random_walk=args.random_walk)
    print(f"fake Deribit at {fake.base_url} (Ctrl-C to stop)", flush=True)
    try:
        fake._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake._server.server_close()


if __name__ == "__main__":
    main()

"""A fake Deribit on a real loopback socket: speaks get_index_price, scriptable by tests.

Tests queue replies per index name (a price given as raw JSON text, a Deribit error, a
malformed or slow answer); with nothing queued it answers the current price. Runnable on
its own for demos: `python -m tests.fake_deribit --port 8001 --random-walk`.
"""

import argparse
import json
import random
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PATH = "/api/v2/public/get_index_price"


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
        self.reset(prices, latency)
        self.random_walk = random_walk
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = None

    @property
    def base_url(self):
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/api/v2"

    def reset(self, prices=None, latency=0.0):
        """Back to the given (or default) prices, no scripted replies, no recorded requests."""
        with self._lock:
            self.prices = dict(prices or self.DEFAULT_PRICES)  # index name -> raw JSON number
            self.latency = latency
            self.requests = []  # (index_name, time.time()) of every request received
            self.client_ports = set()  # one per TCP connection a client opened
            self.in_flight = 0
            self.max_in_flight = 0  # most requests being answered at the same time
            self._scripts = defaultdict(deque)

    def script(self, index_name, *replies):
        """Queue replies for `index_name`, answered in order before the current price."""
        with self._lock:
            self._scripts[index_name].extend(replies)

    def requests_for(self, index_name):
        with self._lock:
            return [at for name, at in self.requests if name == index_name]

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self, index_name):
        with self._lock:
            self.requests.append((index_name, time.time()))
            if self._scripts[index_name]:
                return self._scripts[index_name].popleft()
            if index_name not in self.prices:
                return error_reply(-32602, "Invalid params")
            if self.random_walk:
                step = Decimal(str(round(random.gauss(0, 0.0005), 6)))
                walked = Decimal(self.prices[index_name]) * (1 + step)
                # Written as Deribit's float serialiser would: 86899.9, not 86899.90.
                self.prices[index_name] = format(walked.quantize(Decimal("0.01")).normalize(), "f")
            return price_reply(self.prices[index_name])

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Deribit does
            # Headers and body go out in two writes: with Nagle on, the second waits for the
            # client's delayed ACK (40 ms) on a kept-alive connection, which Deribit does not add.
            disable_nagle_algorithm = True

            def do_GET(self):  # noqa: N802 - the name http.server dispatches to
                url = urlsplit(self.path)
                if url.path != PATH:
                    self._send(Reply(404, _envelope('"error":{"code":-32601,"message":"no"}')))
                    return
                index_name = parse_qs(url.query).get("index_name", [""])[0]
                reply = fake._next_reply(index_name)
                with fake._lock:
                    fake.client_ports.add(self.client_address[1])
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    parser.add_argument("--random-walk", action="store_true", help="move prices on every request")
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

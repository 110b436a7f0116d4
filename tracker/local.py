"""`flask up`: the whole tracker on one machine (migrate, web, worker, scheduler) until Ctrl-C.

Laptop-only tools (fakeredis) are imported when `flask up` runs, not by every process.
"""

import os
import signal
import socket
import subprocess  # nosec B404
import sys
import threading
import time
from pathlib import Path

import click
from flask.cli import with_appcontext
from flask_migrate import upgrade

BIN = Path(sys.executable).parent
FAKE_DERIBIT = Path("tests") / "fake_deribit.py"
# A child that dies is started again after 1 s, doubling up to 30 s while it keeps dying soon
# after each start; one that stayed up a minute starts from 1 s again.
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STABLE_SECONDS = 60.0


def start_embedded_redis():
    """A Redis-compatible server (fakeredis) on a free loopback port, served from this process.

    The worker and scheduler still run as the separate processes they are in production and
    reach it over TCP, exactly as they would reach a real Redis.
    """
    from fakeredis import TcpFakeServer  # only here: production processes never load it

    server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="embedded-redis", daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"redis://{host}:{port}/0"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Child:
    """One process `flask up` runs, started again with backoff whenever it dies."""

    def __init__(self, name, argv, env):
        self.name = name
        self.argv = argv
        self.env = env
        self.process = None
        self.started = None
        self.delay = FIRST_RESTART_DELAY
        self.restart_at = None

    def start(self):
        """Start (or start again) the process."""
        # bandit B404/B603: our own commands (this environment's flask and gunicorn), no shell,
        # nothing a user typed. Its own process group, so that stopping it also reaches what it
        # started (gunicorn's workers), whatever order they exit in.
        self.process = subprocess.Popen(  # nosec B603
            self.argv, env=self.env, start_new_session=True
        )
        self.started = time.monotonic()
        self.restart_at = None

    def check(self):
        """Notice a death (one line) and start the process again once its delay has passed."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        lived = now - self.started
        if lived >= STABLE_SECONDS:
            self.delay = FIRST_RESTART_DELAY
        click.echo(
            f"{self.name} (pid {self.process.pid}) exited with code {code} after {lived:.0f} s;"
            f" starting it again in {self.delay:g} s",
            err=True,
        )
        self.restart_at = now + self.delay
        self.delay = min(self.delay * 2, MAX_RESTART_DELAY)


@click.command()
@click.option("--port", default=8000, show_default=True, help="Web port on 127.0.0.1.")
@click.option("--demo", is_flag=True, help="Fetch from a local fake Deribit (random walk).")
@with_appcontext
def up(port, demo):
    """Run everything locally until Ctrl-C: migrate, then web, worker and scheduler.

    A process that dies is started again (after 1 s, doubling to 30 s if it keeps dying).
    Without REDIS_URL it serves an embedded Redis; without DATABASE_URL the database is a
    SQLite file under instance/. With --demo it also runs the tests' fake Deribit with
    random-walk prices and fetches every 5 s (unless FETCH_INTERVAL is set): no network needed.
    """
    if _answers(port):
        raise click.UsageError(f"port {port} is in use: stop what listens there or pass --port")
    env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}"}
    env.setdefault("GUNICORN_WORKERS", "2")
    # Only a person's browser talks to it: threads to spare for the connections a browser opens
    # and leaves silent (each holds a thread up to 5 s), no load to make them contend.
    env.setdefault("GUNICORN_THREADS", "4")
    commands = {
        "web": [str(BIN / "gunicorn"), "wsgi:app"],
        "worker": [str(BIN / "flask"), "worker"],
        "scheduler": [str(BIN / "flask"), "scheduler"],
    }
    if demo:
        if not FAKE_DERIBIT.exists():
            raise click.UsageError(f"--demo runs {FAKE_DERIBIT}: start it from a source checkout")
        deribit_port = _free_port()
        commands["fake-deribit"] = [
            sys.executable, "-m", "tests.fake_deribit", "--port", str(deribit_port), "--random-walk"
        ]  # fmt: skip
        env["DERIBIT_BASE_URL"] = f"http://127.0.0.1:{deribit_port}/api/v2"
        env.setdefault("FETCH_INTERVAL", "5")

    embedded = None
    if "REDIS_URL" not in os.environ:
        embedded, env["REDIS_URL"] = start_embedded_redis()
        click.echo(f"embedded Redis at {env['REDIS_URL']} (set REDIS_URL to use a real one)")

    upgrade()
    # Ctrl-C and SIGTERM (from a supervisor) take the same clean path, even when started from
    # a shell that runs background jobs with SIGINT ignored (children inherit that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    children = [Child(name, argv, env) for name, argv in commands.items()]
    try:
        for child in children:
            child.start()
        while not _answers(port):  # print the addresses once they work
            for child in children:
                child.check()
            time.sleep(0.2)
        click.echo(
            f"Prices and chart: http://127.0.0.1:{port}/  API docs: http://127.0.0.1:{port}/docs"
            "  (Ctrl-C stops everything)",
            err=True,
        )
        while True:
            for child in children:
                child.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("stopping web, worker and scheduler ...", err=True)
    finally:
        _stop([child.process for child in children if child.process is not None])
        if embedded is not None:
            embedded.shutdown()


def _answers(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _stop(processes, timeout=10):
    """SIGTERM every child, then SIGKILL whatever has not exited in time: no orphans."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        try:  # a gunicorn worker still finishing a request after its master exited
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

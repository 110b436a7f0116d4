"""Fixtures: a private PostgreSQL database and Redis db per test run, a fake Deribit, processes.

Everything is real: PostgreSQL and Redis on localhost, HTTP over loopback. The database is
created for this run, migrated with the project's own migrations, and dropped at the end.
"""

import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import psycopg2
import pytest
import requests
import yaml
from flask_migrate import upgrade
from redis import Redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tests.fake_deribit import FakeDeribit
from tracker import create_app
from tracker.config import database_uri
from tracker.extensions import db

ROOT = Path(__file__).resolve().parent.parent
# An admin connection that may CREATE/DROP DATABASE, and a Redis db reserved for tests.
ADMIN_DATABASE_URL = os.environ.get(
    "TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def pg_connect(database_url):
    """A psycopg2 connection for a SQLAlchemy-style PostgreSQL URL."""
    url = make_url(database_url)
    return psycopg2.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database
    )


def admin_connection():
    """An autocommit connection that may CREATE and DROP databases."""
    connection = pg_connect(ADMIN_DATABASE_URL)
    connection.autocommit = True
    return connection


def _migrate(database_url):
    """Create the schema the way operators do: the project's migrations (`flask db upgrade`)."""
    app = create_app({"DATABASE_URL": database_url, "REDIS_URL": TEST_REDIS_URL})
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        db.engine.dispose()


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test run, migrated, dropped at the end."""
    with migrated_database(f"tracker_test_{os.getpid()}_{secrets.token_hex(3)}") as url:
        yield url


@contextmanager
def migrated_database(name):
    """A new PostgreSQL database `name` with the project's migrations; dropped on exit."""
    admin = admin_connection()
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    url = make_url(ADMIN_DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    try:
        _migrate(url)
        yield url
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    """A fresh SQLite file for this test run, migrated: the laptop default (`make run`)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tracker.db'}"
    _migrate(url)
    return url


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
def database_url(request):
    """Every test that touches the database runs on both: the same queries must work on each."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(scope="session")
def fake_deribit():
    server = FakeDeribit().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def deribit(fake_deribit):
    """The fake Deribit, reset to its default prices and no scripted replies for each test."""
    fake_deribit.reset()
    return fake_deribit


@pytest.fixture
def redis_conn():
    """The test Redis db, empty at the start of the test."""
    connection = Redis.from_url(TEST_REDIS_URL, protocol=2)
    connection.flushdb()
    try:
        yield connection
    finally:
        connection.flushdb()
        connection.close()


@pytest.fixture
def base_config(database_url, fake_deribit):
    """Settings every test app and subprocess uses: the test database, Redis and fake Deribit."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "DERIBIT_BASE_URL": fake_deribit.base_url,
        "DERIBIT_TIMEOUT": "0.5",
        "TICKERS": "btc_usd,eth_usd",
        "FETCH_INTERVAL": "60",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def make_app(base_config):
    """Build an app on the test database with extra settings; its rows are wiped afterwards."""
    apps = []

    def build(**overrides):
        app = create_app({**base_config, "TESTING": True, **overrides})
        apps.append(app)
        return app

    try:
        yield build
    finally:
        for app in apps:
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
        truncate_prices(base_config["DATABASE_URL"])
        # An app built on another database (the PostgreSQL one while the SQLite run goes on,
        # or it through a proxy, cleaned directly) leaves rows there too: later tests of that
        # run would read them. Databases that do not exist or lack the table have none.
        for url in {_direct(app.config["SQLALCHEMY_DATABASE_URI"]) for app in apps}:
            if url != _direct(base_config["DATABASE_URL"]):
                try:
                    truncate_prices(url)
                except DBAPIError:
                    pass


def _direct(database_url):
    """A PostgreSQL URL on the test server itself, not through a proxy or a dead port."""
    url = make_url(database_uri(database_url))
    if url.get_backend_name() != "postgresql":
        return url.render_as_string(hide_password=False)
    server = make_url(ADMIN_DATABASE_URL)
    return server.set(database=url.database).render_as_string(hide_password=False)


def truncate_prices(database_url):
    url = database_uri(database_url)
    options = {} if url.startswith("sqlite") else {"connect_args": {"connect_timeout": 3}}
    engine = create_engine(url, **options)
    try:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM price_records"))
    finally:
        engine.dispose()


@pytest.fixture
def app(make_app, deribit):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def installed(name, hint, where=""):
    """The path of an installed program (on PATH, or in the directory `where`), or skip the
    test without it.

    Under CI (`CI=true`, which .ci/run sets) a missing program fails the test instead: CI
    installs every program the suite needs, so a skip there would hide a test that never ran.
    """
    # /usr/sbin is where Debian puts nginx, and not on every user's PATH.
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:{where}")
    if path is None:
        message = f"{name} is not installed ({hint})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """One headless Chromium for the whole run (Debian's chromium and chromium-driver)."""
    from tests.browser import start_chromium  # selenium only for the tests that use a browser

    hint = "bash .ci/run installs Debian's chromium and chromium-driver"
    driver = start_chromium(
        installed("chromium", hint),
        installed("chromedriver", hint),
        tmp_path_factory.mktemp("chromium") / "chromedriver.log",
    )
    try:
        yield driver
    finally:
        driver.quit()  # stops chromedriver, and the browser with it


@pytest.fixture
def browser(chromium):
    """The session's Chromium with its logs emptied; left on a blank page afterwards."""
    chromium.get_log("browser")
    chromium.get_log("performance")
    try:
        yield chromium
    finally:
        chromium.get("about:blank")  # stops the page's timers before its server goes away


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def spawn(base_config, tmp_path):
    """Start a command as its own process group with the test settings in its environment.

    Every process is stopped by its process group when the test ends, pass or fail.
    Returns the Popen; its output goes to a log file (see `.log_path`).
    """
    processes = []

    def start(args, **env_overrides):
        env = {k: v for k, v in os.environ.items() if k not in base_config}
        env.update(base_config)
        env.update({k: str(v) for k, v in env_overrides.items() if v is not None})
        for name in [k for k, v in env_overrides.items() if v is None]:
            env.pop(name, None)  # NAME=None: the process runs without that setting
        env["PYTHONUNBUFFERED"] = "1"
        log_path = tmp_path / f"{Path(args[0]).name}-{len(processes)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
        process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        process.log_path = log_path
        process.log_file = log
        processes.append(process)
        return process

    try:
        yield start
    finally:
        for process in processes:
            stop_process_group(process)
            process.log_file.close()


def stop_process_group(process, timeout=10):
    """SIGTERM the process group, then SIGKILL it if it has not exited in time."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)
        except ProcessLookupError:
            pass
    try:  # children left behind by a process that exited on its own
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def command(name, *args):
    """argv for a console script of this environment (flask, gunicorn), as the README runs it."""
    return [str(Path(sys.executable).parent / name), *args]


def compose_command(service):
    """The `command` docker-compose.yml gives `service`, runnable here from this environment."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return command(*shlex.split(compose["services"][service]["command"]))


def wait_for_http(url, timeout=20.0, process=None):
    """Poll `url` until it answers at all; fail with the process log if it does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"process exited with {process.returncode}:\n{read_log(process)}")
        try:
            return requests.get(url, timeout=1)
        # A server still starting on a loaded machine may accept and answer late: keep asking.
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    pytest.fail(
        f"{url} did not answer within {timeout}s" + (f":\n{read_log(process)}" if process else "")
    )


def read_log(process):
    process.log_file.flush()
    return process.log_path.read_text(errors="replace")


def render_nginx_conf(directory, listen_port, upstream_port):
    """docs/nginx.conf on loopback ports, inside a main config whose paths are all in `directory`.

    Runs as the current user: errors to stderr (the process log), the access log, pid, temp
    files and the cache in `directory`; nothing in /etc or /var.
    """
    site = (ROOT / "docs" / "nginx.conf").read_text()
    for old, new in [
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
        ("proxy_pass http://127.0.0.1:8000/;", f"proxy_pass http://127.0.0.1:{upstream_port}/;"),
        ("proxy_cache_path /var/cache/nginx/tracker ", f"proxy_cache_path {directory}/cache "),
    ]:
        assert site.count(old) == 1, f"docs/nginx.conf changed: {old!r} not found once"
        site = site.replace(old, new)
    (directory / "site.conf").write_text(site)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {directory}/{kind}_temp;"
        for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    )
    main = directory / "nginx.conf"
    main.write_text(
        f"""
# As root, nginx's workers would run as nobody, which may not write the cache into pytest's
# private tmp directory: they run as this user (a user who is not root: ignored, with a note).
user {pwd.getpwuid(os.geteuid()).pw_name};
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log {directory}/access.log;
{temp_paths}
    # Responses stay in memory, not in temp files.
    proxy_max_temp_file_size 0;
    include {directory}/site.conf;
}}
"""
    )
    return main


@pytest.fixture
def start_proxy(spawn, tmp_path):
    """Start gunicorn (TRUSTED_PROXIES=1, the test settings and `env`) behind the real nginx of
    docs/nginx.conf under /tracker/. Returns nginx's origin URL and both processes."""
    started = []

    def start(**env):
        nginx = installed("nginx", "bash .ci/run installs Debian's nginx")
        web_port, proxy_port = free_port(), free_port()
        web = spawn(
            command("gunicorn", "wsgi:app"),
            **{
                "GUNICORN_BIND": f"127.0.0.1:{web_port}",
                "GUNICORN_WORKERS": 2,
                "GUNICORN_ACCESS_LOG": "-",
                "TRUSTED_PROXIES": 1,
                **env,
            },
        )
        directory = tmp_path / f"nginx-{len(started)}"
        directory.mkdir()
        conf = render_nginx_conf(directory, proxy_port, web_port)
        server = spawn(
            [nginx, "-e", "stderr", "-p", str(directory), "-c", str(conf)]
            + ["-g", f"daemon off; pid {directory / 'nginx.pid'};"]
        )
        wait_for_http(f"http://127.0.0.1:{web_port}/openapi.json", process=web)
        origin = f"http://127.0.0.1:{proxy_port}"
        wait_for_http(f"{origin}/tracker/openapi.json", process=server)
        started.append(server)
        return SimpleNamespace(origin=origin, web=web, nginx=server)

    yield start
    for server in started:
        assert server.poll() is None, read_log(server)


def start_redis(spawn, port, tmp_path):
    """A throwaway redis-server of our own on `port`, answering before this returns."""
    process = spawn(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        + ["no", "--dir", str(tmp_path)]
    )
    connection = Redis(port=port, socket_connect_timeout=1)
    for _ in range(100):
        try:
            connection.ping()
            return process
        except Exception:
            assert process.poll() is None, read_log(process)
            time.sleep(0.1)
    pytest.fail(f"redis-server did not start:\n{read_log(process)}")


class TCPProxy:
    """A loopback TCP forwarder to `upstream` that can be shut (dropping every connection)
    and opened again on the same port: a PostgreSQL outage without stopping PostgreSQL."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.port = free_port()
        self._sockets = []
        self._lock = threading.Lock()

    def open(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._track(listener)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def shut(self):
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _track(self, sock):
        with self._lock:
            self._sockets.append(sock)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # shut
            server = socket.create_connection(self.upstream)
            self._track(client)
            self._track(server)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    @staticmethod
    def _pipe(source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

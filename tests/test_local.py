"""`flask up` (what `make run` / `make demo` start): embedded Redis, SQLite, clean Ctrl-C."""

import os
import signal
import time

import pytest
import requests

from tests.conftest import command, free_port, read_log, wait_for_http


@pytest.fixture
def base_config():
    """`flask up` brings its own Redis and database: nothing from the shared test settings."""
    return {}


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_up_demo_runs_everything_offline_and_ctrl_c_leaves_no_process(spawn, tmp_path):
    """No REDIS_URL, no DATABASE_URL: the laptop default, with the demo's fake Deribit."""
    port = free_port()
    up = spawn(
        command("flask", "up", "--demo", "--port", str(port)),
        REDIS_URL=None,
        DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.db'}",  # a fresh file: `up` migrates it
        DERIBIT_BASE_URL=None,
        FETCH_INTERVAL=2,
    )
    base = f"http://127.0.0.1:{port}"
    assert wait_for_http(f"{base}/docs", process=up).status_code == 200

    # Prices arrive from the random-walk Deribit through the real worker and scheduler.
    deadline = time.monotonic() + 20
    latest = {}
    while time.monotonic() < deadline and len(latest) < 2:
        assert up.poll() is None, read_log(up)
        for ticker in ("btc_usd", "eth_usd"):
            response = requests.get(f"{base}/api/v1/prices/latest?ticker={ticker}", timeout=5)
            if response.status_code == 200:
                latest[ticker] = response.json()
        time.sleep(0.3)
    assert set(latest) == {"btc_usd", "eth_usd"}, read_log(up)
    assert all(item["timestamp"] % 2 == 0 and item["price"] > 0 for item in latest.values())
    log = read_log(up)
    assert "embedded Redis at redis://127.0.0.1:" in log
    assert f"Swagger UI: http://127.0.0.1:{port}/docs" in log
    assert requests.get(f"{base}/readyz", timeout=5).status_code == 200

    # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    os.killpg(up.pid, signal.SIGINT)
    assert up.wait(timeout=20) == 0, read_log(up)
    deadline = time.monotonic() + 10
    while group_alive(up.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(up.pid), "a child of `flask up` outlived it"


def test_up_stops_everything_on_sigterm_to_the_launcher_alone(spawn, tmp_path):
    """A supervisor that signals only the launcher: it must still stop its children."""
    port = free_port()
    up = spawn(
        command("flask", "up", "--port", str(port)),
        REDIS_URL=None,
        DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.db'}",
    )
    wait_for_http(f"http://127.0.0.1:{port}/healthz", process=up)
    up.terminate()
    assert up.wait(timeout=20) == 0, read_log(up)
    deadline = time.monotonic() + 10
    while group_alive(up.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(up.pid), read_log(up)

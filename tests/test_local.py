"""`flask up` (what `make run` / `make demo` start): embedded Redis, SQLite, clean Ctrl-C."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, command, free_port, read_log, wait_for_http


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


def children(pid):
    """{pid: command line} of the live processes whose parent is `pid`."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmdline = (stat.parent / "cmdline").read_bytes()
                found[int(stat.parent.name)] = cmdline.replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            pass  # exited while we looked
    return found


def worker_pids(up):
    return [pid for pid, cmd in children(up.pid).items() if cmd.endswith("flask worker ")]


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
    assert f"Prices and chart: {base}/  API docs: {base}/docs" in log
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


def test_up_starts_a_child_that_died_again_and_ctrl_c_still_leaves_no_process(spawn, tmp_path):
    """The worker is SIGKILLed: `flask up` says so, starts a new one, and prices keep coming."""
    port = free_port()
    up = spawn(
        command("flask", "up", "--demo", "--port", str(port)),
        REDIS_URL=None,
        DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.db'}",
        DERIBIT_BASE_URL=None,
        FETCH_INTERVAL=2,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", process=up)
    (old,) = worker_pids(up)
    os.kill(old, signal.SIGKILL)
    killed_at = time.time()

    deadline = time.monotonic() + 20
    new, latest = None, 0
    while time.monotonic() < deadline and not (new and latest > killed_at + 2):
        assert up.poll() is None, read_log(up)
        new = next(iter(worker_pids(up)), None)
        response = requests.get(f"{base}/api/v1/prices/latest?ticker=btc_usd", timeout=5)
        if response.status_code == 200:
            latest = response.json()["timestamp"]
        time.sleep(0.2)
    assert new and new != old, read_log(up)
    assert latest > killed_at + 2, read_log(up)  # fetched by the new worker
    log = read_log(up)
    assert f"worker (pid {old}) exited with code -9" in log
    assert "starting it again in 1 s" in log

    os.killpg(up.pid, signal.SIGINT)
    assert up.wait(timeout=20) == 0, read_log(up)
    deadline = time.monotonic() + 10
    while group_alive(up.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(up.pid), "a child of `flask up` outlived it"


def test_production_processes_do_not_load_the_laptop_tools():
    """create_app() and the CLI (what gunicorn, worker and scheduler load) leave fakeredis out."""
    code = (
        "import sys; from tracker import create_app; import tracker.cli; create_app(); "
        "loaded = [m for m in ('fakeredis', 'lupa') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    env = {**os.environ, "DATABASE_URL": "sqlite:///:memory:"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_up_refuses_a_port_already_in_use(spawn, tmp_path):
    """Else it would print someone else's address and start a web server that keeps dying."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        up = spawn(
            command("flask", "up", "--port", str(port)),
            REDIS_URL=None,
            DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.db'}",
        )
        assert up.wait(timeout=30) == 2, read_log(up)
    assert f"port {port} is in use" in read_log(up)

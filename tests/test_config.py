"""Configuration: defaults, URL mapping, and bad values failing at start-up with one clear line."""

import subprocess

import pytest

from tests.conftest import ROOT, command
from tracker.config import ConfigError, cron_for_interval, load_config


def test_defaults():
    config = load_config({})
    assert config["TICKERS"] == ("btc_usd", "eth_usd")
    assert config["FETCH_INTERVAL"] == 60
    assert config["FETCH_CRON"] == "*/1 * * * *"
    assert config["DERIBIT_BASE_URL"] == "https://www.deribit.com/api/v2"
    assert config["RATE_LIMIT"] is None  # off: make run and the benchmark are not limited
    # Any two years (a leap day included) as one CSV or one /prices/stats.
    assert config["MAX_RANGE_DAYS"] == config["MAX_CSV_DAYS"] == 731


def test_without_database_url_the_database_is_sqlite_in_the_instance_folder():
    config = load_config({}, instance_path="/srv/tracker/instance")
    assert config["SQLALCHEMY_DATABASE_URI"] == "sqlite:////srv/tracker/instance/tracker.db"
    assert "connect_timeout" not in config["SQLALCHEMY_ENGINE_OPTIONS"].get("connect_args", {})
    assert config["TRUSTED_PROXIES"] == 0  # X-Forwarded-* ignored unless a proxy is declared
    assert config["CORS_ORIGINS"] == "*"


def test_cors_origins_are_a_list_of_exact_origins():
    config = load_config({"CORS_ORIGINS": " https://a.example , http://localhost:8888/"})
    assert config["CORS_ORIGINS"] == ("https://a.example", "http://localhost:8888")


@pytest.mark.parametrize(
    "url", ["postgres://u:p@db:5432/crypto_prices", "postgresql://u:p@db:5432/crypto_prices"]
)
def test_user_database_urls_map_to_psycopg2(url):
    config = load_config({"DATABASE_URL": url})
    assert config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg2://u:p@db:5432/crypto_prices"


def test_read_database_url_moves_only_the_read_pool():
    primary = "postgresql://u:p@primary:5432/crypto_prices"
    same = load_config({"DATABASE_URL": primary})
    assert same["SQLALCHEMY_BINDS"]["read"]["url"] == same["SQLALCHEMY_DATABASE_URI"]
    config = load_config({"DATABASE_URL": primary, "READ_DATABASE_URL": "postgres://u:p@replica/x"})
    assert (
        config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg2://u:p@primary:5432/crypto_prices"
    )
    assert config["SQLALCHEMY_BINDS"]["read"]["url"] == "postgresql+psycopg2://u:p@replica/x"
    # The replica's pool keeps the statement timeout and JIT setting of the primary's.
    assert (
        config["SQLALCHEMY_BINDS"]["read"]["connect_args"]["options"]
        == (config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"]["options"])
    )


def test_tickers_are_normalised():
    config = load_config({"TICKERS": " BTC_USD, eth_usd ,btc_usd,sol_usdc"})
    assert config["TICKERS"] == ("btc_usd", "eth_usd", "sol_usdc")


def test_tickers_all_is_kept_for_create_app_to_resolve():
    # create_app asks Deribit for it (tests/test_tickers.py); load_config stays pure.
    assert load_config({"TICKERS": " ALL "})["TICKERS"] == "all"


@pytest.mark.parametrize(
    ("seconds", "cron"),
    [
        (1, "*/1 * * * * * *"),
        (15, "*/15 * * * * * *"),
        (60, "*/1 * * * *"),
        (300, "*/5 * * * *"),
        (3600, "0 * * * *"),
    ],
)
def test_intervals_map_to_clock_aligned_cron(seconds, cron):
    assert cron_for_interval(seconds) == cron


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FETCH_INTERVAL": "0"}, "FETCH_INTERVAL must be positive"),
        ({"FETCH_INTERVAL": "-60"}, "FETCH_INTERVAL must be positive"),
        ({"FETCH_INTERVAL": "often"}, "FETCH_INTERVAL must be a whole number"),
        ({"FETCH_INTERVAL": "45"}, "FETCH_INTERVAL must divide a minute"),
        ({"FETCH_INTERVAL": "420"}, "FETCH_INTERVAL must divide a minute"),
        ({"TICKERS": "btc-usd"}, "TICKERS has an invalid index name 'btc-usd'"),
        ({"TICKERS": " , "}, "TICKERS has an invalid index name"),
        ({"TICKERS": "all,btc_usd"}, "TICKERS has an invalid index name 'all'"),
        ({"TICKERS": "b" * 29 + "_usd"}, "TICKERS has an invalid index name 'bbbb"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL is not a database URL"),
        ({"DATABASE_URL": "mysql://db/x"}, "DATABASE_URL must be a postgresql:// or sqlite:///"),
        ({"READ_DATABASE_URL": "not a url"}, "READ_DATABASE_URL is not a database URL"),
        ({"READ_DATABASE_URL": "mysql://db/x"}, "READ_DATABASE_URL must be a postgresql://"),
        ({"READ_DATABASE_URL": "postgresql://replica/x"}, "READ_DATABASE_URL must be a postgresql"),
        (
            {"DATABASE_URL": "postgresql://db/x", "READ_DATABASE_URL": "sqlite:///copy.db"},
            "READ_DATABASE_URL must be a postgresql:// URL, and DATABASE_URL too",
        ),
        ({"REDIS_URL": "http://redis:6379"}, "REDIS_URL must be a redis:// URL"),
        ({"REDIS_URL": "redis://redis:port/0"}, "REDIS_URL has an invalid port"),
        ({"DERIBIT_BASE_URL": "www.deribit.com"}, "DERIBIT_BASE_URL must be an http(s):// URL"),
        ({"DERIBIT_TIMEOUT": "0"}, "DERIBIT_TIMEOUT must be positive"),
        ({"DERIBIT_TIMEOUT": "inf"}, "DERIBIT_TIMEOUT must be positive"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be"),
        ({"TRUSTED_PROXIES": "-1"}, "TRUSTED_PROXIES must be 0 or more, got -1"),
        ({"TRUSTED_PROXIES": "nginx"}, "TRUSTED_PROXIES must be a whole number"),
        ({"CORS_ORIGINS": "dashboard.example"}, "CORS_ORIGINS has an invalid origin"),
        ({"MAX_RANGE_DAYS": "0"}, "MAX_RANGE_DAYS must be positive, got 0"),
        ({"MAX_CSV_DAYS": "2 years"}, "MAX_CSV_DAYS must be a whole number, got '2 years'"),
        ({"CORS_ORIGINS": "https://*.example.com"}, "CORS_ORIGINS has an invalid origin"),
        ({"CORS_ORIGINS": "https://a.example/app"}, "CORS_ORIGINS has an invalid origin"),
        ({"CORS_ORIGINS": "*, https://a.example"}, "CORS_ORIGINS has an invalid origin '*'"),
        ({"CORS_ORIGINS": " , "}, "CORS_ORIGINS is empty"),
        ({"RATE_LIMIT": "600"}, "RATE_LIMIT must be a rate such as 600/minute"),
        ({"RATE_LIMIT": "600/fortnight"}, "RATE_LIMIT must be a rate such as 600/minute"),
        ({"RATE_LIMIT": "0/minute"}, "RATE_LIMIT must be a rate such as 600/minute"),
    ],
)
def test_bad_values_are_rejected(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(env)


@pytest.mark.parametrize(
    "argv",
    [
        ["gunicorn", "wsgi:app"],
        ["flask", "worker"],
        ["flask", "scheduler"],
        ["flask", "fetch"],
        ["flask", "db", "upgrade"],
    ],
)
def test_bad_configuration_fails_at_start_up_with_one_clear_line(argv):
    result = subprocess.run(
        command(*argv),
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "FETCH_INTERVAL": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == "configuration error: FETCH_INTERVAL must be positive, got 0"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_gunicorn_settings_stop_the_server_with_one_line(value):
    result = subprocess.run(
        command("gunicorn", "wsgi:app"),
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "GUNICORN_WORKERS": value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        f"configuration error: GUNICORN_WORKERS must be a positive whole number, got {value!r}"
    )

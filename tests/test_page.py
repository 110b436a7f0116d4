"""The chart page at / and the docs pages: their HTML, their files, and a real browser on them."""

import hashlib
import random
import re
import socket
import subprocess
import time
from decimal import Decimal
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import console_errors, count_pixels, off_host, requested_urls
from tests.conftest import ROOT, command, free_port, wait_for_http
from tracker.models import insert_prices

TRADINGVIEW = "https://www.tradingview.com/"
CANDLE_COLOURS = [(0x26, 0xA6, 0x9A), (0xEF, 0x53, 0x50)]  # lightweight-charts' up and down
# ReDoc 2.x always shows Redocly's logo from its CDN; the page's policy blocks the request
# (templates/redoc.html), which Chromium reports as an error. Nothing else may be reported.
REDOC_LOGO_BLOCKED = re.compile(r"'https://cdn\.redoc\.ly/redoc/logo-mini\.svg' violates")


@pytest.fixture(scope="session")
def database_url(postgres_url):
    """These pages only read the API, whose own tests run on both databases: one is enough."""
    return postgres_url


def seed_history(app, count=3 * 1440, step=60):
    """A random walk of `count` prices per ticker, `step` seconds apart, ending in this slot.

    btc_usd's newest price ends in a zero (…0): the page must show the digits as stored.
    """
    end = int(time.time()) // step * step
    rows = []
    for ticker, price in [("btc_usd", 86000.0), ("eth_usd", 2950.0)]:
        rng = random.Random(ticker)
        for i in range(count):
            price *= 1 + rng.gauss(0, 0.0007 * (step / 60) ** 0.5)
            text = f"{price:.1f}0" if i == 0 and ticker == "btc_usd" else f"{price:.2f}"
            rows.append({"ticker": ticker, "price": Decimal(text), "timestamp": end - step * i})
    with app.app_context():
        insert_prices(rows)
    return end


@pytest.fixture
def start_web(spawn):
    """Start gunicorn as `make run` does (gunicorn.conf.py, 2 workers of 4 threads), under the
    policy of tests/csp_wsgi.py, with two connections open to it that send nothing.

    Browsers open connections they do not use at once (preconnects); here they are made
    certain. A sync worker waits on such a connection until its 30 s timeout, so with one per
    worker the page would never load; `make run`'s settings must serve it at once anyway.
    """
    idle = []

    def start(**settings):
        port = free_port()
        web = spawn(
            command("gunicorn", "tests.csp_wsgi:app"),
            GUNICORN_BIND=f"127.0.0.1:{port}",
            GUNICORN_WORKERS=2,  # flask up's defaults (tracker/local.py)
            GUNICORN_THREADS=4,
            **settings,
        )
        origin = f"http://127.0.0.1:{port}"
        wait_for_http(f"{origin}/healthz", process=web)
        idle.extend(socket.create_connection(("127.0.0.1", port)) for _ in range(2))
        return origin

    try:
        yield start
    finally:
        for connection in idle:
            connection.close()


def exact_latest(origin, ticker):
    """The newest price's digits as the API writes them."""
    response = requests.get(f"{origin}/api/v1/prices/latest?ticker={ticker}", timeout=5)
    return str(response.json(parse_float=Decimal)["price"])


def shown_price(driver, ticker):
    return driver.find_element(By.CSS_SELECTOR, f'[data-ticker="{ticker}"] .price').text


def wait(driver, condition, timeout=15, message=""):
    return WebDriverWait(driver, timeout).until(lambda d: condition(), message)


class Links(HTMLParser):
    """Every src and href of a page, which elements carry inline code or style."""

    def __init__(self):
        super().__init__()
        self.urls, self.inline = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [attrs[name] for name in ("src", "href") if name in attrs]
        if tag == "style" or (tag == "script" and "src" not in attrs) or "style" in attrs:
            self.inline.append(tag)
        self.inline += [f"{tag} {name}" for name in attrs if name.startswith("on")]


# --- The HTML and its files, in-process ---------------------------------------------------------


def test_page_links_everything_relative_and_runs_no_inline_code(app, client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = Links()
    page.feed(response.text)
    assert page.inline == []  # the default CSP allows only the app's own files
    external = [url for url in page.urls if url == TRADINGVIEW]
    assert external == [TRADINGVIEW]  # the attribution Lightweight Charts' licence asks for
    local = [url for url in page.urls if url != TRADINGVIEW]
    # Relative, so a proxy's prefix (/tracker/) carries over to every one of them.
    assert all(not url.startswith(("/", "http:", "https:")) for url in local), local
    assert {"docs", "redoc", "static/chart.js"} <= set(local)
    for url in local:
        assert client.get(urljoin("http://localhost/", url)).status_code == 200, url


def test_vendored_files_match_their_pins():
    """scripts/vendor.sh --check: each file is the pinned version's, with its licence."""
    result = subprocess.run(
        ["bash", "scripts/vendor.sh", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    script = (ROOT / "scripts" / "vendor.sh").read_text()
    vendored = ROOT / "tracker" / "static" / "vendor" / "redoc" / "redoc.standalone.js"
    assert hashlib.sha256(vendored.read_bytes()).hexdigest() in script


def test_redoc_and_the_icon_are_served_by_the_app(client):
    page = client.get("/redoc").text
    assert '<script src="static/vendor/redoc/redoc.standalone.js">' in page
    assert "cdn" not in page.replace("cdn.redoc.ly", "")  # only the comment names the CDN
    assert client.get("/static/vendor/redoc/redoc.standalone.js").status_code == 200
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"


# --- In a real browser: headless Chromium ------------------------------------------------------


def test_chart_page_in_a_browser(make_app, start_web, browser, tmp_path):
    """Prices, ages, a drawn chart and a screenshot; no console error, nothing off 127.0.0.1."""
    app = make_app()
    seed_history(app)
    origin = start_web()
    browser.get(f"{origin}/")
    colours = CANDLE_COLOURS
    wait(browser, lambda: count_pixels(browser, "#chart", colours) > 500, message="no chart")
    for ticker in ("btc_usd", "eth_usd"):
        assert shown_price(browser, ticker) == exact_latest(origin, ticker)
    assert shown_price(browser, "btc_usd").endswith("0")  # digits as stored, not as a float
    ages = browser.find_elements(By.CSS_SELECTOR, ".ticker .age")
    assert [re.fullmatch(r"\d+ s ago", age.text) is not None for age in ages] == [True, True]
    assert browser.find_element(By.ID, "chart-title").text == "BTC / USD"
    # The TradingView link and notice, which the library's licence asks for.
    assert browser.find_element(By.CSS_SELECTOR, f'footer a[href="{TRADINGVIEW}"]').is_displayed()
    browser.save_screenshot(str(tmp_path / "chart.png"))  # docs/chart.png is one of these

    browser.find_element(By.CSS_SELECTOR, '[data-ticker="eth_usd"]').click()
    browser.find_element(By.CSS_SELECTOR, '[data-range="1w"]').click()
    wait(browser, lambda: browser.find_element(By.ID, "chart-title").text == "ETH / USD")
    wait(browser, lambda: count_pixels(browser, "#chart", colours) > 500, message="no chart")
    assert browser.current_url.endswith("#eth_usd/1w")
    urls = requested_urls(browser)
    # A week of which three days are stored, in at most 500 candles: 15 minutes each.
    wanted = "api/v1/candles?ticker=eth_usd&interval=15m&"
    assert any(url.startswith(f"{origin}/{wanted}") for url in urls), urls
    assert off_host(urls, origin) == []
    assert console_errors(browser) == []


def test_prices_update_without_a_reload(make_app, start_web, browser):
    """A new price shows up within an interval of being stored, in the same page."""
    app = make_app()
    end = seed_history(app, count=720, step=5)  # an hour
    origin = start_web(FETCH_INTERVAL=5)
    browser.get(f"{origin}/")
    wait(browser, lambda: shown_price(browser, "btc_usd") == exact_latest(origin, "btc_usd"))
    browser.execute_script("window.sameDocument = true")
    while time.time() < end + 5:  # the next slot, as the worker would store it
        time.sleep(0.1)
    with app.app_context():
        insert_prices([{"ticker": "btc_usd", "price": Decimal("90000.01"), "timestamp": end + 5}])
    wait(browser, lambda: shown_price(browser, "btc_usd") == "90000.01", timeout=12)
    assert browser.execute_script("return window.sameDocument") is True
    assert console_errors(browser) == []


def test_docs_pages_in_a_browser(make_app, start_web, browser):
    """ReDoc and Swagger UI render from the app's own files, with nothing fetched elsewhere."""
    make_app()
    origin = start_web()
    browser.get(f"{origin}/redoc")
    wait(browser, lambda: "Deribit price tracker" in browser.find_element(By.TAG_NAME, "h1").text)
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "[data-section-id]"))
    assert [e for e in console_errors(browser) if not REDOC_LOGO_BLOCKED.search(e)] == []
    assert off_host(requested_urls(browser), origin) == []

    browser.get(f"{origin}/docs")
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock"))
    assert console_errors(browser) == []
    assert off_host(requested_urls(browser), origin) == []

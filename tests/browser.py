"""Headless Chromium for the tests, driven by selenium through Debian's chromedriver.

What a test asks of a page: the console errors it logged and the requests it made (from
Chromium's own logs), and whether a canvas shows a given colour.
"""

import json
import os
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def start_chromium(chromium, chromedriver, log_path):
    """A headless Chromium that keeps its console and network logs for the test to read."""
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in [
        "--headless=new",
        "--window-size=1200,1040",
        "--disable-dev-shm-usage",  # containers have a small /dev/shm
        # Nothing of the browser's own on the network: only the page's requests.
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ]:
        options.add_argument(argument)
    if os.geteuid() == 0:  # CI runs as root, where Chromium refuses its sandbox
        options.add_argument("--no-sandbox")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # Explicit paths: selenium then never looks for (or downloads) a driver itself.
    service = Service(executable_path=chromedriver, log_output=str(log_path))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(20)
    return driver


def console_errors(driver):
    """The console's errors since the last call (failed loads, CSP violations, exceptions)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver):
    """Every URL the page requested since the last call, except those the browser blocked itself.

    A request refused by the Content-Security-Policy never left the browser.
    """
    sent, blocked = {}, set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.add(params["requestId"])
    return [url for request_id, url in sent.items() if request_id not in blocked]


def off_host(urls, origin):
    """The URLs that went anywhere but `origin` (data: and blob: URLs never leave the page)."""
    return [
        url
        for url in urls
        if urlsplit(url).scheme not in ("data", "blob") and not url.startswith(f"{origin}/")
    ]


# Counts the pixels of the biggest canvas under `selector` within 40 of an (r, g, b) colour:
# the chart's pane, where the series is drawn (the axes are smaller canvases of their own).
COUNT_PIXELS_JS = """
const [selector, colours] = arguments;
const canvases = [...document.querySelectorAll(selector + ' canvas')];
if (!canvases.length) return 0;
const canvas = canvases.reduce((a, b) => (a.width * a.height >= b.width * b.height ? a : b));
if (!canvas.width || !canvas.height) return 0;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let count = 0;
for (let i = 0; i < data.length; i += 4) {
  if (data[i + 3] < 200) continue;
  for (const [r, g, b] of colours) {
    if (Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 40) {
      count++;
      break;
    }
  }
}
return count;
"""


def count_pixels(driver, selector, colours):
    """How many pixels of the biggest canvas under `selector` have one of `colours` (r, g, b)."""
    return driver.execute_script(COUNT_PIXELS_JS, selector, [list(c) for c in colours])

// The chart page (templates/index.html): each ticker's latest price and its age, refreshed every
// FETCH_INTERVAL, and a chart of the chosen ticker over the chosen range, from the app's own API.
// URLs are relative to the page, so it works under a reverse proxy's prefix (/tracker/).
"use strict";

(function () {
  const RANGES = { "1h": 3600, "1d": 86400, "1w": 7 * 86400, "1m": 30 * 86400, "1y": 365 * 86400 };
  // The candle intervals /api/v1/candles offers, in seconds.
  const INTERVALS = [
    ["1m", 60], ["5m", 300], ["15m", 900], ["30m", 1800],
    ["1h", 3600], ["4h", 14400], ["1d", 86400], ["1w", 604800],
  ];
  const MAX_CANDLES = 500; // enough detail to read, and one page of the API (limit 1000)
  const INTERVAL_NAMES = {
    "1m": "1-minute", "5m": "5-minute", "15m": "15-minute", "30m": "30-minute",
    "1h": "hourly", "4h": "4-hour", "1d": "daily", "1w": "weekly",
  };

  const elements = {
    tickers: document.getElementById("tickers"),
    status: document.getElementById("status"),
    title: document.getElementById("chart-title"),
    note: document.getElementById("chart-note"),
    ranges: document.getElementById("ranges"),
  };
  const state = { ticker: null, range: "1d", tickers: [], interval: 60, fetchedAt: 0 };
  let refreshTimer = null;
  let chartRequest = 0; // only the newest chart request may draw

  const chart = LightweightCharts.createChart(document.getElementById("chart"), {
    autoSize: true,
    // The library's own attribution logo injects a <style> element, which the app's CSP
    // refuses; the page footer carries the attribution and link its licence asks for instead.
    layout: { attributionLogo: false, textColor: "#3a3f4b", fontSize: 12 },
    grid: { vertLines: { color: "#eef0f4" }, horzLines: { color: "#eef0f4" } },
    rightPriceScale: { borderColor: "#d6dae1" },
    timeScale: { borderColor: "#d6dae1", timeVisible: true, secondsVisible: false },
  });
  const series = chart.addSeries(LightweightCharts.CandlestickSeries, {});

  // Prices keep their exact digits: the reviver's source text (where the browser supports
  // it) is "86955.70", where a JavaScript number would print 86955.7.
  function parseExact(text) {
    return JSON.parse(text, (key, value, context) =>
      key === "price" && context && context.source ? context.source : value);
  }

  // "no-cache": revalidate every time (a 304 when nothing changed). The API lets caches keep
  // an answer until the next price is due, but the page asks right when it is due, and it
  // counts ages from the moment it asked.
  async function getJSON(url) {
    const response = await fetch(url, {
      headers: { Accept: "application/json" },
      cache: "no-cache",
    });
    const text = await response.text();
    if (!response.ok) {
      let message = text;
      try { message = JSON.parse(text).message || text; } catch (error) { /* not JSON */ }
      throw new Error(`${response.status}: ${message}`);
    }
    return parseExact(text);
  }

  function formatAge(seconds) {
    if (seconds < 90) return `${Math.max(0, Math.floor(seconds))} s ago`;
    if (seconds < 5400) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 129600) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  function utc(timestamp) {
    return new Date(timestamp * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function select(ticker, range) {
    state.ticker = ticker;
    state.range = range;
    history.replaceState(null, "", `#${ticker}/${range}`);
    for (const button of elements.ranges.querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range));
    }
    for (const card of elements.tickers.querySelectorAll("button")) {
      card.setAttribute("aria-pressed", String(card.dataset.ticker === ticker));
    }
    const summary = state.tickers.find((item) => item.ticker === ticker);
    if (summary && summary.price !== null) {
      const decimals = (String(summary.price).split(".")[1] || "").length;
      const precision = Math.min(8, Math.max(2, decimals));
      series.applyOptions({ priceFormat: { type: "price", precision, minMove: 10 ** -precision } });
    }
    drawChart(true);
  }

  function renderTickers() {
    const known = new Set();
    for (const item of state.tickers) {
      known.add(item.ticker);
      let card = elements.tickers.querySelector(`[data-ticker="${item.ticker}"]`);
      if (!card) {
        const entry = document.createElement("li");
        card = document.createElement("button");
        card.type = "button";
        card.className = "ticker";
        card.dataset.ticker = item.ticker;
        for (const part of ["name", "price", "age"]) {
          const span = document.createElement("span");
          span.className = part;
          card.append(span);
        }
        card.querySelector(".name").textContent = item.ticker.replace("_", " / ").toUpperCase();
        card.addEventListener("click", () => select(item.ticker, state.range));
        entry.append(card);
        elements.tickers.append(entry);
      }
      card.querySelector(".price").textContent = item.price === null ? "—" : String(item.price);
      card.title = item.timestamp === null ? "" : `${utc(item.timestamp)}, ${item.source}`;
      card.setAttribute("aria-pressed", String(item.ticker === state.ticker));
    }
    for (const card of elements.tickers.querySelectorAll("button")) {
      if (!known.has(card.dataset.ticker)) card.parentElement.remove();
    }
    renderAges();
  }

  // Ages tick every second from the server's own age_seconds, so a wrong clock in the browser
  // does not show a wrong age. Older than three intervals is stale (as /readyz says).
  function renderAges() {
    const elapsed = (Date.now() - state.fetchedAt) / 1000;
    for (const item of state.tickers) {
      const card = elements.tickers.querySelector(`[data-ticker="${item.ticker}"]`);
      if (!card) continue;
      const age = item.age_seconds === null ? null : item.age_seconds + elapsed;
      card.querySelector(".age").textContent = age === null ? "no price yet" : formatAge(age);
      card.classList.toggle("stale", age === null || age > 3 * state.interval);
    }
  }

  async function refresh() {
    clearTimeout(refreshTimer);
    let delay = state.interval;
    try {
      const body = await getJSON("api/v1/tickers");
      state.tickers = body.tickers;
      state.interval = body.interval;
      state.fetchedAt = Date.now();
      renderTickers();
      elements.status.textContent =
        `Updated ${utc(Math.floor(state.fetchedAt / 1000))}; new prices every ${body.interval} s.`;
      elements.status.classList.remove("error");
      // The next refresh just after the next price is due: a price is stamped with the start
      // of its slot and stored a moment later.
      const newest = Math.min(...body.tickers.map((t) => t.age_seconds ?? Infinity));
      delay = newest < body.interval ? body.interval - newest + 2 : body.interval;
      if (state.ticker === null && body.tickers.length) {
        // The first load: the ticker and range of the address (#eth_usd/1w), or the defaults.
        const [ticker, range] = location.hash.slice(1).split("/");
        const names = body.tickers.map((t) => t.ticker);
        const known = range in RANGES || range === "all";
        select(names.includes(ticker) ? ticker : names[0], known ? range : "1d");
      } else {
        drawChart(false);
      }
    } catch (error) {
      elements.status.textContent = `Could not load prices (${error.message}); retrying.`;
      elements.status.classList.add("error");
    }
    refreshTimer = setTimeout(refresh, delay * 1000);
  }

  // The finest candle interval that draws the range in at most MAX_CANDLES candles, and never
  // finer than FETCH_INTERVAL (the API refuses that). A range longer than the stored history
  // is drawn over the history.
  function chooseInterval(span) {
    const minimum = Math.max(state.interval, span / MAX_CANDLES);
    return INTERVALS.find(([, seconds]) => seconds >= minimum) || INTERVALS[INTERVALS.length - 1];
  }

  async function drawChart(fit) {
    const summary = state.tickers.find((item) => item.ticker === state.ticker);
    if (!summary) return;
    const request = ++chartRequest;
    const now = Math.floor(Date.now() / 1000);
    const first = summary.first_timestamp ?? now;
    const start = state.range === "all" ? first : Math.max(first, now - RANGES[state.range]);
    const [name, seconds] = chooseInterval(now - start);
    const from = Math.floor(start / seconds) * seconds;
    const ticker = encodeURIComponent(state.ticker);
    elements.title.textContent = summary.ticker.replace("_", " / ").toUpperCase();
    let points;
    try {
      const body = await getJSON(
        `api/v1/candles?ticker=${ticker}&interval=${name}&from=${from}&limit=1000`);
      points = body.items.reverse().map((c) =>
        ({ time: c.time, open: +c.open, high: +c.high, low: +c.low, close: +c.close }));
      elements.note.textContent = `${INTERVAL_NAMES[name]} candles, times in UTC`;
    } catch (error) {
      if (request === chartRequest) {
        elements.note.textContent = `Chart unavailable: ${error.message}`;
      }
      return;
    }
    if (request !== chartRequest) return; // the user chose another ticker or range meanwhile
    series.setData(points);
    if (!points.length) elements.note.textContent = "No prices in this range yet.";
    if (fit) chart.timeScale().fitContent();
  }

  elements.ranges.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-range]");
    if (button && state.ticker) select(state.ticker, button.dataset.range);
  });
  setInterval(renderAges, 1000);
  refresh();
})();

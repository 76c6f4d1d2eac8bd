/* Live progress of one task: websocket first, polling while it is down, a small SVG chart.
 *
 * Events are {type: "progress", task, run, seq, status, phase, counters{...}, done, total, rate,
 * eta, lag, message}. `seq` only grows per task, so an event whose seq is not greater than the
 * last one seen is a repeat (from a catch-up or a poll) and is ignored.
 *
 * While the socket is down the page polls GET <events-url>?after=<seq> every 2 s (a JSON list, or
 * a paginated {results: [...], next}) and reconnects with exponential backoff; after reconnecting
 * it catches up through the same endpoint once.
 */
(function () {
  "use strict";

  var panel = document.getElementById("live-panel");
  if (!panel) return;

  var COUNTERS = ["rows_read", "rows_embedded", "rows_upserted", "rows_deleted", "rows_unchanged", "rows_filtered",
    "rows_failed"];
  var ACTIVE = { queued: true, running: true };
  var POLL_MS = 2000;
  var FIRST_BACKOFF_MS = 1000;
  var MAX_BACKOFF_MS = 30000;
  var WINDOW_MS = 5 * 60 * 1000;
  var SAMPLE_MS = 1000;
  var MAX_MESSAGES = 12;
  var MAX_PAGES = 20;
  var RUNS_REFRESH_MS = 15000; // the run history's counters, while a run is active
  var CHART_W = 600, CHART_H = 180, CHART_PAD = 8;

  var eventsUrl = panel.getAttribute("data-events-url");
  var wsPath = panel.getAttribute("data-ws-path");
  var runsUrl = panel.getAttribute("data-runs-url");
  var headerUrl = panel.getAttribute("data-header-url");
  var lastSeq = parseInt(panel.getAttribute("data-last-seq") || "0", 10) || 0;

  var initial = document.getElementById("live-initial");
  var state = initial ? JSON.parse(initial.textContent) : {};
  state.counters = state.counters || {};

  var socket = null;
  var backoff = FIRST_BACKOFF_MS;
  var reconnectTimer = null;
  var pollTimer = null;
  var fetching = false;
  var fetchAgain = false;
  var givenUp = false;
  var renderPending = false;
  var refreshTimer = null;
  var lastMessage = "";
  var samples = [];
  var runsRefreshedAt = Date.now();

  // -- formatting ------------------------------------------------------------------------------

  function byId(id) { return document.getElementById(id); }

  function setText(id, text) {
    var el = byId(id);
    if (el && el.textContent !== text) el.textContent = text;
  }

  function isNum(v) { return typeof v === "number" && isFinite(v); }

  function fmtInt(n) { return isNum(n) ? Math.round(n).toLocaleString("en-US") : "?"; }

  function fmtDuration(seconds) {
    if (!isNum(seconds)) return "–";
    var s = Math.max(0, Math.round(seconds));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    var two = function (x) { return (x < 10 ? "0" : "") + x; };
    return h ? h + ":" + two(m) + ":" + two(sec) : two(m) + ":" + two(sec);
  }

  function fmtLag(lag) {
    if (!isNum(lag)) return "–";
    return lag < 10 ? lag.toFixed(2) + " s" : lag < 120 ? lag.toFixed(0) + " s" : fmtDuration(lag);
  }

  function fmtShort(v) {
    if (!isNum(v)) return "0";
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k";
    return v >= 10 ? v.toFixed(0) : v.toFixed(v >= 1 ? 1 : 2);
  }

  // -- rendering -------------------------------------------------------------------------------

  function render() {
    renderPending = false;
    var status = state.status || "unknown";
    var running = !!ACTIVE[status];
    var badge = byId("progress-status");
    if (badge) {
      badge.textContent = status;
      badge.className = "badge status-" + status.replace(/\s+/g, "");
      badge.setAttribute("data-status", status);
    }
    panel.setAttribute("data-status", status);
    setText("progress-phase", state.phase || "");
    setText("progress-done", fmtInt(state.done || 0));
    setText("progress-total", isNum(state.total) ? fmtInt(state.total) : "?");

    var bar = byId("progress-bar");
    var fill = byId("progress-bar-fill");
    if (isNum(state.total) && state.total > 0) {
      var pct = Math.min(100, (100 * (state.done || 0)) / state.total);
      setText("progress-percent", pct.toFixed(1) + "%");
      if (fill) fill.style.width = pct.toFixed(2) + "%";
      if (bar) {
        bar.classList.remove("bar-unknown");
        bar.setAttribute("aria-valuemax", String(state.total));
        bar.setAttribute("aria-valuenow", String(state.done || 0));
      }
    } else {
      setText("progress-percent", "");
      if (fill) fill.style.width = "0%";
      if (bar) {
        bar.classList.toggle("bar-unknown", running);
        bar.setAttribute("aria-valuenow", String(state.done || 0));
      }
    }

    setText("progress-rate", running && isNum(state.rate) ? state.rate.toFixed(1) + " rows/s" : "–");
    setText("progress-eta", running && isNum(state.eta) ? fmtDuration(state.eta) : "–");
    setText("progress-lag", fmtLag(state.lag));
    COUNTERS.forEach(function (name) {
      var value = state.counters[name] || 0;
      setText("counter-" + name, fmtInt(value));
      var cell = byId("counter-" + name);
      if (cell && cell.parentNode) cell.parentNode.classList.toggle("nonzero", value > 0);
    });
  }

  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    setTimeout(render, 0);
  }

  function addMessage(level, text, at) {
    var list = byId("progress-messages");
    if (!list || !text) return;
    var empty = list.querySelector(".m-empty");
    if (empty) empty.remove();
    var li = document.createElement("li");
    li.className = "m-" + level;
    var time = document.createElement("time");
    time.textContent = (isNum(at) ? new Date(at * 1000) : new Date()).toLocaleTimeString([], { hour12: false });
    li.appendChild(time);
    li.appendChild(document.createTextNode(" " + text));
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_MESSAGES) list.removeChild(list.lastChild);
  }

  function refreshRuns() {
    runsRefreshedAt = Date.now();
    if (window.htmx && runsUrl && byId("run-history")) {
      window.htmx.ajax("GET", runsUrl, { target: "#run-history", swap: "outerHTML" });
    }
  }

  // The state line, buttons and run history are server-rendered: reload them when a run changes.
  function refreshFragments() {
    if (refreshTimer) clearTimeout(refreshTimer);
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      if (!window.htmx) return;
      refreshRuns();
      if (headerUrl && byId("task-header")) window.htmx.ajax("GET", headerUrl, { target: "#task-header", swap: "outerHTML" });
    }, 400);
  }

  // -- events ----------------------------------------------------------------------------------

  function apply(event) {
    if (!event || typeof event !== "object") return;
    var seq = Number(event.seq);
    if (!isFinite(seq) || seq <= lastSeq) return; // a repeat from a catch-up or a poll
    lastSeq = seq;
    panel.setAttribute("data-last-seq", String(seq));

    if (event.type && event.type !== "progress") {
      if (event.message) addMessage(event.level === "error" || event.type === "error" ? "error" : "notice", event.message, event.at);
      return;
    }
    var before = { status: state.status, run: state.run };
    if (event.run != null && event.run !== state.run) {
      state.counters = {}; // a new run counts from zero (its first event may carry no counters)
      lastMessage = "";
    }
    if (event.status) state.status = event.status;
    if ("phase" in event) state.phase = event.phase || "";
    if (isNum(event.done)) state.done = event.done;
    if ("total" in event) state.total = isNum(event.total) ? event.total : null;
    if ("rate" in event) state.rate = isNum(event.rate) ? event.rate : null;
    if ("eta" in event) state.eta = isNum(event.eta) ? event.eta : null;
    if ("lag" in event) state.lag = isNum(event.lag) ? event.lag : null;
    if (event.run != null) state.run = event.run;
    if (event.counters && typeof event.counters === "object") {
      COUNTERS.forEach(function (name) {
        if (name in event.counters) state.counters[name] = event.counters[name];
      });
    }
    var message = event.message || "";
    if (message && message !== lastMessage) addMessage(event.status === "failed" ? "error" : "notice", message, event.at);
    lastMessage = message;
    scheduleRender();
    if (state.status !== before.status || state.run !== before.run) refreshFragments();
  }

  function eventsOf(body) {
    if (Array.isArray(body)) return body;
    if (body && Array.isArray(body.results)) return body.results;
    return [];
  }

  function fetchPage(url, pages) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (body) {
        eventsOf(body)
          .slice()
          .sort(function (a, b) { return Number(a.seq) - Number(b.seq); })
          .forEach(apply);
        if (body && !Array.isArray(body) && body.next && pages < MAX_PAGES) return fetchPage(body.next, pages + 1);
        return null;
      });
  }

  // Everything after the last seen seq; a call while one is under way runs again once it ends.
  function fetchEvents() {
    if (fetching) {
      fetchAgain = true;
      return;
    }
    fetching = true;
    var separator = eventsUrl.indexOf("?") === -1 ? "?" : "&";
    fetchPage(eventsUrl + separator + "after=" + encodeURIComponent(lastSeq), 0)
      .then(function () {
        if (!socket) setConnection("polling", "reconnecting… (polling every 2 s)");
      })
      .catch(function (error) {
        if (!socket) setConnection("offline", "offline, retrying (" + error.message + ")");
      })
      .then(function () {
        fetching = false;
        if (fetchAgain) {
          fetchAgain = false;
          fetchEvents();
        }
      });
  }

  function startPolling() {
    if (pollTimer) return;
    pollTimer = setInterval(fetchEvents, POLL_MS);
    fetchEvents();
  }

  function stopPolling() {
    if (!pollTimer) return;
    clearInterval(pollTimer);
    pollTimer = null;
  }

  // -- websocket -------------------------------------------------------------------------------

  function setConnection(kind, text) {
    var el = byId("live-connection");
    panel.setAttribute("data-connection", kind);
    if (!el) return;
    el.className = "conn conn-" + kind;
    el.textContent = text;
  }

  function connect() {
    if (givenUp) return;
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws;
    try {
      ws = new WebSocket(scheme + location.host + wsPath);
    } catch (error) {
      socketDown();
      return;
    }
    setConnection("connecting", "connecting…");
    ws.onopen = function () {
      socket = ws;
      backoff = FIRST_BACKOFF_MS;
      stopPolling();
      setConnection("live", "live");
      fetchEvents(); // catch up on what happened while the socket was down
    };
    ws.onmessage = function (message) {
      try {
        apply(JSON.parse(message.data));
      } catch (error) {
        /* not an event: ignore */
      }
    };
    ws.onclose = function (close) {
      if (socket === ws) socket = null;
      if (close.code === 4401 || close.code === 4404) {
        givenUp = true;
        stopPolling();
        setConnection("offline", close.code === 4401 ? "signed out: reload and log in" : "no access to this task");
        return;
      }
      socketDown();
    };
  }

  function socketDown() {
    setConnection("polling", "reconnecting… (polling every 2 s)");
    startPolling();
    if (reconnectTimer) return;
    var delay = backoff * (0.75 + Math.random() * 0.5);
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    reconnectTimer = setTimeout(function () {
      reconnectTimer = null;
      connect();
    }, delay);
  }

  // -- chart -----------------------------------------------------------------------------------

  function niceMax(value) {
    if (!(value > 0)) return 1;
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * power >= value) return steps[i] * power;
    return 10 * power;
  }

  function points(now, key, max) {
    var inner = CHART_H - 2 * CHART_PAD;
    var out = [];
    samples.forEach(function (s) {
      var v = s[key];
      if (!isNum(v)) return;
      var x = ((s.t - (now - WINDOW_MS)) / WINDOW_MS) * CHART_W;
      var y = CHART_H - CHART_PAD - (Math.min(v, max) / max) * inner;
      out.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    return out.join(" ");
  }

  function sample() {
    var now = Date.now();
    var running = !!ACTIVE[state.status];
    samples.push({ t: now, rate: running && isNum(state.rate) ? state.rate : 0, lag: running ? state.lag : null });
    while (samples.length && samples[0].t < now - WINDOW_MS) samples.shift();
    var rateMax = 0, lagMax = 0;
    samples.forEach(function (s) {
      if (isNum(s.rate) && s.rate > rateMax) rateMax = s.rate;
      if (isNum(s.lag) && s.lag > lagMax) lagMax = s.lag;
    });
    var rateLine = byId("chart-rate"), lagLine = byId("chart-lag");
    if (rateLine) rateLine.setAttribute("points", points(now, "rate", niceMax(rateMax)));
    if (lagLine) lagLine.setAttribute("points", points(now, "lag", niceMax(lagMax)));
    setText("chart-rate-max", fmtShort(rateMax));
    setText("chart-lag-max", fmtShort(lagMax));
    if (running && now - runsRefreshedAt > RUNS_REFRESH_MS && !document.hidden) refreshRuns();
  }

  // -- start -----------------------------------------------------------------------------------

  // The chart's past: the kept events of the last minutes (their `at` is the server's clock).
  function seedChart() {
    var history = state.history || [];
    var offset = isNum(state.server_time) ? Date.now() - state.server_time * 1000 : 0;
    history.forEach(function (point) {
      if (!isNum(point.at)) return;
      samples.push({ t: point.at * 1000 + offset, rate: isNum(point.rate) ? point.rate : 0, lag: point.lag });
    });
    delete state.history;
  }

  render();
  seedChart();
  sample();
  setInterval(sample, SAMPLE_MS);
  if ("WebSocket" in window && wsPath) {
    connect();
  } else {
    setConnection("polling", "polling every 2 s");
    startPolling();
  }
  window.addEventListener("beforeunload", function () {
    givenUp = true;
    if (socket) socket.close();
  });
})();

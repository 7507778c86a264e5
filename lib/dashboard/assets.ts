/**
 * The dashboard's stylesheet and browser script, kept as strings so the service needs no
 * file reads and no build step (Deno Deploy serves them from memory like any response).
 *
 * The script is small on purpose: every fact is in the server's HTML. It only localizes
 * times, keeps the person's token in `sessionStorage`, calls the JSON API for the buttons
 * (resume, rerun, cancel, trigger, and sending the event a waiting run awaits),
 * and follows a run through the SSE endpoint, swapping in fresh server HTML as it changes.
 *
 * @module
 */

/** The stylesheet: phone first, wider layouts from 720 px, dark when the system is. */
export const CSS = `
:root {
  --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --panel: #f6f8fa;
  --link: #0550ae; --ok: #1a7f37; --ok-bg: #dafbe1; --bad: #cf222e; --bad-bg: #ffebe9;
  --run: #0969da; --run-bg: #ddf4ff; --wait: #9a6700; --wait-bg: #fff8c5;
  --idle: #59636e; --idle-bg: #eaeef2; --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --line: #3d444d; --panel: #151b23;
    --link: #4493f8; --ok: #3fb950; --ok-bg: #12261e; --bad: #f85149; --bad-bg: #25171c;
    --run: #4493f8; --run-bg: #121d2f; --wait: #d29922; --wait-bg: #272115;
    --idle: #9198a1; --idle-bg: #212830;
  }
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.45;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
a { color: var(--link); }
header.top { display: flex; flex-wrap: wrap; align-items: center; gap: .25rem 1rem;
  padding: .6rem 1rem; border-bottom: 1px solid var(--line); background: var(--panel); }
header.top .brand { font-weight: 700; text-decoration: none; color: var(--fg); font-size: 1.1rem; }
header.top nav { display: flex; gap: 1rem; flex-wrap: wrap; }
header.top form { margin-left: auto; }
main { padding: 1rem; max-width: 78rem; margin: 0 auto; }
h1 { font-size: 1.35rem; margin: .2rem 0 .8rem; display: flex; flex-wrap: wrap; gap: .5rem;
  align-items: center; overflow-wrap: anywhere; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
h3 { font-size: 1rem; margin: 1rem 0 .4rem; }
.crumbs { color: var(--muted); font-size: .9rem; overflow-wrap: anywhere; }
.muted, small { color: var(--muted); }
code, pre, .mono { font-family: var(--mono); font-size: .85rem; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: .6rem;
  overflow: auto; max-height: 24rem; white-space: pre-wrap; overflow-wrap: anywhere; margin: .4rem 0; }
.badge { display: inline-flex; align-items: center; gap: .3em; padding: .1em .55em; border-radius: 1em;
  font-size: .85rem; font-weight: 600; white-space: nowrap; border: 1px solid currentColor; }
.s-succeeded { color: var(--ok); background: var(--ok-bg); }
.s-failed { color: var(--bad); background: var(--bad-bg); }
.s-running { color: var(--run); background: var(--run-bg); }
.s-waiting, .s-retrying { color: var(--wait); background: var(--wait-bg); }
.s-queued, .s-pending, .s-cancelled, .s-skipped { color: var(--idle); background: var(--idle-bg); }
.s-paused { color: var(--wait); background: var(--idle-bg); border-style: dashed; }
.s-held { color: var(--wait); background: var(--idle-bg); border-style: dotted; font-weight: 500;
  white-space: normal; }
.status-cell { display: inline-flex; flex-wrap: wrap; align-items: center; gap: .3em; min-width: 0; }
h1 .badge { font-size: 1rem; }
.panel { border: 1px solid var(--line); border-radius: 8px; padding: .8rem 1rem; margin: 1rem 0;
  background: var(--panel); }
.panel.problem { border-color: var(--bad); border-left-width: 6px; background: var(--bad-bg); }
.panel.problem pre { background: var(--bg); }
.panel.warn { border-color: var(--wait); border-left-width: 6px; background: var(--wait-bg); }
.panel > h2:first-child, .panel > h3:first-child { margin-top: 0; }
.error-line { font-weight: 600; overflow-wrap: anywhere; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .45rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: .85rem; color: var(--muted); font-weight: 600; }
td.err { max-width: 28rem; overflow-wrap: anywhere; }
td.id, td time { white-space: nowrap; }
table.steps { margin-top: 1.2rem; }
.attempt h3 { font-size: .9rem; }
.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin: .5rem 0 1rem; }
.filters label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); }
.chips { display: flex; flex-wrap: wrap; gap: .4rem; margin: .3rem 0 .8rem; }
.chips a { text-decoration: none; }
.chips a[aria-current] { outline: 2px solid var(--fg); outline-offset: 1px; }
select, input, textarea, button { font: inherit; color: inherit; }
select, input, textarea { background: var(--bg); border: 1px solid var(--line); border-radius: 6px;
  padding: .35rem .5rem; min-height: 2.3rem; max-width: 100%; }
textarea { width: 100%; font-family: var(--mono); }
button { border: 1px solid var(--line); background: var(--bg); border-radius: 6px; padding: .4rem .9rem;
  min-height: 2.3rem; cursor: pointer; font-weight: 600; }
button.primary { background: var(--ok); border-color: var(--ok); color: #fff; }
button.danger { color: var(--bad); border-color: var(--bad); }
button:disabled { opacity: .45; cursor: not-allowed; }
button.link { border: 0; background: none; color: var(--link); padding: 0; min-height: 0; font-weight: 400;
  text-decoration: underline; }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
.actions form { display: contents; }
#action-status:empty { display: none; }
.say-ok { color: var(--ok); font-weight: 600; }
.say-error { color: var(--bad); font-weight: 600; }
.token { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin-bottom: .8rem; }
.token label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); }
.graph { display: flex; flex-direction: column; gap: .3rem; }
.layer { display: flex; flex-direction: column; gap: .4rem; }
.arrow { color: var(--muted); text-align: center; font-size: 1.2rem; line-height: 1; }
.arrow::before { content: "↓"; }
.node { display: block; border: 1px solid currentColor; border-radius: 8px; padding: .4rem .6rem;
  text-decoration: none; min-width: 9rem; }
.node b { color: var(--fg); overflow-wrap: anywhere; }
.node small { display: block; }
.node.s-skipped { border-style: dashed; }
.timeline { display: grid; grid-template-columns: minmax(4rem, max-content) 1fr; gap: .25rem .5rem; align-items: center; }
.timeline .label { font-family: var(--mono); font-size: .8rem; overflow-wrap: anywhere; max-width: 40vw; }
.track { position: relative; height: 1.3rem; background: var(--panel); border-radius: 4px; border: 1px solid var(--line); }
.bar { position: absolute; top: 2px; bottom: 2px; min-width: 4px; border-radius: 3px; border: 1px solid currentColor;
  font-size: .7rem; line-height: 1rem; overflow: hidden; padding: 0 2px; color: inherit; text-decoration: none; }
.bar.s-succeeded { background: var(--ok); color: var(--ok); }
.bar.s-failed { background: var(--bad); color: var(--bad); }
.bar.s-running { background: var(--run); color: var(--run); }
.bar.s-crashed, .bar.s-interrupted { background: var(--wait); color: var(--wait); }
.axis { grid-column: 2; display: flex; justify-content: space-between; font-size: .75rem; color: var(--muted); }
.legend { display: flex; flex-wrap: wrap; gap: .8rem; font-size: .8rem; color: var(--muted); margin-top: .4rem; }
.legend i { display: inline-block; width: .9em; height: .9em; border-radius: 2px; vertical-align: -.1em; margin-right: .25em; }
.legend .s-succeeded { background: var(--ok); } .legend .s-failed { background: var(--bad); }
.legend .s-running { background: var(--run); } .legend .s-crashed { background: var(--wait); }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
details { margin: .4rem 0; }
summary { cursor: pointer; }
.logs { list-style: none; padding: 0; margin: .3rem 0; font-family: var(--mono); font-size: .8rem; }
.logs li { padding: .1rem 0; border-bottom: 1px dotted var(--line); overflow-wrap: anywhere; }
.lvl-error { color: var(--bad); } .lvl-warn { color: var(--wait); }
.effects { list-style: none; padding: 0; margin: 0; }
.effects li { overflow-wrap: anywhere; }
.wait-send { display: flex; flex-direction: column; gap: .5rem; margin-top: .6rem; }
.wait-send label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); }
.cards { display: grid; gap: .8rem; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: .7rem .9rem; }
.card h3 { margin: 0 0 .3rem; }
.grid-wrap { overflow-x: auto; max-width: 100%; border: 1px solid var(--line); border-radius: 8px; }
table.grid { width: max-content; min-width: 100%; border-collapse: separate; border-spacing: 0; }
table.grid th, table.grid td { padding: .25rem .3rem; white-space: nowrap; vertical-align: middle; }
table.grid th.grid-step { position: sticky; left: 0; z-index: 1; background: var(--bg);
  border-right: 1px solid var(--line); max-width: 9rem; overflow: hidden; text-overflow: ellipsis; }
table.grid thead th { font-weight: 500; font-size: .75rem; }
.grid-run { display: flex; flex-direction: column; align-items: center; text-decoration: none;
  background: none; border-radius: 4px; padding: 0 .2rem; }
.grid-run small { font-size: .7rem; }
.cell { display: flex; flex-direction: column; align-items: center; min-width: 4.2rem; padding: .15rem .3rem;
  border-radius: 4px; border: 1px solid currentColor; text-decoration: none; font-size: .78rem; line-height: 1.25; }
.cell small { font-size: .7rem; color: inherit; }
.cell.s-absent { border-style: dotted; color: var(--muted); }
.grid-rate { font-variant-numeric: tabular-nums; }
.trend { display: block; }
.trend polyline { fill: none; stroke: var(--run); stroke-width: 1.5; }
.trend circle { fill: var(--ok); }
.trend circle.t-failed { fill: var(--bad); }
.grid-paging { display: flex; justify-content: space-between; margin: .4rem 0; }
.no-js .needs-js { display: none; }
.js .no-js-only { display: none; }
@media (max-width: 719px) {
  table.stack thead { display: none; }
  table.stack tr { display: block; border: 1px solid var(--line); border-radius: 8px; margin-bottom: .6rem; padding: .3rem 0; }
  table.stack td { display: flex; gap: .8rem; border: 0; padding: .2rem .7rem; }
  table.stack td::before { content: attr(data-label); color: var(--muted); min-width: 6.5rem; font-size: .85rem; }
  td.err { max-width: none; }
  table.stack td.err:empty { display: none; }
}
@media (min-width: 720px) {
  .graph { flex-direction: row; align-items: center; flex-wrap: wrap; }
  .arrow::before { content: "→"; }
  .cards { grid-template-columns: repeat(auto-fill, minmax(20rem, 1fr)); }
}
`;

/** The browser script. Plain ES2020, no framework; every page works without it for reading. */
export const JS = `"use strict";
(function () {
  var root = document.documentElement;
  root.classList.remove("no-js");
  root.classList.add("js");
  var body = document.body;
  var TOKEN_KEY = "kvflow.token";
  var TERMINAL = ["succeeded", "failed", "cancelled"];
  var ICONS = { queued: "…", running: "▸", waiting: "↻", paused: "⏸", succeeded: "✓", failed: "✗",
    cancelled: "⊘", pending: "…", retrying: "↻", skipped: "–" };
  var runId = body.getAttribute("data-run");
  var authRequired = body.getAttribute("data-auth") === "required";
  var source = null;
  var pollTimer = null;
  var refreshTimer = null;
  var refreshing = false;
  var pending = null;
  var memoryToken = "";

  function $(id) { return document.getElementById(id); }

  function localizeTimes(scope) {
    var times = scope.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var t = times[i];
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) continue;
      t.title = t.textContent + " (UTC)";
      t.textContent = d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", second: "2-digit" });
    }
  }

  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (_e) { return ""; }
  }
  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_e) { /* storage disabled: the token lives for this page only */ }
    memoryToken = value;
  }
  function token() { return getToken() || memoryToken; }

  function showToken(message) {
    var form = $("token-form");
    var saved = $("token-saved");
    if (!form) return;
    var has = !!token();
    form.hidden = has;
    if (saved) saved.hidden = !has;
    if (message) {
      form.hidden = false;
      say(message, "error");
      var input = $("token");
      if (input) input.focus();
    }
  }

  function say(text, kind) {
    var out = $("action-status");
    if (!out) return;
    out.textContent = text;
    out.className = kind ? "say-" + kind : "";
  }

  function setRunStatus(status) {
    var badge = $("run-status");
    if (!badge) return;
    badge.className = "badge s-" + status;
    badge.setAttribute("data-status", status);
    badge.textContent = (ICONS[status] || "") + " " + status;
  }

  function applyRun(run) {
    if (!run || typeof run.status !== "string") return;
    setRunStatus(run.status);
    var terminal = TERMINAL.indexOf(run.status) >= 0;
    var buttons = document.querySelectorAll("button[data-action]");
    for (var i = 0; i < buttons.length; i++) {
      var b = buttons[i];
      var action = b.getAttribute("data-action");
      if (action === "resume") b.disabled = !(run.status === "failed" || run.status === "cancelled");
      if (action === "rerun") b.disabled = !terminal;
      if (action === "cancel") b.disabled = terminal;
      if (action === "pause" && runId) b.disabled = terminal || run.status === "paused" || !!run.paused;
      if (action === "unpause" && runId) b.disabled = !(run.status === "paused" || !!run.paused);
    }
    var select = $("rerun-from");
    if (select) select.disabled = !terminal;
    document.title = document.title.replace(/^\\S+ /, (ICONS[run.status] || "") + " ");
  }

  function applyStep(event) {
    if (!event || typeof event.step !== "string" || (event.item !== undefined && event.item >= 0)) return;
    var nodes = document.querySelectorAll("[data-step]");
    for (var i = 0; i < nodes.length; i++) {
      if (nodes[i].getAttribute("data-step") !== event.step) continue;
      nodes[i].className = nodes[i].className.replace(/\\bs-\\w+/, "s-" + event.status);
      var state = nodes[i].querySelector("[data-state]");
      if (state) state.textContent = (ICONS[event.status] || "") + " " + event.status;
    }
  }

  function refresh() {
    if (refreshing) { refreshSoon(); return Promise.resolve(); }
    refreshing = true;
    return fetch(location.pathname + location.search, { headers: { accept: "text/html" }, cache: "no-store" })
      .then(function (res) { return res.ok ? res.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.querySelectorAll("[data-live]");
        for (var i = 0; i < fresh.length; i++) {
          var old = $(fresh[i].id);
          if (old) old.replaceWith(document.importNode(fresh[i], true));
        }
        localizeTimes(document);
        var badge = doc.getElementById("run-status");
        if (badge) applyRun({ status: badge.getAttribute("data-status") });
      })
      .catch(function () { /* the next event or poll tries again */ })
      .then(function () { refreshing = false; });
  }

  function refreshSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(function () { refreshTimer = null; refresh(); }, 250);
  }

  function runStatus() {
    var badge = $("run-status");
    return badge ? badge.getAttribute("data-status") : null;
  }

  function stopFollowing() {
    if (source) source.close();
    source = null;
  }

  function poll() {
    if (pollTimer) return;
    pollTimer = setInterval(function () {
      if (TERMINAL.indexOf(runStatus()) >= 0) { clearInterval(pollTimer); pollTimer = null; return; }
      refresh();
    }, 2000);
  }

  function follow() {
    if (!runId || source || typeof EventSource === "undefined") { if (runId && !source) poll(); return; }
    var live = $("live-note");
    source = new EventSource("/api/runs/" + encodeURIComponent(runId) + "/events");
    source.onopen = function () { if (live) live.textContent = "Live: following this run."; };
    source.addEventListener("run", function (e) { applyRun(parse(e.data)); refreshSoon(); });
    source.addEventListener("step", function (e) { applyStep(parse(e.data)); refreshSoon(); });
    source.addEventListener("end", function (e) {
      applyRun(parse(e.data));
      stopFollowing();
      if (live) live.textContent = "The run ended.";
      refresh();
    });
    source.onerror = function () {
      if (source && source.readyState === 2) {
        // The stream was refused (an old API, or a read token): fall back to re-reading the page.
        stopFollowing();
        if (TERMINAL.indexOf(runStatus()) < 0) poll();
      }
    };
  }

  function parse(text) {
    try { return JSON.parse(text); } catch (_e) { return null; }
  }

  function act(button) {
    var action = button.getAttribute("data-action");
    var url = button.getAttribute("data-url");
    var payload;
    if (action === "rerun") {
      var from = $("rerun-from");
      payload = { from: from ? from.value : "" };
    } else if (action === "trigger") {
      var text = $("trigger-params") ? $("trigger-params").value.trim() : "";
      var params = {};
      if (text) {
        params = parse(text);
        if (params === null || typeof params !== "object" || Array.isArray(params)) {
          say("Params must be a JSON object, such as {\\"date\\": \\"2026-01-31\\"}", "error");
          return;
        }
      }
      payload = { params: params };
    } else if (action === "send") {
      var event = button.getAttribute("data-event") || "";
      var data = parse(button.getAttribute("data-data") || "{}") || {};
      var reason = $("send-reason");
      if (/rejected$/i.test(event) && reason && reason.value.trim()) data.reason = reason.value.trim();
      payload = { name: event, data: data };
    } else if (action === "send-form") {
      var name = $("send-name") ? $("send-name").value : "";
      var raw = $("send-data") ? $("send-data").value.trim() : "";
      var sent = raw ? parse(raw) : null;
      if (raw && sent === null && raw !== "null") {
        say("Data must be JSON, such as {\\"date\\": \\"2026-01-31\\"}", "error");
        return;
      }
      payload = { name: name, data: sent };
    }
    if (authRequired && !token()) {
      pending = button;
      showToken("Enter the token first: " + button.textContent.trim() + " needs it.");
      return;
    }
    var headers = { accept: "application/json" };
    if (token()) headers.authorization = "Bearer " + token();
    if (payload) headers["content-type"] = "application/json";
    button.disabled = true;
    say(button.textContent.trim() + "…");
    fetch(url, { method: "POST", headers: headers, body: payload ? JSON.stringify(payload) : undefined })
      .then(function (res) {
        return res.text().then(function (text) { return { res: res, data: parse(text) }; });
      })
      .then(function (r) {
        button.disabled = false;
        var message = r.data && r.data.error && r.data.error.message;
        if (r.res.status === 401 || r.res.status === 403) {
          setToken("");
          pending = button;
          showToken("The token was refused (" + (message || "HTTP " + r.res.status) + "): enter it again.");
          return;
        }
        if (!r.res.ok) {
          say(message || "The server answered HTTP " + r.res.status, "error");
          if (runId) refresh();
          return;
        }
        if (action === "trigger" && r.data && r.data.id) {
          location.assign("/runs/" + encodeURIComponent(r.data.id));
          return;
        }
        if (action === "send" || action === "send-form") {
          var woke = r.data && r.data.woke ? r.data.woke.length : 0;
          say("Sent " + payload.name + (r.data && r.data.duplicate ? " before: nothing new." :
            woke ? ": the run continues." : ": stored; no wait took it."), "ok");
          refresh();
          follow();
          return;
        }
        if (!runId && (action === "pause" || action === "unpause")) {
          say(action === "pause" ? "Paused: new runs wait until it is unpaused." :
            "Unpaused: the runs it held start now.", "ok");
          location.reload();
          return;
        }
        var run = r.data && r.data.run && r.data.run.status ? r.data.run : r.data;
        applyRun(run);
        say({ resume: "Resumed: the run is queued again.", rerun: "Rerun queued.",
          cancel: "Cancelled.", unpause: "Unpaused: the run goes on.",
          pause: run && run.status === "paused" ? "Paused." :
            "Pausing: the steps running now finish, then the run stops." }[action] || "Done.", "ok");
        refresh();
        if (action !== "cancel") follow();
      })
      .catch(function (error) {
        button.disabled = false;
        say("Could not reach the server: " + error.message, "error");
      });
  }

  document.addEventListener("click", function (e) {
    var target = e.target instanceof Element ? e.target.closest("button[data-action]") : null;
    if (target) { e.preventDefault(); act(target); }
    var forget = e.target instanceof Element ? e.target.closest("#token-forget") : null;
    if (forget) { setToken(""); showToken(); say("Token forgotten."); }
  });

  var tokenForm = $("token-form");
  if (tokenForm) {
    tokenForm.addEventListener("submit", function (e) {
      e.preventDefault();
      var input = $("token");
      var value = input ? input.value.trim() : "";
      if (!value) return;
      setToken(value);
      if (input) input.value = "";
      showToken();
      say("Token saved for this browser session.", "ok");
      if (pending) { var again = pending; pending = null; act(again); }
    });
  }

  localizeTimes(document);
  showToken();
  if (runId && TERMINAL.indexOf(runStatus()) < 0) follow();
  if (body.getAttribute("data-page") === "runs") {
    setInterval(function () {
      if (document.visibilityState !== "visible") return;
      if (document.querySelector("#runs-table [data-active]")) refresh();
    }, 3000);
  }
})();
`;

// The Flame local cluster dashboard: each view is a JSON document under /api/,
// fetched again every POLL_MS while the view is shown; the DOM is updated in place.
"use strict";

const POLL_MS = 500;
const TOKEN = document.querySelector('meta[name="flame-token"]').content;
const view = document.getElementById("view");
const statusEl = document.getElementById("status");
const openTracebacks = new Set();
let timer = null;
let generation = 0;
let chart = null;

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

async function api(path) {
  const response = await fetch("api/" + path, { headers: { "X-Flame-Token": TOKEN } });
  if (!response.ok) {
    throw new Error(`${response.status} ${await response.text()}`);
  }
  return response.json();
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function when(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "–";
}

function state(name) {
  return `<span class="state ${esc(name)}">${esc(name)}</span>`;
}

function table(id, head, rows, empty) {
  const cols = head.map(([label, cls]) => `<th class="${cls || ""}">${esc(label)}</th>`).join("");
  const body = rows.length ? rows.join("") : `<tr><td colspan="${head.length}" class="empty">${esc(empty)}</td></tr>`;
  return `<table id="${id}"><thead><tr>${cols}</tr></thead><tbody>${body}</tbody></table>`;
}

// A region is replaced only when its HTML changed, so a selection or an open
// traceback is not lost to a refresh.
function put(id, html) {
  let el = document.getElementById(id);
  if (!el) {
    el = document.createElement("div");
    el.id = id;
    view.appendChild(el);
  }
  if (el.dataset.html !== html) {
    el.innerHTML = html;
    el.dataset.html = html;
  }
  return el;
}

const views = {
  async overview() {
    const s = await api("summary");
    const t = s.tasks;
    put("cards", `<h2>Overview</h2><div class="cards">
      <div class="card"><div class="n" id="open-sessions">${s.open_sessions}</div><div class="l">open sessions (${s.sessions} in all)</div></div>
      <div class="card"><div class="n">${s.instances} / ${s.capacity}</div><div class="l">instances / capacity</div></div>
      <div class="card"><div class="n">${t.pending}</div><div class="l">tasks pending</div></div>
      <div class="card"><div class="n">${t.running}</div><div class="l">tasks running</div></div>
      <div class="card"><div class="n" id="tasks-succeed">${t.succeed}</div><div class="l">tasks succeeded</div></div>
      <div class="card"><div class="n">${t.failed}</div><div class="l">tasks failed</div></div>
      <div class="card"><div class="n">${s.applications}</div><div class="l">applications</div></div>
    </div>`);
    const panel = put("chart-panel", `<div class="panel"><div id="chart"></div>
      <p class="legend-note">Tasks completed per second and tasks pending, sampled every ${s.rates.interval} s.</p></div>`);
    drawChart(panel.querySelector("#chart"), s.rates);
  },

  async applications() {
    const d = await api("applications");
    const rows = d.applications.map((a) => `<tr data-application="${esc(a.name)}">
      <td><code>${esc(a.name)}</code></td><td>${a.enabled ? "enabled" : "disabled"}</td>
      <td class="num">${a.open_sessions}</td><td class="num">${a.sessions}</td>
      <td><code>${esc(a.command)}</code></td><td class="mono">${esc(a.url || "")}</td>
      <td>${when(a.created)}</td></tr>`);
    put("apps", `<h2>Applications</h2>` + table("applications", [
      ["name"], ["state"], ["open sessions", "num"], ["sessions", "num"], ["command"], ["package"], ["registered"],
    ], rows, "no applications"));
  },

  async sessions() {
    const d = await api("sessions");
    const rows = d.sessions.map((s) => `<tr data-session="${esc(s.id)}">
      <td><a href="#/session/${encodeURIComponent(s.id)}"><code>${esc(s.id)}</code></a></td>
      <td><code>${esc(s.application)}</code></td><td>${state(s.state)}</td>
      <td class="num pending">${s.tasks.pending}</td><td class="num running">${s.tasks.running}</td>
      <td class="num succeed">${s.tasks.succeed}</td><td class="num failed">${s.tasks.failed}</td>
      <td class="num cancelled">${s.tasks.cancelled}</td><td class="num instances">${s.instances.length}</td>
      <td>${when(s.created)}</td></tr>`);
    const more = d.total > d.sessions.length ? ` <span class="muted">(${d.sessions.length} of ${d.total} shown)</span>` : "";
    put("sessions-view", `<h2>Sessions${more}</h2>` + table("sessions", [
      ["session"], ["application"], ["state"], ["pending", "num"], ["running", "num"],
      ["succeeded", "num"], ["failed", "num"], ["cancelled", "num"], ["instances", "num"], ["created"],
    ], rows, "no sessions yet"));
  },

  async session(id) {
    let d;
    try {
      d = await api("sessions/" + encodeURIComponent(id));
    } catch (error) {
      put("session-view", `<h2>Session <code>${esc(id)}</code></h2><p class="empty">not found (closed and removed?)</p>`);
      return;
    }
    const s = d.session;
    const instances = s.instances.map((i) => `<a href="#/instance/${encodeURIComponent(i)}"><code>${esc(i)}</code></a>`).join(", ") || "none";
    put("session-head", `<h2>Session <code>${esc(s.id)}</code> ${state(s.state)}</h2>
      <div class="cards">
        <div class="card"><div class="n">${s.tasks.pending}</div><div class="l">pending</div></div>
        <div class="card"><div class="n">${s.tasks.running}</div><div class="l">running</div></div>
        <div class="card"><div class="n" id="session-succeed">${s.tasks.succeed}</div><div class="l">succeeded</div></div>
        <div class="card"><div class="n">${s.tasks.failed}</div><div class="l">failed</div></div>
      </div>
      <p>Application <code>${esc(s.application)}</code> · instances: ${instances}${s.unschedulable ? ` · <b>unschedulable</b>: ${esc(s.unschedulable)}` : ""}</p>`);
    const rows = d.tasks.map((t) => {
      let detail = esc(t.message || "");
      if (t.failure) {
        const key = `${s.id}/${t.id}`;
        detail = `<details class="traceback" data-key="${esc(key)}"${openTracebacks.has(key) ? " open" : ""}>
          <summary>${esc(t.failure.type)}: ${esc(t.failure.message)}</summary><pre>${esc(t.failure.traceback)}</pre></details>`;
      }
      const duration = t.duration_ms === null ? "–" : `${t.duration_ms.toFixed(1)} ms`;
      return `<tr data-task="${esc(t.id)}"><td class="num">${esc(t.id)}</td><td>${state(t.state)}</td>
        <td class="num">${duration}</td><td>${when(t.completed)}</td><td>${detail}</td></tr>`;
    });
    const region = put("session-tasks", `<h3>Tasks <span class="muted">(failures first, then the newest ${d.tasks.length})</span></h3>` +
      table("tasks", [["task", "num"], ["state"], ["duration", "num"], ["completed"], ["message / traceback"]], rows, "no tasks"));
    region.querySelectorAll("details.traceback").forEach((el) => {
      el.addEventListener("toggle", () => {
        if (el.open) openTracebacks.add(el.dataset.key); else openTracebacks.delete(el.dataset.key);
      });
    });
  },

  async instances() {
    const d = await api("instances");
    const rows = d.instances.map((i) => `<tr data-instance="${esc(i.id)}">
      <td><a href="#/instance/${encodeURIComponent(i.id)}"><code>${esc(i.id)}</code></a></td>
      <td>${state(i.state)}</td><td><a href="#/session/${encodeURIComponent(i.session)}"><code>${esc(i.session)}</code></a></td>
      <td class="num">${i.pid ?? "–"}</td><td class="num">${i.cpu_percent === null ? "–" : i.cpu_percent.toFixed(1) + " %"}</td>
      <td class="num">${bytes(i.rss)}</td><td class="num">${esc(i.task ?? "–")}</td></tr>`);
    put("instances-view", `<h2>Instances</h2>` + table("instances", [
      ["instance"], ["state"], ["session"], ["pid", "num"], ["CPU", "num"], ["RSS", "num"], ["task", "num"],
    ], rows, "no instances run now") + `<p class="muted">Logs: <code>${esc(d.logs)}</code></p>`);
  },

  async instance(id) {
    let d;
    try {
      d = await api(`instances/${encodeURIComponent(id)}/log`);
    } catch (error) {
      put("log-view", `<h2>Instance <code>${esc(id)}</code></h2><p class="empty">no log</p>`);
      return;
    }
    put("log-view", `<h2>Instance <code>${esc(d.id)}</code></h2>
      <h3>stdout <span class="muted">(last lines)</span></h3><pre class="log" id="log-stdout">${esc(d.stdout)}</pre>
      <h3>stderr <span class="muted">(last lines)</span></h3><pre class="log" id="log-stderr">${esc(d.stderr)}</pre>`);
  },

  async cache() {
    const d = await api("cache");
    const rows = d.objects.map((o) => `<tr data-key="${esc(o.key)}"><td><code>${esc(o.key)}</code></td>
      <td class="num">${o.version ?? "–"}</td><td class="num">${bytes(o.size)}</td><td>${esc(o.storage)}</td></tr>`);
    put("cache-view", `<h2>Cache <span class="muted">(${bytes(d.memory_used)} of ${bytes(d.max_memory)} in memory)</span></h2>` +
      table("objects", [["key"], ["version", "num"], ["size", "num"], ["storage"]], rows, "the cache is empty"));
  },
};

function drawChart(el, rates) {
  const data = [rates.times, rates.per_second, rates.pending];
  const width = Math.max(320, el.clientWidth || 900);
  if (!chart || chart.root.parentNode !== el) {
    el.innerHTML = "";
    chart = new uPlot({
      width, height: 260,
      series: [
        {},
        { label: "completed / s", stroke: "#2b8a3e", width: 2, fill: "rgba(43,138,62,0.08)" },
        { label: "pending", stroke: "#e67700", width: 2, scale: "pending" },
      ],
      axes: [
        { values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString()) },
        { label: "tasks / s" },
        { side: 1, scale: "pending", label: "pending", grid: { show: false } },
      ],
    }, data, el);
  } else {
    chart.setData(data);
  }
}

function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "overview").split("/");
  const name = parts[0] || "overview";
  const arg = parts.slice(1).map(decodeURIComponent).join("/");
  return { name, arg };
}

async function refresh(mine) {
  const { name, arg } = route();
  const render = views[name] || views.overview;
  try {
    await render(arg);
    statusEl.textContent = `live · ${new Date().toLocaleTimeString()}`;
    statusEl.classList.remove("down");
  } catch (error) {
    statusEl.textContent = `disconnected: ${error.message}`;
    statusEl.classList.add("down");
  }
  if (mine === generation) {
    timer = setTimeout(() => refresh(mine), POLL_MS);
  }
}

function show() {
  generation += 1;
  clearTimeout(timer);
  view.innerHTML = "";
  chart = null;
  const { name } = route();
  const tab = name === "session" ? "sessions" : name === "instance" ? "instances" : name;
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === tab));
  refresh(generation);
}

window.addEventListener("hashchange", show);
show();

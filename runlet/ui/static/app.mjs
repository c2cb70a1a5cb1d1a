// Runlet desktop manager: the Fleet and Jobs views, the start form, and the tab bar.
// Everything shown is set as text (never as HTML); nothing from a job is stored in the browser:
// localStorage keeps only the theme and the terminal font size.
import { TerminalTab } from "/static/term.mjs";

const POLL_MS = 2000;
const ENDED = new Set(["exited", "killed", "timed_out", "cancelled", "interrupted", "lost"]);
const $ = (id) => document.getElementById(id);
const tabs = new Map(); // job id -> TerminalTab
window.runletTabs = tabs; // for the browser tests: read a tab's xterm buffer

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// -- formatting ------------------------------------------------------------------------------

function ago(unix) {
  if (unix === null || unix === undefined) return "-";
  const s = Math.max(0, Date.now() / 1000 - unix);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(unix * 1000).toISOString().slice(0, 16).replace("T", " ");
}

function when(unix) {
  if (unix === null || unix === undefined) return "-";
  return new Date(unix * 1000).toLocaleString();
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(s) {
  if (s === null || s === undefined) return "-";
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m`;
}

export function statusText(row) {
  if (row.exit_code !== null && row.exit_code !== undefined) return `exit ${row.exit_code}`;
  if (row.signal !== null && row.signal !== undefined) return `signal ${row.signal}`;
  return "";
}

// -- Fleet -----------------------------------------------------------------------------------

function nodeRow(n) {
  const v = n; // the vitals of its last heartbeat are fields of the row (null: not known)
  const memory = v.mem_total && v.mem_used !== null && v.mem_used !== undefined
    ? el("span", {}, el("span", { class: "bar" }, el("span", { style: `width:${Math.round(100 * v.mem_used / v.mem_total)}%` })),
        `${bytes(v.mem_used)} / ${bytes(v.mem_total)}`)
    : "-";
  return el("tr", { "data-node": n.name },
    el("td", {}, el("strong", {}, n.name)),
    el("td", { class: "node-status" }, el("span", { class: `dot ${n.online ? "online" : "offline"}` }), n.online ? "online" : "offline"),
    el("td", { title: when(n.last_seen) }, ago(n.last_seen)),
    el("td", {}, n.platform || "-"),
    el("td", {}, ...(n.tags || []).map((t) => el("span", { class: "tag" }, t))),
    el("td", { class: "num" }, n.running ?? 0),
    el("td", { class: "num" }, n.queued ?? 0),
    el("td", { class: "num cpu" }, v.cpu_percent === null || v.cpu_percent === undefined ? "-" : `${v.cpu_percent.toFixed(0)} %`),
    el("td", { class: "memory" }, memory),
    el("td", { class: "num" }, v.load1 === null || v.load1 === undefined ? "-" : v.load1.toFixed(2)),
    el("td", {}, duration(v.uptime)),
    el("td", { class: "num temp" }, v.temperature === null || v.temperature === undefined ? "-" : `${v.temperature.toFixed(1)} °C`),
  );
}

async function refreshFleet() {
  try {
    const { nodes, note } = await getJSON("/api/nodes");
    $("nodes").tBodies[0].replaceChildren(...nodes.map(nodeRow));
    const online = nodes.filter((n) => n.online).length;
    $("fleet-summary").textContent = `${online} of ${nodes.length} online`;
    $("targets").replaceChildren(
      ...["any", "all", ...nodes.map((n) => n.name), ...new Set(nodes.flatMap((n) => (n.tags || []).map((t) => `tag:${t}`)))]
        .map((t) => el("option", { value: t })));
    $("fleet-error").hidden = true;
    $("server-status").textContent = note || "";
  } catch (err) {
    $("fleet-error").textContent = err.message;
    $("fleet-error").hidden = false;
    $("server-status").textContent = "server not answering";
  }
}

// -- Jobs ------------------------------------------------------------------------------------

function jobRow(j) {
  const live = j.state === "running" || j.state === "queued"; // a queued job's tab waits
  return el("tr", { "data-job": j.job_id },
    el("td", {}, el("a", { href: "#", class: "job-link", onclick: (e) => { e.preventDefault(); showJob(j.job_id); } }, j.job_id.slice(0, 12))),
    el("td", {}, j.node || "-"),
    el("td", { class: `state state-${j.state}` }, j.state),
    el("td", {}, statusText(j)),
    el("td", {}, when(j.queued_at)),
    el("td", {}, when(j.ended_at)),
    el("td", {},
      live ? el("button", { class: "attach", onclick: () => openTab(j.job_id, false) }, "Attach") : null,
      live ? el("button", { class: "watch", onclick: () => openTab(j.job_id, true) }, "Watch") : null,
      live ? el("button", { class: "cancel", onclick: () => cancelJob(j.job_id) }, "Cancel") : null,
      ENDED.has(j.state) ? el("button", { class: "log", onclick: () => openTab(j.job_id, true, "", true) }, "Log") : null),
  );
}

function jobFilter() {
  const params = new URLSearchParams();
  for (const name of ["node", "state", "since"]) {
    const value = $(`filter-${name}`).value.trim();
    if (value) params.set(name, value);
  }
  return params.toString();
}

async function refreshJobs() {
  try {
    const { jobs } = await getJSON(`/api/jobs?${jobFilter()}`);
    $("jobs").tBodies[0].replaceChildren(...jobs.map(jobRow));
    $("jobs-error").hidden = true;
  } catch (err) {
    $("jobs-error").textContent = err.message;
    $("jobs-error").hidden = false;
  }
}

async function showJob(jobId) {
  const box = $("job-detail");
  try {
    const { job, history } = await getJSON(`/api/jobs/${encodeURIComponent(jobId)}`);
    box.replaceChildren(
      el("h3", {}, `Job ${job.job_id}`),
      el("p", {}, `node ${job.node || "-"} · target ${job.target || "-"} · `,
        el("span", { class: `state-${job.state}` }, job.state), ` ${statusText(job)}`),
      el("table", { id: "history" },
        el("thead", {}, el("tr", {}, el("th", {}, "Seq"), el("th", {}, "State"), el("th", {}, "At"), el("th", {}, "Detail"))),
        el("tbody", {}, ...history.map((h) => el("tr", {},
          el("td", {}, h.seq), el("td", { class: `state-${h.state}` }, h.state), el("td", {}, when(h.at)), el("td", {}, h.detail || ""))))));
  } catch (err) {
    box.replaceChildren(el("p", { class: "error" }, err.message));
  }
  box.hidden = false;
}

export async function cancelJob(jobId) {
  const response = await fetch(`/api/jobs/${encodeURIComponent(jobId)}/cancel`, {
    method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" }, body: "{}",
  });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) $("jobs-error").textContent = body.error;
  $("jobs-error").hidden = response.ok;
  refreshJobs();
}

// -- Start a job -----------------------------------------------------------------------------

function startBody() {
  const env = {};
  for (const line of $("start-env").value.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`environment: ${line.slice(0, 40)} is not KEY=VALUE`);
    env[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  const body = { command: $("start-command").value, target: $("start-target").value.trim(), env };
  if ($("start-cwd").value.trim()) body.cwd = $("start-cwd").value.trim();
  for (const name of ["timeout", "deadline"]) {
    const value = $(`start-${name}`).value;
    if (value) body[name] = Number(value);
  }
  const size = TerminalTab.guessSize($("terminals"));
  body.rows = size.rows;
  body.cols = size.cols;
  return body;
}

async function startJob(event) {
  event.preventDefault();
  const error = $("start-error");
  error.hidden = true;
  try {
    const response = await fetch("/api/jobs", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(startBody()),
    });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    if (!body.fans_out) openTab(body.job_id, false, body.offline ? "offline: waiting in its queue" : "");
    for (const child of body.children || []) openTab(child, false);
    refreshJobs();
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
}

// -- Views and tabs --------------------------------------------------------------------------

function show(view) {
  for (const button of document.querySelectorAll("#tabs .tab")) {
    button.classList.toggle("active", button.dataset.view === view);
  }
  $("view-fleet").hidden = view !== "fleet";
  $("view-jobs").hidden = view !== "jobs";
  for (const [id, tab] of tabs) tab.show(view === `term:${id}`);
}

// a fanned-out job's executions (JOB.NODE) share their first digits: name them by node
const tabName = (jobId) => (jobId.includes(".") ? `${jobId.split(".")[1]} ${jobId.slice(0, 6)}` : jobId.slice(0, 8));

function openTab(jobId, readOnly, note = "", log = false) {
  if (!tabs.has(jobId)) {
    const button = el("button", { class: "tab", "data-view": `term:${jobId}`, "data-job": jobId },
      `${log ? "log " : readOnly ? "watch " : ""}${tabName(jobId)}`);
    const close = el("span", { class: "close", title: "close" }, "×");
    close.addEventListener("click", (e) => { e.stopPropagation(); closeTab(jobId); });
    button.append(close);
    button.addEventListener("click", () => show(`term:${jobId}`));
    $("tabs").append(button);
    tabs.set(jobId, new TerminalTab($("terminals"), jobId, { readOnly, note, button, log }));
  }
  show(`term:${jobId}`);
}

function closeTab(jobId) {
  const tab = tabs.get(jobId);
  if (!tab) return;
  tab.dispose();
  tabs.delete(jobId);
  document.querySelector(`#tabs [data-job="${CSS.escape(jobId)}"]`)?.remove();
  show("jobs");
}

function applyTheme() {
  const dark = localStorage.getItem("runlet.theme") === "dark";
  document.documentElement.classList.toggle("dark", dark);
  for (const tab of tabs.values()) tab.applyLook();
}

function fontStep(step) {
  const size = Math.min(28, Math.max(8, TerminalTab.fontSize() + step));
  localStorage.setItem("runlet.fontSize", String(size));
  for (const tab of tabs.values()) tab.applyLook();
}

window.addEventListener("beforeunload", (event) => {
  if ([...tabs.values()].some((t) => t.attached)) {
    event.preventDefault();
    event.returnValue = "";
  }
});

for (const button of document.querySelectorAll("#tabs .tab")) {
  button.addEventListener("click", () => show(button.dataset.view));
}
$("theme").addEventListener("click", () => {
  localStorage.setItem("runlet.theme", document.documentElement.classList.contains("dark") ? "light" : "dark");
  applyTheme();
});
$("font-down").addEventListener("click", () => fontStep(-1));
$("font-up").addEventListener("click", () => fontStep(1));
$("job-filter").addEventListener("input", () => refreshJobs());
$("job-filter").addEventListener("submit", (e) => { e.preventDefault(); refreshJobs(); });
$("start-form").addEventListener("submit", startJob);
applyTheme();
refreshFleet();
refreshJobs();
setInterval(() => { refreshFleet(); refreshJobs(); }, POLL_MS);
document.body.dataset.ready = "1";

// The status page: polls the API every 2 s, renders with textContent only (log lines are untrusted text).
// With a token configured, the API answers 401 until the operator enters it; it lives in sessionStorage.
// Buttons are enabled only where the action would do something (the supervisor's answers in core/machine.py).
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "llm-supervisor-token";
const EVENTS_SHOWN = 25;
const LOG_LINES_SHOWN = 60;
let selected = null;
let refreshing = false;
// Per model: the newest events seen and the last seq, so each poll asks only for what is new
// (a full timeline can hold 10,000 events; reading it every 2 s would load the supervisor).
const timelines = new Map();

class NeedToken extends Error {}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, "0")}h`;
}

function clock(unix) {
  return unix === null || unix === undefined ? "-" : new Date(unix * 1000).toLocaleTimeString();
}

function showMessage(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

function askForToken(reason) {
  document.getElementById("token-reason").textContent = reason;
  document.getElementById("token-form").hidden = false;
}

async function api(method, path) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { method, headers, cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
  if (response.status === 401) {
    askForToken(`This supervisor needs a token: ${detail}`);
    throw new NeedToken(detail);
  }
  if (!response.ok) throw new Error(detail);
  return body;
}

// Why an action would be a no-op in this state (the button is then disabled with this as its tooltip), or null.
function pointless(action, state, desired) {
  const live = state === "starting" || state === "healthy" || state === "unhealthy";
  if (action === "start" && (live || (state === "stopping" && desired === "running"))) return `already ${state}`;
  if (action === "stop" && (state === "stopped" || (state === "stopping" && desired === "stopped"))) {
    return `already ${state}`;
  }
  if (action === "restart" && state === "stopped") return "stopped: use start";
  if (action === "restart" && state === "stopping") return "stopping: wait, or use start";
  return null;
}

function actionButton(action, state, desired) {
  const button = el("button", action);
  button.type = "button";
  button.dataset.action = action;
  const why = pointless(action, state, desired);
  button.disabled = why !== null;
  if (why !== null) button.title = why;
  return button;
}

function actionButtons(model) {
  const cell = el("td");
  for (const action of ["start", "stop", "restart"]) {
    const button = actionButton(action, model.state, model.desired);
    button.dataset.model = model.id;
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      act(action, model.id);
    });
    cell.append(button);
  }
  return cell;
}

function modelRow(model) {
  const row = el("tr");
  row.dataset.model = model.id;
  if (model.id === selected) row.classList.add("selected");
  row.addEventListener("click", () => { selected = model.id; refresh(); });
  const stateCell = el("td");
  stateCell.append(el("span", model.state, `state state-${model.state}`));
  if (model.desired === "stopped" && model.state !== "stopped") stateCell.append(el("span", " (stopping)", "muted"));
  const limit = model.max_restarts === null ? "∞" : model.max_restarts;
  const health = model.is_healthy ? "ok" : (model.health_message || "-");
  const failure = el("td", model.failure_cause || "-", "cause");
  if (model.failure_advice) failure.append(el("div", model.failure_advice, "advice"));
  // Smart recovery's changes to the configured args (adapt: true); an operator's start puts them back.
  for (const change of model.adaptations || []) {
    failure.append(el("div", `adapted ${change.flag} ${change.from ?? "default"} → ${change.to} (${change.reason})`, "adapted"));
  }
  row.append(
    el("td", model.id, "id"),
    stateCell,
    el("td", model.desired, "desired"),
    el("td", model.pid === null ? "-" : model.pid, "pid"),
    el("td", duration(model.uptime_seconds), "uptime"),
    el("td", `${model.restart_count}/${limit}`, "restarts"),
    el("td", health, "health"),
    failure,
    actionButtons(model),
  );
  return row;
}

// A model of several replicas shows one row per replica under its own, each with its own restart.
function replicaRows(model) {
  if (!model.replicas || model.replicas.length < 2) return [];
  return model.replicas.map((replica) => {
    const row = el("tr", null, "replica");
    const port = replica.port === null ? "" : ` :${replica.port}`;
    const stateCell = el("td");
    stateCell.append(el("span", replica.state, `state state-${replica.state}`));
    if (replica.draining) stateCell.append(el("span", " (draining)", "muted"));
    const health = (replica.is_healthy ? "ok" : "-") + (replica.in_flight ? `, ${replica.in_flight} in flight` : "");
    const restart = actionButton("restart", replica.state, model.desired);
    restart.dataset.replica = String(replica.index);
    restart.addEventListener("click", (event) => {
      event.stopPropagation();
      act("restart", model.id, `?replica=${replica.index}`);
    });
    const actions = el("td");
    actions.append(restart);
    row.append(
      el("td", `replica ${replica.index}${port}`, "id"),
      stateCell,
      el("td", "", "desired"),
      el("td", replica.pid === null ? "-" : replica.pid, "pid"),
      el("td", "", "uptime"),
      el("td", String(replica.restart_count), "restarts"),
      el("td", health, "health"),
      el("td", replica.failure_cause || "-", "cause"),
      actions,
    );
    return row;
  });
}

function renderModels(models) {
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...models.flatMap((model) => [modelRow(model), ...replicaRows(model)]));
  if (models.length === 0) {
    const row = el("tr");
    row.append(el("td", "No models configured."));
    body.append(row);
  }
}

async function renderDetails() {
  const section = document.getElementById("details");
  if (!selected) { section.hidden = true; return; }
  const id = encodeURIComponent(selected);
  const known = timelines.get(selected) || { lastSeq: 0, events: [] };
  const [fresh, logs] = await Promise.all([
    api("GET", `/api/llm/models/${id}/events?since=${known.lastSeq}&limit=${EVENTS_SHOWN}`),
    api("GET", `/api/llm/models/${id}/logs?lines=${LOG_LINES_SHOWN}`),
  ]);
  const events = known.events.concat(fresh).slice(-EVENTS_SHOWN);
  timelines.set(selected, { lastSeq: events.length ? events[events.length - 1].seq : known.lastSeq, events });
  document.getElementById("details-id").textContent = selected;
  document.getElementById("events").replaceChildren(...events.slice().reverse().map((e) => {
    // The state is named only where the event did not already say it ("healthy", not "healthy → healthy").
    const label = e.kind === e.state ? e.kind : `${e.kind} → ${e.state}`;
    let text = `${clock(e.time)}  ${e.replica ? `[replica ${e.replica}] ` : ""}${label}`;
    if (e.detail) text += ` (${e.detail})`;
    if (e.reason) text += ` [${e.reason}]`;
    const item = el("li", null, `event event-${e.kind}`);
    item.append(el("span", `#${e.seq}`, "seq"), ` ${text}`);  // the event's own number, never clipped
    return item;
  }));
  section.hidden = false;  // before the log pane is measured: a hidden pane has no scroll height
  showLogs(logs.lines.map((line) => line.replace(/\n$/, "")).join("\n"));
}

// The log pane follows new lines only while the reader is at its bottom (or has just picked this model):
// someone scrolled up into a traceback keeps their place across refreshes.
function showLogs(text) {
  const pre = document.getElementById("logs");
  const switched = pre.dataset.model !== selected;
  if (!switched && pre.textContent === text) return;
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
  pre.textContent = text;
  pre.dataset.model = selected;
  if (switched || atBottom) pre.scrollTop = pre.scrollHeight;
}

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const data = await api("GET", "/api/llm/models");
    const ids = data.models.map((m) => m.id);
    if (!ids.includes(selected)) selected = ids.length ? ids[0] : null;
    renderModels(data.models);
    await renderDetails();
    document.getElementById("token-form").hidden = true;
    document.getElementById("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (!(error instanceof NeedToken)) {
      document.getElementById("refreshed").textContent = `cannot reach the supervisor: ${error.message}`;
    }
  } finally {
    refreshing = false;
  }
}

async function act(action, id, query = "") {
  try {
    const result = await api("POST", `/api/llm/models/${encodeURIComponent(id)}/${action}${query}`);
    showMessage(result.message, false);
  } catch (error) {
    if (!(error instanceof NeedToken)) showMessage(`${action} ${id}: ${error.message}`, true);
  }
  await refresh();
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token-input");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  refresh();
});

refresh();
setInterval(refresh, REFRESH_MS);

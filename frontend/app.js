// The TelOS page: chat with objects (and ROBIN), watch the kernel's stages, inspect objects,
// search memory, administer personas and backups. Plain ES module, no build step; talks to the
// server over /ws (JSON frames) and /api (REST), both relative to where the page is served.

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
};
const json = (v) => JSON.stringify(v);
const token = () => localStorage.getItem("telos-token") || "";

// ---------- REST ----------
async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (token()) headers.authorization = "Bearer " + token();
  const res = await fetch("/api" + path, { method, headers, body: body === undefined ? undefined : json(body) });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) throw new Error((data && data.message) || res.statusText);
  return data;
}

// ---------- syntax highlighting (JavaScript, enough for methods) ----------
const KEYWORDS = new Set("function return const let var if else for while do break continue new typeof instanceof in of throw try catch finally this null undefined true false switch case default".split(" "));
function highlight(code) {
  const pre = el("pre", { class: "code" });
  const re = /(\/\/[^\n]*|\/\*[\s\S]*?\*\/)|("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`(?:\\.|[^`\\])*`)|(\b\d+(?:\.\d+)?\b)|([A-Za-z_$][\w$]*)/g;
  let last = 0, m;
  while ((m = re.exec(code))) {
    if (m.index > last) pre.append(code.slice(last, m.index));
    const [t] = m;
    if (m[1]) pre.append(el("span", { class: "tok-c" }, t));
    else if (m[2]) pre.append(el("span", { class: "tok-s" }, t));
    else if (m[3]) pre.append(el("span", { class: "tok-n" }, t));
    else if (KEYWORDS.has(t)) pre.append(el("span", { class: "tok-k" }, t));
    else pre.append(t);
    last = m.index + t.length;
  }
  pre.append(code.slice(last));
  return pre;
}

// ---------- WebSocket ----------
const pending = new Map(); // id -> chat entry
const listeners = new Set(); // frame handlers (inspector live updates, ...)
let ws = null, wsOpen = false, retry = 500, everConnected = false, seq = 0;
const outbox = [];

function setConn(text, cls) { const c = $("#conn"); c.textContent = text; c.className = "conn " + cls; }

function connect() {
  // The token never goes into the URL (URLs land in logs and history): the first frame carries it.
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  ws = new WebSocket(url);
  ws.onopen = () => {
    wsOpen = true; retry = 500;
    if (token()) ws.send(json({ type: "auth", token: token() }));
    setConn(everConnected ? "reconnected" : "connected", "ok");
    if (everConnected) systemLine("Reconnected to the server.");
    everConnected = true;
    for (const f of subscriptionsFrames()) ws.send(json(f));
    while (outbox.length) ws.send(outbox.shift());
  };
  ws.onclose = () => {
    if (wsOpen) systemLine("Lost the connection to the server; reconnecting…");
    wsOpen = false;
    setConn("reconnecting…", "down");
    for (const [id, entry] of pending) { entry.fail("the connection closed before the answer came"); pending.delete(id); }
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 5000);
  };
  ws.onerror = () => {};
  ws.onmessage = (e) => {
    let f;
    try { f = JSON.parse(e.data); } catch { return; }
    const entry = f.id !== undefined ? pending.get(f.id) : undefined;
    if (entry) entry.frame(f);
    for (const l of listeners) l(f);
  };
}
function wsSend(frame) {
  const text = json(frame);
  if (wsOpen) ws.send(text); else outbox.push(text);
}

// ---------- chat ----------
const transcript = $("#transcript");
const history = JSON.parse(localStorage.getItem("telos-history") || "[]");
let historyAt = history.length;

function scrollDown() { transcript.scrollTop = transcript.scrollHeight; }
function systemLine(text) {
  transcript.append(el("div", { class: "entry" }, el("div", { class: "logline" }, text)));
  scrollDown();
}

// With kernel_approval = "ask": the method, ALFRED's review and the trial's answer wait for a
// person. A reason given with Reject goes back to BRICK on the next attempt.
function approvalForm(f) {
  const d = f.detail || {};
  const reason = el("input", { type: "text", class: "reason", placeholder: "why (optional; BRICK sees it next time)", "aria-label": "reason for rejecting" });
  const status = el("span", { class: "muted", role: "status" });
  const decide = async (verb) => {
    for (const b of form.querySelectorAll("button")) b.disabled = true;
    status.textContent = verb === "approve" ? "approving…" : "rejecting…";
    try {
      await api("POST", "/runs/" + encodeURIComponent(f.run) + "/" + verb, { by: "page", reason: reason.value });
      status.textContent = verb === "approve" ? "approved" : "rejected";
    } catch (e) {
      status.textContent = "could not " + verb + ": " + e.message;
      for (const b of form.querySelectorAll("button")) b.disabled = false;
    }
  };
  const form = el("div", { class: "approval", role: "group", "aria-label": "approve the generated method" },
    el("div", {}, "review: " + (d.review || "")),
    el("div", {}, "trial answered: " + json(d.trial)),
    el("div", { class: "muted" }, "rejected automatically after " + d.timeout_secs + " s without an answer"),
    el("div", { class: "row" },
      el("button", { type: "button", class: "approve-btn", onclick: () => decide("approve") }, "Approve"),
      reason,
      el("button", { type: "button", class: "reject-btn", onclick: () => decide("reject") }, "Reject"),
      status));
  return form;
}

function stageBody(f) {
  const d = f.detail || {};
  const body = el("div", { class: "body" });
  if (Array.isArray(d.memories)) {
    if (!d.memories.length) body.append(el("div", { class: "muted" }, "no similar memories"));
    for (const m of d.memories) body.append(el("div", {}, el("span", { class: "badge" }, "#" + m.id), " ", el("span", { class: "muted" }, "distance " + Number(m.distance).toFixed(3)), " ", m.text));
  }
  if (d.code) body.append(highlight(d.code));
  if (d.verdict) body.append(el("div", {}, d.verdict + (d.reason ? ": " + d.reason : "")));
  if (f.stage === "approve" && f.status === "started") body.append(approvalForm(f));
  if (f.stage === "approve" && d.by) body.append(el("div", { class: "muted" }, "approved by " + d.by));
  if ("value" in d) body.append(el("div", {}, "value: " + json(d.value)));
  if (d.description) body.append(el("div", {}, d.description));
  if (d.error) body.append(el("div", { class: "answer err" }, d.error));
  if (d.reuse !== undefined) body.append(el("div", { class: "muted" }, "reusing memory #" + d.reuse));
  if (d.model) body.append(el("div", { class: "muted" }, "model " + d.model));
  return body;
}

function chatEntry(text) {
  const id = "c" + (++seq);
  const answer = el("div", { class: "answer" });
  const spinnerLine = el("div", { class: "pending" }, el("span", { class: "spinner", "aria-hidden": "true" }), "waiting…");
  const stages = el("div", { class: "stages" });
  const timeline = el("details", { class: "timeline", open: "" }, el("summary", {}, "kernel stages"), stages);
  timeline.hidden = true;
  const logs = el("div");
  const root = el("div", { class: "entry", "data-id": id }, el("div", { class: "me" }, text), timeline, logs, spinnerLine, answer);
  transcript.append(root);
  scrollDown();
  const started = performance.now();
  let kernel = false;
  const tick = setInterval(() => {
    const s = ((performance.now() - started) / 1000).toFixed(1);
    spinnerLine.lastChild.textContent = (kernel ? "the kernel is learning… " : "waiting… ") + s + " s";
  }, 100);
  const rows = new Map();
  const begun = new Map(); // stage key -> at_ms of its start
  // A kernel run remembers what it learned after the answer: its entry keeps listening for the
  // learn stage until that ends.
  let finished = false, learning = false;
  const release = () => { if (finished && !learning) pending.delete(id); };
  const done = () => { finished = true; clearInterval(tick); spinnerLine.remove(); release(); scrollDown(); };
  const entry = {
    id,
    frame(f) {
      if (f.type === "stage") {
        kernel = true;
        if (f.stage === "install" && f.status === "done") learning = true;
        if (f.stage === "learn" && f.status !== "started") { learning = false; setTimeout(release, 0); }
        timeline.hidden = false;
        const key = f.stage + (f.detail && f.detail.reuse !== undefined ? ":reuse" : "") + (f.stage === "repair" ? ":" + (f.detail.round || 0) : "");
        let row = rows.get(key);
        if (!row) {
          row = el("details", { class: "stage" });
          rows.set(key, row);
          stages.append(row);
        }
        row.className = "stage " + f.status;
        const mark = f.status === "done" ? "✓" : f.status === "failed" ? "✗" : "…";
        if (f.status === "started") begun.set(key, f.at_ms);
        const took = f.status === "started" ? "" : (f.at_ms - (begun.get(key) ?? f.at_ms)) + " ms";
        row.replaceChildren(
          el("summary", {}, el("span", { class: "mark" }, mark), f.stage, el("span", { class: "ms" }, took)),
          stageBody(f));
        if (f.status === "failed" || (f.stage === "approve" && f.status === "started")) row.open = true;
        scrollDown();
      } else if (f.type === "log") {
        logs.append(el("div", { class: "logline" }, "log: " + f.text));
      } else if (f.type === "result") {
        if (f.persona === "ROBIN") { answer.className = "answer robin"; answer.textContent = f.value; }
        else { answer.className = "answer ok"; answer.textContent = json(f.value); }
        if (kernel) timeline.open = false;
        done();
      } else if (f.type === "error") {
        answer.className = "answer err";
        answer.setAttribute("role", "alert");
        answer.textContent = f.code + (f.stage ? " (" + f.stage + ")" : "") + ": " + f.message;
        done();
      }
    },
    fail(message) {
      if (finished) { learning = false; release(); return; }
      answer.className = "answer err"; answer.textContent = "error: " + message; done();
    },
  };
  pending.set(id, entry);
  return entry;
}

function sendLine(text) {
  const entry = chatEntry(text);
  const frame = { type: "line", id: entry.id, text };
  if (inspected) frame.target = inspected;
  wsSend(frame);
}

$("#chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text) return;
  if (history[history.length - 1] !== text) history.push(text);
  localStorage.setItem("telos-history", json(history.slice(-200)));
  historyAt = history.length;
  input.value = "";
  sendLine(text);
});
$("#chat-input").addEventListener("keydown", (e) => {
  if (e.key === "ArrowUp" && historyAt > 0) { historyAt--; e.target.value = history[historyAt]; e.preventDefault(); }
  else if (e.key === "ArrowDown") {
    historyAt = Math.min(history.length, historyAt + 1);
    e.target.value = history[historyAt] || "";
    e.preventDefault();
  }
});

// ---------- views ----------
function show(view) {
  for (const b of document.querySelectorAll("nav button")) b.setAttribute("aria-current", b.dataset.view === view ? "page" : "false");
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + view;
  if (view === "inspector") loadObjects();
  if (view === "memory") { loadMemoryStats(); drawMap(); }
  if (view === "admin") loadAdmin();
  if (view === "chat") $("#chat-input").focus();
  if (location.hash !== "#" + view) history_replace(view);
}
function history_replace(view) { window.history.replaceState(null, "", "#" + view); }
for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => show(b.dataset.view));
document.addEventListener("keydown", (e) => {
  if (e.altKey && ["1", "2", "3", "4"].includes(e.key)) {
    show(["chat", "inspector", "memory", "admin"][Number(e.key) - 1]);
    e.preventDefault();
  }
});

// ---------- inspector ----------
let inspected = null;
let objects = [];
// The managers' long work (backups, verifications, reindexing) streams `progress` frames to
// their watchers: the page watches them always, and draws bars in the Admin view.
const MANAGERS = ["backup_manager", "memory_manager"];
function subscriptionsFrames() {
  const watch = MANAGERS.map((target) => ({ type: "subscribe", target }));
  return inspected && !MANAGERS.includes(inspected) ? [...watch, { type: "subscribe", target: inspected }] : watch;
}
const jobBars = new Map(); // job id -> row
listeners.add((f) => {
  if (f.type !== "progress") return;
  let row = jobBars.get(f.job);
  if (!row) {
    row = el("div", { class: "job", "data-job": f.job, "data-kind": f.kind });
    jobBars.set(f.job, row);
    $("#jobs").append(row);
  }
  const pct = f.total > 0 ? Math.round(100 * f.done / f.total) : 0;
  // 0 of 0: no measure yet, an indeterminate bar.
  const bar = f.total === 0 && f.state === "running"
    ? el("progress", { "aria-label": f.kind + " progress" })
    : el("progress", { max: String(Math.max(f.total, 1)), value: String(f.done), "aria-label": f.kind + " progress" });
  row.replaceChildren(el("span", { class: "mono" }, f.kind), " ", el("span", { class: "muted" }, f.phase), " ", bar, " ",
    el("span", { class: "pct" }, f.state !== "running" ? f.state : f.total > 0 ? f.done + "/" + f.total + " (" + pct + "%)" : "…"));
  row.className = "job " + f.state;
  if (f.state !== "running") setTimeout(() => { row.remove(); jobBars.delete(f.job); }, 4000);
});

async function loadObjects() {
  try { objects = await api("GET", "/objects?limit=1000"); } catch (e) { objects = []; }
  renderObjectList();
}
function renderObjectList() {
  const q = $("#obj-filter").value.trim().toLowerCase();
  const list = $("#obj-list");
  list.replaceChildren(...objects
    .filter((o) => !q || o.oid.toLowerCase().includes(q) || (o.name || "").toLowerCase().includes(q))
    .map((o) => el("li", {}, el("button", { "data-oid": o.oid, "aria-current": o.oid === inspected ? "true" : "false", onclick: () => inspect(o.oid) },
      o.name || o.oid, " ", el("span", { class: "muted mono" }, o.oid)))));
}
$("#obj-filter").addEventListener("input", renderObjectList);

// Renders overlap (a write's own refresh, the `changed` frame it causes): only the newest
// applies, and what the person is typing into the new-slot form survives a refresh.
let inspectSeq = 0;
async function inspect(oid) {
  if (inspected && inspected !== oid && !MANAGERS.includes(inspected)) wsSend({ type: "unsubscribe", target: inspected });
  if (inspected !== oid) wsSend({ type: "subscribe", target: oid });
  inspected = oid;
  renderObjectList();
  const box = $("#obj-detail");
  const mine = ++inspectSeq;
  let obj;
  try { obj = await api("GET", "/objects/" + encodeURIComponent(oid)); }
  catch (e) { if (mine === inspectSeq) box.replaceChildren(el("p", { class: "answer err" }, e.message)); return; }
  if (mine !== inspectSeq || inspected !== oid) return;
  const form = $("#add-slot");
  const typing = form && form.dataset.oid === oid
    ? { name: form.elements[0].value, value: form.elements[1].value, focus: document.activeElement && form.contains(document.activeElement) ? document.activeElement.getAttribute("aria-label") : null }
    : null;
  const chain = el("div", { class: "chain" }, "parents: ",
    ...(obj.parents || []).flatMap((p, i) => [i ? ", " : "", el("a", { tabindex: "0", role: "link", onclick: () => inspect(p), onkeydown: (e) => { if (e.key === "Enter") inspect(p); } }, p)]));
  const values = el("tbody");
  const methods = el("div");
  for (const [name, value] of Object.entries(obj.slots || {})) {
    if (value && typeof value === "object" && value.method) methods.append(methodView(oid, name, value.method));
    else values.append(slotRow(oid, name, value));
  }
  const addName = el("input", { "aria-label": "new slot name", placeholder: "slot name" });
  const addValue = el("input", { "aria-label": "new slot value (JSON)", placeholder: "value as JSON, e.g. 42 or \"text\"" });
  const addForm = el("form", { class: "row", id: "add-slot", "data-oid": oid }, addName, addValue, el("button", {}, "Set slot"));
  if (typing) { addName.value = typing.name; addValue.value = typing.value; }
  addForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    await setSlot(oid, addName.value.trim(), addValue.value);
  });
  box.replaceChildren(
    el("h2", {}, obj.name || oid, " ", el("span", { class: "muted mono" }, oid)),
    chain,
    el("p", { class: "row" },
      el("button", { id: "clone-btn", onclick: async () => { const r = await api("POST", "/objects/" + encodeURIComponent(oid) + "/clone", {}); await loadObjects(); inspect(r.oid); } }, "Clone"),
      el("button", { id: "delete-btn", onclick: async () => {
        if (!confirm("Delete " + oid + "? This cannot be undone.")) return;
        try { await api("DELETE", "/objects/" + encodeURIComponent(oid)); inspected = null; box.replaceChildren(el("p", { class: "muted" }, "Deleted " + oid + ".")); loadObjects(); }
        catch (e) { box.prepend(el("p", { class: "answer err", role: "alert" }, e.message)); }
      } }, "Delete")),
    el("h3", {}, "Slots"),
    el("table", { id: "slots" }, el("thead", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "value"), el("th", {}))), values),
    addForm,
    el("h3", {}, "Methods"),
    methods.childNodes.length ? methods : el("p", { class: "muted" }, "No methods of its own."));
  if (typing && typing.focus) { const f = addForm.querySelector(`[aria-label="${typing.focus}"]`); if (f) f.focus(); }
}

async function setSlot(oid, name, text) {
  let value;
  try { value = JSON.parse(text); } catch { value = text; }
  try { await api("PUT", "/objects/" + encodeURIComponent(oid) + "/slots/" + encodeURIComponent(name), { value }); }
  catch (e) { $("#obj-detail").prepend(el("p", { class: "answer err", role: "alert" }, e.message)); return false; }
  // The form the person typed into may have been redrawn meanwhile: clear the current one.
  const form = $("#add-slot");
  if (form && form.dataset.oid === oid && form.elements[0].value.trim() === name) form.reset();
  inspect(oid);
  return true;
}

function slotRow(oid, name, value) {
  const cell = el("td", { class: "value" }, json(value));
  const edit = el("button", { "aria-label": "edit " + name, onclick: () => {
    const input = el("input", { value: json(value), "aria-label": "value of " + name });
    const form = el("form", { class: "row" }, input, el("button", {}, "Save"));
    form.addEventListener("submit", (e) => { e.preventDefault(); setSlot(oid, name, input.value); });
    cell.replaceChildren(form);
    input.focus();
  } }, "Edit");
  return el("tr", { "data-slot": name }, el("td", { class: "mono" }, name), cell, el("td", {}, edit));
}

function methodView(oid, name, m) {
  const more = el("div");
  const d = el("details", { class: "method", "data-method": name },
    el("summary", {}, el("span", { class: "mono" }, name), " ", el("span", { class: "badge" }, m.origin || "user")),
    highlight(m.source), more);
  d.addEventListener("toggle", async () => {
    if (!d.open || more.childNodes.length) return;
    try {
      const full = await api("GET", "/objects/" + encodeURIComponent(oid) + "/methods/" + encodeURIComponent(name));
      if (full.provenance) more.append(el("details", {}, el("summary", {}, "provenance"), el("pre", {}, JSON.stringify(full.provenance, null, 2))));
      const hist = full.history || [];
      more.append(el("p", { class: "muted" }, hist.length + " earlier version" + (hist.length === 1 ? "" : "s")));
      for (const v of hist.slice().reverse()) more.append(el("div", { class: "muted" }, new Date(v.installed_at * 1000).toLocaleString() + " · " + v.origin), highlight(v.source));
      if (hist.length) more.append(el("button", { onclick: async () => { await api("POST", "/objects/" + encodeURIComponent(oid) + "/methods/" + encodeURIComponent(name) + "/rollback", {}); inspect(oid); } }, "Roll back to the previous version"));
    } catch (e) { more.append(el("p", { class: "answer err" }, e.message)); }
  });
  return d;
}

listeners.add((f) => {
  if (f.type === "changed" && f.target === inspected) {
    if (f.deleted) { $("#obj-detail").replaceChildren(el("p", { class: "muted" }, f.target + " was deleted.")); inspected = null; loadObjects(); }
    else inspect(f.target);
  }
});

// ---------- memory ----------
async function loadMemoryStats() {
  try {
    const h = await api("GET", "/health");
    const m = h.memory || {};
    $("#mem-stats").textContent = (m.records ?? "?") + " memories · index " + (m.index_at_start || "?") + " · " + (m.unsaved ?? 0) + " unsaved changes · embedder " + (m.embedder || "?");
  } catch (e) { $("#mem-stats").textContent = "memory status unavailable: " + e.message; }
}
$("#mem-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const q = $("#mem-q").value.trim();
  const out = $("#mem-results");
  if (!q) return;
  out.replaceChildren(el("li", { class: "muted" }, el("span", { class: "spinner" }), "searching…"));
  try {
    const hits = await api("GET", "/memory/search?k=10&q=" + encodeURIComponent(q));
    out.replaceChildren(...(hits.length ? hits.map((h) => el("li", { class: "hit" },
      el("div", {}, el("span", { class: "badge" }, h.kind), " ", h.text),
      el("div", { class: "d" }, "distance " + Number(h.distance).toFixed(3), h.owner ? " · owner " : "", h.owner ? el("a", { class: "chain", onclick: () => { show("inspector"); inspect(h.owner); } }, h.owner) : "", h.selector ? " · " + h.selector : "")))
      : [el("li", { class: "muted" }, "No memories yet.")]));
  } catch (err) { out.replaceChildren(el("li", { class: "answer err" }, err.message)); }
});

// ---------- memory map ----------
// Memories as points (their vectors' first two principal components, computed by the server),
// coloured by kind, outlined by owner; hover shows the text, a click opens the owner; the
// memories the latest kernel run recalled are ringed.
let lastRecall = new Set();
listeners.add((f) => {
  if (f.type === "stage" && f.stage === "recall" && f.status === "done" && f.detail && Array.isArray(f.detail.memories)) {
    lastRecall = new Set(f.detail.memories.map((m) => m.id));
  }
});
const KIND_COLOURS = { method: "#8cc8ff", object: "#8fe39a", note: "#f5c26b" };
const hue = (s) => { let h = 0; for (const c of s) h = (h * 31 + c.charCodeAt(0)) % 360; return h; };
function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
async function drawMap() {
  $("#map-status").textContent = "projecting…";
  let map;
  try { map = await api("GET", "/memory/map?limit=2000"); }
  catch (e) { $("#map-status").textContent = "could not draw the map: " + e.message; return; }
  const pts = map.points;
  $("#map-status").textContent = pts.length + " memories · the axes show " + Math.round(100 * (map.explained[0] + map.explained[1])) + "% of their variance";
  const W = 900, H = 420, pad = 24;
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (W - 2 * pad);
  const sy = (y) => H - pad - (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5) * (H - 2 * pad);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "map", role: "img", "aria-label": pts.length + " memories" });
  for (const p of pts) {
    const recalled = lastRecall.has(p.id);
    const dot = svg("circle", {
      cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: recalled ? 8 : 5,
      fill: KIND_COLOURS[p.kind] || "#ccc", stroke: p.owner ? `hsl(${hue(p.owner)} 70% 55%)` : "none", "stroke-width": 2,
      class: "pt" + (recalled ? " recalled" : ""), "data-id": p.id, "data-owner": p.owner, tabindex: "0",
      onclick: () => { if (p.owner) { show("inspector"); inspect(p.owner); } },
      onkeydown: (e) => { if (e.key === "Enter" && p.owner) { show("inspector"); inspect(p.owner); } },
    }, svg("title", {}, `#${p.id} ${p.kind}${p.owner ? " · " + p.owner : ""}${p.selector ? "." + p.selector : ""}: ${p.text}`));
    plot.append(dot);
  }
  $("#mem-map").replaceChildren(plot);
  $("#map-legend").replaceChildren(...Object.entries(KIND_COLOURS).flatMap(([k, c]) => [el("span", { class: "swatch", style: "background:" + c }), " " + k + "  "]),
    lastRecall.size ? "· ringed: recalled by the latest kernel run · " : "", "outline: owner · click a point to open its owner");
}
$("#map-btn").addEventListener("click", drawMap);

// ---------- admin ----------
const fmtBytes = (n) => n > 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : n > 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";
async function loadAdmin() {
  try {
    const h = await api("GET", "/health");
    const facts = [["status", h.status], ["version", h.version], ["uptime", h.uptime_secs + " s"], ["objects", h.objects], ["live actors", h.live_actors],
      ["sequence", h.seq], ["database", h.database], ["memories", h.memory ? h.memory.records : "—"], ["embedder", h.personas ? (h.personas.embedder_loaded ? "loaded" : "not loaded yet") : "—"],
      ["models loaded", h.personas ? (h.personas.loaded_models || []).join(", ") || "none" : "—"]];
    $("#health").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  } catch (e) { $("#health").replaceChildren(el("dd", { class: "answer err" }, e.message)); }
  try {
    // Generated methods waiting for a person (kernel_approval = "ask"), whoever sent the message.
    const waiting = await api("GET", "/approvals");
    $("#approvals").replaceChildren(...(waiting.length ? waiting.map((r) => el("div", { class: "waiting", "data-run": r.run },
      el("div", {}, el("span", { class: "mono" }, r.receiver + "." + r.selector + "(" + r.args.map(json).join(", ") + ")"), " ",
        el("span", { class: "muted" }, "run " + r.run + " · asked " + new Date(r.asked_at).toLocaleTimeString())),
      highlight(r.code),
      approvalForm({ run: r.run, detail: { review: r.review, trial: r.trial, timeout_secs: r.timeout_secs } })))
      : [el("p", { class: "muted" }, "none")]));
  } catch (e) { $("#approvals").replaceChildren(el("p", { class: "answer err" }, e.message)); }
  try {
    const ps = await api("GET", "/personas");
    $("#personas tbody").replaceChildren(...ps.map((p) => el("tr", {}, el("td", {}, p.name), el("td", {}, p.backend), el("td", { class: "mono" }, p.model || "—"),
      el("td", {}, p.loaded ? "yes" : "no"), el("td", {}, p.answers),
      el("td", {}, el("button", { class: "unload", "aria-label": "unload " + p.name, onclick: async (e) => {
        const status = e.target.nextSibling;
        try {
          const r = await api("POST", "/personas/" + encodeURIComponent(p.name) + "/unload", {});
          status.textContent = r.unloaded ? " unloaded" : " nothing loaded";
          if (r.unloaded) loadAdmin();
        } catch (err) { status.textContent = " " + err.message; }
      } }, "Unload"), el("span", { class: "muted", role: "status" })))));
  } catch (e) { $("#personas tbody").replaceChildren(el("tr", {}, el("td", { class: "answer err" }, e.message))); }
  try {
    const bs = await api("GET", "/backups");
    // A backup or verification running now is listed first with its job; its bar is above.
    const running = (b) => el("tr", { class: "running" }, el("td", { class: "mono" }, b.id), el("td", {}, b.job.kind),
      el("td", { colspan: "4", class: "muted" }, "running: " + b.job.phase + (b.job.total > 0 ? " " + b.job.done + "/" + b.job.total : "")));
    $("#backups tbody").replaceChildren(...bs.map((b) => b.state === "running" ? running(b) : el("tr", {}, el("td", { class: "mono" }, b.id), el("td", {}, b.kind), el("td", {}, fmtBytes(b.size || 0)),
      el("td", {}, b.total_objects ?? ""), el("td", {}, b.verification ? (b.verification.ok ? "ok" : "FAILED") + " · " + new Date(b.verification.at).toLocaleString() : "never"),
      el("td", {}, el("button", { onclick: async (e) => { e.target.disabled = true; try { await api("POST", "/backups/" + encodeURIComponent(b.id) + "/verify", {}); } finally { loadAdmin(); } } }, "Verify")))));
  } catch (e) { $("#backups tbody").replaceChildren(el("tr", {}, el("td", { class: "answer err" }, e.message))); }
}
for (const [id, kind] of [["#backup-full", "full"], ["#backup-incr", "incremental"]]) {
  $(id).addEventListener("click", async () => {
    $("#backup-status").textContent = "running " + kind + " backup…";
    try { const m = await api("POST", "/backups", { kind }); $("#backup-status").textContent = "backup " + m.id + " written"; }
    catch (e) { $("#backup-status").textContent = "backup failed: " + e.message; }
    loadAdmin();
  });
}

// ---------- start ----------
connect();
show((location.hash || "#chat").slice(1) || "chat");

// ---------- admin token ----------
// Kept in this origin's localStorage; sent as "Authorization: Bearer" on REST calls and as the
// first WebSocket frame. Only needed when the server runs with TELOS_ADMIN_TOKEN.
$("#token-save").addEventListener("click", () => {
  const t = $("#token").value.trim();
  if (t) localStorage.setItem("telos-token", t); else localStorage.removeItem("telos-token");
  $("#token").value = "";
  $("#token-status").textContent = t ? "token saved; reconnecting" : "token cleared";
  if (ws) ws.close();
});

// caocrvfy label: one image at a time, the model's reading filled in, keyboard only.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { queue: [], pos: 0, model: null, busy: false, training: null };

async function api(path, body = null) {  // GET without a body, POST with one
  const init = body === null ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || (data.detail && JSON.stringify(data.detail)) || response.statusText);
  return data;
}

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

function showProgress(p) {
  const rate = p.per_minute == null ? "" : ` · ${p.per_minute.toFixed(1)} per minute`;
  $("progress").textContent = `${p.labelled} labelled · ${p.left} left` +
    (p.unreadable ? ` · ${p.unreadable} unreadable` : "") + rate + ` · suggestions by ${state.model}`;
}

function current() { return state.queue[state.pos]; }

function show() {
  const item = current();
  $("done").hidden = item !== undefined;
  $("answer").hidden = item === undefined;
  $("frame").hidden = item === undefined;
  if (item === undefined) {
    $("file").textContent = "";
    const skipped = state.queue.filter((i) => i.label == null).length;
    if (skipped) say(`${skipped} image(s) skipped in this tab: reload the page to see them again.`);
    return;
  }
  const img = $("captcha");
  img.onload = () => {  // whole-number scaling keeps the pixels sharp
    const scale = Math.max(1, Math.floor(Math.min(720 / img.naturalWidth, 240 / img.naturalHeight)));
    img.style.width = `${img.naturalWidth * scale}px`;
    img.style.height = `${img.naturalHeight * scale}px`;
  };
  img.src = `/image/${encodeURIComponent(item.file)}`;
  $("file").textContent = `${state.pos + 1} of ${state.queue.length} · ${item.file}`;
  const text = $("text");
  text.value = item.label === "\u0000unreadable" ? "" : (item.label ?? item.suggestion);
  $("suggested").textContent = item.label != null
    ? (item.label === "\u0000unreadable" ? "marked unreadable" : "saved")
    : `suggested, confidence ${(item.confidence * 100).toFixed(1)}%`;
  text.focus();
  text.setSelectionRange(text.value.length, text.value.length);  // caret at the end: fix the tail with Backspace
}

function move(step) {
  state.pos = Math.min(Math.max(0, state.pos + step), state.queue.length);
  say("");
  show();
}

async function act(work) {
  if (state.busy) return;
  state.busy = true;
  try { await work(); } catch (error) { say(error.message, true); } finally { state.busy = false; }
}

const actions = {
  save: () => act(async () => {
    const item = current();
    if (!item) return;
    const data = await api("/api/label", { file: item.file, label: $("text").value });
    item.label = data.label;
    showProgress(data.progress);
    move(1);
  }),
  unreadable: () => act(async () => {
    const item = current();
    if (!item) return;
    const data = await api("/api/unreadable", { file: item.file });
    item.label = "\u0000unreadable";
    showProgress(data.progress);
    move(1);
  }),
  undo: () => act(async () => {
    const data = await api("/api/undo", {});
    showProgress(data.progress);
    if (!data.file) { say("nothing to undo in this session"); return; }
    let index = state.queue.findIndex((i) => i.file === data.file);
    if (index < 0) {  // answered in another tab or before a reload
      state.queue.splice(state.pos, 0, { file: data.file, suggestion: data.suggestion, confidence: data.confidence });
      index = state.pos;
    }
    state.queue[index].label = data.unreadable ? "\u0000unreadable" : data.label;
    state.pos = index;
    show();
    say(`undone: ${data.file}`);
  }),
  train: () => act(async () => {
    const data = await api("/api/train", {});
    showTraining(data);
  }),
};

function showTraining(t) {
  state.training = t;
  $("train").disabled = t.state === "running";
  if (t.state === "running") {
    const fm = t.full_match == null ? "" : `, validation full-match ${(t.full_match * 100).toFixed(1)}%`;
    const left = `${Math.floor(t.seconds_left / 60)}:${String(t.seconds_left % 60).padStart(2, "0")} left`;
    $("training").textContent = `training ${t.run}: epoch ${t.epoch ?? 0}${fm}, ${left}`;
  } else {
    $("training").textContent = t.message;
  }
}

function drawCurve(points) {
  const svg = $("curve");
  const W = 320, H = 160, L = 34, B = 22, T = 8, R = 8;
  const maxX = Math.max(10, ...points.map((p) => p.labels));
  const x = (v) => L + (v / maxX) * (W - L - R), y = (v) => H - B - v * (H - B - T);
  let out = `<line x1="${L}" y1="${y(0)}" x2="${W - R}" y2="${y(0)}" stroke="#d0d7de"/>`;
  for (const v of [0, 0.5, 1]) {
    out += `<line x1="${L}" y1="${y(v)}" x2="${W - R}" y2="${y(v)}" stroke="#eef1f4"/>` +
      `<text x="${L - 4}" y="${y(v) + 3}" text-anchor="end">${v * 100}%</text>`;
  }
  out += `<text x="${L}" y="${H - 6}">0</text><text x="${W - R}" y="${H - 6}" text-anchor="end">${maxX} labels</text>`;
  if (points.length) {
    out += `<polyline fill="none" stroke="#0b63ce" stroke-width="2" points="${points.map((p) => `${x(p.labels)},${y(p.accuracy)}`).join(" ")}"/>`;
    points.forEach((p, i) => {
      const changed = i > 0 && p.model !== points[i - 1].model;
      out += `<circle cx="${x(p.labels)}" cy="${y(p.accuracy)}" r="${changed ? 4 : 2.5}" fill="${changed ? "#b42318" : "#0b63ce"}">` +
        `<title>${p.labels} labels: ${(p.accuracy * 100).toFixed(0)}% of ${p.count} right (${p.model})</title></circle>`;
    });
  } else {
    out += `<text x="${W / 2}" y="${H / 2}" text-anchor="middle">after 10 labels</text>`;
  }
  svg.innerHTML = out;
}

function showSkipped(skipped) {
  $("skipped-box").hidden = !skipped.length;
  $("skipped-title").textContent = `${skipped.length} file(s) not shown`;
  $("skipped").innerHTML = "";
  for (const s of skipped) {
    const li = document.createElement("li");
    li.textContent = `${s.file}: ${s.reason}`;
    $("skipped").append(li);
  }
}

function showStatus(data) {
  state.model = data.model;
  showProgress(data.progress);
  showTraining(data.training);
  drawCurve(data.curve);
  showSkipped(data.skipped);
}

async function load() {
  const data = await api("/api/queue");
  state.queue = data.items.map((i) => ({ ...i, label: null }));
  state.pos = 0;
  showStatus(data);
  show();
}

async function poll() {
  try {
    const data = await api("/api/status");
    const newModel = data.model !== state.model;
    showStatus(data);
    if (newModel && !state.busy) {  // a training ended: the new model's suggestions, in its order
      await load();
      say(`suggestions now by ${data.model}`);
    }
  } catch (error) { /* the server may be restarting: try again at the next tick */ }
  setTimeout(poll, state.training && state.training.state === "running" ? 2000 : 5000);
}

$("answer").addEventListener("submit", (e) => { e.preventDefault(); actions.save(); });
$("train").addEventListener("click", () => actions.train());
document.addEventListener("keydown", (e) => {
  const key = e.key.toLowerCase();
  if (e.key === "Tab") { e.preventDefault(); move(e.shiftKey ? -1 : 1); }
  else if ((e.ctrlKey || e.metaKey) && key === "z") { e.preventDefault(); actions.undo(); }
  else if ((e.ctrlKey || e.metaKey) && key === "u") { e.preventDefault(); actions.unreadable(); }
  else if (e.altKey && key === "t") { e.preventDefault(); actions.train(); }
});

load().then(() => setTimeout(poll, 5000)).catch((error) => say(`cannot load the queue: ${error.message}`, true));

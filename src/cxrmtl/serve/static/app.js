/* cxrmtl triage page: the worklist, uploads, the viewer. Plain JS, same-origin requests only, no dependencies.
   Server data is written with textContent only (never innerHTML), so nothing a study carries can run as code. */
"use strict";

const REFRESH_MS = 5000;
const state = { status: "unread", studies: [], selected: null, study: null, shown: null, heat: null, info: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    const error = new Error(body && body.error ? body.error.message : `HTTP ${response.status}`);
    error.status = response.status;
    error.code = body && body.error ? body.error.code : null;
    throw error;
  }
  return { status: response.status, body };
}

function toast(message, isError = false) {
  const box = $("toast");
  box.textContent = message;
  box.classList.toggle("error", isError);
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 5000);
}

const fmtP = (p) => (p === null || p === undefined ? "—" : p.toFixed(2));
const capital = (s) => s.charAt(0).toUpperCase() + s.slice(1);
const findingLabel = (name) => name.replace(/_/g, " ");

function fmtWait(minutes) {
  if (minutes < 1) return "< 1 min";
  if (minutes < 60) return `${Math.floor(minutes)} min`;
  const h = Math.floor(minutes / 60);
  const m = Math.floor(minutes % 60);
  return h < 48 ? `${h} h ${m} min` : `${Math.floor(h / 24)} d ${h % 24} h`;
}

function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function studyLabel(s) {
  if (s.dicom && s.dicom.patient_id) {
    return `${s.dicom.patient_id}${s.dicom.study_date ? " · " + s.dicom.study_date : ""}`;
  }
  return s.id.slice(0, 8);
}

/* ---------------------------------------------------------------------------------------------- model info */
async function loadInfo() {
  try {
    const { body } = await api("/v1/info");
    state.info = body;
    const m = body.model;
    const kind = (m.data_kind || "unknown").toUpperCase();
    $("model-line").textContent = `Model ${m.run} (${m.checkpoint}) · trained on ${kind} · ${m.backend} backend`;
    $("disclaimer").textContent = body.disclaimer;
    $("phantom-banner").hidden = m.data_kind !== "phantom";
  } catch (error) {
    $("model-line").textContent = `Model information unavailable: ${error.message}`;
  }
}

/* ---------------------------------------------------------------------------------------------- worklist */
async function refresh() {
  try {
    const { body } = await api(`/v1/studies?status=${state.status}&limit=200`);
    state.studies = body.studies;
    $("count-unread").textContent = body.counts.unread;
    $("count-read").textContent = body.counts.read;
    renderWorklist();
    const limit = body.upper_limit_minutes;
    const now = new Date().toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    $("refresh-line").textContent = `Updated ${now} · every ${REFRESH_MS / 1000} s` +
      (limit ? ` · upper limit ${limit} min` : "");
    const open = state.studies.find((s) => state.study && s.id === state.study.id);
    if (open) updateWaiting(open);
  } catch (error) {
    $("refresh-line").textContent = `Update failed: ${error.message}`;
  }
}

function renderWorklist() {
  const body = $("worklist-body");
  const focusedId = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.id : null;
  body.replaceChildren(...state.studies.map(studyRow));
  $("worklist-empty").hidden = state.studies.length > 0;
  if (focusedId) {
    const row = body.querySelector(`tr[data-id="${CSS.escape(focusedId)}"]`);
    if (row) row.focus();
  }
}

function studyRow(s) {
  const level = s.urgency.level;
  const read = s.status === "read";
  const top = s.urgency.top_finding;
  const finding = top
    ? el("td", { class: "finding-cell" }, findingLabel(top), el("span", { class: "p", text: fmtP(s.top_probability) }))
    : el("td", { class: "finding-cell" }, el("span", { class: "p", text: "no positive finding" }));
  const wait = el("td", { class: "num wait-cell" }, fmtWait(s.waiting_minutes));
  if (s.overdue) wait.append(el("span", { class: "chip", text: "overdue" }));
  const urgency = el("td", {}, el("span", { class: `badge ${level}`, text: level }));
  const label = `${read ? "Read" : "Rank " + s.rank}, ${level}` +
    (top ? `, ${findingLabel(top)} ${fmtP(s.top_probability)}` : ", no positive finding") +
    `, ${read ? "waited" : "waiting"} ${fmtWait(s.waiting_minutes)}${s.overdue ? ", overdue" : ""}`;
  const row = el("tr", {
    class: `${level}${read ? " is-read" : ""}`, tabindex: 0, "data-id": s.id, "aria-label": label,
    "aria-selected": state.selected === s.id ? "true" : "false",
  },
  el("td", { class: read ? "num read-mark" : "num", text: read ? "✓" : s.rank }), urgency, finding, wait,
  el("td", { class: "study-cell" }, el("span", { class: "id", text: studyLabel(s) })));
  row.addEventListener("click", () => openStudy(s.id));
  row.addEventListener("keydown", (event) => onRowKey(event, row, s.id));
  return row;
}

function onRowKey(event, row, id) {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    openStudy(id);
  } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    event.preventDefault();
    const next = event.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
    if (next) next.focus();
  }
}

function selectTab(status) {
  state.status = status;
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-selected", tab.dataset.status === status ? "true" : "false");
  }
  refresh();
}

/* ---------------------------------------------------------------------------------------------- viewer */
async function openStudy(id) {
  state.selected = id;
  for (const row of $("worklist-body").children) {
    row.setAttribute("aria-selected", row.dataset.id === id ? "true" : "false");
  }
  try {
    const { body } = await api(`/v1/studies/${encodeURIComponent(id)}`);
    state.study = body;
    history.replaceState(null, "", `#study=${id}`);
    renderViewer(body);
  } catch (error) {
    toast(`Could not open the study: ${error.message}`, true);
  }
}

function updateWaiting(s) {
  const waited = s.status === "read" ? `waited ${fmtWait(s.waiting_minutes)}` : `waiting ${fmtWait(s.waiting_minutes)}`;
  const parts = [`Received ${fmtTime(s.received)}`, waited];
  if (s.dicom && s.dicom.study_date) parts.push(`study date ${s.dicom.study_date}`);
  if (s.image) parts.push(`${s.image.format.toUpperCase()} ${s.image.width}×${s.image.height}`);
  if (s.read_at) parts.push(`read ${fmtTime(s.read_at)}${s.reader ? " by " + s.reader : ""}`);
  $("study-meta").textContent = parts.join(" · ");
}

function renderViewer(s) {
  $("viewer-empty").hidden = true;
  $("viewer-body").hidden = false;
  const who = s.dicom && s.dicom.patient_id ? `Patient ${s.dicom.patient_id}` : `Study ${s.id.slice(0, 8)}`;
  $("study-title").textContent = s.rank ? `${who} · rank ${s.rank}` : who;
  updateWaiting(s);
  const badge = $("study-badge");
  badge.className = `badge ${s.urgency.level}`;
  badge.textContent = s.urgency.level;
  const button = $("mark-read");
  button.disabled = s.status === "read";
  button.textContent = s.status === "read" ? "Read ✓" : "Mark as read";
  const image = $("study-image");
  if (image.getAttribute("src") !== s.links.image) image.src = s.links.image;
  image.alt = `Chest X-ray, ${who}`;
  if (state.shown !== s.id) {
    state.shown = s.id;
    setHeat(null);  // a new study starts without a heatmap; the same study (after "mark as read") keeps its own
  }
  renderFindings(s);
}

function renderFindings(s) {
  const findings = Object.entries(s.result.findings || {});
  findings.sort((a, b) => b[1].probability - a[1].probability);
  $("findings-body").replaceChildren(...findings.map(([name, point]) => findingRow(s, name, point)));
  const method = s.result.threshold_method;
  const calibrated = s.result.calibrated ? "calibrated on validation" : "not calibrated";
  $("findings-note").textContent = method
    ? `Sorted by probability (${calibrated}). Positive = probability at or above the threshold chosen on the ` +
      `validation split (${method}). The worklist ranks by urgency at its more sensitive operating point ` +
      `(90% sensitivity on validation), so a critical finding can rank a study first before its call here is ` +
      `positive. Heatmaps: class activation maps (HiResCAM), where the model looked.`
    : "This run has no thresholds (run `cxrmtl evaluate`): probabilities only; urgency uses p ≥ 0.5.";
  renderOther(s.result);
}

function findingRow(s, name, point) {
  const positive = point.positive === true;
  const fill = el("span", { class: "bar-fill" });
  fill.style.width = `${Math.round(point.probability * 100)}%`;
  const track = el("span", { class: "bar-track", "aria-hidden": "true" }, fill);
  if (point.threshold !== null && point.threshold !== undefined) {
    const mark = el("span", { class: "bar-threshold" });
    mark.style.left = `calc(${(point.threshold * 100).toFixed(1)}% - 1px)`;
    track.append(mark);
  }
  const call = point.positive === null || point.positive === undefined
    ? el("span", { class: "call-neg", text: "n/a" })
    : el("span", { class: positive ? "call-pos" : "call-neg", text: positive ? "Positive" : "—" });
  const toggle = el("button", {
    type: "button", class: "heat-toggle", "aria-pressed": state.heat === name ? "true" : "false",
    "data-finding": name, "aria-label": `Heatmap for ${findingLabel(name)}`, text: "Map",
  });
  toggle.addEventListener("click", () => setHeat(state.heat === name ? null : name));
  return el("tr", { class: positive ? "positive" : "" },
    el("td", { text: findingLabel(name) }),
    el("td", {}, el("span", { class: "bar" }, track, el("span", { class: "bar-value", text: fmtP(point.probability) }))),
    el("td", { class: "num", text: fmtP(point.threshold) }),
    el("td", {}, call),
    el("td", {}, toggle));
}

function renderOther(result) {
  const items = [];
  if (result.abnormal) items.push(["Abnormal", `${fmtP(result.abnormal.probability)} (threshold ${fmtP(result.abnormal.threshold)})`]);
  if (result.age_years !== undefined) items.push(["Age (model)", `${Math.round(result.age_years)} y`]);
  if (result.sex) items.push(["P(female)", fmtP(result.sex.p_female)]);
  if (result.view) items.push(["P(AP view)", fmtP(result.view.p_ap)]);
  $("other-outputs").replaceChildren(...items.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

function setHeat(name) {
  state.heat = name;
  const layer = $("heatmap-layer");
  for (const button of document.querySelectorAll(".heat-toggle")) {
    button.setAttribute("aria-pressed", button.dataset.finding === name ? "true" : "false");
  }
  if (!name || !state.study) {
    layer.hidden = true;
    layer.removeAttribute("src");
    $("image-caption").textContent = "Heatmap off";
    return;
  }
  $("image-caption").textContent = `Computing the heatmap for ${findingLabel(name)}…`;
  layer.hidden = true;
  layer.onload = () => {
    if (state.heat !== name) return;
    layer.hidden = false;
    $("image-caption").textContent = `Heatmap: ${findingLabel(name)} (class activation map: where the model looked, not a lesion outline)`;
  };
  layer.onerror = () => {
    if (state.heat !== name) return;
    $("image-caption").textContent = "Heatmap unavailable";
    toast(`Heatmap for ${findingLabel(name)} could not be computed`, true);
  };
  layer.src = `${state.study.links.heatmaps[name]}?mode=layer`;
}

async function markRead() {
  if (!state.study) return;
  const button = $("mark-read");
  button.disabled = true;
  try {
    const { body } = await api(`/v1/studies/${encodeURIComponent(state.study.id)}/read`, { method: "POST" });
    state.study = { ...state.study, ...body, rank: null };
    renderViewer(state.study);
    toast("Marked as read");
    $("study-title").focus();
    refresh();
  } catch (error) {
    button.disabled = false;
    toast(`Could not mark as read: ${error.message}`, true);
  }
}

/* ---------------------------------------------------------------------------------------------- uploads */
async function uploadFiles(files) {
  const log = $("upload-log");
  for (const file of files) {
    const line = el("li", { text: `${file.name}: scoring…` });
    log.prepend(line);
    const form = new FormData();
    form.append("file", file);
    try {
      const { status, body } = await api("/v1/studies", { method: "POST", body: form });
      line.className = "ok";
      line.textContent = status === 201
        ? `${file.name}: added (${body.urgency.level})`
        : `${file.name}: already in the worklist`;
    } catch (error) {
      line.className = "fail";
      line.textContent = `${file.name}: not added: ${error.message}`;
    }
    await refresh();
  }
}

function setupUploads() {
  const zone = $("dropzone");
  const input = $("file-input");
  $("choose-files").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    uploadFiles(Array.from(input.files));
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    uploadFiles(Array.from(event.dataTransfer.files));
  });
  // A file dropped anywhere else must not make the browser navigate away from the worklist.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

/* ---------------------------------------------------------------------------------------------- start */
function start() {
  $("study-title").setAttribute("tabindex", "-1");
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => selectTab(tab.dataset.status));
  }
  $("mark-read").addEventListener("click", markRead);
  setupUploads();
  loadInfo();
  refresh();
  setInterval(refresh, REFRESH_MS);
  const match = /study=([0-9a-f]{32})/.exec(location.hash);
  if (match) openStudy(match[1]);
}

document.addEventListener("DOMContentLoaded", start);

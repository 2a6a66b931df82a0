// breast-fusion-zoo viewer: patient list, OpenSeadragon slide view with heatmap / mask overlays, charts, MRI.
"use strict";

const state = {
  info: null, patients: [], detail: null, slideIndex: 0, viewer: null,
  items: { slide: null, heat: null, mask: null }, tilesLoaded: 0, heatLoaded: false, openToken: 0,
  mriSeq: null,
};
window.zoo = state;  // for the browser tests and the console

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, text) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};
const fmt = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json().catch(() => ({ detail: r.statusText }));
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}

function banner(text) {
  const b = $("#banner");
  b.textContent = text;
  b.hidden = !text;
}

// ---------------------------------------------------------------------------------------------- patient list
async function loadPatients() {
  const data = await getJSON("/api/patients");
  state.patients = data.patients;
  fillFilter("#filter-split", [...new Set(data.patients.map((p) => p.split))]);
  fillFilter("#filter-label", data.class_names);
  fillFilter("#filter-pred", data.class_names);
  renderList();
  $("#list-status").textContent = data.pending
    ? `${data.pending} of ${data.patients.length} predictions still being computed…`
    : `${data.patients.length} patients`;
  if (data.pending) setTimeout(loadPatients, 1500);
}

function fillFilter(sel, values) {
  const select = $(sel);
  if (select.options.length > 1) return;
  for (const v of values) select.appendChild(el("option", { value: v }, v));
}

function renderList() {
  const text = $("#filter-text").value.trim().toLowerCase();
  const split = $("#filter-split").value, label = $("#filter-label").value;
  const pred = $("#filter-pred").value, correct = $("#filter-correct").value;
  const body = $("#patients tbody");
  body.replaceChildren();
  for (const p of state.patients) {
    if (text && !p.patient_id.toLowerCase().includes(text)) continue;
    if (split && p.split !== split) continue;
    if (label && p.label !== label) continue;
    if (pred && p.predicted !== pred) continue;
    if (correct === "yes" && p.correct !== true) continue;
    if (correct === "no" && p.correct !== false) continue;
    const tr = el("tr", { "data-patient": p.patient_id });
    if (state.detail && state.detail.patient_id === p.patient_id) tr.classList.add("selected");
    tr.append(el("td", {}, p.patient_id), el("td", {}, p.split), el("td", {}, p.label || "–"));
    if (p.status === "ok") {
      tr.append(el("td", {}, p.predicted), el("td", {}, fmt(p.probability, 2)));
      const mark = el("td", { class: p.correct ? "ok" : "bad" }, p.correct === null ? "" : p.correct ? "✓" : "✗");
      tr.append(mark);
    } else {
      tr.append(el("td", { class: p.status === "error" ? "error" : "muted", title: p.error || "" },
        p.status === "error" ? "error" : "pending"), el("td"), el("td"));
    }
    tr.addEventListener("click", () => openPatient(p.patient_id));
    body.appendChild(tr);
  }
}

// ------------------------------------------------------------------------------------------------- patient
async function openPatient(pid) {
  $("#placeholder").hidden = true;
  $("#patient").hidden = false;
  $("#patient-title").textContent = `${pid}: computing…`;
  let d;
  try {
    d = await getJSON(`/api/patients/${encodeURIComponent(pid)}`);
  } catch (err) {
    $("#patient-title").textContent = `${pid}: ${err.message}`;
    return;
  }
  state.detail = d;
  renderList();
  const pr = d.prediction;
  let title = `${d.patient_id} (${d.split}) · true: ${d.label || "unknown"}`;
  if (pr.status === "ok") {
    title += ` · predicted: ${pr.predicted} (${fmt(pr.probabilities[pr.predicted], 2)}) `;
    title += pr.correct === null ? "" : pr.correct ? "✓ correct" : "✗ wrong";
  } else {
    title += ` · prediction failed: ${pr.error}`;
  }
  $("#patient-title").textContent = title;
  const notes = $("#missing");
  notes.replaceChildren(...d.missing.map((m) => el("div", {}, m)));
  if (pr.status === "ok") {
    for (const [sid, why] of Object.entries(pr.skipped_slides || {})) notes.appendChild(el("div", {}, `${sid}: ${why}`));
  }
  renderBars("#probs", pr.status === "ok" ? pr.probabilities : null, "no prediction");
  renderBars("#fusion", pr.status === "ok" ? pr.fusion_attention : null, "no fusion attention (one modality)");
  renderClinical(d.clinical);
  renderMri(d);
  renderTabs(d);
  renderGallery(d);
  await showSlide(0);
}

function renderBars(sel, values, empty) {
  const box = $(sel);
  box.replaceChildren();
  if (!values || !Object.keys(values).length) { box.appendChild(el("div", { class: "muted" }, empty)); return; }
  const top = Object.entries(values).reduce((a, b) => (b[1] > a[1] ? b : a))[0];
  const max = Math.max(1e-9, ...Object.values(values));
  for (const [name, v] of Object.entries(values)) {
    const row = el("div", { class: "bar-row" });
    const track = el("div", { class: "track" });
    const fill = el("div", { class: "fill" + (name === top ? " top" : "") });
    fill.style.width = `${(100 * v) / Math.max(max, sel === "#probs" ? 1 : max)}%`;
    track.appendChild(fill);
    row.append(el("span", { class: "name" }, name), track, el("span", { class: "value" }, fmt(v)));
    box.appendChild(row);
  }
}

function renderClinical(values) {
  const body = $("#clinical tbody");
  body.replaceChildren();
  for (const [k, v] of Object.entries(values)) {
    const tr = el("tr");
    tr.append(el("td", {}, k), el("td", {}, v === null ? "missing" : String(v)));
    body.appendChild(tr);
  }
}

// --------------------------------------------------------------------------------------------------- MRI
function renderMri(d) {
  const seqs = Object.keys(d.mri);
  const select = $("#mri-seq");
  select.replaceChildren(...seqs.map((s) => el("option", { value: s }, s)));
  $("#mri-missing").textContent = seqs.length ? "" : "no MRI for this patient";
  $("#mri-img").hidden = !seqs.length;
  $("#mri-slice").disabled = !seqs.length;
  if (seqs.length) setMriSeq(seqs.includes(state.mriSeq) ? state.mriSeq : seqs[0]);
}

function setMriSeq(seq) {
  const info = state.detail.mri[seq];
  state.mriSeq = seq;
  $("#mri-seq").value = seq;
  if (info.error) { $("#mri-missing").textContent = info.error; $("#mri-img").hidden = true; return; }
  const slider = $("#mri-slice");
  slider.max = info.num_slices - 1;
  slider.value = Math.floor(info.num_slices / 2);
  showMriSlice();
}

function showMriSlice() {
  const info = state.detail.mri[state.mriSeq];
  const k = Number($("#mri-slice").value);
  $("#mri-img").src = `${info.url}${k}.png`;
  $("#mri-index").textContent = `slice ${k + 1} / ${info.num_slices}`;
}

// ------------------------------------------------------------------------------------------------ slides
function renderTabs(d) {
  const tabs = $("#slide-tabs");
  tabs.replaceChildren();
  if (!d.slides.length) tabs.appendChild(el("span", { class: "muted" }, "no slides for this patient"));
  d.slides.forEach((s, i) => {
    const b = el("button", { "data-slide": s.slide_id }, s.slide_id + (s.error ? " (unreadable)" : ""));
    b.addEventListener("click", () => showSlide(i));
    tabs.appendChild(b);
  });
}

function renderGallery(d) {
  const box = $("#gallery");
  box.replaceChildren();
  if (!d.top_patches.length) { box.appendChild(el("div", { class: "muted" }, "no patch attention for this patient")); return; }
  for (const p of d.top_patches) {
    const fig = el("figure", { "data-rank": p.rank, title: `${p.slide_id} (${p.x}, ${p.y})` });
    fig.append(el("img", { src: p.url, alt: `patch ${p.rank + 1}` }),
      el("figcaption", {}, `#${p.rank + 1} ${fmt(p.attention, 3)}`));
    fig.addEventListener("click", () => goToPatch(p));
    box.appendChild(fig);
  }
}

function ensureViewer() {
  if (state.viewer) return state.viewer;
  if (window.OSD_LOAD_FAILED || !window.OpenSeadragon) {
    banner(state.info && state.info.openseadragon_missing ||
      "OpenSeadragon did not load: run `npm ci --prefix zoo/viewer/frontend` and restart the viewer");
    return null;
  }
  state.viewer = OpenSeadragon({
    id: "osd", prefixUrl: "/vendor/openseadragon/images/", drawer: "canvas", showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT", maxZoomPixelRatio: 4, visibilityRatio: 0.5, animationTime: 0.4,
    crossOriginPolicy: false, gestureSettingsMouse: { clickToZoom: false },
  });
  state.viewer.addHandler("tile-loaded", (e) => { if (e.tiledImage === state.items.slide) state.tilesLoaded += 1; });
  return state.viewer;
}

function opacity(sel) { return Number($(sel).value) / 100; }

async function showSlide(index) {
  const d = state.detail;
  state.slideIndex = index;
  document.querySelectorAll("#slide-tabs button").forEach((b, i) => b.classList.toggle("active", i === index));
  const viewer = ensureViewer();
  state.items = { slide: null, heat: null, mask: null };
  state.tilesLoaded = 0;
  state.heatLoaded = false;
  const token = ++state.openToken;
  const s = d.slides[index];
  $("#slide-error").hidden = true;
  $("#heat-missing").textContent = "";
  $("#mask-missing").textContent = "";
  $("#heat-legend").hidden = true;
  if (!viewer) return;
  viewer.close();
  if (!s) return;
  if (s.error) {
    $("#slide-error").textContent = s.error;
    $("#slide-error").hidden = false;
    return;
  }
  const slide = await addImage(s.dzi, { x: 0, y: 0, width: 1, opacity: 1 });
  if (token !== state.openToken) return;
  state.items.slide = slide;
  viewer.viewport.goHome(true);
  if (s.heatmap) {
    const stops = state.info.colormap.stops;
    $("#heat-legend .bar").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
    $("#heat-legend .lo").textContent = Number(s.heatmap.min).toPrecision(4);
    $("#heat-legend .hi").textContent = Number(s.heatmap.max).toPrecision(4);
    $("#heat-legend").title = `patch attention, min–max over this slide's ${s.heatmap.num_patches} patches`;
    $("#heat-legend").hidden = false;
    const heat = await addImage({ type: "image", url: s.heatmap.url, buildPyramid: false },
      { x: 0, y: 0, width: s.heatmap.width_fraction, opacity: opacity("#heat-opacity") });
    if (token !== state.openToken) return;
    state.items.heat = heat;
    const done = () => { state.heatLoaded = true; };
    if (heat.getFullyLoaded()) done(); else heat.addOnceHandler("fully-loaded-change", done);
  } else {
    $("#heat-missing").textContent = `no heatmap: ${s.heatmap_missing}`;
  }
  if (s.mask) {
    const mask = await addImage({ type: "image", url: s.mask.url, buildPyramid: false },
      { x: 0, y: 0, width: s.mask.width_fraction, opacity: opacity("#mask-opacity") });
    if (token !== state.openToken) return;
    state.items.mask = mask;
  } else {
    $("#mask-missing").textContent = "no ground-truth mask";
  }
}

function addImage(tileSource, opts) {
  return new Promise((resolve, reject) => {
    state.viewer.addTiledImage({
      tileSource, ...opts,
      success: (e) => resolve(e.item),
      error: (e) => { banner(`could not load ${typeof tileSource === "string" ? tileSource : tileSource.url}: ${e.message}`); reject(e); },
    });
  });
}

async function goToPatch(p) {
  const d = state.detail;
  const index = d.slides.findIndex((s) => s.slide_id === p.slide_id);
  if (index !== state.slideIndex) await showSlide(index);
  const item = state.items.slide;
  if (!item) return;
  const viewer = state.viewer;
  const centre = item.imageToViewportCoordinates(p.x + p.size / 2, p.y + p.size / 2);
  const width = d.slides[index].info.width;
  viewer.viewport.zoomTo(Math.min(viewer.viewport.getMaxZoom(), width / (4 * p.size)), null, true);
  viewer.viewport.panTo(centre, true);
  viewer.clearOverlays();
  viewer.addOverlay({ element: el("div", { class: "patch-box" }), location: item.imageToViewportRectangle(p.x, p.y, p.size, p.size) });
}

// ----------------------------------------------------------------------------------------------- wiring
function wire() {
  for (const id of ["#filter-text", "#filter-split", "#filter-label", "#filter-pred", "#filter-correct"]) {
    $(id).addEventListener("input", renderList);
  }
  $("#heat-opacity").addEventListener("input", () => { if (state.items.heat) state.items.heat.setOpacity(opacity("#heat-opacity")); });
  $("#mask-opacity").addEventListener("input", () => { if (state.items.mask) state.items.mask.setOpacity(opacity("#mask-opacity")); });
  $("#mri-seq").addEventListener("change", (e) => setMriSeq(e.target.value));
  $("#mri-slice").addEventListener("input", showMriSlice);
  $("#mri-img").addEventListener("wheel", (e) => {
    e.preventDefault();
    const s = $("#mri-slice");
    s.value = Math.max(0, Math.min(Number(s.max), Number(s.value) + (e.deltaY > 0 ? 1 : -1)));
    showMriSlice();
  }, { passive: false });
}

async function main() {
  wire();
  try {
    state.info = await getJSON("/api/info");
  } catch (err) { banner(`viewer API unreachable: ${err.message}`); return; }
  $("#model-info").textContent = `${state.info.entry} · ${state.info.backend} · ${state.info.num_patients} patients`;
  if (!state.info.openseadragon || window.OSD_LOAD_FAILED || !window.OpenSeadragon) {
    banner(state.info.openseadragon_missing || "OpenSeadragon did not load");
  }
  await loadPatients();
  const wanted = new URLSearchParams(location.search).get("patient");
  if (wanted) openPatient(wanted);
}

main();

// The demo page: sends the chosen image to POST /api/detect and draws the answer. Everything it shows comes
// from the API; the score threshold and the parent classes are applied here, without asking again.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

const state = {
  file: null,      // the image being shown
  url: null,       // its blob: URL
  result: null,    // the API's answer for it
  request: 0,      // number of the latest request; older answers are ignored
};

function setState(name, message) {
  document.body.dataset.state = name;
  $("status").textContent = message || "";
}

// One colour per class, the same on every image.
function colour(mid) {
  let h = 0;
  for (const c of mid) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h}, 85%, 48%)`;
}

async function describeModel() {
  try {
    const resp = await fetch("/api/health");
    const health = await resp.json();
    const m = health.model;
    const parents = m.parents ? `parent classes by the ${m.parents} rule` : "no parent classes";
    $("model-info").textContent =
      `Model ${m.name}: ${m.backbone}, ${m.classes} classes, images resized to ${m.min_side}/${m.max_side}; ` +
      `${parents}. Uploads up to ${health.limits.max_upload_mb} MB and ${health.limits.max_megapixels} megapixels.` +
      (health.status === "ok" ? "" : " The model is not ready.");
  } catch (err) {
    $("model-info").textContent = `The server did not answer (${err}).`;
  }
}

async function detect(file) {
  const request = ++state.request;
  state.file = file;
  setState("busy", `Detecting objects in ${file.name || "the image"}…`);
  const form = new FormData();
  form.append("image", file);
  const flip = $("flip").checked;
  let resp, body;
  try {
    resp = await fetch(`/api/detect?flip=${flip}&parents=true`, { method: "POST", body: form });
    const text = await resp.text();
    try { body = JSON.parse(text); } catch { body = { detail: text || resp.statusText }; }
  } catch (err) {
    if (request === state.request) setState("error", `The request failed: ${err}`);
    return;
  }
  if (request !== state.request) return;
  if (!resp.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    setState("error", `Error ${resp.status}: ${detail}`);
    return;
  }
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = URL.createObjectURL(file);
  state.result = body;
  const img = $("image");
  await new Promise((resolve) => {
    img.onload = img.onerror = resolve;
    img.src = state.url;
  });
  if (request !== state.request) return;
  $("result").hidden = false;
  render();
}

function shownBoxes() {
  const r = state.result;
  const threshold = Number($("threshold").value);
  const boxes = r.detections.map((d) => ({ ...d, kind: "leaf" }));
  if ($("parents").checked) boxes.push(...r.parents.map((d) => ({ ...d, kind: "parent" })));
  return boxes.filter((d) => d.score >= threshold).sort((a, b) => b.score - a.score);
}

function render() {
  const r = state.result;
  if (!r) return;
  const { width, height } = r.image;
  const boxes = shownBoxes();
  const svg = $("overlay");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const fontSize = Math.max(12, Math.max(width, height) / 45);
  const tbody = $("detections").tBodies[0];
  tbody.replaceChildren();
  boxes.forEach((d, i) => {
    const [x1, y1, x2, y2] = d.box_px;
    const g = document.createElementNS(SVG_NS, "g");
    g.setAttribute("class", `det ${d.kind}`);
    g.dataset.mid = d.mid;
    g.dataset.score = String(d.score);
    g.dataset.kind = d.kind;
    const rect = document.createElementNS(SVG_NS, "rect");
    rect.setAttribute("x", String(x1));
    rect.setAttribute("y", String(y1));
    rect.setAttribute("width", String(x2 - x1));
    rect.setAttribute("height", String(y2 - y1));
    rect.setAttribute("stroke", colour(d.mid));
    const text = document.createElementNS(SVG_NS, "text");
    text.setAttribute("x", String(x1 + 2));
    // parent boxes repeat a child's box: their caption goes inside, at the bottom, so both stay readable
    const below = d.kind === "parent" ? y2 - 4 : (y1 > fontSize ? y1 - 3 : y1 + fontSize);
    text.setAttribute("y", String(below));
    text.setAttribute("font-size", String(fontSize));
    text.textContent = `${d.name} ${d.score.toFixed(2)}`;
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = `${d.name} (${d.mid}) ${d.score}`;
    g.append(rect, text, title);
    svg.append(g);

    const row = tbody.insertRow();
    row.className = d.kind;
    row.dataset.mid = d.mid;
    row.dataset.score = String(d.score);
    row.dataset.kind = d.kind;
    row.insertCell().textContent = String(i + 1);
    const name = row.insertCell();
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour(d.mid);
    name.append(swatch, `${d.name}${d.kind === "parent" ? " (parent)" : ""}`);
    name.title = d.mid;
    const score = row.insertCell();
    score.className = "num";
    score.textContent = d.score.toFixed(3);
    const box = row.insertCell();
    box.className = "num";
    box.textContent = d.box_px.map((v) => v.toFixed(1)).join(", ");
  });
  const t = r.timing_ms;
  const shared = r.batch_images > 1 ? `, one call for ${r.batch_images} images` : "";
  $("timing").textContent =
    `Model ${t.model} ms (flip TTA ${r.flip ? "on" : "off"}${shared}), request ${t.total} ms; ` +
    `network input ${r.image.input[1]}x${r.image.input[0]} for the ${width}x${height} ${r.image.format} image.`;
  const total = r.detections.length + ($("parents").checked ? r.parents.length : 0);
  setState("done", `${boxes.length} of ${total} boxes at a score of at least ${$("threshold").value}.`);
}

function setup() {
  const input = $("file");
  input.addEventListener("change", () => { if (input.files.length) detect(input.files[0]); });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("dragging"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) detect(e.dataTransfer.files[0]);
  });
  const threshold = $("threshold");
  threshold.addEventListener("input", () => {
    $("threshold-value").textContent = Number(threshold.value).toFixed(2);
    render();
  });
  $("parents").addEventListener("change", render);
  $("flip").addEventListener("change", () => { if (state.file) detect(state.file); });
  describeModel();
}

setup();

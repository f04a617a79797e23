// The capserve console: Try, Registry and Label over the server's own JSON routes.
// Plain DOM, relative URLs (so it works under a path prefix), text only: nothing is parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, key: sessionStorage.getItem("capserve-key") || "", sites: [], models: [] };
window.capserveNextSampleMs = []; // Enter -> next sample shown, read by the browser tests

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value; else node.setAttribute(name, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function headers(extra) {
  return Object.assign(state.key ? { "X-API-Key": state.key } : {}, extra || {});
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({}, options, { headers: headers((options || {}).headers) }));
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    const body = type.includes("json") ? await response.json() : { error: { code: "http_" + response.status, message: response.statusText } };
    const error = new ApiError(response.status, body.error.code, body.error.message);
    if (response.status === 401) askForKey(error.message);
    throw error;
  }
  return type.includes("json") ? response.json() : response.blob();
}

function showError(node, error) {
  node.hidden = false;
  node.textContent = error.code ? `${error.code}: ${error.message}` : String(error);
}

// -- key ---------------------------------------------------------------------------------

function askForKey(message) {
  $("key-panel").hidden = false;
  $("key-message").textContent = message || "";
  $("key-input").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("key-input").value.trim();
  sessionStorage.setItem("capserve-key", state.key);
  $("key-input").value = "";
  $("key-panel").hidden = true;
  $("key-forget").hidden = false;
  start();
});

$("key-forget").addEventListener("click", () => {
  state.key = "";
  sessionStorage.removeItem("capserve-key");
  $("key-forget").hidden = true;
  askForKey("");
});

// -- pages -------------------------------------------------------------------------------

function route() {
  const [page, site] = (location.hash.slice(1) || "try").split("/");
  const name = ["try", "registry", "label"].includes(page) ? page : "try";
  for (const other of ["try", "registry", "label"]) {
    $("page-" + other).hidden = other !== name;
    $("nav-" + other).classList.toggle("active", other === name);
  }
  if (name === "registry") refreshRegistry();
  if (name === "label") openLabel(site ? decodeURIComponent(site) : null);
}

function fillSites(select, sites, chosen) {
  const current = chosen || select.value;
  select.replaceChildren(...sites.map((site) => el("option", { value: site }, site)));
  if (sites.includes(current)) select.value = current;
}

async function loadModels() {
  const doc = await api("v1/models");
  state.models = doc.models;
  state.sites = doc.models.filter((m) => m.state === "AVAILABLE").map((m) => m.site);
  fillSites($("try-site"), state.sites);
  return doc;
}

// -- Try ---------------------------------------------------------------------------------

let lastImage = null;

async function recognize(blob) {
  const site = $("try-site").value;
  lastImage = { blob, site };
  $("try-error").hidden = true;
  $("try-wrong-state").textContent = "";
  $("try-image").src = URL.createObjectURL(blob);
  const type = blob.type || "application/octet-stream";
  $("try-curl").textContent = curlCommand(site, type, blob.name || "captcha.png");
  try {
    const answer = await api(`recognize/${encodeURIComponent(site)}?details=preview`, {
      method: "POST", body: blob, headers: { "Content-Type": type },
    });
    showAnswer(answer);
  } catch (error) {
    $("try-result").hidden = true;
    showError($("try-error"), error);
  }
}

function confidenceClass(p) { return p >= 0.9 ? "good" : p >= 0.6 ? "fair" : "poor"; }

function showAnswer(answer) {
  $("try-result").hidden = false;
  $("try-text").textContent = answer.text || "(empty)";
  $("try-confidence").textContent = `confidence ${answer.confidence.toFixed(4)} · ${answer.site} v${answer.version}`;
  $("try-preview").src = answer.preview;
  $("try-chars").replaceChildren(...answer.characters.map((c) =>
    el("span", { class: confidenceClass(c.confidence), title: String(c.confidence) }, c.char, el("small", {}, c.confidence.toFixed(3)))));
  const rows = Object.entries(answer.timings_ms).map(([stage, ms]) => el("tr", {}, el("th", {}, stage), el("td", {}, ms.toFixed(3) + " ms")));
  rows.push(el("tr", {}, el("th", {}, "whole request, with the preview"), el("td", {}, answer.elapsed_ms.toFixed(3) + " ms")));
  $("try-timings").replaceChildren(...rows);
  $("try-wrong").hidden = !(state.info && state.info.samples);
  $("try-wrong").dataset.answer = answer.text;
}

function curlCommand(site, type, file) {
  const url = new URL(`recognize/${encodeURIComponent(site)}?details=true`, location.href).href;
  const key = state.key ? " -H \"X-API-Key: $CAPSERVE_KEY\"" : "";
  const quoted = "'" + file.replaceAll("'", "'\\''") + "'";
  return `curl --data-binary @${quoted} -H 'Content-Type: ${type}'${key} '${url}'`;
}

$("try-wrong").addEventListener("click", async () => {
  if (!lastImage) return;
  const answer = encodeURIComponent($("try-wrong").dataset.answer || "");
  try {
    const kept = await api(`v1/samples/${encodeURIComponent(lastImage.site)}?answer=${answer}`, {
      method: "POST", body: lastImage.blob, headers: { "Content-Type": lastImage.blob.type || "application/octet-stream" },
    });
    $("try-wrong-state").textContent = `kept as ${kept.sample}: label it on the Label page`;
  } catch (error) {
    $("try-wrong-state").textContent = `${error.code}: ${error.message}`;
  }
});

$("try-file").addEventListener("change", (event) => { if (event.target.files[0]) recognize(event.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) recognize(file);
});
document.addEventListener("paste", (event) => {
  if ($("page-try").hidden) return;
  const item = [...event.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (item) { event.preventDefault(); recognize(item.getAsFile()); }
});

// -- Registry ----------------------------------------------------------------------------

let registrySeen = "";

async function refreshRegistry() {
  if ($("page-registry").hidden || document.hidden) return;
  try {
    const doc = await loadModels();
    $("registry-error").hidden = true;
    const seen = JSON.stringify(doc);
    if (seen !== registrySeen) {
      registrySeen = seen;
      $("registry-list").replaceChildren(...doc.models.map(siteCard));
    }
    $("registry-updated").textContent = `${doc.models.length} sites · checked ${new Date().toLocaleTimeString()} (every 2 s)`;
  } catch (error) {
    showError($("registry-error"), error);
  }
}
setInterval(refreshRegistry, 2000);

function siteCard(model) {
  const facts = [];
  const fact = (name, value) => { if (value != null && value !== "") facts.push(el("dt", {}, name), el("dd", {}, String(value))); };
  if (model.state === "AVAILABLE") {
    const training = model.training || {};
    fact("serving version", model.version);
    fact("input", `${model.input.width}×${model.input.height}×${model.input.channels}`);
    fact("charset", model.charset);
    fact("decoder", model.decoder);
    fact("accuracy", training.accuracy != null ? (training.accuracy * 100).toFixed(2) + " %" : "not recorded");
    fact("size", (model.model_bytes / 1024).toFixed(1) + " KiB");
    fact("quantization", model.quantization || "none");
    fact("preprocess", model.preprocess.join(" → "));
  }
  const versions = el("table", { class: "versions" }, el("tr", {}, el("th", {}, "version"), el("th", {}, "state"), el("th", {}, "entry")));
  const reports = [];
  for (const v of model.versions) {
    versions.append(el("tr", {}, el("td", {}, v.version == null ? "?" : String(v.version)),
      el("td", {}, el("span", { class: "state " + v.state }, v.state)),
      el("td", {}, v.path, v.error ? el("div", { class: "error" }, v.error) : null)));
    if (v.report && v.report.length && v.version != null) reports.push(reportView(model.site, v));
  }
  return el("div", { class: "site", "data-site": model.site },
    el("h2", {}, model.site, " ", el("span", { class: "state " + model.state }, model.state)),
    el("dl", {}, ...facts), versions, ...reports);
}

function reportView(site, version) {
  const body = el("div", { class: "report" });
  const view = el("details", {}, el("summary", {}, `training report of v${version.version}`), body);
  view.addEventListener("toggle", async () => {
    if (!view.open || body.childElementCount) return;
    for (const name of version.report) {
      const path = `v1/models/${encodeURIComponent(site)}/${version.version}/report/${encodeURIComponent(name)}`;
      try {
        if (name.endsWith(".png")) body.append(el("img", { alt: name, src: URL.createObjectURL(await api(path)) }));
        else if (name.endsWith(".md") || name.endsWith(".txt")) body.append(el("pre", {}, await (await api(path)).text()));
      } catch (error) {
        body.append(el("p", { class: "error" }, `${name}: ${error.message}`));
      }
    }
  });
  return view;
}

// -- Label -------------------------------------------------------------------------------

const label = { site: null, items: [], index: 0, saved: {}, pressed: null };

async function openLabel(site) {
  const sites = state.info.label_site ? [state.info.label_site] : state.models.map((m) => m.site);
  fillSites($("label-site"), sites, site);
  site = $("label-site").value;
  if (!site) { $("label-message").textContent = "no site to label"; return; }
  if (label.site === site) { $("label-input").focus(); return; }
  label.site = site;
  $("label-message").textContent = "";
  try {
    const doc = await api(`v1/samples/${encodeURIComponent(site)}`);
    label.items = doc.samples.map((s) => ({ name: s.name, answer: s.answer, ready: null }));
    label.index = 0;
    label.saved = {};
    label.labelled = doc.labelled;
    $("label-command").textContent = doc.command;
    showSample();
  } catch (error) {
    label.site = null;
    $("label-message").textContent = `${error.code}: ${error.message}`;
  }
}

$("label-site").addEventListener("change", () => { location.hash = "label/" + encodeURIComponent($("label-site").value); });

function prepare(item) {
  // The image as a decoded blob URL and the guess: the stored answer, or the model's.
  if (!item.ready) {
    item.ready = (async () => {
      const blob = await api(`v1/samples/${encodeURIComponent(label.site)}/${encodeURIComponent(item.name)}`);
      const url = URL.createObjectURL(blob);
      const image = new Image();
      image.src = url;
      await image.decode().catch(() => {});
      let guess = item.answer;
      if (guess == null && state.sites.includes(label.site)) {
        guess = await api(`recognize/${encodeURIComponent(label.site)}`, { method: "POST", body: blob, headers: { "Content-Type": blob.type } })
          .then((a) => a.text, () => "");
      }
      return { url, guess: guess || "" };
    })();
  }
  return item.ready;
}

async function showSample() {
  const items = label.items, index = label.index;
  const done = Object.keys(label.saved).length;
  if (index >= items.length) {
    $("label-image").removeAttribute("src");
    $("label-input").value = "";
    $("label-progress").textContent = `${label.labelled + done} labelled`;
    $("label-message").textContent = items.length ? "Every sample is labelled or skipped." : "No unlabelled samples.";
    return;
  }
  for (const ahead of items.slice(index + 1, index + 4)) prepare(ahead).catch(() => {});
  let shown;
  try {
    shown = await prepare(items[index]);
  } catch (error) { // e.g. dropped from the folder since the list was read: go on with the next
    $("label-message").textContent = `${items[index].name}: ${error.code || ""} ${error.message}`;
    items.splice(index, 1);
    if (label.index === index) showSample();
    return;
  }
  if (label.index !== index) return; // moved on meanwhile
  $("label-image").src = shown.url;
  $("label-input").value = label.saved[items[index].name] ?? shown.guess;
  $("label-input").focus();
  $("label-input").select();
  $("label-progress").textContent = `${index + 1} of ${items.length} · ${label.labelled + done} labelled`;
  if (label.pressed != null) {
    const pressed = label.pressed;
    label.pressed = null;
    // after the frame that shows it is painted: a task queued from the frame's callback
    requestAnimationFrame(() => setTimeout(() => window.capserveNextSampleMs.push(performance.now() - pressed), 0));
  }
}

function save(item, text) {
  label.saved[item.name] = text;
  api(`v1/samples/${encodeURIComponent(label.site)}/${encodeURIComponent(item.name)}`, {
    method: "PUT", body: JSON.stringify({ label: text }), headers: { "Content-Type": "application/json" },
  }).catch((error) => {
    delete label.saved[item.name];
    $("label-message").textContent = `${item.name}: ${error.code}: ${error.message}`;
  });
}

$("label-input").addEventListener("keydown", (event) => {
  const item = label.items[label.index];
  if (event.key === "Enter" && item) {
    event.preventDefault();
    const text = $("label-input").value.trim();
    if (!text) { $("label-message").textContent = "type the label first, or Esc to skip"; return; }
    label.pressed = event.timeStamp; // when the key went down, on performance.now()'s clock
    save(item, text);
    label.index += 1;
    showSample();
  } else if (event.key === "Escape" && item) {
    event.preventDefault();
    label.index += 1;
    showSample();
  } else if (event.key === "ArrowUp" && label.index > 0) {
    event.preventDefault();
    label.index -= 1;
    showSample();
  }
});

// -- start -------------------------------------------------------------------------------

async function start() {
  try {
    state.info = await api("v1/console");
    if (state.info.keys && !state.key) { askForKey("This server needs an API key."); return; }
    $("key-forget").hidden = !state.key;
    if (state.info.label_site) location.hash = "label/" + encodeURIComponent(state.info.label_site);
    await loadModels().catch(() => {});
    route();
  } catch (error) {
    showError($("try-error"), error);
  }
}

window.addEventListener("hashchange", route);
start();

// The imago playground. It uses only the public API: GET /api/v1/images/models to fill the form,
// POST /api/v1/images with `stream: true` to generate, read as server-sent events from fetch's
// ReadableStream so partial images show as they arrive and Stop can abort the request (the server
// cancels the job when the connection closes).
"use strict";

const KEY_STORAGE = "imago.playground.apiKey";
const MODELS_PATH = "/api/v1/images/models";
const GENERATE_PATH = "/api/v1/images";
const MAX_SEED = 18446744073709551615n;

const $ = (id) => document.getElementById(id);
const ui = {};
let models = [];
/** The generation in flight: its AbortController, timings and what has arrived. */
let running = null;
let historyCount = 0;

document.addEventListener("DOMContentLoaded", () => {
  for (const id of [
    "key-panel", "api-key", "key-save", "form", "prompt", "negative", "model", "size-mode",
    "size-tier", "size-pixels", "resolution", "aspect-ratio", "width", "height", "steps",
    "guidance", "scheduler", "partials", "seed", "seed-random", "n", "format", "generate", "stop",
    "status", "error", "results", "previews", "history",
  ]) {
    ui[id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = $(id);
  }
  ui.apiKey.value = storedKey();
  if (storedKey()) ui.keyPanel.open = true;
  ui.keySave.addEventListener("click", () => {
    saveKey(ui.apiKey.value.trim());
    loadModels();
  });
  ui.apiKey.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      ui.keySave.click();
    }
  });
  ui.model.addEventListener("change", applyModel);
  ui.sizeMode.addEventListener("change", showSizeMode);
  ui.seedRandom.addEventListener("change", () => {
    ui.seed.disabled = ui.seedRandom.checked;
    if (!ui.seedRandom.checked && !ui.seed.value && ui.seed.dataset.last) {
      ui.seed.value = ui.seed.dataset.last;
    }
  });
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    generate();
  });
  ui.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      generate();
    }
  });
  ui.stop.addEventListener("click", () => running && running.controller.abort());
  showSizeMode();
  loadModels();
});

// ---------------------------------------------------------------------------------------------
// API key, errors, status
// ---------------------------------------------------------------------------------------------

function storedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch (_) {
    return "";
  }
}

function saveKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch (_) {
    // Storage disabled: the key still works for this page through the input field.
  }
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra);
  const key = ui.apiKey.value.trim() || storedKey();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

/** The message of an error response: the `error.message` of either API's envelope. */
async function errorMessage(response) {
  const text = await response.text();
  try {
    const error = JSON.parse(text).error;
    if (error && error.message) return `${error.message} (HTTP ${response.status})`;
  } catch (_) {
    // Not JSON: show the text itself.
  }
  return `HTTP ${response.status} ${response.statusText}${text ? ": " + text.slice(0, 500) : ""}`;
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.textContent = "";
  ui.error.hidden = true;
}

function setStatus(text, state) {
  ui.status.textContent = text;
  ui.status.dataset.state = state;
}

const seconds = (ms) => (ms / 1000).toFixed(2) + " s";

// ---------------------------------------------------------------------------------------------
// Models and the form
// ---------------------------------------------------------------------------------------------

async function loadModels() {
  clearError();
  let response;
  try {
    response = await fetch(MODELS_PATH, { headers: authHeaders() });
  } catch (e) {
    setStatus("Cannot reach the server.", "error");
    showError(String(e));
    return;
  }
  if (response.status === 401) {
    ui.keyPanel.open = true;
    ui.apiKey.focus();
    setStatus("This server requires an API key: enter it under “API key”.", "needs-key");
    showError(await errorMessage(response));
    return;
  }
  if (!response.ok) {
    setStatus("Cannot list the models.", "error");
    showError(await errorMessage(response));
    return;
  }
  models = (await response.json()).data || [];
  const previous = ui.model.value;
  ui.model.replaceChildren(
    ...models.map((m) => {
      const option = new Option(m.id, m.id);
      option.title = `${m.name}: ${m.description}`;
      return option;
    }),
  );
  if (models.some((m) => m.id === previous)) ui.model.value = previous;
  applyModel();
  setStatus(models.length ? "Ready." : "The server serves no model.", "idle");
}

function currentModel() {
  return models.find((m) => m.id === ui.model.value);
}

function capability(name) {
  const model = currentModel();
  return model && model.supported_parameters ? model.supported_parameters[name] : undefined;
}

/** Replaces a select's options, keeping its value when still offered. */
function fillSelect(select, values, first) {
  const previous = select.value;
  const options = values.map((v) => new Option(v, v));
  if (first) options.unshift(new Option(first, ""));
  select.replaceChildren(...options);
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

function setRange(input, name) {
  const range = capability(name);
  if (range && range.type === "range") {
    input.min = range.min;
    input.max = range.max;
  }
}

/** Fills the choices that depend on the model from its `supported_parameters`. */
function applyModel() {
  const values = (name) => {
    const c = capability(name);
    return c && c.type === "enum" ? c.values : [];
  };
  fillSelect(ui.resolution, values("resolution"));
  fillSelect(ui.aspectRatio, values("aspect_ratio"));
  fillSelect(ui.scheduler, values("scheduler"), "model default");
  fillSelect(ui.format, values("output_format"));
  setRange(ui.width, "width");
  setRange(ui.height, "height");
  setRange(ui.steps, "steps");
  setRange(ui.guidance, "guidance_scale");
  setRange(ui.n, "n");
  // FLUX takes no negative prompt and has one scheduler: those fields are off for it.
  ui.negative.disabled = capability("negative_prompt") === undefined;
  ui.scheduler.disabled = values("scheduler").length === 0;
}

function showSizeMode() {
  ui.sizeTier.hidden = ui.sizeMode.value !== "tier";
  ui.sizePixels.hidden = ui.sizeMode.value !== "pixels";
}

/** The form's settings, as the history keeps them. */
function formParams() {
  return {
    model: ui.model.value,
    prompt: ui.prompt.value,
    negative: ui.negative.value,
    sizeMode: ui.sizeMode.value,
    resolution: ui.resolution.value,
    aspectRatio: ui.aspectRatio.value,
    width: ui.width.value,
    height: ui.height.value,
    steps: ui.steps.value,
    guidance: ui.guidance.value,
    scheduler: ui.scheduler.value,
    partials: ui.partials.value,
    seedRandom: ui.seedRandom.checked,
    seed: ui.seed.value.trim(),
    n: ui.n.value,
    format: ui.format.value,
  };
}

function restoreParams(p) {
  if (models.some((m) => m.id === p.model)) {
    ui.model.value = p.model;
    applyModel();
  }
  ui.prompt.value = p.prompt;
  ui.negative.value = p.negative;
  ui.sizeMode.value = p.sizeMode;
  showSizeMode();
  for (const [field, value] of [
    ["resolution", p.resolution], ["aspectRatio", p.aspectRatio], ["width", p.width],
    ["height", p.height], ["steps", p.steps], ["guidance", p.guidance],
    ["scheduler", p.scheduler], ["partials", p.partials], ["n", p.n], ["format", p.format],
  ]) {
    ui[field].value = value;
  }
  ui.seedRandom.checked = p.seedRandom;
  ui.seed.disabled = p.seedRandom;
  ui.seed.value = p.seed;
  clearError();
  setStatus("Settings restored from the history.", "idle");
}

/** Number of a numeric field, or `undefined` when empty (the server's default then). */
function numberField(value) {
  return value === "" ? undefined : Number(value);
}

/**
 * The request body as JSON text. The seed is spliced in as written: seeds go up to 2^64 - 1,
 * past what a JavaScript number holds exactly.
 */
function requestBody(p) {
  const local = { partial_images: Number(p.partials) };
  if (p.negative && !ui.negative.disabled) local.negative_prompt = p.negative;
  if (p.steps !== "") local.steps = numberField(p.steps);
  if (p.guidance !== "") local.guidance_scale = numberField(p.guidance);
  if (p.scheduler) local.scheduler = p.scheduler;
  const body = {
    model: p.model,
    prompt: p.prompt,
    stream: true,
    provider: { options: { local } },
  };
  if (p.n !== "") body.n = numberField(p.n);
  if (p.format) body.output_format = p.format;
  if (p.sizeMode === "tier") {
    body.resolution = p.resolution;
    body.aspect_ratio = p.aspectRatio;
  } else if (p.sizeMode === "pixels") {
    body.size = `${p.width}x${p.height}`;
  }
  let json = JSON.stringify(body);
  if (!p.seedRandom) {
    if (!/^\d+$/.test(p.seed) || BigInt(p.seed) > MAX_SEED) {
      throw new Error(`Seed: a whole number from 0 to ${MAX_SEED}, or tick “random”.`);
    }
    json = json.slice(0, -1) + `,"seed":${BigInt(p.seed)}}`;
  }
  return json;
}

// ---------------------------------------------------------------------------------------------
// Generating
// ---------------------------------------------------------------------------------------------

async function generate() {
  if (running) return;
  clearError();
  if (!ui.model.value) {
    showError("No model to use: the model list did not load.");
    return;
  }
  const params = formParams();
  let body;
  try {
    body = requestBody(params);
  } catch (e) {
    showError(e.message);
    return;
  }
  for (const img of ui.previews.querySelectorAll("img")) URL.revokeObjectURL(img.src);
  ui.results.replaceChildren();
  ui.previews.replaceChildren();
  const run = {
    controller: new AbortController(),
    started: performance.now(),
    firstPreview: null,
    phase: "Waiting for the server",
    seed: null,
    size: null,
    finals: 0,
    params,
  };
  running = run;
  setBusy(true);
  const ticker = setInterval(() => showProgress(run), 100);
  showProgress(run);
  try {
    const response = await fetch(GENERATE_PATH, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body,
      signal: run.controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    run.seed = response.headers.get("x-imago-seed");
    run.size = response.headers.get("x-imago-size");
    run.phase = "Generating";
    await readEvents(response.body, (name, data) => onEvent(run, name, data));
    if (run.finals === 0) throw new Error("The stream ended before the final image.");
    const total = performance.now() - run.started;
    ui.status.dataset.totalMs = Math.round(total);
    const first = run.firstPreview === null ? "no preview" : `first preview ${seconds(run.firstPreview)}`;
    setStatus(`Done: ${run.finals} image${run.finals > 1 ? "s" : ""} ${run.size || ""} · seed ${run.seed} · ${first} · total ${seconds(total)}`, "done");
    if (run.seed) {
      ui.seed.dataset.last = run.seed;
      if (ui.seedRandom.checked) ui.seed.placeholder = `random (last: ${run.seed})`;
    }
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus(`Stopped after ${seconds(performance.now() - run.started)}.`, "stopped");
    } else {
      setStatus("Failed.", "error");
      showError(e.message);
    }
  } finally {
    clearInterval(ticker);
    // Closes the connection if the stream is still open (an error event, a bad event).
    run.controller.abort();
    running = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  ui.generate.disabled = busy;
  ui.stop.disabled = !busy;
  ui.form.classList.toggle("busy", busy);
}

function showProgress(run) {
  const parts = [`${run.phase}… ${seconds(performance.now() - run.started)}`];
  if (run.size) parts.push(run.size);
  if (run.seed) parts.push(`seed ${run.seed}`);
  if (run.firstPreview !== null) parts.push(`first preview ${seconds(run.firstPreview)}`);
  setStatus(parts.join(" · "), "running");
}

/** Reads a `text/event-stream` body, calling `onEvent(name, data)` per event until `[DONE]`. */
async function readEvents(stream, onEvent) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line === "" || line.startsWith(":")) continue; // keep-alive comments
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
      if (data.length === 0) continue;
      const text = data.join("\n");
      if (text === "[DONE]") {
        reader.cancel().catch(() => {});
        return;
      }
      onEvent(name, text);
    }
  }
}

function onEvent(run, name, text) {
  const event = JSON.parse(text);
  const type = event.type || name;
  const elapsed = performance.now() - run.started;
  if (type === "error") {
    throw new Error((event.error && event.error.message) || "The generation failed.");
  }
  const index = event.image_index || 0;
  if (type === "image_generation.partial_image") {
    if (run.firstPreview === null) {
      run.firstPreview = elapsed;
      ui.status.dataset.firstPreviewMs = Math.round(elapsed);
    }
    const url = blobUrl(event.b64_json);
    slot(index).show(url, "partial", `image ${index + 1} · preview ${event.partial_image_index + 1}`);
    const thumb = document.createElement("figure");
    thumb.className = "preview";
    thumb.append(image(url, `preview ${event.partial_image_index + 1} of image ${index + 1}`));
    const caption = document.createElement("figcaption");
    caption.textContent = `#${index + 1}.${event.partial_image_index + 1} · ${seconds(elapsed)}`;
    thumb.append(caption);
    ui.previews.append(thumb);
    run.phase = `Preview ${ui.previews.children.length}`;
  } else if (type === "image_generation.completed") {
    // The seed as sent: JSON.parse would round one above 2^53.
    const seedMatch = /"seed"\s*:\s*(\d+)/.exec(text);
    const seed = seedMatch ? seedMatch[1] : run.seed;
    const mediaType = event.media_type || sniffType(event.b64_json);
    const url = blobUrl(event.b64_json, mediaType);
    const name = fileName(seed, index, mediaType);
    slot(index).show(url, "final", `image ${index + 1} · ${run.size || ""} · seed ${seed} · ${seconds(elapsed)}`, name);
    run.finals += 1;
    run.phase = `Image ${run.finals} done`;
    addHistory(url, name, { ...run.params, seedRandom: false, seed: seed || "" }, run.size, index);
  }
}

/** The figure that shows image `index` of the batch (created on first use). */
function slot(index) {
  let figure = ui.results.querySelector(`figure[data-index="${index}"]`);
  if (!figure) {
    figure = document.createElement("figure");
    figure.dataset.index = index;
    figure.className = "slot";
    const img = image("", `image ${index + 1}`);
    const caption = document.createElement("figcaption");
    figure.append(img, caption);
    const slots = [...ui.results.children];
    const after = slots.find((s) => Number(s.dataset.index) > index);
    ui.results.insertBefore(figure, after || null);
  }
  return {
    show(url, state, text, downloadName) {
      figure.querySelector("img").src = url;
      figure.dataset.state = state;
      const caption = figure.querySelector("figcaption");
      caption.textContent = text;
      if (downloadName) caption.append(" ", downloadLink(url, downloadName));
    },
  };
}

function image(src, alt) {
  const img = document.createElement("img");
  if (src) img.src = src;
  img.alt = alt;
  return img;
}

function downloadLink(url, name) {
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.className = "download";
  a.textContent = "Download";
  return a;
}

function sniffType(b64) {
  if (b64.startsWith("iVBOR")) return "image/png";
  if (b64.startsWith("/9j/")) return "image/jpeg";
  if (b64.startsWith("UklGR")) return "image/webp";
  return "application/octet-stream";
}

function blobUrl(b64, mediaType) {
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return URL.createObjectURL(new Blob([bytes], { type: mediaType || sniffType(b64) }));
}

function fileName(seed, index, mediaType) {
  const ext = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" }[mediaType] || "bin";
  return `imago-${seed || "image"}-${index}.${ext}`;
}

// ---------------------------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------------------------

function addHistory(url, name, params, size, index) {
  historyCount += 1;
  const item = document.createElement("figure");
  item.className = "history-item";
  const restore = document.createElement("button");
  restore.type = "button";
  restore.className = "restore";
  const steps = params.steps || "default";
  const summary = `${params.prompt}\nmodel ${params.model} · ${size || "default size"} · steps ${steps} · guidance ${params.guidance || "default"} · seed ${params.seed} · n ${params.n || 1} (image ${index + 1}) · ${params.format}`;
  restore.title = `${summary}\nClick to restore these settings.`;
  restore.append(image(url, `history ${historyCount}: ${params.prompt}`));
  restore.addEventListener("click", () => restoreParams(params));
  const caption = document.createElement("figcaption");
  const prompt = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = params.prompt;
  const details = document.createElement("span");
  details.textContent = `${size || ""} · ${steps} steps · seed ${params.seed}`;
  caption.append(prompt, details, downloadLink(url, name));
  item.append(restore, caption);
  ui.history.prepend(item);
}

// unclip serve: the browser app. Plain JS, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { images: [], selected: new Set(), refs: { a: null, b: null }, busy: false };

$("apikey").value = localStorage.getItem("unclip-key") || "";
$("apikey").addEventListener("change", () => localStorage.setItem("unclip-key", $("apikey").value));

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function setProgress(p) {
  if (!p) { $("progress").hidden = true; return; }
  $("progress").hidden = false;
  const frac = p.total ? p.step / p.total : 0;
  $("bar-fill").style.width = Math.round(frac * 100) + "%";
  $("progress-text").textContent = p.total ? `${p.stage} ${p.step}/${p.total}` : p.stage;
}

// Queue a background job, poll its progress, resolve with its images.
async function runJob(kind, params) {
  if (state.busy) throw new Error("busy: wait for the running request");
  state.busy = true;
  document.querySelectorAll("button").forEach((b) => { if (b.id !== "download") b.disabled = true; });
  showError("");
  try {
    const r = await fetch("/v1/unclip/jobs", { method: "POST", headers: headers(), body: JSON.stringify({ kind, params }) });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    setProgress({ stage: "queued", step: 0, total: 0 });
    for (;;) {
      await new Promise((res) => setTimeout(res, 150));
      const s = await (await fetch("/v1/unclip/jobs/" + body.id, { headers: headers() })).json();
      if (s.error && !s.status) throw new Error(s.error.message);
      setProgress(s.progress);
      if (s.status === "done") return s.data;
      if (s.status === "error" || s.status === "cancelled") throw new Error(s.error ? s.error.message : s.status);
    }
  } finally {
    state.busy = false;
    setProgress(null);
    document.querySelectorAll("button").forEach((b) => { if (b.id !== "download") b.disabled = false; });
  }
}

const idOf = (url) => url.split("/").pop().replace(/\.png$/, "");

function addImages(data, label) {
  for (const d of data) state.images.unshift({ id: idOf(d.url), url: d.url, label, seed: d.seed });
  renderGallery();
}

function renderGallery() {
  const g = $("gallery");
  g.replaceChildren();
  for (const im of state.images) {
    const card = document.createElement("div");
    card.className = "card" + (state.selected.has(im.id) ? " selected" : "");
    card.dataset.id = im.id;
    const img = document.createElement("img");
    img.src = im.url;
    img.alt = im.label;
    img.title = `${im.label} (seed ${im.seed}): click for variations`;
    img.addEventListener("click", () => vary(im));
    const tools = document.createElement("div");
    tools.className = "tools";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.selected.has(im.id);
    box.title = "select";
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(im.id); else state.selected.delete(im.id);
      renderGallery();
    });
    tools.append(box);
    for (const end of ["a", "b"]) {
      const b = document.createElement("button");
      b.className = "small";
      b.type = "button";
      b.textContent = end.toUpperCase();
      b.title = `use as interpolation end ${end.toUpperCase()}`;
      b.addEventListener("click", () => {
        state.refs[end] = im.id;
        $("interp-" + end).value = "image: " + im.label;
      });
      tools.append(b);
    }
    card.append(img, tools);
    g.append(card);
  }
  $("download").disabled = state.selected.size === 0;
  $("selection").textContent = state.selected.size ? `${state.selected.size} selected` : "select images with their checkboxes";
}

function optionalNumber(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

async function guard(fn) {
  try { await fn(); } catch (e) { showError(e.message); }
}

$("generate-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  guard(async () => {
    const prompt = $("prompt").value;
    const params = {
      prompt, n: Number($("n").value) || 1, size: $("size").value || undefined,
      seed: optionalNumber("seed"), decoder_steps: optionalNumber("steps"),
      decoder_guidance_scale: optionalNumber("guidance"),
    };
    addImages(await runJob("generate", params), prompt);
  });
});

function vary(im) {
  guard(async () => {
    const data = await runJob("variations", { image: { image_id: im.id }, n: 4, size: $("size").value || undefined });
    addImages(data, "variation of " + im.label);
  });
}

function endpoint(end) {
  const text = $("interp-" + end).value.trim();
  if (state.refs[end] && text.startsWith("image: ")) return { image_id: state.refs[end] };
  state.refs[end] = null;
  if (!text) throw new Error(`interpolation end ${end.toUpperCase()} is empty`);
  return { prompt: text };
}

$("interpolate").addEventListener("click", () => guard(async () => {
  const frames = Number($("frames").value) || 5;
  const data = await runJob("interpolate", { a: endpoint("a"), b: endpoint("b"), frames, size: $("size").value || undefined });
  state.frames = data;
  const slider = $("interp-slider");
  slider.max = String(data.length - 1);
  slider.value = "0";
  $("interp-view").hidden = false;
  showFrame(0);
}));

function showFrame(k) {
  const d = state.frames[k];
  $("interp-frame").src = d.url;
  $("interp-frame").dataset.frame = String(k);
  $("interp-label").textContent = `frame ${k + 1} of ${state.frames.length}`;
}
$("interp-slider").addEventListener("input", (ev) => showFrame(Number(ev.target.value)));

$("edit").addEventListener("click", () => guard(async () => {
  const [id] = [...state.selected];
  if (state.selected.size !== 1) throw new Error("select exactly one image to edit");
  const to = $("edit-to").value.trim();
  if (!to) throw new Error("say what to edit toward");
  const params = { image: { image_id: id }, to, from: $("edit-from").value.trim(),
    max_theta: Number($("edit-theta").value), frames: 4, size: $("size").value || undefined };
  addImages(await runJob("edit", params), `edit toward ${to}`);
}));

$("download").addEventListener("click", () => {
  const a = document.createElement("a");
  a.href = "/v1/unclip/download?ids=" + [...state.selected].join(",");
  a.download = "unclip-images.zip";
  document.body.append(a);
  a.click();
  a.remove();
});

(async () => {
  try {
    const h = await (await fetch("/health")).json();
    $("model").textContent = `model ${h.model} · queue ${h.queue.waiting}/${h.queue.capacity}`;
    for (const s of [...h.sizes].reverse()) {
      const o = document.createElement("option");
      o.value = o.textContent = s;
      $("size").append(o);
    }
  } catch (e) { showError("cannot reach the server: " + e.message); }
})();
renderGallery();

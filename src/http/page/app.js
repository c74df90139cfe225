// slimserve's try-it page: no framework, no third-party code, nothing
// fetched but this server's own endpoints.
"use strict";

const $ = (id) => document.getElementById(id);
const BUDGET_MIN = 1, BUDGET_MAX = 5000; // slider range (log scale), ms
let image = null; // {blob, name}
let variants = [];
let busy = false;
let answers = 0; // answers and errors shown so far (data-answers on <body>, for tests)

const ROUTES = {
  pinned: "you pinned this variant (X-Variant)",
  most_accurate: "the most accurate variant, predicted to meet the budget",
  downgraded: "a more accurate variant was predicted to miss the budget",
  accuracy_unknown: "the only variant eligible; its accuracy is unknown",
};

function text(el, s) { el.textContent = s; return el; }
function make(tag, cls, s) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (s !== undefined) el.textContent = s;
  return el;
}
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const msText = (x) => (x < 10 ? x.toFixed(2) : x.toFixed(1)) + " ms";

// Budget: a log-scale slider and an exact number, kept in step.
function sliderToMs(v) {
  const a = Math.log(BUDGET_MIN), b = Math.log(BUDGET_MAX);
  return Math.max(1, Math.round(Math.exp(a + (b - a) * v / 1000)));
}
function msToSlider(ms) {
  const a = Math.log(BUDGET_MIN), b = Math.log(BUDGET_MAX);
  const m = Math.min(Math.max(ms, BUDGET_MIN), BUDGET_MAX);
  return Math.round(1000 * (Math.log(m) - a) / (b - a));
}
function budgetMs() {
  const v = Number($("budget-ms").value);
  return Number.isFinite(v) && v > 0 ? v : 150;
}
$("budget").addEventListener("input", () => {
  $("budget-ms").value = sliderToMs(Number($("budget").value));
  $("budget").setAttribute("aria-valuetext", $("budget-ms").value + " ms");
});
$("budget").addEventListener("change", () => classify());
$("budget-ms").addEventListener("input", () => {
  $("budget").value = msToSlider(budgetMs());
  $("budget").setAttribute("aria-valuetext", budgetMs() + " ms");
});
$("budget-ms").addEventListener("change", () => classify());
$("pin").addEventListener("change", () => classify());
$("topk").addEventListener("change", () => classify());
$("budget").value = msToSlider(budgetMs());

// Image: file picker, drag and drop, the drop zone as a button, bundled photos.
function setImage(blob, name) {
  image = { blob, name };
  const p = $("preview");
  if (p.dataset.url) URL.revokeObjectURL(p.dataset.url);
  p.dataset.url = URL.createObjectURL(blob);
  p.src = p.dataset.url;
  p.alt = name;
  p.hidden = false;
  text($("drop-help"), name + " — drop another image, or press Enter to choose one");
  $("classify").disabled = false;
  classify();
}
$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (f) setImage(f, f.name);
});
const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
});
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) setImage(f, f.name);
});
for (const b of document.querySelectorAll(".photo")) {
  b.addEventListener("click", async () => {
    const r = await fetch(b.dataset.src);
    if (r.ok) setImage(await r.blob(), b.dataset.name);
  });
}
$("classify").addEventListener("click", () => classify());

function showError(status, body) {
  document.body.dataset.answers = String(++answers);
  $("result").hidden = true;
  $("placeholder").hidden = true;
  const box = $("error");
  box.replaceChildren();
  if (body && body.error) {
    box.append(make("span", "msg", body.error), " ", make("span", "kind", "(" + status + " " + body.kind + ")"));
    box.dataset.kind = body.kind;
  } else {
    box.append(make("span", "msg", "HTTP " + status + " without an error body"));
    box.dataset.kind = "";
  }
  box.hidden = false;
}

function showResult(c) {
  document.body.dataset.answers = String(++answers);
  $("error").hidden = true;
  $("placeholder").hidden = true;
  const res = $("result");
  res.dataset.variant = c.variant;
  res.dataset.route = c.route;
  text($("res-variant"), c.variant);
  text($("res-route"), c.route);
  let why = ROUTES[c.route] || c.route;
  if (c.route !== "pinned") why += " (budget " + c.budget_ms + " ms)";
  if (c.batch_size > 1) why += "; ran in a batch of " + c.batch_size;
  text($("res-why"), "Why: " + why + ".");
  const ol = $("labels");
  ol.replaceChildren();
  for (const p of c.predictions) {
    const li = make("li");
    const meter = make("span", "meter");
    const fill = make("span");
    fill.style.width = (100 * p.score).toFixed(1) + "%";
    meter.append(fill);
    li.append(make("span", "name", p.label.replaceAll("_", " ")), make("span", "score", pct(p.score)), meter);
    li.dataset.label = p.label;
    ol.append(li);
  }
  const t = c.timings;
  const other = Math.max(0, t.total_ms - t.queue_ms - t.preprocess_ms - t.inference_ms);
  const parts = [["queue", "seg-queue", t.queue_ms], ["preprocess", "seg-pre", t.preprocess_ms],
                 ["inference", "seg-inf", t.inference_ms], ["other", "seg-other", other]];
  const split = $("split"), legend = $("legend");
  split.replaceChildren();
  legend.replaceChildren();
  for (const [name, cls, ms] of parts) {
    const seg = make("span", cls);
    seg.style.flexGrow = String(Math.max(ms, 0.001));
    seg.title = name + " " + msText(ms);
    split.append(seg);
    const li = make("li");
    li.append(make("i", cls), name + " " + msText(ms));
    legend.append(li);
  }
  split.setAttribute("aria-label", parts.map(([n, , ms]) => n + " " + msText(ms)).join(", "));
  text($("res-total"), "(total " + msText(t.total_ms) + ")");
  res.hidden = false;
}

let pending = false; // asked again while a request was under way
async function classify() {
  if (!image) return;
  if (busy) { pending = true; return; }
  busy = true;
  document.body.dataset.busy = "1";
  $("classify").disabled = true;
  const headers = { "X-SLA-Ms": String(budgetMs()), "Content-Type": image.blob.type || "application/octet-stream" };
  if ($("pin").value) headers["X-Variant"] = $("pin").value;
  const k = Math.min(Math.max(Number($("topk").value) || 5, 1), 20);
  try {
    const r = await fetch("/classify?top_k=" + k, { method: "POST", headers, body: image.blob });
    const body = await r.json().catch(() => null);
    if (r.ok && body) showResult(body); else showError(r.status, body);
  } catch (e) {
    showError(0, { error: "the server could not be reached: " + e.message, kind: "network" });
  } finally {
    busy = false;
    $("classify").disabled = false;
    if (pending) {
      pending = false;
      classify();
    } else {
      document.body.dataset.busy = "0";
      refreshLive();
    }
  }
}

async function loadVariants() {
  try {
    const r = await fetch("/v1/variants");
    if (!r.ok) throw new Error("HTTP " + r.status);
    variants = (await r.json()).variants;
  } catch (e) {
    setTimeout(loadVariants, 1000);
    return;
  }
  const pin = $("pin");
  for (const v of variants) {
    const o = make("option", null, v.name + " — top-1 " + (v.top1 === null ? "unknown" : pct(v.top1)) +
      ", " + v.preprocess.crop + "×" + v.preprocess.crop);
    o.value = v.name;
    pin.append(o);
  }
}

async function refreshLive() {
  let j;
  try {
    const r = await fetch("/v1/live");
    j = await r.json();
  } catch (e) {
    text($("status"), "server unreachable");
    $("status").className = "status";
    return;
  }
  text($("status"), j.ready ? "ready · " + j.workers + " workers · " + j.queued + " queued" : "loading models…");
  $("status").className = j.ready ? "status ready" : "status";
  const rows = $("live-rows");
  rows.replaceChildren();
  for (const v of j.variants) {
    const tr = make("tr");
    tr.dataset.variant = v.name;
    tr.append(make("td", null, v.name), make("td", null, pct(v.top1)), make("td", null, msText(v.predicted_ms)),
      make("td", "served", String(v.served)), make("td", null, pct(v.share)), make("td", null, pct(v.sla_attainment)));
    rows.append(tr);
  }
  text($("live-total"), j.requests + " requests in the last " + j.window_s + " s: " + j.answered + " answered, " +
    j.met + " within budget, " + j.refused + " refused · SLA attainment " + pct(j.sla_attainment) +
    " · preprocessing " + msText(j.preprocess_ms));
}

loadVariants();
refreshLive();
setInterval(() => { if (document.visibilityState === "visible") refreshLive(); }, 2000);

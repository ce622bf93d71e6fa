// fedocr web page: upload / drop / paste an image, show line boxes, text and confidences.
// Everything is served by the fedocr app itself; nothing is fetched from elsewhere.
"use strict";

const TEXT = {
  en: {
    drop: "Drop an image here, paste one (Ctrl+V), or choose a file.", token: "API token",
    copy: "Copy all", txt: "Export .txt", json: "Export .json",
    privacy: "Images are recognised on this server and are not stored.",
    working: "Recognising…", copied: "Copied.", lines: (n, c, ms) => `${n} line(s), confidence ${c}, ${ms} ms`,
    notImage: "That is not an image.", needToken: "This server needs an API token: enter it above and try again.",
    failed: "Recognition failed: ", turned: (a) => `Read turned ${a}° (the page was sideways or upside down). `,
    lowConfidence: "Low confidence: this may not be text the model reads, or the image is too degraded.", model: (m) => `model ${m.version} · ${m.backend} ${m.quantization}`, lang: "中文",
    cached: "Answered from the server's cache (this image was read before). ",
    unreadable: "That file could not be read as an image.", tooLarge: "That image is too large for this server.",
    tooManyLines: "That image has more text lines than this server reads at once.",
    busy: "The server is busy: try again in a moment.", files: "Files",
  },
  zh: {
    drop: "把图片拖到这里、粘贴（Ctrl+V），或选择文件。", token: "API 令牌",
    copy: "复制全部", txt: "导出 .txt", json: "导出 .json",
    privacy: "图片只在本服务器上识别，不会被保存。",
    working: "识别中…", copied: "已复制。", lines: (n, c, ms) => `${n} 行，置信度 ${c}，${ms} 毫秒`,
    notImage: "这不是图片。", needToken: "此服务器需要 API 令牌：请在上方输入后重试。",
    failed: "识别失败：", turned: (a) => `已旋转 ${a}° 识别（页面是横放或倒置的）。`,
    lowConfidence: "置信度低：图中可能没有本模型能识别的文字，或图像质量太差。", model: (m) => `模型 ${m.version} · ${m.backend} ${m.quantization}`, lang: "English",
    cached: "来自服务器缓存（这张图片之前识别过）。",
    unreadable: "无法把这个文件当作图片读取。", tooLarge: "图片太大，超出本服务器的限制。",
    tooManyLines: "图片中的文字行数超过本服务器一次能识别的数量。",
    busy: "服务器繁忙，请稍后再试。", files: "文件",
  },
};

const $ = (id) => document.getElementById(id);
let entries = [];      // one per chosen file: {name, url, result | null, error: {key, detail} | null, image}
let last = null;       // the entry on show
let image = null;      // HTMLImageElement of the entry on show
const i18n = makeI18n(TEXT, () => { renderFiles(); if (last) show(entries.indexOf(last)); loadModel(); });
const t = i18n.t;

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function loadModel() {
  try {
    const response = await fetch("/api/model", { headers: authHeaders() });
    if (response.status === 401) { $("token-row").hidden = false; return; }
    if (response.ok) $("model-info").textContent = t("model", await response.json());
  } catch (_) { /* the page still works without the model line */ }
}

// The reader's language for each refusal; the server's own words follow in brackets.
const ERROR_KEYS = { 400: "unreadable", 401: "needToken", 413: "tooLarge", 415: "unreadable", 422: "tooManyLines",
                     429: "busy", 503: "busy" };

function errorText(error) {
  return t(error.key) + (error.detail ? ` (${error.detail})` : "");
}

async function recognise(entry, file) {
  if (!file || !file.type.startsWith("image/")) { entry.error = { key: "notImage", detail: "" }; return; }
  const body = new FormData();
  body.append("image", file, entry.name);
  let response;
  try {
    response = await fetch("/api/ocr", { method: "POST", body, headers: authHeaders() });
  } catch (err) { entry.error = { key: "failed", detail: String(err) }; return; }
  const payload = await response.json().catch(() => ({}));
  if (response.status === 401) $("token-row").hidden = false;
  if (!response.ok) {
    const detail = typeof payload.detail === "string" ? payload.detail : JSON.stringify(payload.detail || "");
    entry.error = { key: ERROR_KEYS[response.status] || "failed", detail: response.status === 401 ? "" : detail };
    return;
  }
  entry.result = payload;
  entry.url = URL.createObjectURL(file);
}

// Several files: each gets its own result, read one after another; the first is shown while the rest are read.
async function recogniseAll(files) {
  entries.forEach((e) => e.url && URL.revokeObjectURL(e.url));
  entries = files.map((f) => ({ name: (f && f.name) || "pasted.png", url: null, result: null, error: null }));
  last = null;
  $("result").hidden = true;   // an old result never stays under a new upload or its error
  setStatus(t("working"));
  renderFiles();
  for (const [i, entry] of entries.entries()) {
    await recognise(entry, files[i]);
    renderFiles();
    if (i === 0) show(0);
  }
}

function renderFiles() {
  const nav = $("files");
  nav.hidden = entries.length < 2;
  nav.setAttribute("aria-label", t("files"));
  nav.replaceChildren();
  entries.forEach((entry, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = entry.name + (entry.error ? " ✗" : entry.result ? "" : " …");
    button.classList.toggle("current", entry === last);
    button.classList.toggle("failed", Boolean(entry.error));
    button.addEventListener("click", () => show(i));
    nav.append(button);
  });
}

function show(i) {
  const entry = entries[i];
  if (!entry) return;
  last = entry;
  renderFiles();
  if (entry.error) { $("result").hidden = true; setStatus(errorText(entry.error), true); return; }
  if (!entry.result) { $("result").hidden = true; setStatus(t("working")); return; }
  const payload = entry.result;
  // Turned, low-confidence and cached reads are said so, in the reader's language.
  const note = (payload.angle ? t("turned", payload.angle) : "") + (payload.cached ? t("cached") : "")
    + (payload.warning ? t("lowConfidence") : "");
  image = new Image();
  const done = () => { if (last === entry) { showResult(payload); setStatus(note); } };
  image.onload = done;
  image.onerror = done;
  image.src = entry.url;
}

function draw(active = -1) {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  if (!image || !last) return;
  // A page read turned (result.angle, counter-clockwise) is drawn turned too: its boxes refer to that frame.
  const turns = ((last.result.angle || 0) / 90) % 4;
  canvas.width = turns ? last.result.width : image.naturalWidth || last.result.width;
  canvas.height = turns ? last.result.height : image.naturalHeight || last.result.height;
  ctx.save();
  if (turns === 1) { ctx.translate(0, canvas.height); ctx.rotate(-Math.PI / 2); }
  else if (turns === 2) { ctx.translate(canvas.width, canvas.height); ctx.rotate(Math.PI); }
  else if (turns === 3) { ctx.translate(canvas.width, 0); ctx.rotate(Math.PI / 2); }
  ctx.drawImage(image, 0, 0);
  ctx.restore();
  const scale = Math.max(1, canvas.width / 800);
  last.result.lines.forEach((line, i) => {
    const [x0, y0, x1, y1] = line.box;
    ctx.lineWidth = 2 * scale;
    ctx.strokeStyle = i === active ? "rgba(230,120,0,0.95)" : "rgba(47,111,222,0.85)";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillStyle = ctx.strokeStyle;
    ctx.font = `${12 * scale}px sans-serif`;
    ctx.fillText(String(i + 1), x0 + 2, Math.max(y0 - 2, 12 * scale));
  });
}

const LOW_CHAR = 0.6;  // characters below this confidence are highlighted

function showResult(result) {
  $("result").hidden = false;
  const list = $("lines");
  list.replaceChildren();
  result.lines.forEach((line, i) => {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.className = "line-text";
    // Characters the model was unsure of are marked, with their confidence on hover.
    const chars = line.chars && line.chars.length === [...line.text].length ? line.chars : null;
    if (chars) {
      chars.forEach((c) => {
        const span = document.createElement("span");
        span.textContent = c.char;
        if (c.confidence < LOW_CHAR) {
          span.className = "low-char";
          span.title = `${(c.confidence * 100).toFixed(0)}%`;
        }
        text.append(span);
      });
    } else {
      text.textContent = line.text;
    }
    const conf = document.createElement("span");
    conf.className = "conf" + (line.confidence < 0.5 ? " low" : "");
    conf.textContent = `${(line.confidence * 100).toFixed(0)}%`;
    item.append(text, conf);
    item.addEventListener("mouseenter", () => { item.classList.add("active"); draw(i); });
    item.addEventListener("mouseleave", () => { item.classList.remove("active"); draw(); });
    list.append(item);
  });
  $("text").value = result.text;
  $("summary").textContent = t("lines", result.lines.length, result.confidence.toFixed(2), result.time_ms);
  draw();
}

function download(name, content, type) {
  const url = URL.createObjectURL(new Blob([content], { type }));
  const a = document.createElement("a");
  a.href = url; a.download = name;
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function baseName() { return (last ? last.name : "ocr").replace(/\.[^.]+$/, "") || "ocr"; }

async function copyAll() {
  const text = $("text").value;
  try { await navigator.clipboard.writeText(text); }
  catch (_) { $("text").select(); document.execCommand("copy"); }
  setStatus(t("copied"));
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { if (e.target.files.length) recogniseAll([...e.target.files]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) recogniseAll([...e.dataTransfer.files]);
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
    if (item) recogniseAll([item.getAsFile()]);
  });
  $("copy").addEventListener("click", copyAll);
  $("save-txt").addEventListener("click", () => last && last.result && download(`${baseName()}.txt`, last.result.text + "\n", "text/plain;charset=utf-8"));
  $("save-json").addEventListener("click", () => last && last.result && download(`${baseName()}.json`, JSON.stringify(last.result, null, 2), "application/json"));
  $("lang").addEventListener("click", i18n.toggle);
  $("token").addEventListener("change", loadModel);
  i18n.apply();
}

document.addEventListener("DOMContentLoaded", setUp);

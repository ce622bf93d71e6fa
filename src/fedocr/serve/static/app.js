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
  },
  zh: {
    drop: "把图片拖到这里、粘贴（Ctrl+V），或选择文件。", token: "API 令牌",
    copy: "复制全部", txt: "导出 .txt", json: "导出 .json",
    privacy: "图片只在本服务器上识别，不会被保存。",
    working: "识别中…", copied: "已复制。", lines: (n, c, ms) => `${n} 行，置信度 ${c}，${ms} 毫秒`,
    notImage: "这不是图片。", needToken: "此服务器需要 API 令牌：请在上方输入后重试。",
    failed: "识别失败：", turned: (a) => `已旋转 ${a}° 识别（页面是横放或倒置的）。`,
    lowConfidence: "置信度低：图中可能没有本模型能识别的文字，或图像质量太差。", model: (m) => `模型 ${m.version} · ${m.backend} ${m.quantization}`, lang: "English",
  },
};

const $ = (id) => document.getElementById(id);
let last = null;       // {name, result}
let image = null;      // HTMLImageElement of the last upload
const i18n = makeI18n(TEXT, () => { if (last) showResult(last.result); loadModel(); });
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

async function recognise(file) {
  if (!file || !file.type.startsWith("image/")) { setStatus(t("notImage"), true); return; }
  setStatus(t("working"));
  const body = new FormData();
  body.append("image", file, file.name || "pasted.png");
  let response;
  try {
    response = await fetch("/api/ocr", { method: "POST", body, headers: authHeaders() });
  } catch (err) { setStatus(t("failed") + err, true); return; }
  const payload = await response.json().catch(() => ({}));
  if (response.status === 401) { $("token-row").hidden = false; setStatus(t("needToken"), true); return; }
  if (!response.ok) {
    const detail = typeof payload.detail === "string" ? payload.detail : JSON.stringify(payload.detail);
    setStatus(t("failed") + detail, true); return;
  }
  const url = URL.createObjectURL(file);
  image = new Image();
  // Turned or low-confidence reads are said so, in the reader's language.
  const note = (payload.angle ? t("turned", payload.angle) : "") + (payload.warning ? t("lowConfidence") : "");
  image.onload = () => { URL.revokeObjectURL(url); last = { name: file.name || "pasted", result: payload }; showResult(payload); setStatus(note); };
  image.onerror = () => { URL.revokeObjectURL(url); last = { name: file.name || "pasted", result: payload }; showResult(payload); setStatus(note); };
  image.src = url;
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
  $("file").addEventListener("change", (e) => { for (const f of e.target.files) recognise(f); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    const file = e.dataTransfer.files[0]; if (file) recognise(file);
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
    if (item) recognise(item.getAsFile());
  });
  $("copy").addEventListener("click", copyAll);
  $("save-txt").addEventListener("click", () => last && download(`${baseName()}.txt`, last.result.text + "\n", "text/plain;charset=utf-8"));
  $("save-json").addEventListener("click", () => last && download(`${baseName()}.json`, JSON.stringify(last.result, null, 2), "application/json"));
  $("lang").addEventListener("click", i18n.toggle);
  $("token").addEventListener("change", loadModel);
  i18n.apply();
}

document.addEventListener("DOMContentLoaded", setUp);

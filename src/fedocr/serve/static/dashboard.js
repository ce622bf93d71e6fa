// fedocr federation dashboard: the runs in the run store and, per run, its rounds, clients,
// privacy, anomalies and contributions, following new rounds live (server-sent events).
// Charts are uPlot (vendored). The same script renders the standalone HTML report
// (`fedocr fl report RUN --html`), whose data is embedded in the page instead of fetched.
"use strict";

const TEXT = {
  en: {
    title: "Federation dashboard", token: "API token", lang: "中文", runs: "Runs", noRuns: "No runs in this store yet.",
    name: "Name", federation: "Federation", status: "Status", rounds: "Rounds", bestCer: "Best val CER",
    started: "Started", updated: "Updated", progress: "Validation CER and loss per round",
    time: "Seconds per round: training and overhead", traffic: "Bytes up and down per round", lr: "Learning rate",
    epsilonRound: "Privacy spent (ε) per round", roundsTable: "Rounds", round: "Round", applied: "Applied",
    acceptedShort: "Accepted", rejectedShort: "Rejected", droppedShort: "Dropped", loss: "Loss", trainS: "Training s",
    overheadS: "Overhead s", lrShort: "LR", up: "Up", down: "Down", note: "Note", clientsIn: "Clients in round",
    client: "Client", reason: "Reason", examples: "Examples", norm: "Update norm", stepRecords: "Step records of this round",
    step: "Step", record: "Record", rejections: "Rejected and dropped updates", noRejections: "None so far.",
    perClient: "Per client, over the run", cluster: "Cluster", contribution: "Each node's contribution (summed over rounds)",
    shapley: "Shapley", ci: "95% interval", loo: "Leave-one-out", anomalies: "Anomaly flags (robust aggregation)",
    verdict: "Verdict", cosine: "Cosine", privacy: "Privacy spent per client", budget: "Budget",
    served: "Model served by the OCR service", makeLive: "Serve round", useRound: "Make live", chain: "Step chain",
    config: "Run config", showConfig: "Show", final: "Final evaluation and audit",
    footer: "Read-only view of the run store; charts drawn in this page (uPlot), nothing loaded from elsewhere.",
    notEnabled: "Not enabled in this run.", contribOff: (why) => `Off in this run: ${why}`,
    contribMethod: (method, utility) => `${method}: each node's improvement of the ${utility}, summed over the rounds it took part in`,
    noFlags: "Scored, nothing flagged.", valCer: "val CER", valLoss: "val loss", training: "training",
    overhead: "overhead", bytesUp: "MB up", bytesDown: "MB down", epsilon: "ε", yes: "yes", rolledBack: "no (rolled back)",
    accepted: "accepted", rejected: "rejected", dropped: "dropped", latest: (n) => `latest (${n})`,
    lastRows: (n, total) => `The latest ${n} of ${total} rounds; every round is in the charts.`,
    live: "● live", reconnecting: (why) => `reconnecting… ${why}`, report: "report, not live",
    needToken: "This server needs an API token: enter it above.", serving: (m) =>
      `serving ${m.file} · ${m.version}${m.run ? ` · run ${m.run}, round ${m.round}` : ""}`,
    noModel: "This server serves no OCR model (dashboard only).", noSaved: "no round checkpoints in the run's folder",
    madeLive: (m) => `Now serving ${m.file} (${m.version}).`, chainUnknown: "This run's config cannot be rebuilt here.",
    perClientEps: "ε", all: "all nodes",
    runStatus: { running: "running", finished: "finished", failed: "failed", stalled: "stalled" },
  },
  zh: {
    title: "联邦训练看板", token: "API 令牌", lang: "English", runs: "运行", noRuns: "此运行库中还没有运行。",
    name: "名称", federation: "联邦", status: "状态", rounds: "轮数", bestCer: "最佳验证 CER",
    started: "开始", updated: "更新", progress: "每轮验证 CER 与损失", time: "每轮耗时：训练与开销",
    traffic: "每轮上传与下载字节", lr: "学习率", epsilonRound: "每轮隐私消耗 (ε)", roundsTable: "各轮", round: "轮",
    applied: "已应用", acceptedShort: "接受", rejectedShort: "拒绝", droppedShort: "掉线", loss: "损失",
    trainS: "训练秒", overheadS: "开销秒", lrShort: "学习率", up: "上传", down: "下载", note: "说明",
    clientsIn: "本轮客户端", client: "客户端", reason: "原因", examples: "样本数", norm: "更新范数",
    stepRecords: "本轮各步骤记录", step: "步骤", record: "记录", rejections: "被拒绝与掉线的更新", noRejections: "目前没有。",
    perClient: "各客户端（整个运行）", cluster: "簇", contribution: "各节点贡献（各轮累计）", shapley: "Shapley 值", ci: "95% 区间",
    loo: "留一法", anomalies: "异常标记（鲁棒聚合）", verdict: "判定", cosine: "余弦", privacy: "各客户端隐私消耗",
    budget: "预算", served: "OCR 服务当前模型", makeLive: "上线轮次", useRound: "上线", chain: "步骤链",
    config: "运行配置", showConfig: "显示", final: "最终评估与审计",
    footer: "运行库的只读视图；图表在本页绘制（uPlot），不从其他地方加载任何内容。",
    notEnabled: "本次运行未启用。", contribOff: (why) => `本次运行已关闭：${why}`,
    contribMethod: (method, utility) => `${method}：各节点对${utility}的改进，按其参与的轮次累计`, noFlags: "已评分，无标记。",
    valCer: "验证 CER", valLoss: "验证损失", training: "训练", overhead: "开销", bytesUp: "上传 MB", bytesDown: "下载 MB",
    epsilon: "ε", yes: "是", rolledBack: "否（已回滚）", accepted: "接受", rejected: "拒绝", dropped: "掉线",
    latest: (n) => `最新（${n}）`, lastRows: (n, total) => `显示 ${total} 轮中最新的 ${n} 轮；图表包含全部轮次。`,
    live: "● 实时", reconnecting: (why) => `重新连接中… ${why}`, report: "报告（非实时）",
    needToken: "此服务器需要 API 令牌：请在上方输入。", serving: (m) =>
      `当前模型 ${m.file} · ${m.version}${m.run ? ` · 运行 ${m.run} 第 ${m.round} 轮` : ""}`,
    noModel: "此服务器不提供 OCR 模型（仅看板）。", noSaved: "运行目录中没有轮次检查点",
    madeLive: (m) => `已上线 ${m.file}（${m.version}）。`, chainUnknown: "无法在此重建该运行的配置。",
    perClientEps: "ε", all: "所有节点",
    runStatus: { running: "进行中", finished: "已完成", failed: "失败", stalled: "停滞" },
  },
};

const $ = (id) => document.getElementById(id);
const REPORT = (() => { const el = $("report-data"); return el ? JSON.parse(el.textContent) : null; })();
const ROUND_ROWS = 100;          // rows in the rounds table (the charts show every round)
const ROUND_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];   // whole rounds on the x axis
const view = { runs: null, runId: null, detail: null, round: null, pick: null, follow: null, refresh: null, after: 0 };
const charts = {};
const i18n = makeI18n(TEXT, () => {
  if (view.detail) renderRun();
  if (view.runs) renderRuns();
  if (!REPORT) loadServing();
});
const t = i18n.t;

// -- small helpers ---------------------------------------------------------------------------
function fmt(v, digits = 4) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
function num(v, digits = 3) { return v === null || v === undefined ? "–" : Number(v).toPrecision(digits); }
function mb(v) { return v === null || v === undefined ? "–" : `${(v / 1e6).toFixed(1)} MB`; }
function statusText(status) { return t("runStatus")[status] || status; }
function when(iso) { return iso ? iso.replace("T", " ").replace("+00:00", " UTC") : "–"; }
function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }
function row(cells, cls) { const tr = document.createElement("tr"); tr.append(...cells); if (cls) tr.className = cls; return tr; }
function fill(id, rows) { $(id).querySelector("tbody").replaceChildren(...rows); }
function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function problem(message) { $("problem").hidden = !message; $("problem").textContent = message || ""; }

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const payload = await response.json().catch(() => ({}));
  if (response.status === 401) { $("token-row").hidden = false; throw new Error(t("needToken")); }
  if (!response.ok) {
    const error = new Error(typeof payload.detail === "string" ? payload.detail : `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return payload;
}

// -- charts (uPlot) ------------------------------------------------------------------------------
const COLORS = ["#2f6fde", "#d9822b", "#1e8a4c", "#b3261e", "#7b4fd1", "#5c6677"];

/** Axis labels that stay distinct for small values (a learning rate of 3e-4 is not "0.000"). */
function tickLabels(_, splits) {
  return splits.map((v) => (v === null ? "" : v !== 0 && Math.abs(v) < 0.01 ? v.toExponential(1) : String(+v.toPrecision(4))));
}

/** A line chart of per-round series, or "not enabled" when every value is missing. */
function lineChart(id, xs, series) {
  const el = $(id);
  if (charts[id]) { charts[id].destroy(); delete charts[id]; }
  el.replaceChildren();
  if (!series.some((s) => s.values.some((v) => v !== null && v !== undefined))) {
    const p = document.createElement("p"); p.className = "off muted"; p.textContent = t("notEnabled"); el.append(p); return;
  }
  const scales = [...new Set(series.map((s) => s.scale || "y"))];
  const opts = {
    width: Math.max(280, el.clientWidth || 600), height: 200, scales: { x: { time: false } },
    series: [{ label: t("round") }, ...series.map((s, i) => ({
      label: s.label, scale: s.scale || "y", stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
      points: { show: xs.length < 60 },
    }))],
    axes: [{ label: t("round"), incrs: ROUND_STEPS }, ...scales.map((scale, i) => ({ scale, side: i === 0 ? 3 : 1, grid: { show: i === 0 },
                                                                   size: 60, values: tickLabels }))],
  };
  charts[id] = new uPlot(opts, [xs, ...series.map((s) => s.values)], el);
}

/** Bars, one per client (the contribution panel), with the client names on the x axis. */
function barChart(id, names, values) {
  const el = $(id);
  if (charts[id]) { charts[id].destroy(); delete charts[id]; }
  el.replaceChildren();
  if (!names.length) return;
  const xs = names.map((_, i) => i);
  charts[id] = new uPlot({
    width: Math.max(280, el.clientWidth || 600), height: 220,
    // Bars grow from zero: a negative contribution (a node that made the model worse) points down.
    scales: { x: { time: false, range: [-0.6, names.length - 0.4] },
              y: { range: (_, lo, hi) => [Math.min(0, lo) * 1.1, Math.max(0, hi) * 1.1 || 1] } },
    series: [{ label: t("client"), value: (_, i) => (i === null ? "" : names[Math.round(i)]) },
             { label: t("shapley"), fill: "rgba(47,111,222,0.55)", stroke: "#2f6fde", paths: uPlot.paths.bars({ size: [0.6, 60] }),
               points: { show: false } }],
    axes: [{ splits: () => xs, values: (_, splits) => splits.map((i) => names[i] || ""), rotate: names.length > 12 ? -45 : 0 },
           { size: 60 }],
  }, [xs, values], el);
}

// -- the runs list ---------------------------------------------------------------------------------
async function loadRuns() {
  try {
    view.runs = (await api("/api/runs")).runs;
    problem("");
    renderRuns();
  } catch (err) { problem(err.message); }
}

function renderRuns() {
  $("runs-empty").hidden = view.runs.length > 0;
  fill("runs", view.runs.map((r) => {
    const tr = row([cell(`${r.name} (${r.run_id})`), cell(r.federation || "–"), cell(statusText(r.status)), cell(r.rounds, "num"),
                    cell(fmt(r.best_val_cer), "num"), cell(when(r.created)), cell(when(r.updated))]);
    tr.addEventListener("click", () => { location.hash = `run=${encodeURIComponent(r.run_id)}`; });
    return tr;
  }));
}

// -- one run -------------------------------------------------------------------------------------
async function openRun(runId) {
  stopFollowing();
  Object.assign(view, { runId, detail: null, round: null, pick: null, after: 0 });
  $("runs-view").hidden = true;
  $("run-view").hidden = false;
  if (await refreshRun()) follow(runId);
}

async function refreshRun() {
  try {
    view.detail = await api(`/api/runs/${encodeURIComponent(view.runId)}`);
    const rounds = view.detail.rounds;
    const wanted = view.pick ?? (rounds.length ? rounds[rounds.length - 1].round : null);
    view.round = wanted === null ? null : await api(`/api/runs/${encodeURIComponent(view.runId)}/rounds/${wanted}`);
    problem("");
    renderRun();
    return true;
  } catch (err) { problem(err.message); return false; }
}

function renderRun() {
  const d = view.detail;
  $("run-title").textContent = `${d.run.name} · ${d.run.federation || ""} · ${d.run.run_id}`;
  $("run-status").textContent = statusText(d.run.status);
  $("run-status").className = `badge ${d.run.status}`;
  $("run-error").hidden = !d.run.error;
  $("run-error").textContent = d.run.error || "";
  renderCharts(d.rounds);
  renderRounds(d.rounds);
  renderRound();
  renderRejections(d.rejections);
  renderClients(d);
  renderContribution(d.contribution);
  renderAnomalies(d);
  renderPrivacy(d.privacy);
  renderModelChoice(d);
  $("chain").textContent = d.chain || t("chainUnknown");
  $("config").textContent = JSON.stringify(d.config, null, 1);
  $("final-block").hidden = !(d.final || d.audit);
  $("final").textContent = JSON.stringify({ final: d.final, audit: d.audit }, null, 1);
}

function renderCharts(rounds) {
  const xs = rounds.map((r) => r.round);
  const col = (key, scale = 1) => rounds.map((r) => (r[key] === null ? null : r[key] * scale));
  lineChart("chart-cer", xs, [{ label: t("valCer"), values: col("val_cer"), scale: "cer" },
                              { label: t("valLoss"), values: col("val_loss"), scale: "loss" }]);
  lineChart("chart-time", xs, [{ label: t("training"), values: col("train_seconds") },
                               { label: t("overhead"), values: col("overhead_seconds") }]);
  lineChart("chart-bytes", xs, [{ label: t("bytesUp"), values: col("bytes_up", 1e-6) },
                                { label: t("bytesDown"), values: col("bytes_down", 1e-6) }]);
  lineChart("chart-lr", xs, [{ label: t("lrShort"), values: col("lr") }]);
  lineChart("chart-eps", xs, [{ label: t("epsilon"), values: col("epsilon") }]);
}

function renderRounds(rounds) {
  const shown = rounds.slice(-ROUND_ROWS).reverse();
  $("rounds-note").textContent = rounds.length > ROUND_ROWS ? t("lastRows", ROUND_ROWS, rounds.length) : "";
  const selected = view.round ? view.round.summary.round : null;
  fill("rounds", shown.map((r) => {
    const tr = row([cell(r.round, "num"), cell(r.applied ? t("yes") : t("rolledBack")), cell(r.accepted, "num"),
                    cell(r.rejected, "num"), cell(r.dropped, "num"), cell(fmt(r.val_cer), "num"), cell(fmt(r.val_loss, 3), "num"),
                    cell(fmt(r.train_seconds, 1), "num"), cell(fmt(r.overhead_seconds, 1), "num"), cell(num(r.lr), "num"),
                    cell(fmt(r.epsilon, 2), "num"), cell(mb(r.bytes_up), "num"), cell(mb(r.bytes_down), "num"),
                    cell(r.note || "")],
                   [r.applied ? "" : "rolled-back", r.round === selected ? "selected" : ""].join(" ").trim());
    tr.dataset.round = r.round;
    tr.addEventListener("click", () => pickRound(r.round));
    return tr;
  }));
  const pick = $("round-pick");
  const latest = rounds.length ? rounds[rounds.length - 1].round : null;
  const options = [new Option(latest === null ? "–" : t("latest", latest), "")];
  rounds.slice().reverse().forEach((r) => options.push(new Option(String(r.round), String(r.round))));
  pick.replaceChildren(...options);
  pick.value = view.pick === null ? "" : String(view.pick);
}

function pickRound(round) {
  view.pick = round;
  if (!REPORT) refreshRun();
}

function renderRound() {
  const detail = view.round;
  $("round-no").textContent = REPORT && detail ? detail.summary.round : "";   // the page has a picker instead
  fill("round-clients", detail ? detail.clients.map((c) => row([
    cell(c.client), cell(t(c.status)), cell(c.reason || "", c.reason ? "reason" : ""), cell(c.examples ?? "–", "num"),
    cell(fmt(c.loss, 3), "num"), cell(num(c.update_norm), "num"), cell(fmt(c.train_seconds, 1), "num"),
    cell(mb(c.bytes_up), "num"), cell(mb(c.bytes_down), "num")], c.status === "accepted" ? "" : c.status)) : []);
  fill("round-steps", detail ? detail.steps.map((s) => row([cell(s.step), cell(s.client === "*" ? t("all") : s.client),
                                                             cell(JSON.stringify(s.info))])) : []);
}

function renderRejections(rejections) {
  const panel = $("rejections").closest(".panel");
  panel.querySelector(".off").hidden = rejections.length > 0;
  fill("rejections", rejections.map((r) => row([cell(r.round, "num"), cell(r.client), cell(t(r.status)),
                                                cell(r.reason || "", "reason")], r.status)));
}

function renderClients(d) {
  const eps = Object.fromEntries(d.privacy.map((p) => [p.client, p.epsilon]));
  fill("clients", d.clients.map((c) => row([cell(c.client), cell(c.rounds, "num"), cell(c.accepted, "num"),
                                            cell(c.rejected, "num"), cell(c.dropped, "num"), cell(mb(c.bytes_up), "num"),
                                            cell(fmt(eps[c.client], 2), "num"), cell(c.cluster ?? "–", "num")])));
}

function offNote(panelId, message) {
  const note = $(panelId).querySelector(".off");
  note.hidden = !message;
  note.textContent = message || "";
}

function renderContribution(panel) {
  const clients = panel.clients;
  const why = panel.server && panel.server.disabled;
  offNote("contribution-panel", why ? t("contribOff", why) : clients.length ? "" : t("notEnabled"));
  const server = panel.server || {};
  $("contribution-method").textContent = clients.length && server.method
    ? t("contribMethod", server.method, server.utility === "val_loss" ? t("valLoss") : t("valCer")) : "";
  $("contribution").hidden = clients.length === 0;
  barChart("chart-contribution", clients.map((c) => c.client), clients.map((c) => c.shapley ?? c.loo));
  fill("contribution", clients.map((c) => row([cell(c.client), cell(fmt(c.shapley), "num"),
    cell(c.shapley_ci ? `[${fmt(c.shapley_ci[0])}, ${fmt(c.shapley_ci[1])}]` : "–"), cell(fmt(c.loo), "num"),
    cell(c.rounds, "num")])));
}

function renderAnomalies(d) {
  const scored = (d.steps.score || 0) > 0;
  offNote("anomaly-panel", !scored ? t("notEnabled") : d.anomalies.length ? "" : t("noFlags"));
  $("anomalies").hidden = d.anomalies.length === 0;
  fill("anomalies", d.anomalies.map((a) => row([cell(a.round, "num"), cell(a.client), cell(a.verdict || ""),
                                                cell(num(a.norm), "num"), cell(fmt(a.cosine, 2), "num")], "rejected")));
}

function renderPrivacy(privacy) {
  offNote("privacy-panel", privacy.length ? "" : t("notEnabled"));
  $("privacy").hidden = privacy.length === 0;
  fill("privacy", privacy.map((p) => row([cell(p.client === "*" ? t("all") : p.client), cell(fmt(p.epsilon, 3), "num"),
                                          cell(p.delta ?? "–", "num"), cell(p.target_epsilon ?? "–", "num"),
                                          cell(p.last_round, "num"), cell(p.step)])));
}

// -- which model the OCR service serves, and making a round live ------------------------------------
function renderModelChoice(d) {
  if (REPORT) { $("model-panel").hidden = true; return; }
  const select = $("live-round");
  const current = select.value;
  select.replaceChildren(...d.saved_rounds.slice().reverse().map((r) => new Option(String(r), String(r))));
  if (current && d.saved_rounds.includes(Number(current))) select.value = current;
  $("use-round").disabled = d.saved_rounds.length === 0 || $("use-round").dataset.noModel === "1";
  if (!d.saved_rounds.length) $("use-result").textContent = t("noSaved");
}

async function loadServing() {
  try {
    const m = await api("/api/model");
    $("serving").textContent = t("serving", m);
    $("served-model").textContent = t("serving", m);
    delete $("use-round").dataset.noModel;
  } catch (err) {
    const none = err.status === 503;
    $("serving").textContent = none ? t("noModel") : "";
    $("served-model").textContent = none ? t("noModel") : err.message;
    $("use-round").dataset.noModel = none ? "1" : "";
    $("use-round").disabled = none;
  }
}

async function useRound() {
  const round = Number($("live-round").value);
  try {
    const answer = await api("/api/model/use", { method: "POST", headers: { "Content-Type": "application/json" },
                                                 body: JSON.stringify({ run_id: view.runId, round }) });
    $("use-result").textContent = t("madeLive", answer.model);
    $("use-result").className = "";
    loadServing();
  } catch (err) { $("use-result").textContent = err.message; $("use-result").className = "error"; }
}

// -- live: server-sent events read with fetch (EventSource cannot send the bearer token) -------------
function stopFollowing() { if (view.follow) view.follow.abort(); view.follow = null; }

async function follow(runId) {
  const control = new AbortController();
  view.follow = control;
  const rounds = view.detail ? view.detail.rounds : [];
  view.after = rounds.length ? rounds[rounds.length - 1].round : 0;
  while (!control.signal.aborted) {
    try {
      const response = await fetch(`/api/runs/${encodeURIComponent(runId)}/events?after=${view.after}`,
                                   { headers: authHeaders(), signal: control.signal });
      if (!response.ok) throw new Error((await response.json().catch(() => ({}))).detail || `HTTP ${response.status}`);
      $("live").textContent = t("live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) { onEvent(buffer.slice(0, end)); buffer = buffer.slice(end + 2); }
      }
    } catch (err) {
      if (control.signal.aborted) return;
      $("live").textContent = t("reconnecting", err.message);
    }
    await sleep(3000);
  }
}

function onEvent(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trim());
  }
  if (!data.length) return;                       // a keep-alive comment
  const payload = JSON.parse(data.join("\n"));
  if (kind === "round") view.after = Math.max(view.after, payload.round);
  if (kind === "problem") { problem(payload.detail); return; }
  clearTimeout(view.refresh);                     // several rounds at once: one refresh
  view.refresh = setTimeout(refreshRun, 200);
}

// -- navigation ----------------------------------------------------------------------------------
function route() {
  const match = /^#run=(.+)$/.exec(location.hash);
  if (match) { openRun(decodeURIComponent(match[1])); return; }
  stopFollowing();
  Object.assign(view, { runId: null, detail: null });
  $("run-view").hidden = true;
  $("runs-view").hidden = false;
  loadRuns();
}

function setUp() {
  $("lang").addEventListener("click", i18n.toggle);
  $("round-pick").addEventListener("change", (e) => pickRound(e.target.value === "" ? null : Number(e.target.value)));
  if (REPORT) {                                    // a standalone report: everything is in the page
    Object.assign(view, { runId: REPORT.detail.run.run_id, detail: REPORT.detail, round: REPORT.round });
    $("runs-view").hidden = true;
    $("run-view").hidden = false;
    $("round-pick").hidden = true;
    i18n.apply();
    $("live").textContent = t("report");
    return;
  }
  $("use-round").addEventListener("click", useRound);
  $("token").addEventListener("change", () => { loadServing(); route(); });
  window.addEventListener("hashchange", route);
  let resized;
  window.addEventListener("resize", () => { clearTimeout(resized); resized = setTimeout(() => view.detail && renderRun(), 200); });
  i18n.apply();
  route();
}

document.addEventListener("DOMContentLoaded", setUp);

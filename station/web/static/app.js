/* The station's page: plain JS, no build step. Reads /api/v1, follows /api/v1/live (Server-Sent
   Events read with fetch, so the API key travels in a header, never in a URL). */
"use strict";

const API = "/api/v1";
const COLORS = ["#2b6cb0", "#c0392b", "#1f8a4c", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#b7950b"];
const TX_LEVELS = [["t95", 0.95], ["t80", 0.80], ["t50", 0.50]];

const state = {
  key: localStorage.getItem("station-key") || "",
  role: "anonymous",
  status: null,
  selectedPixel: null,
  aging: new Map(),      // run_id -> {pixel, t:[], l:[], v:[], lastSeq, lifetime}
  agingPlot: null, agingKeys: "",
  sweep: null,           // data of the shown sweep run
  sweepPlots: {},
  locus: null,
  live: null,
};

// -- helpers -------------------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e[k] = v;
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
function fmt(v, sig = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  if (typeof v !== "number") return String(v);
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(sig - 1);
  return Number(v.toPrecision(sig)).toString();
}
function when(ts) {
  if (!ts) return "—";
  const d = new Date(ts * 1000);
  return d.toLocaleString([], {month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
                               second: "2-digit"});
}
function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h["X-Api-Key"] = state.key;
  return h;
}
async function api(path, opts) {
  const o = Object.assign({}, opts || {});
  o.headers = headers(o.headers);
  const r = await fetch(API + path, o);
  let body = null;
  const ct = r.headers.get("Content-Type") || "";
  if (ct.includes("application/json")) body = await r.json();
  return {ok: r.ok, status: r.status, body, response: r};
}
function say(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.className = "message " + (kind || "");
}
function plotWidth(id) {
  const w = $(id).clientWidth || $(id).parentElement.clientWidth || 320;
  return Math.max(260, Math.floor(w));
}

// -- status --------------------------------------------------------------------------------------
function badge(id, text, cls) {
  const b = $(id);
  b.textContent = text;
  b.className = "badge " + (cls || "");
}
function renderStatus(st) {
  state.status = st;
  $("station-id").textContent = st.station;
  $("station-desc").textContent = st.station_description || "";
  document.title = `${st.station} — LED test station`;
  badge("b-link", `link ${st.link_up ? "up" : "down"} since ${when(st.link_since)}`, st.link_up ? "ok" : "bad");
  if (st.interlock_closed === null) badge("b-interlock", "interlock: ?", "off");
  else badge("b-interlock", `interlock ${st.interlock_closed ? "closed" : "OPEN"}`,
             st.interlock_closed ? "ok" : "bad");
  const faults = st.faults_names;
  if (faults === null) badge("b-faults", "faults: ?", "off");
  else badge("b-faults", faults.length ? "faults: " + faults.join(", ") : "no faults",
             faults.length ? "bad" : "ok");
  const temps = st.temperatures_c || [];
  badge("b-temps", temps.length ? "T " + temps.map((t) => fmt(t, 3) + " °C").join(", ") : "T: ?");

  const b = st.board || {};
  const rows = [
    ["station", st.station], ["board", b.serial ? `${b.serial} (firmware ${b.firmware})` : "—"],
    ["link", `${st.link_up ? "up" : "down"} since ${when(st.link_since)}`],
    ["reconnects / gaps / replays", st.link_stats ?
      `${st.link_stats.disconnects} / ${st.link_stats.gaps} / ${st.link_stats.replays_requested}` : "—"],
    ["jobs", Object.entries(st.jobs || {}).map(([k, v]) => `${v} ${k}`).join(", ") || "none"],
    ["viewers", st.web ? st.web.viewers : "—"],
  ];
  const t = $("station-table");
  t.replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v))));

  const sinks = Object.entries(st.sinks || {});
  const st2 = $("sinks-table");
  if (!sinks.length) {
    st2.replaceChildren(el("tbody", {}, el("tr", {}, el("td", {class: "muted"}, "no sink configured"))));
  } else {
    st2.replaceChildren(
      el("thead", {}, el("tr", {}, ...["sink", "state", "connected", "rows behind", "s behind", "last error"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, ...sinks.map(([name, h]) => el("tr", {},
        el("td", {}, name), el("td", {}, h.state ?? "—"), el("td", {}, h.connected ? "yes" : "no"),
        el("td", {}, fmt(h.rows_behind ?? null)), el("td", {}, fmt(h.seconds_behind ?? null, 3)),
        el("td", {class: "small"}, h.last_error || "")))));
  }
  renderPixels(st.pixels || []);
}

function renderPixels(pixels) {
  const box = $("pixels");
  if (state.selectedPixel === null) {
    const withSweep = pixels.find((p) => p.last_sweep !== null);
    if (withSweep) selectPixel(withSweep.pixel, pixels);
  }
  box.replaceChildren(...pixels.map((p) => el("div", {
      class: `pixel ${p.state} ${p.pixel === state.selectedPixel ? "selected" : ""}`,
      "data-pixel": p.pixel, "data-state": p.state, onclick: () => selectPixel(p.pixel, pixels)},
    el("div", {}, el("b", {}, p.label || `px${p.pixel}`), " ", el("span", {class: "muted small"}, p.device || "")),
    el("div", {class: "state"}, p.state + (p.run_id ? ` (run ${p.run_id})` : "")),
    el("div", {class: "small"}, p.l_rel !== null ? `L/L0 ${fmt(p.l_rel, 3)} · ${fmt(p.voltage_v, 3)} V` : " "))));
  // aging curves: the latest aging run of every pixel
  const want = pixels.filter((p) => p.last_aging !== null).map((p) => p.last_aging);
  syncAging(want);
}

function selectPixel(n, pixels) {
  state.selectedPixel = n;
  const p = (pixels || (state.status && state.status.pixels) || []).find((x) => x.pixel === n);
  document.querySelectorAll(".pixel").forEach((e) =>
    e.classList.toggle("selected", Number(e.dataset.pixel) === n));
  if (p && p.last_sweep !== null) {
    if (!state.sweep || state.sweep.run_id !== p.last_sweep) loadSweep(p.last_sweep);
  } else {
    $("sweep-title").textContent = `pixel ${n}: no sweep yet`;
  }
}

// -- jobs ----------------------------------------------------------------------------------------
async function loadJobs() {
  const r = await api("/jobs");
  if (!r.ok) return;
  const tb = $("jobs-table").querySelector("tbody");
  const jobs = r.body.jobs.slice(0, 30);
  tb.replaceChildren(...jobs.map((j) => {
    const active = ["queued", "running", "paused"].includes(j.state);
    const btns = el("td", {});
    if (active) {
      if (j.state === "paused") btns.append(el("button", {"data-action": "resume", "data-job": j.id,
        onclick: () => command(j.id, "resume")}, "Resume"));
      else btns.append(el("button", {"data-action": "pause", "data-job": j.id,
        onclick: () => command(j.id, "pause")}, "Pause"));
      btns.append(" ", el("button", {class: "danger", "data-action": "stop", "data-job": j.id,
        onclick: () => command(j.id, "stop")}, "Stop"));
    }
    const bar = el("span", {class: "progress"}, el("div", {style: ""}));
    bar.firstChild.style.width = `${Math.round(100 * (j.fraction || 0))}%`;
    return el("tr", {"data-job": j.id, "data-state": j.state},
      el("td", {}, el("b", {}, j.name), el("br"), el("span", {class: "muted small"}, j.id)),
      el("td", {}, j.kind), el("td", {class: "jobstate"}, j.state + (j.error ? `: ${j.error}` : "")),
      el("td", {}, bar, el("span", {class: "small"}, j.words || "")),
      el("td", {class: "small"}, j.client || ""), btns);
  }));
  if (!jobs.length) tb.replaceChildren(el("tr", {}, el("td", {class: "muted", colSpan: 6}, "no job yet")));
}

async function command(jobId, verb) {
  say(`${verb} ${jobId}…`);
  const r = await api(`/jobs/${encodeURIComponent(jobId)}/${verb}`, {method: "POST"});
  if (r.ok && r.body && r.body.ok) say(`${verb}: job ${jobId} is ${r.body.result.state}`, "ok");
  else say(`${verb} refused (${r.status}): ${r.body && r.body.error ? r.body.error.message : r.status}`, "error");
  refreshSoon();
}

async function submitJob() {
  const text = $("job-text").value;
  if (!text.trim()) { say("paste a job file or choose one first", "error"); return; }
  const r = await api("/jobs", {method: "POST", body: text, headers: {"Content-Type": "application/toml"}});
  if (r.ok && r.body && r.body.ok) say(`submitted ${r.body.result.id} (${r.body.result.name})`, "ok");
  else say(`submit refused (${r.status}): ${r.body && r.body.error ? r.body.error.message : r.status}`, "error");
  refreshSoon();
}

// -- runs ----------------------------------------------------------------------------------------
function figureOf(r) {
  const s = r.summary || {};
  if (r.kind === "sweep") return s.l_max_cd_m2 !== undefined ?
    `Lmax ${fmt(s.l_max_cd_m2)} cd/m², EQE ${fmt(s.eqe_max_pct, 3)} %` : "";
  if (s.t50_h !== undefined && s.t50_h !== null) return `T50 ${fmt(s.t50_h, 3)} h`;
  if (s.final_l_rel !== undefined) return `L/L0 ${fmt(s.final_l_rel, 3)}`;
  return "";
}
async function loadRuns() {
  const r = await api("/runs?limit=50");
  if (!r.ok) return;
  const tb = $("runs-table").querySelector("tbody");
  tb.replaceChildren(...r.body.runs.map((x) => el("tr", {"data-run": x.id},
    el("td", {}, x.id), el("td", {}, x.kind), el("td", {}, x.label || x.pixel),
    el("td", {}, x.status + (x.end_reason ? ` (${x.end_reason})` : "")),
    el("td", {class: "small"}, when(x.started_at)), el("td", {class: "small"}, figureOf(x)),
    el("td", {}, el("button", {onclick: () => download(`/runs/${x.id}/report`, `run${x.id}-report.html`)}, "report"),
      " ", el("button", {onclick: () => download(`/runs/${x.id}/export`, `run${x.id}.zip`)}, "export")))));
  if (!r.body.runs.length) tb.replaceChildren(el("tr", {}, el("td", {class: "muted", colSpan: 7}, "no run yet")));
}
async function download(path, name) {
  say(`preparing ${name}…`);
  const r = await fetch(API + path, {headers: headers()});
  if (!r.ok) { say(`download refused (${r.status})`, "error"); return; }
  const blob = await r.blob();
  const a = el("a", {href: URL.createObjectURL(blob), download: name});
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  say(`downloaded ${name}`, "ok");
}

// -- aging ---------------------------------------------------------------------------------------
async function syncAging(runIds) {
  const keep = new Set(runIds);
  let changed = false;
  for (const id of [...state.aging.keys()]) if (!keep.has(id)) { state.aging.delete(id); changed = true; }
  for (const id of runIds) {
    if (state.aging.has(id)) continue;
    state.aging.set(id, {pixel: null, t: [], l: [], v: [], lastSeq: -1, lifetime: null, loading: true});
    changed = true;
    loadAging(id);
  }
  if (changed) drawAging(true);
}
async function loadAging(id) {
  // the history from the API; samples pushed meanwhile (seq above the history's last) are kept
  const cur = state.aging.get(id);
  if (!cur) return;
  cur.pend = [];
  const r = await api(`/runs/${id}/data?max_points=3000`);
  if (!r.ok || state.aging.get(id) !== cur) return;
  const d = r.body;
  const pend = cur.pend;
  cur.pend = null;
  cur.pixel = d.pixel;
  cur.t = d.t_s.map((x) => x / 3600);
  cur.l = d.l_rel; cur.v = d.voltage_v;
  cur.lastSeq = d.last_seq === null ? -1 : d.last_seq;
  cur.lifetime = d.lifetime;
  for (const [seq, t, l, v] of pend) if (seq > cur.lastSeq) {
    cur.t.push(t); cur.l.push(l); cur.v.push(v); cur.lastSeq = seq;
  }
  const first = cur.loading;
  cur.loading = false;
  drawAging(first);
}
function reloadAging() {  // after (re)connecting the push channel: fill what it did not carry
  for (const id of state.aging.keys()) loadAging(id);
}
async function refreshLifetimes() {
  const active = new Set(((state.status && state.status.pixels) || [])
    .filter((p) => p.state === "aging" || p.state === "paused").map((p) => p.run_id));
  for (const [id, cur] of state.aging) {
    if (!active.has(id)) continue;
    const r = await api(`/runs/${id}/data?max_points=10`);
    if (r.ok) { cur.lifetime = r.body.lifetime; }
  }
  drawAging(false);
}
function onAging(msg) {
  let n = 0;
  for (const [rid, d] of Object.entries(msg.runs)) {
    const cur = state.aging.get(Number(rid));
    if (!cur) continue;
    for (let i = 0; i < d.seq.length; i++) {
      const row = [d.seq[i], d.t_s[i] / 3600, d.l_rel[i], d.voltage_v[i]];
      if (cur.pend) cur.pend.push(row);
      if (cur.loading || d.seq[i] <= cur.lastSeq) continue;
      cur.t.push(row[1]); cur.l.push(row[2]); cur.v.push(row[3]); cur.lastSeq = row[0];
      n++;
    }
  }
  if (n) drawAgingSoon();
  // new aging runs appear through the status (pixels), which lists each pixel's latest run
  for (const rid of Object.keys(msg.runs)) if (!state.aging.has(Number(rid))) refreshSoon();
}
let agingTimer = null;
function drawAgingSoon() {
  if (agingTimer) return;
  agingTimer = setTimeout(() => { agingTimer = null; drawAging(false); }, 300);
}
function drawAging(rebuild) {
  const runs = [...state.aging.entries()].filter(([, r]) => !r.loading && r.t.length).sort((a, b) => a[0] - b[0]);
  const total = runs.reduce((s, [, r]) => s + r.t.length, 0);
  $("aging-plot").dataset.points = String(total);
  const tables = runs.map(([, r]) => [r.t, r.l, r.v]);
  const keys = runs.map(([id]) => id).join(",");
  if (!runs.length) {
    if (state.agingPlot) { state.agingPlot.destroy(); state.agingPlot = null; }
    $("aging-plot").replaceChildren(el("p", {class: "muted"}, "no aging run yet"));
    $("aging-tx").textContent = "";
    state.agingKeys = "";
    return;
  }
  const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
  if (!state.agingPlot || rebuild || keys !== state.agingKeys) {
    if (state.agingPlot) state.agingPlot.destroy();
    $("aging-plot").replaceChildren();
    const series = [{label: "t (h)", value: (u, v) => v === null ? "—" : fmt(v, 4)}];
    runs.forEach(([id, r], i) => {
      const c = COLORS[i % COLORS.length];
      series.push({label: `px${r.pixel} L/L0 (run ${id})`, scale: "l", stroke: c, width: 1.5, spanGaps: true,
                   value: (u, v) => fmt(v, 4)});
      series.push({label: `px${r.pixel} V`, scale: "v", stroke: c, dash: [4, 4], width: 1, spanGaps: true,
                   value: (u, v) => fmt(v, 4)});
    });
    state.agingPlot = new uPlot({
      width: plotWidth("aging-plot"), height: 300,
      scales: {x: {time: false}, l: {range: (u, lo, hi) => [Math.min(0, lo), Math.max(1.05, hi)]}, v: {}},
      axes: [{label: "time (h)"}, {scale: "l", label: "L/L0"},
             {scale: "v", side: 1, label: "V", grid: {show: false}}],
      series,
      hooks: {draw: [drawTx]},
    }, data, $("aging-plot"));
    state.agingKeys = keys;
  } else {
    state.agingPlot.setData(data);
  }
  $("aging-tx").replaceChildren(...runs.map(([id, r], i) => {
    const lt = r.lifetime || {};
    const parts = TX_LEVELS.map(([k]) => `${k.toUpperCase()} ${lt[k + "_h"] === null || lt[k + "_h"] === undefined ? "not reached" : fmt(lt[k + "_h"], 3) + " h"}`);
    return el("div", {}, el("span", {style: ""}, "■ "), `px${r.pixel} (run ${id}): ${parts.join(" · ")}`);
  }));
  [...$("aging-tx").children].forEach((d, i) => { d.firstChild.style.color = COLORS[i % COLORS.length]; });
}
function drawTx(u) {
  const runs = [...state.aging.entries()].filter(([, r]) => !r.loading && r.t.length).sort((a, b) => a[0] - b[0]);
  const ctx = u.ctx;
  ctx.save();
  ctx.font = `${Math.round(10 * devicePixelRatio)}px system-ui, sans-serif`;
  runs.forEach(([, r], i) => {
    const lt = r.lifetime || {};
    for (const [k, level] of TX_LEVELS) {
      const tx = lt[k + "_h"];
      if (tx === null || tx === undefined) continue;
      const x = u.valToPos(tx, "x", true), y = u.valToPos(level, "l", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
      ctx.strokeStyle = COLORS[i % COLORS.length];
      ctx.fillStyle = COLORS[i % COLORS.length];
      ctx.setLineDash([2 * devicePixelRatio, 3 * devicePixelRatio]);
      ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
      ctx.setLineDash([]);
      ctx.beginPath(); ctx.arc(x, y, 3.5 * devicePixelRatio, 0, 2 * Math.PI); ctx.fill();
      ctx.fillText(k.toUpperCase(), x + 4 * devicePixelRatio, y - 4 * devicePixelRatio);
    }
  });
  ctx.restore();
}

// -- sweep ---------------------------------------------------------------------------------------
async function loadSweep(runId) {
  const r = await api(`/runs/${runId}/data`);
  if (!r.ok) return;
  state.sweep = r.body;
  drawSweep();
}
function positive(a) { return a.map((v) => (v !== null && v > 0 ? v : null)); }
function drawSweep() {
  const d = state.sweep;
  if (!d) return;
  $("sweep-title").textContent = `pixel ${d.pixel}, run ${d.run_id}, ${d.n} points`;
  const fwd = d.direction.map((x, i) => (x === "reverse" ? -1 : i)).filter((i) => i >= 0);
  const pick = (a) => fwd.map((i) => a[i]);
  const V = pick(d.voltage_v), J = pick(d.current_density_ma_cm2), L = pick(d.luminance_cd_m2);
  mkPlot("jvl", "jvl-plot", {
    scales: {x: {time: false}, j: {distr: 3}, L: {distr: 3}},
    axes: [{label: "V"}, logAxis({scale: "j", label: "J (mA/cm²)"}),
           logAxis({scale: "L", side: 1, label: "L (cd/m²)", grid: {show: false}})],
    series: [{label: "V"}, {label: "J", scale: "j", stroke: COLORS[0], width: 1.5, spanGaps: true},
             {label: "L", scale: "L", stroke: COLORS[3], width: 1.5, spanGaps: true}],
  }, [V, positive(J), positive(L)]);
  // efficiencies against J (sorted)
  const idx = fwd.filter((i) => d.current_density_ma_cm2[i] > 0).sort((a, b) =>
    d.current_density_ma_cm2[a] - d.current_density_ma_cm2[b]);
  const thr = (d.summary && d.summary.threshold_cd_m2) || 1.0;
  const at = (a) => idx.map((i) => a[i]);
  const lit = (a) => idx.map((i) => (d.luminance_cd_m2[i] !== null && d.luminance_cd_m2[i] >= thr ? a[i] : null));
  mkPlot("eff", "eff-plot", {
    scales: {x: {time: false, distr: 3}, e: {range: (u, lo, hi) => [0, hi > 0 ? hi * 1.05 : 1]},
             c: {range: (u, lo, hi) => [0, hi > 0 ? hi * 1.05 : 1]}},
    axes: [logAxis({label: "J (mA/cm²)"}), {scale: "e", label: "EQE (%)"}, {scale: "c", side: 1, label: "CE (cd/A), PE (lm/W)", grid: {show: false}}],
    series: [{label: "J"}, {label: "EQE %", scale: "e", stroke: COLORS[2], width: 1.5, spanGaps: true},
             {label: "CE cd/A", scale: "c", stroke: COLORS[1], width: 1.5, spanGaps: true},
             {label: "PE lm/W", scale: "c", stroke: COLORS[4], width: 1.5, dash: [4, 3], spanGaps: true}],
  }, [at(d.current_density_ma_cm2), lit(d.eqe_pct), lit(d.ce_cd_a), lit(d.pe_lm_w)]);
  const specs = (d.spectra || []).filter((s) => s.wavelength_nm);
  if (specs.length) {
    const tables = specs.map((s) => [s.wavelength_nm, s.relative]);
    mkPlot("spec", "spec-plot", {
      scales: {x: {time: false}, y: {range: [0, 1.05]}},
      axes: [{label: "wavelength (nm)"}, {label: "relative"}],
      series: [{label: "nm"}, ...specs.map((s, i) => ({label: s.voltage_v !== undefined && s.voltage_v !== null ?
        `${fmt(s.voltage_v, 3)} V` : "spectrum", stroke: COLORS[i % COLORS.length], width: 1.2, spanGaps: true}))],
    }, tables.length === 1 ? tables[0] : uPlot.join(tables));
  } else {
    if (state.sweepPlots.spec) { state.sweepPlots.spec.destroy(); delete state.sweepPlots.spec; }
    $("spec-plot").replaceChildren(el("p", {class: "muted"}, "no spectrum in this run"));
  }
  drawCie();
  renderS1();
}
// log axes: grid lines, ticks and labels at decades only (uPlot also splits at 2..9 × 10^n),
// every second decade labelled when more than six are shown
function isDecade(v) { return v > 0 && Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-6; }
function decades(u, splits) { return splits.map((v) => (isDecade(v) ? v : null)); }
function decadeLabel(v) {
  const e = Math.round(Math.log10(v));
  return e >= -3 && e <= 4 ? String(Number(v.toPrecision(1))) : `1e${e}`;
}
function logTicks(u, vals) {
  const shown = vals.filter((v) => v !== null);
  const step = shown.length > 6 ? 2 : 1;
  return vals.map((v) => (v === null || Math.round(Math.log10(v)) % step !== 0 ? "" : decadeLabel(v)));
}
function logAxis(opts) {
  return {...opts, values: logTicks, filter: decades, ticks: {filter: decades},
          grid: {filter: decades, ...(opts.grid || {})}};
}
function mkPlot(name, id, opts, data) {
  if (state.sweepPlots[name]) state.sweepPlots[name].destroy();
  $(id).replaceChildren();
  state.sweepPlots[name] = new uPlot(Object.assign({width: plotWidth(id), height: 260}, opts), data, $(id));
}
function onSweep(msg) {
  const d = state.sweep;
  for (const [rid, pts] of Object.entries(msg.runs)) {
    if (d && Number(rid) === d.run_id) {
      for (let i = 0; i < pts.seq.length; i++) {
        d.direction.push(pts.direction[i]); d.voltage_v.push(pts.voltage_v[i]);
        d.current_density_ma_cm2.push(pts.current_density_ma_cm2[i]);
        d.luminance_cd_m2.push(pts.luminance_cd_m2[i]); d.eqe_pct.push(pts.eqe_pct[i]);
        d.ce_cd_a.push(null); d.pe_lm_w.push(null); d.n++;
      }
      drawSweepSoon();
    } else if (pts.pixel === state.selectedPixel && (!d || Number(rid) > d.run_id)) {
      loadSweep(Number(rid));  // a new sweep of the shown pixel: follow it
    }
  }
}
let sweepTimer = null;
function drawSweepSoon() {
  if (sweepTimer) return;
  sweepTimer = setTimeout(() => { sweepTimer = null; drawSweep(); }, 500);
}
async function drawCie() {
  const c = $("cie");
  const dpr = window.devicePixelRatio || 1;
  const size = 320;
  c.width = size * dpr; c.height = size * dpr;
  const g = c.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, size, size);
  if (!state.locus) {
    const r = await fetch("/static/cie1931_locus.json");
    state.locus = (await r.json()).wavelength_x_y;
  }
  const m = 30, w = size - m - 10;
  const X = (x) => m + (x / 0.8) * w, Y = (y) => size - m - (y / 0.9) * w;
  g.strokeStyle = "#d9dde2"; g.fillStyle = "#68707a"; g.font = "10px system-ui, sans-serif";
  for (let i = 0; i <= 8; i++) {
    g.beginPath(); g.moveTo(X(i / 10), Y(0)); g.lineTo(X(i / 10), Y(0.9)); g.stroke();
    g.fillText((i / 10).toFixed(1), X(i / 10) - 8, size - m + 14);
  }
  for (let i = 0; i <= 9; i++) {
    g.beginPath(); g.moveTo(X(0), Y(i / 10)); g.lineTo(X(0.8), Y(i / 10)); g.stroke();
    g.fillText((i / 10).toFixed(1), 4, Y(i / 10) + 3);
  }
  g.strokeStyle = "#1d232a"; g.lineWidth = 1.2; g.beginPath();
  state.locus.forEach(([, x, y], i) => (i ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y))));
  g.closePath(); g.stroke();
  for (const [wl, x, y] of state.locus) if ([460, 480, 500, 520, 540, 560, 580, 600, 620].includes(wl))
    g.fillText(String(wl), X(x) + 4, Y(y));
  const pts = [];
  const s = state.sweep && state.sweep.summary;
  if (s && s.cie_x !== null && s.cie_x !== undefined) pts.push([`run ${state.sweep.run_id}`, s.cie_x, s.cie_y, COLORS[1]]);
  const seed = state.sweep && state.sweep.table_s1_seed;
  if (seed) pts.push([`seed ${seed.device}`, seed.cie_x, seed.cie_y, COLORS[2]]);
  pts.forEach(([label, x, y, col], i) => {
    g.fillStyle = col; g.strokeStyle = col; g.lineWidth = 1.5; g.beginPath();
    if (i === 0) { g.arc(X(x), Y(y), 3.5, 0, 2 * Math.PI); g.fill(); }
    else { g.arc(X(x), Y(y), 7, 0, 2 * Math.PI); g.stroke(); }
    g.textAlign = "right";  // the legend ends at the plot's right edge, never clipped
    g.fillText(`${label} (${fmt(x, 3)}, ${fmt(y, 3)})`, size - 6, 16 + 14 * i);
    g.textAlign = "left";
  });
}
const S1_ROWS = [["von_v", "V_on (V)"], ["l_max_cd_m2", "L_max (cd/m²)"], ["ce_max_cd_a", "CE_max (cd/A)"],
  ["eqe_max_pct", "EQE_max (%)"], ["pe_max_lm_w", "PE_max (lm/W)"], ["el_peak_nm", "EL peak (nm)"],
  ["el_fwhm_nm", "EL FWHM (nm)"], ["cie_x", "CIE x"], ["cie_y", "CIE y"]];
function renderS1() {
  const d = state.sweep;
  const s = d.summary || {}, seed = d.table_s1_seed;
  const head = el("tr", {}, el("th", {}, "device"), ...S1_ROWS.map(([, h]) => el("th", {}, h)));
  const rows = [el("tr", {"data-row": "measured"}, el("td", {}, `px${d.pixel} run ${d.run_id}`),
    ...S1_ROWS.map(([k]) => el("td", {}, fmt(s[k] ?? null))))];
  if (seed) rows.push(el("tr", {"data-row": "seed"}, el("td", {}, `seed: ${seed.device}`),
    ...S1_ROWS.map(([k]) => el("td", {}, fmt(seed[k] ?? null)))));
  $("s1-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

// -- live ----------------------------------------------------------------------------------------
async function live() {
  const ctl = new AbortController();
  state.live = ctl;
  try {
    const r = await fetch(API + "/live", {headers: headers(), signal: ctl.signal});
    if (!r.ok) {
      badge("b-live", `live: ${r.status === 401 ? "needs a key" : "refused " + r.status}`, "bad");
      if (r.status === 401) return;
      throw new Error(String(r.status));
    }
    badge("b-live", "live", "ok");
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        let ev = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) ev = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) handle(ev, JSON.parse(data));
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (state.live !== ctl) return;
  badge("b-live", "live: reconnecting", "off");
  setTimeout(() => { if (state.live === ctl) { refreshAll(); live(); } }, 2000);
}
function handle(ev, msg) {
  if (ev === "hello") reloadAging();
  else if (ev === "status") renderStatus(msg);
  else if (ev === "aging") onAging(msg);
  else if (ev === "sweep") onSweep(msg);
  else if (ev === "event") {
    if (msg.kind.startsWith("job/")) refreshSoon();
    if (msg.kind.startsWith("alert/")) {
      const p = msg.payload || {};
      const what = Object.entries(p).filter(([k]) => !["job", "name", "state"].includes(k))
        .map(([k, v]) => `${k} ${typeof v === "number" ? fmt(v) : v}`).join(", ");
      $("alerts").textContent = `${new Date(msg.ts * 1000).toLocaleTimeString()} alert ` +
        `${msg.kind.slice(6)}${p.name ? ` (${p.name})` : ""}: ${what}`;
    }
  }
  window.stationLastMessage = {ev, at: Date.now(), msg};
}

let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; loadJobs(); loadRuns(); }, 300);
}
async function whoami() {
  const r = await api("/whoami");
  if (r.ok) {
    state.role = r.body.role;
    $("role").textContent = r.body.role === "anonymous" ? "viewer (no key)" :
      `${r.body.name}: ${r.body.role}`;
  } else {
    state.role = "none";
    $("role").textContent = r.status === 401 && state.key ? "unknown key" : "needs a key to view";
  }
}
async function refreshAll() {
  await whoami();
  const st = await api("/status");
  if (st.ok) renderStatus(st.body);
  await Promise.all([loadJobs(), loadRuns()]);
}

function start() {
  $("key").value = state.key;
  $("keyform").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("key").value.trim();
    localStorage.setItem("station-key", state.key);
    if (state.live) state.live.abort();
    state.live = null;
    refreshAll().then(live);
  });
  $("forget").addEventListener("click", () => {
    state.key = ""; $("key").value = ""; localStorage.removeItem("station-key");
    if (state.live) state.live.abort();
    state.live = null;
    refreshAll().then(live);
  });
  $("job-file").addEventListener("change", async (e) => {
    const f = e.target.files[0];
    if (f) $("job-text").value = await f.text();
  });
  $("job-submit").addEventListener("click", submitJob);
  let w = window.innerWidth;
  window.addEventListener("resize", () => {
    if (Math.abs(window.innerWidth - w) < 30) return;
    w = window.innerWidth;
    drawAging(true); if (state.sweep) drawSweep();
  });
  setInterval(refreshLifetimes, 10000);
  refreshAll().then(live);
}
start();

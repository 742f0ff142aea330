// The dashboard's browser side (plain JS, no dependencies): renders each snapshot the rank pushes
// over Server-Sent Events (/dashboard/events). Charts are inline SVG.

const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

/** nccl-tests' bus-bandwidth factors: busbw = algbw * factor(n). */
const BUS_FACTOR = {
  allreduce: (n) => (2 * (n - 1)) / n,
  reduce_scatter: (n) => (n - 1) / n,
  allgather: (n) => (n - 1) / n,
  alltoall: (n) => (n - 1) / n,
  gather: (n) => (n - 1) / n,
  scatter: (n) => (n - 1) / n,
  broadcast: () => 1,
  reduce: () => 1,
  send: () => 1,
  recv: () => 1,
};

function fmtBytes(b) {
  if (b == null) return "";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) {
    b /= 1024;
    i++;
  }
  return `${i ? b.toFixed(1) : b} ${u[i]}`;
}

function busbw(e, n) {
  const f = BUS_FACTOR[e.op];
  if (!f || !e.bytes || !(e.elapsed_ms > 0) || e.outcome !== "ok") return null;
  return ((e.bytes / (e.elapsed_ms / 1000)) * f(Math.max(n, 1))) / 1e9;
}

function renderRanks(s) {
  $("ranks").innerHTML = s.ranks
    .map(
      (r) => `<div class="rank" data-testid="rank-${r.rank}" data-state="${esc(r.state)}">
<div class="n">rank ${r.rank}${r.rank === s.rank ? " (this)" : ""}</div>
<div class="state">${esc(r.state)}${r.active ? "" : " · inactive"}</div>
<div class="muted">pid ${esc(r.pid)} · ${esc(r.url)}</div>
${r.reason ? `<div class="why">${esc(r.reason)}</div>` : ""}</div>`,
    )
    .join("");
}

function renderInflight(s) {
  const rows = [];
  for (const w of s.waiting)
    rows.push(
      `<tr><td>seq ${w.seq}</td><td>${esc(w.group)}${w.tag ? ` · ${esc(w.tag)}` : ""}</td><td class="ok">called: ${w.joined.join(", ") || "none"}</td><td class="bad">not yet: ${w.missing.join(", ") || "none"}</td></tr>`,
    );
  for (const r of s.running)
    rows.push(`<tr><td>seq ${r.seq}</td><td>${esc(r.op)} · ${esc(r.group)}</td><td>ranks ${r.ranks.join(", ")}</td><td class="${r.state === "failed" ? "bad" : ""}">${esc(r.state === "running" ? "on the data plane" : "failed: awaiting re-issue")}</td></tr>`);
  $("inflight").innerHTML = rows.length
    ? `<tr><th>call</th><th>op / group</th><th>has called</th><th>hasn't</th></tr>${rows.join("")}`
    : `<tr><td class="muted">${s.coordinator ? "nothing in flight" : "nothing in flight on this rank (rank 0's dashboard shows who has and hasn't called)"}</td></tr>`;
}

function renderFailures(s) {
  const f = s.failures;
  const parts = [];
  if (f.self) parts.push(`<p class="bad" data-testid="self-failure"><b>this rank:</b> ${esc(f.self)}</p>`);
  for (const r of f.ranks) parts.push(`<p class="bad" data-testid="failure-rank-${r.rank}"><b>rank ${r.rank} failed</b>${r.at ? ` at ${esc(r.at)}` : ""}: ${esc(r.reason ?? "no reason given")}</p>`);
  for (const o of f.ops) parts.push(`<p class="bad">${esc(o.op)} seq ${esc(o.seq)}: <b>${esc(o.outcome)}</b> ${esc(o.message ?? "")}</p>`);
  $("failures").innerHTML = parts.join("") || `<p class="muted">none</p>`;
}

function renderEvents(s) {
  $("events").innerHTML =
    `<tr><th>time</th><th>epoch</th><th>rank</th><th>change</th><th>cause</th></tr>` +
    s.events
      .map((e) => `<tr><td>${esc(e.at.slice(11, 23))}</td><td class="num">${e.epoch}</td><td class="num">${e.rank}</td><td>${esc(e.from ?? "·")} → <b>${esc(e.to)}</b></td><td>${esc(e.reason ?? "")}</td></tr>`)
      .join("");
}

function renderRecent(s, n) {
  $("recent").innerHTML =
    `<tr><th>seq</th><th>op</th><th>dtype</th><th>count</th><th>bytes</th><th>latency</th><th>busbw</th><th>outcome</th></tr>` +
    s.recent
      .slice(0, 60)
      .map((e) => {
        const bw = busbw(e, n);
        return `<tr><td class="num">${esc(e.seq)}</td><td>${esc(e.op)}</td><td>${esc(e.dtype)}</td><td class="num">${esc(e.count)}</td><td class="num">${fmtBytes(e.bytes)}</td><td class="num">${e.elapsed_ms.toFixed(3)} ms</td><td class="num">${bw == null ? "" : bw.toFixed(3)}</td><td class="${e.outcome === "ok" ? "ok" : "bad"}">${esc(e.outcome)}</td></tr>`;
      })
      .join("");
}

/** A line chart of points [{t (ms), v}] as inline SVG. */
function chart(svg, points, unit, color) {
  const W = svg.clientWidth || 460;
  const H = svg.clientHeight || 180;
  const pad = { l: 46, r: 8, t: 8, b: 18 };
  if (points.length === 0) {
    svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no operations yet</text>`;
    return;
  }
  const t0 = Math.min(...points.map((p) => p.t));
  const t1 = Math.max(...points.map((p) => p.t), t0 + 1);
  const vmax = Math.max(...points.map((p) => p.v)) * 1.1 || 1;
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - (v / vmax) * (H - pad.t - pad.b);
  const ticks = [0, 0.5, 1].map((k) => `<text x="${pad.l - 4}" y="${y(vmax * k) + 3}" text-anchor="end">${(vmax * k).toPrecision(3)}</text><line x1="${pad.l}" x2="${W - pad.r}" y1="${y(vmax * k)}" y2="${y(vmax * k)}" stroke="#eee"/>`).join("");
  const path = points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
  const dots = points.length <= 60 ? points.map((p) => `<circle cx="${x(p.t).toFixed(1)}" cy="${y(p.v).toFixed(1)}" r="2" fill="${color}"/>`).join("") : "";
  svg.innerHTML = `${ticks}<polyline class="line" stroke="${color}" points="${path}"/>${dots}<text x="${W - pad.r}" y="${H - 4}" text-anchor="end">${unit} · last ${points.length} ops</text>`;
}

function renderCharts(s, n) {
  const ok = s.recent.filter((e) => e.outcome === "ok").slice().reverse();
  const at = (e) => Date.parse(e.started_at);
  chart($("chart-busbw"), ok.map((e) => ({ t: at(e), v: busbw(e, n) })).filter((p) => p.v != null), "GB/s", "#2c5da8");
  chart($("chart-latency"), ok.map((e) => ({ t: at(e), v: e.elapsed_ms })), "ms", "#a0661b");
}

function render(s) {
  const active = s.ranks.filter((r) => r.active).length;
  const failed = s.ranks.filter((r) => r.state === "failed").length;
  $("summary").innerHTML = `<span data-testid="summary">${s.ranks.length} ranks · ${active} active · ${failed} failed · epoch <b data-testid="epoch">${s.epoch}</b> · this rank ${esc(s.state)}${s.coordinator ? " (coordinator: whole job)" : ""}</span>`;
  renderRanks(s);
  renderInflight(s);
  renderFailures(s);
  renderEvents(s);
  renderRecent(s, active);
  renderCharts(s, active);
  document.body.dataset.epoch = String(s.epoch);
}

function connect() {
  const es = new EventSource("/dashboard/events");
  es.addEventListener("snapshot", (ev) => {
    $("conn").textContent = "live";
    $("conn").className = "live";
    render(JSON.parse(ev.data));
  });
  es.onerror = () => {
    $("conn").textContent = "reconnecting…";
    $("conn").className = "down";
  };
}

connect();

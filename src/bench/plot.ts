// busbw-vs-size chart (log-log SVG) of one or several benchmark runs, so moonring and a peer
// (Open MPI, NCCL: same JSON fields) compare at a glance.
//   moonring bench --plot out.svg run1.json run2.json        (JSON lines or a JSON array per file)
//   moonring bench --op allreduce --nproc 2 --plot out.svg   (this run)
// Series: one per (file, source, op), where source is the record's "peer" (mpi, nccl) or
// "moonring <via>"; parts that are the same for every series are left out of the labels.

export interface PlotPoint {
  bytes: number;
  value: number;
}

export interface Series {
  label: string;
  points: PlotPoint[];
  /** Peers are drawn dashed. */
  dashed?: boolean;
  /** Series of one group share a color (e.g. moonring and MPI of one op). */
  group?: string;
}

interface Rec {
  op?: string;
  bytes?: number;
  busbw_gbps?: number;
  peer?: string;
  /** A name for the source (e.g. a build variant); default "moonring <via>". */
  source?: string;
  via?: string;
  transport?: string;
  nranks?: number;
}

/** Records of one file: JSON lines (other lines ignored) or one JSON array. */
export function parseRecords(text: string): Rec[] {
  const t = text.trim();
  if (t.startsWith("[")) {
    try {
      return (JSON.parse(t) as Rec[]).filter((r) => r && typeof r === "object");
    } catch {
      // fall through to lines
    }
  }
  const out: Rec[] = [];
  for (const line of t.split("\n")) {
    const s = line.trim();
    if (!s.startsWith("{")) continue;
    try {
      out.push(JSON.parse(s) as Rec);
    } catch {
      // not a record
    }
  }
  return out;
}

/** Groups the records of several runs into series of (bytes, busbw). */
export function seriesFromRuns(runs: { name: string; records: Rec[] }[], metric: keyof Rec = "busbw_gbps"): Series[] {
  type Key = { file: string; source: string; op: string; peer: boolean };
  const groups = new Map<string, { key: Key; points: PlotPoint[] }>();
  for (const run of runs) {
    for (const r of run.records) {
      if (typeof r.bytes !== "number" || typeof r[metric] !== "number" || !r.op) continue;
      const source = r.peer ? r.peer : r.source ? r.source : `moonring${r.via ? ` ${r.via}` : ""}${r.transport && r.transport !== "auto" ? ` ${r.transport}` : ""}`;
      const key: Key = { file: run.name, source, op: r.op, peer: !!r.peer };
      const id = JSON.stringify(key);
      let g = groups.get(id);
      if (!g) groups.set(id, (g = { key, points: [] }));
      g.points.push({ bytes: r.bytes, value: r[metric] as number });
    }
  }
  const all = [...groups.values()];
  const vary = (f: (k: Key) => string) => new Set(all.map((g) => f(g.key))).size > 1;
  const showOp = vary((k) => k.op);
  const showSource = vary((k) => k.source) || !showOp;
  // The file name only when source and op leave two series with one label.
  const short = (k: Key) => [showSource ? k.source : "", showOp ? k.op : ""].filter(Boolean).join(" ");
  const showFile = new Set(all.map((g) => short(g.key))).size < all.length;
  return all.map((g) => ({
    label: [showFile ? g.key.file : "", short(g.key)].filter(Boolean).join(" "),
    dashed: g.key.peer,
    group: showOp ? g.key.op : undefined,
    points: g.points.sort((a, b) => a.bytes - b.bytes),
  }));
}

export function sizeLabel(bytes: number): string {
  const units = ["", "K", "M", "G", "T"];
  let u = 0;
  let v = bytes;
  while (v >= 1024 && v % 1024 === 0 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v}${units[u]}`;
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function numLabel(v: number): string {
  if (v >= 1) return String(Math.round(v * 100) / 100);
  return String(Number(v.toPrecision(2)));
}

/** SVG coordinates to 0.1 px. */
const f = (x: number) => x.toFixed(1);

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

export interface PlotOptions {
  title?: string;
  yLabel?: string;
  width?: number;
  height?: number;
}

/** The chart: x = size (log2), y = bandwidth (log10); points with value <= 0 cannot be drawn on a log axis and are left out. */
export function renderSvg(series: Series[], opts: PlotOptions = {}): string {
  const W = opts.width ?? 900;
  const H = opts.height ?? 540;
  const ml = 72;
  const mr = 230;
  const mt = 44;
  const mb = 62;
  const pw = W - ml - mr;
  const ph = H - mt - mb;
  const pts = series.flatMap((s) => s.points).filter((p) => p.bytes > 0 && p.value > 0);
  const lx = (b: number) => Math.log2(b);
  const ly = (v: number) => Math.log10(v);
  let x0 = pts.length ? Math.floor(Math.min(...pts.map((p) => lx(p.bytes)))) : 3;
  let x1 = pts.length ? Math.ceil(Math.max(...pts.map((p) => lx(p.bytes)))) : 26;
  if (x1 <= x0) x1 = x0 + 1;
  let y0 = pts.length ? Math.floor(Math.min(...pts.map((p) => ly(p.value)))) : -3;
  let y1 = pts.length ? Math.ceil(Math.max(...pts.map((p) => ly(p.value)))) : 2;
  if (y1 <= y0) y1 = y0 + 1;
  const X = (b: number) => ml + ((lx(b) - x0) / (x1 - x0)) * pw;
  const Y = (v: number) => mt + ph - ((ly(v) - y0) / (y1 - y0)) * ph;
  const out: string[] = [];
  out.push(`<?xml version="1.0" encoding="UTF-8"?>`);
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${f(ml + pw / 2)}" y="24" text-anchor="middle" font-size="15">${esc(opts.title ?? "bus bandwidth vs message size")}</text>`);
  // grid and ticks
  const xStep = Math.max(1, Math.ceil((x1 - x0) / 12));
  out.push(`<g stroke="#e0e0e0" stroke-width="1">`);
  for (let e = x0; e <= x1; e++) out.push(`<line x1="${f(X(2 ** e))}" y1="${mt}" x2="${f(X(2 ** e))}" y2="${mt + ph}"/>`);
  for (let e = y0; e <= y1; e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (ly(v) > y1 + 1e-9) continue;
      out.push(`<line x1="${ml}" y1="${f(Y(v))}" x2="${ml + pw}" y2="${f(Y(v))}"${m === 1 ? ` stroke="#c8c8c8"` : ""}/>`);
    }
  }
  out.push(`</g>`);
  out.push(`<rect x="${ml}" y="${mt}" width="${pw}" height="${ph}" fill="none" stroke="#444"/>`);
  out.push(`<g text-anchor="middle">`);
  for (let e = x0; e <= x1; e += xStep) out.push(`<text x="${f(X(2 ** e))}" y="${mt + ph + 18}">${esc(sizeLabel(2 ** e))}</text>`);
  out.push(`</g>`);
  out.push(`<g text-anchor="end">`);
  for (let e = y0; e <= y1; e++) out.push(`<text x="${ml - 8}" y="${f(Y(10 ** e) + 4)}">${esc(numLabel(10 ** e))}</text>`);
  out.push(`</g>`);
  out.push(`<text x="${f(ml + pw / 2)}" y="${H - 16}" text-anchor="middle">message size (bytes, log scale)</text>`);
  out.push(`<text transform="translate(18 ${f(mt + ph / 2)}) rotate(-90)" text-anchor="middle">${esc(opts.yLabel ?? "busbw (GB/s, log scale)")}</text>`);
  drawSeries(out, series, X, Y, ml + pw, mt);
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}

/** The series' lines and points, and their legend right of the plot (from x = legendX). */
function drawSeries(out: string[], series: Series[], X: (bytes: number) => number, Y: (value: number) => number, legendX: number, mt: number): void {
  const groups: string[] = [];
  const solidInGroup = new Map<string, number>();
  // Same group, same color: the peer dashed, several own series solid, dotted, dash-dot.
  const ownDashes = ["", ` stroke-dasharray="2 3"`, ` stroke-dasharray="10 3 2 3"`, ` stroke-dasharray="1 1"`];
  series.forEach((s, i) => {
    const key = s.group ?? `#${i}`;
    if (!groups.includes(key)) groups.push(key);
    const color = COLORS[groups.indexOf(key) % COLORS.length]!;
    const p = s.points.filter((q) => q.bytes > 0 && q.value > 0);
    let dash = ` stroke-dasharray="6 4"`;
    if (!s.dashed) {
      const k = solidInGroup.get(key) ?? 0;
      solidInGroup.set(key, k + 1);
      dash = ownDashes[k % ownDashes.length]!;
    }
    out.push(`<g class="series" data-label="${esc(s.label)}">`);
    if (p.length > 1) out.push(`<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${p.map((q) => `${f(X(q.bytes))},${f(Y(q.value))}`).join(" ")}"/>`);
    for (const q of p) out.push(`<circle cx="${f(X(q.bytes))}" cy="${f(Y(q.value))}" r="2.8" fill="${color}"><title>${esc(`${s.label}: ${q.bytes} B, ${q.value} GB/s`)}</title></circle>`);
    out.push(`</g>`);
    const ly0 = mt + 10 + i * 20;
    out.push(`<line x1="${legendX + 14}" y1="${ly0}" x2="${legendX + 40}" y2="${ly0}" stroke="${color}" stroke-width="2"${dash}/>`);
    out.push(`<text x="${legendX + 46}" y="${ly0 + 4}">${esc(s.label)}</text>`);
  });
}

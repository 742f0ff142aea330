import { renderRuntimeMetrics } from "./runtime-metrics";

// Prometheus text metrics (no dependency): ops and bytes per op/outcome, a latency
// histogram per op, errors by code. Plus the /debug/recent ring of the last collectives.

const BUCKETS_S = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

class Histogram {
  counts = new Array<number>(BUCKETS_S.length).fill(0);
  sum = 0;
  count = 0;
  observe(seconds: number): void {
    this.sum += seconds;
    this.count++;
    for (let i = 0; i < BUCKETS_S.length; i++) {
      if (seconds <= BUCKETS_S[i]!) {
        this.counts[i]!++;
        break;
      }
    }
  }
}

export interface RecentEntry {
  seq: number | null;
  op: string;
  group: string | null;
  tag: string | null;
  dtype: string | null;
  count: number | null;
  bytes: number;
  /** epoch ms (rendered as an ISO string by recentEntries) */
  started_at: number | string;
  elapsed_ms: number;
  agree_ms: number | null;
  data_ms: number | null;
  outcome: string;
  message?: string;
  peer?: number;
}

function esc(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

export class Metrics {
  private ops = new Map<string, number>(); // key op\0outcome
  private bytes = new Map<string, number>();
  private latency = new Map<string, Histogram>();
  private errors = new Map<string, number>();
  private httpRequests = new Map<string, number>(); // key method\0route\0status
  private recentRing: RecentEntry[] = [];
  private recentNext = 0;
  readonly startedAt = Date.now();

  constructor(
    private rank: number,
    private recentMax = 256,
  ) {}

  setRank(rank: number): void {
    this.rank = rank;
  }

  /** One answered HTTP request; route is the route's pattern (/buffers/:id), never the raw path. */
  httpRequest(method: string, route: string, status: number): void {
    const k = `${method}\u0000${route}\u0000${status}`;
    this.httpRequests.set(k, (this.httpRequests.get(k) ?? 0) + 1);
  }

  op(op: string, outcome: string, bytes: number, seconds: number): void {
    const k = `${op}\u0000${outcome}`;
    this.ops.set(k, (this.ops.get(k) ?? 0) + 1);
    this.bytes.set(op, (this.bytes.get(op) ?? 0) + bytes);
    let h = this.latency.get(op);
    if (!h) {
      h = new Histogram();
      this.latency.set(op, h);
    }
    h.observe(seconds);
  }

  error(code: string): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  recent(entry: RecentEntry): void {
    if (this.recentRing.length < this.recentMax) this.recentRing.push(entry);
    else this.recentRing[this.recentNext] = entry;
    this.recentNext = (this.recentNext + 1) % this.recentMax;
  }

  /** Newest first. */
  recentEntries(limit = this.recentMax): RecentEntry[] {
    const n = this.recentRing.length;
    const out: RecentEntry[] = [];
    for (let i = 0; i < Math.min(n, limit); i++) {
      const e = this.recentRing[(this.recentNext - 1 - i + n * 2) % n]!;
      out.push({ ...e, started_at: typeof e.started_at === "number" ? new Date(e.started_at).toISOString() : e.started_at });
    }
    return out;
  }

  render(extra: string[] = []): string {
    const r = `rank="${this.rank}"`;
    const lines: string[] = [];
    lines.push("# HELP moonring_ops_total Collective and p2p operations finished, by op and outcome.");
    lines.push("# TYPE moonring_ops_total counter");
    for (const [k, v] of this.ops) {
      const [op, outcome] = k.split("\u0000");
      lines.push(`moonring_ops_total{${r},op="${esc(op!)}",outcome="${esc(outcome!)}"} ${v}`);
    }
    lines.push("# HELP moonring_bytes_total Tensor bytes this rank contributed, by op.");
    lines.push("# TYPE moonring_bytes_total counter");
    for (const [op, v] of this.bytes) lines.push(`moonring_bytes_total{${r},op="${esc(op)}"} ${v}`);
    lines.push("# HELP moonring_op_latency_seconds Latency of operations through REST (agreement + data plane), by op.");
    lines.push("# TYPE moonring_op_latency_seconds histogram");
    for (const [op, h] of this.latency) {
      let cum = 0;
      for (let i = 0; i < BUCKETS_S.length; i++) {
        cum += h.counts[i]!;
        lines.push(`moonring_op_latency_seconds_bucket{${r},op="${esc(op)}",le="${BUCKETS_S[i]}"} ${cum}`);
      }
      lines.push(`moonring_op_latency_seconds_bucket{${r},op="${esc(op)}",le="+Inf"} ${h.count}`);
      lines.push(`moonring_op_latency_seconds_sum{${r},op="${esc(op)}"} ${h.sum}`);
      lines.push(`moonring_op_latency_seconds_count{${r},op="${esc(op)}"} ${h.count}`);
    }
    lines.push("# HELP moonring_errors_total Error responses, by code.");
    lines.push("# TYPE moonring_errors_total counter");
    for (const [code, v] of this.errors) lines.push(`moonring_errors_total{${r},code="${esc(code)}"} ${v}`);
    lines.push("# HELP moonring_http_requests_total HTTP requests answered, by method, route pattern and status code.");
    lines.push("# TYPE moonring_http_requests_total counter");
    for (const [k, v] of this.httpRequests) {
      const [method, route, status] = k.split("\u0000");
      lines.push(`moonring_http_requests_total{${r},method="${esc(method!)}",route="${esc(route!)}",code="${status}"} ${v}`);
    }
    lines.push("# HELP moonring_uptime_seconds Seconds since this rank service started.");
    lines.push("# TYPE moonring_uptime_seconds gauge");
    lines.push(`moonring_uptime_seconds{${r}} ${(Date.now() - this.startedAt) / 1000}`);
    lines.push(...renderRuntimeMetrics(r));
    lines.push(...extra);
    return lines.join("\n") + "\n";
  }
}

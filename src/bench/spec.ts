// What one benchmark point is, the way nccl-tests defines it: sizes, element counts per rank,
// algbw / busbw factors, the table and the JSON record. Pure functions (unit-tested in
// tests/bench/format.test.ts); the runners (native.ts, rest.ts) only time things.
import { dtypeInfo, type DTypeName, type RedOpName } from "../ops/table";

export const BENCH_OPS = [
  "allreduce",
  "reduce",
  "broadcast",
  "allgather",
  "gather",
  "scatter",
  "reduce_scatter",
  "alltoall",
  "sendrecv",
  "barrier",
] as const;
export type BenchOp = (typeof BENCH_OPS)[number];

export function isBenchOp(s: string): s is BenchOp {
  return (BENCH_OPS as readonly string[]).includes(s);
}

/** Ops that take a reduce op (the redop column; others print "none"). */
export function hasRedop(op: BenchOp): boolean {
  return op === "allreduce" || op === "reduce" || op === "reduce_scatter";
}

/** Ops with a root (the root column; others print -1). */
export function isRooted(op: BenchOp): boolean {
  return op === "reduce" || op === "broadcast" || op === "gather" || op === "scatter";
}

/** nccl-tests' bus bandwidth factor: busbw = algbw * factor. */
export function busFactor(op: BenchOp, n: number): number {
  switch (op) {
    case "allreduce":
      return (2 * (n - 1)) / n;
    case "allgather":
    case "reduce_scatter":
    case "alltoall":
    case "gather":
    case "scatter":
      return (n - 1) / n;
    case "broadcast":
    case "reduce":
    case "sendrecv":
      return 1;
    case "barrier":
      return 0;
  }
}

/** Element counts of one point (nccl-tests' getCollByteCount). */
export interface PointShape {
  /** The size column: max(send bytes, recv bytes) of one rank (the total for allgather etc.). */
  bytes: number;
  /** The count column: nccl-tests' "paramcount" (the per-rank part for allgather etc.). */
  count: number;
  /** Elements each rank sends / receives (send on the root only for scatter, recv on the root only for gather/reduce). */
  sendElems: number;
  recvElems: number;
  /** allgather, gather, scatter, reduce_scatter, alltoall: elements per rank block; else = count. */
  part: number;
}

/**
 * The shape nccl-tests uses for a requested size: count = floor(size / itemsize); the ops that
 * split a total among ranks use part = floor(count / n) and report size = part * n * itemsize.
 * A point whose count comes out 0 (size < n * itemsize) has bytes 0: the runners skip it.
 */
export function pointShape(op: BenchOp, sizeBytes: number, n: number, itemBytes: number): PointShape {
  const count = Math.floor(sizeBytes / itemBytes);
  const part = Math.floor(count / n);
  switch (op) {
    case "allreduce":
    case "reduce":
    case "broadcast":
    case "sendrecv":
      return { bytes: count * itemBytes, count, sendElems: count, recvElems: count, part: count };
    case "allgather":
    case "gather":
      return { bytes: part * n * itemBytes, count: part, sendElems: part, recvElems: part * n, part };
    case "scatter":
      return { bytes: part * n * itemBytes, count: part, sendElems: part * n, recvElems: part, part };
    case "reduce_scatter":
      return { bytes: part * n * itemBytes, count: part, sendElems: part * n, recvElems: part, part };
    case "alltoall":
      return { bytes: part * n * itemBytes, count: part, sendElems: part * n, recvElems: part * n, part };
    case "barrier":
      return { bytes: 0, count: 0, sendElems: 0, recvElems: 0, part: 0 };
  }
}

/** Requested sizes: min, 2*min, 4*min, ... <= max (nccl-tests -f 2). */
export function sizeSteps(minBytes: number, maxBytes: number, factor = 2): number[] {
  if (!(minBytes >= 1) || !(maxBytes >= minBytes) || !(factor >= 2)) return minBytes >= 1 && maxBytes >= minBytes ? [minBytes] : [];
  const out: number[] = [];
  for (let s = minBytes; s <= maxBytes; s *= factor) out.push(s);
  return out;
}

/** Timed iterations when --iters is not given: the schedule of the Open MPI peer (mpi_bench.c). */
export function defaultIters(bytes: number): number {
  return bytes <= 1 << 20 ? 200 : bytes <= 16 << 20 ? 20 : 5;
}

export interface BenchResult {
  op: BenchOp;
  bytes: number;
  count: number;
  dtype: DTypeName;
  /** Mean over timed iterations of the slowest rank's time (µs). */
  time_us: number;
  algbw_gbps: number;
  busbw_gbps: number;
  /** Wrong elements summed over ranks; null when results were not checked. */
  wrong: number | null;
  redop: RedOpName | null;
  root: number;
  nranks: number;
  via: "native" | "rest";
  iters: number;
  /** Percentiles over the timed iterations (of the slowest rank per iteration). */
  p50_us: number;
  p99_us: number;
  min_us: number;
  transport?: string;
  device?: string;
  /** via rest: how tensors travel (bodies, or shared buffers); "echo": the plain HTTP echo baseline. */
  mode?: "body" | "shm" | "echo";
  /** via rest: percentiles of single calls (each rank's request on its own). */
  call_p50_us?: number;
  call_p99_us?: number;
}

export function algbwGBps(bytes: number, timeUs: number): number {
  return timeUs > 0 ? bytes / timeUs / 1e3 : 0;
}

/** Rounds a time the way the JSON carries it (keeps the record short and stable). */
function round(x: number, digits: number): number {
  const m = 10 ** digits;
  return Math.round(x * m) / m;
}

/** Bandwidths keep 5 significant digits, so tiny sizes still plot on a log axis. */
function sig(x: number): number {
  return x === 0 || !Number.isFinite(x) ? 0 : Number(x.toPrecision(5));
}

/** Per-iteration times (µs, slowest rank per iteration) -> mean and percentiles. */
export function summarize(timesUs: number[]): { mean: number; p50: number; p99: number; min: number } {
  if (timesUs.length === 0) return { mean: 0, p50: 0, p99: 0, min: 0 };
  const sorted = [...timesUs].sort((a, b) => a - b);
  const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
  return { mean: timesUs.reduce((a, b) => a + b, 0) / timesUs.length, p50: q(0.5), p99: q(0.99), min: sorted[0]! };
}

export function makeResult(args: {
  op: BenchOp;
  shape: PointShape;
  dtype: DTypeName;
  redop: RedOpName;
  root: number;
  nranks: number;
  via: "native" | "rest";
  timesUs: number[];
  wrong: number | null;
  transport?: string;
  device?: string;
}): BenchResult {
  const s = summarize(args.timesUs);
  const algbw = algbwGBps(args.shape.bytes, s.mean);
  const r: BenchResult = {
    op: args.op,
    bytes: args.shape.bytes,
    count: args.shape.count,
    dtype: args.dtype,
    time_us: round(s.mean, 2),
    algbw_gbps: sig(algbw),
    busbw_gbps: sig(algbw * busFactor(args.op, args.nranks)),
    wrong: args.wrong,
    redop: hasRedop(args.op) ? args.redop : null,
    root: isRooted(args.op) ? args.root : -1,
    nranks: args.nranks,
    via: args.via,
    iters: args.timesUs.length,
    p50_us: round(s.p50, 2),
    p99_us: round(s.p99, 2),
    min_us: round(s.min, 2),
  };
  if (args.transport) r.transport = args.transport;
  if (args.device) r.device = args.device;
  return r;
}

/** The JSON line of one point: the contract's fields first, then extras. */
export function jsonLine(r: BenchResult): string {
  return JSON.stringify(r);
}

// ---- the nccl-tests table ----

const COLS = [
  ["size(B)", 12],
  ["count", 12],
  ["type", 9],
  ["redop", 6],
  ["root", 5],
  ["time(us)", 10],
  ["algbw(GB/s)", 12],
  ["busbw(GB/s)", 12],
  ["#wrong", 7],
] as const;

export function tableHeader(): string {
  return "#" + COLS.map(([name, w], i) => (i === 0 ? name.padStart(w - 1) : name.padStart(w))).join(" ");
}

/** nccl-tests prints time with fewer decimals as it grows. */
export function formatTimeUs(us: number): string {
  return us >= 10000 ? us.toFixed(0) : us >= 100 ? us.toFixed(1) : us.toFixed(2);
}

export function tableRow(r: BenchResult): string {
  const cells = [
    String(r.bytes),
    String(r.count),
    r.dtype,
    r.redop ?? "none",
    String(r.root),
    formatTimeUs(r.time_us),
    r.algbw_gbps.toFixed(2),
    r.busbw_gbps.toFixed(2),
    r.wrong === null ? "N/A" : String(r.wrong),
  ];
  return " " + cells.map((c, i) => (i === 0 ? c.padStart(COLS[i]![1] - 1) : c.padStart(COLS[i]![1]))).join(" ");
}

/** nccl-tests' footer: average bus bandwidth over the points, and the wrong-value verdict. */
export function tableFooter(rows: BenchResult[]): string[] {
  const withBw = rows.filter((r) => r.op !== "barrier");
  const avg = withBw.length ? withBw.reduce((a, r) => a + r.busbw_gbps, 0) / withBw.length : 0;
  const checked = rows.filter((r) => r.wrong !== null);
  const wrong = checked.reduce((a, r) => a + (r.wrong ?? 0), 0);
  const verdict = checked.length === 0 ? "not checked" : wrong === 0 ? "0 OK" : `${wrong} FAILED`;
  return [`# Out of bounds values : ${verdict}`, `# Avg bus bandwidth    : ${avg.toFixed(4)}`];
}

export function itemBytes(dtype: DTypeName): number {
  return dtypeInfo(dtype).bytes;
}

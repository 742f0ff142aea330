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

/** Sizes a run visits, at most (a limit on the loop below). */
export const SIZE_STEPS_MAX = 4096;

/**
 * Requested sizes, as nccl-tests steps them: min, min*f, min*f^2, ... <= max (-f, default 2);
 * or with a step of bytes (-i) min, min+i, min+2i, ... <= max.
 */
export function sizeSteps(minBytes: number, maxBytes: number, factor = 2, stepBytes?: number): number[] {
  if (!(minBytes >= 1) || !(maxBytes >= minBytes)) return [];
  const out: number[] = [];
  if (stepBytes !== undefined) {
    if (!(stepBytes >= 1)) return [minBytes];
    for (let s = minBytes; s <= maxBytes && out.length < SIZE_STEPS_MAX; s += stepBytes) out.push(s);
    return out;
  }
  if (!(factor >= 2)) return [minBytes];
  for (let s = minBytes; s <= maxBytes && out.length < SIZE_STEPS_MAX; s *= factor) out.push(s);
  return out;
}

/**
 * Ops with an in-place form, as nccl-tests times them: recv = send (allreduce, reduce,
 * broadcast), send = recv + rank's block (allgather, gather), recv = send + rank's block
 * (reduce_scatter, scatter). alltoall and sendrecv have none (nccl-tests prints N/A).
 */
export function hasInPlace(op: BenchOp): boolean {
  return op !== "alltoall" && op !== "sendrecv" && op !== "barrier";
}

/** Timed iterations when --iters is not given: the schedule of the Open MPI peer (mpi_bench.c). */
export function defaultIters(bytes: number): number {
  return bytes <= 1 << 20 ? 200 : bytes <= 16 << 20 ? 20 : 5;
}

/** The in-place column group of a point. */
export interface InPlaceResult {
  time_us: number;
  algbw_gbps: number;
  busbw_gbps: number;
  wrong: number | null;
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
  /** The in-place run of the same point; null where the op or the runner has none (N/A). */
  in_place?: InPlaceResult | null;
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

// ---- the nccl-tests table: out-of-place and in-place column groups ----

const KEY_COLS = [
  ["size", "(B)", 12],
  ["count", "(elements)", 12],
  ["type", "", 9],
  ["redop", "", 6],
  ["root", "", 5],
] as const;
const GROUP_COLS = [
  ["time", "(us)", 8],
  ["algbw", "(GB/s)", 7],
  ["busbw", "(GB/s)", 7],
  ["#wrong", "", 6],
] as const;
const WIDTHS = [...KEY_COLS.map((c) => c[2]), ...GROUP_COLS.map((c) => c[2]), ...GROUP_COLS.map((c) => c[2])];
/** Separator between the two column groups (nccl-tests puts a wider gap there). */
const GROUP_GAP = "  ";

function line(cells: string[]): string {
  const key = cells.slice(0, KEY_COLS.length).map((c, i) => c.padStart(WIDTHS[i]!)).join(" ");
  const group = (from: number) => cells.slice(from, from + GROUP_COLS.length).map((c, i) => c.padStart(WIDTHS[from + i]!)).join(" ");
  return `${key}  ${group(KEY_COLS.length)}${GROUP_GAP}${group(KEY_COLS.length + GROUP_COLS.length)}`;
}

/** nccl-tests' three header lines: the group titles, the column names, their units. */
export function tableHeader(): string[] {
  const names = line([...KEY_COLS.map((c) => c[0]), ...GROUP_COLS.map((c) => c[0]), ...GROUP_COLS.map((c) => c[0])]);
  const units = line([...KEY_COLS.map((c) => c[1]), ...GROUP_COLS.map((c) => c[1]), ...GROUP_COLS.map((c) => c[1])]);
  const keyWidth = KEY_COLS.reduce((a, c) => a + c[2] + 1, 0) + 1;
  const groupWidth = GROUP_COLS.reduce((a, c) => a + c[2] + 1, 0) - 1;
  const title = " ".repeat(keyWidth) + "out-of-place".padStart(Math.floor((groupWidth + 12) / 2)).padEnd(groupWidth) + GROUP_GAP + "in-place".padStart(Math.floor((groupWidth + 8) / 2)).padEnd(groupWidth);
  return [`#${title.slice(1)}`, `#${names.slice(1)}`, `#${units.slice(1)}`];
}

/** nccl-tests prints time with fewer decimals as it grows. */
export function formatTimeUs(us: number): string {
  return us >= 10000 ? us.toFixed(0) : us >= 100 ? us.toFixed(1) : us.toFixed(2);
}

function groupCells(g: { time_us: number; algbw_gbps: number; busbw_gbps: number; wrong: number | null } | null | undefined): string[] {
  if (!g) return ["N/A", "N/A", "N/A", "N/A"];
  return [formatTimeUs(g.time_us), g.algbw_gbps.toFixed(2), g.busbw_gbps.toFixed(2), g.wrong === null ? "N/A" : String(g.wrong)];
}

export function tableRow(r: BenchResult): string {
  return line([String(r.bytes), String(r.count), r.dtype, r.redop ?? "none", String(r.root), ...groupCells(r), ...groupCells(r.in_place)]);
}

/** nccl-tests' footer: wrong values over both groups, and bus bandwidth averaged over both. */
export function tableFooter(rows: BenchResult[]): string[] {
  const withBw = rows.filter((r) => r.op !== "barrier");
  const groups = [...withBw, ...withBw.map((r) => r.in_place).filter((g): g is InPlaceResult => !!g)];
  const avg = groups.length ? groups.reduce((a, g) => a + g.busbw_gbps, 0) / groups.length : 0;
  const checked = [...rows, ...rows.map((r) => r.in_place).filter((g): g is InPlaceResult => !!g)].filter((g) => g.wrong !== null);
  const wrong = checked.reduce((a, g) => a + (g.wrong ?? 0), 0);
  const verdict = checked.length === 0 ? "not checked" : wrong === 0 ? "0 OK" : `${wrong} FAILED`;
  return [`# Out of bounds values : ${verdict}`, `# Avg bus bandwidth    : ${avg.toFixed(4)}`];
}

export function itemBytes(dtype: DTypeName): number {
  return dtypeInfo(dtype).bytes;
}

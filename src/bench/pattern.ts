// Benchmark inputs and the reference every result is checked against.
//
// Rank j's input element k is v(j, k) = base[(k + 3j) mod 11]: small integers (or ±1, 2 for
// prod, 0/1 for bool) chosen so every reduction is exact in every dtype (float16/bfloat16
// included), so a result is right or wrong bit for bit (avg, which divides, gets a 1-ulp-ish
// tolerance). Because inputs repeat with period 11, every expected output is "a table of 11
// values starting at some phase": checking a buffer is one pass with no per-element modulo.
import { toBFloat16Bits, toFloat16Bits, fromBFloat16Bits, fromFloat16Bits } from "../tensor/half";
import { dtypeInfo, storageArray, type DTypeName, type RedOpName } from "../ops/table";
import type { BenchOp, PointShape } from "./spec";

export const PERIOD = 11;
const RANK_STRIDE = 3;

export type View = Float32Array | Float64Array | Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | BigInt64Array;

/** A typed view of `bytes` in the dtype's storage (float16/bfloat16: raw Uint16 bits; bool: Uint8). */
export function viewOf(dtype: DTypeName, bytes: Uint8Array, elems?: number): View {
  const size = dtypeInfo(dtype).bytes;
  const len = elems ?? Math.floor(bytes.byteLength / size);
  if (len * size > bytes.byteLength) throw new Error(`viewOf: ${len} ${dtype} need ${len * size} bytes, have ${bytes.byteLength}`);
  const { buffer, byteOffset } = bytes;
  return new (storageArray(dtype))(buffer, byteOffset, len) as View;
}

/** The 11 input values of rank 0 (rank j's are these rotated by 3j). */
export function baseValues(dtype: DTypeName, redop: RedOpName): number[] {
  const kind = dtypeInfo(dtype).kind;
  if (kind === "bool") return [0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0];
  if (redop === "prod") return dtype === "uint8" ? [1, 2, 1, 1, 3, 1, 1, 2, 1, 1, 1] : [1, 2, 1, -1, 1, 1, 2, -1, 1, -2, 1];
  if (redop === "band" || redop === "bor" || redop === "bxor") return [1, 2, 3, 4, 5, 6, 7, 12, 9, 10, 15];
  if (dtype === "uint8") return [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  if (dtype === "float16" || dtype === "bfloat16") return [-3, -2, -1, 0, 1, 2, 3, -2, -1, 1, 2];
  return [-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5];
}

/** v(rank, k) as a plain number (before encoding into the dtype). */
export function inputValue(dtype: DTypeName, redop: RedOpName, rank: number, k: number): number {
  return baseValues(dtype, redop)[(k + RANK_STRIDE * rank) % PERIOD]!;
}

function boolRedop(redop: RedOpName): RedOpName {
  if (redop === "sum" || redop === "max") return "bor";
  if (redop === "prod" || redop === "min") return "band";
  return redop;
}

/** The exact reduction of `vals` (one value per rank, in rank order) as the dtype computes it. */
export function reduceExact(dtype: DTypeName, redop: RedOpName, vals: number[]): number | bigint {
  const kind = dtypeInfo(dtype).kind;
  const op = kind === "bool" ? boolRedop(redop) : redop;
  if (kind === "float") {
    switch (op) {
      case "sum":
        return vals.reduce((a, b) => a + b, 0);
      case "avg":
        return vals.reduce((a, b) => a + b, 0) / vals.length;
      case "prod":
        return vals.reduce((a, b) => a * b, 1);
      case "min":
        return Math.min(...vals);
      case "max":
        return Math.max(...vals);
      default:
        throw new Error(`reduce op ${op} is not defined for ${dtype}`);
    }
  }
  const big = vals.map((v) => BigInt(v));
  switch (op) {
    case "sum":
      return big.reduce((a, b) => a + b, 0n);
    case "prod":
      return big.reduce((a, b) => a * b, 1n);
    case "min":
      return big.reduce((a, b) => (b < a ? b : a));
    case "max":
      return big.reduce((a, b) => (b > a ? b : a));
    case "band":
      return big.reduce((a, b) => a & b);
    case "bor":
      return big.reduce((a, b) => a | b);
    case "bxor":
      return big.reduce((a, b) => a ^ b);
    default:
      throw new Error(`reduce op ${op} is not defined for ${dtype}`);
  }
}

/** Encodes exact values into the dtype's storage (wrapping integers, rounding floats). */
export function encodeTable(dtype: DTypeName, values: (number | bigint)[]): View {
  const out = viewOf(dtype, new Uint8Array(values.length * dtypeInfo(dtype).bytes));
  values.forEach((v, i) => {
    switch (dtype) {
      case "float16":
        (out as Uint16Array)[i] = toFloat16Bits(Number(v));
        break;
      case "bfloat16":
        (out as Uint16Array)[i] = toBFloat16Bits(Number(v));
        break;
      case "float32":
      case "float64":
        (out as Float64Array)[i] = Number(v);
        break;
      case "int64":
        (out as BigInt64Array)[i] = BigInt.asIntN(64, BigInt(v));
        break;
      case "bool":
        (out as Uint8Array)[i] = BigInt(v) !== 0n ? 1 : 0;
        break;
      default: {
        const bits = dtypeInfo(dtype).bytes * 8;
        const w = dtype === "uint8" ? BigInt.asUintN(bits, BigInt(v)) : BigInt.asIntN(bits, BigInt(v));
        (out as Int32Array)[i] = Number(w);
      }
    }
  });
  return out;
}

/** Rank 0's inputs, encoded (rank j starts at phase 3j). */
export function inputTable(dtype: DTypeName, redop: RedOpName): View {
  return encodeTable(dtype, baseValues(dtype, redop));
}

/** The reduction over ranks 0..n-1 of v(j, k), by k mod 11, encoded. */
export function reducedTable(dtype: DTypeName, redop: RedOpName, n: number): View {
  const base = baseValues(dtype, redop);
  const vals: (number | bigint)[] = [];
  for (let k = 0; k < PERIOD; k++) {
    const perRank = Array.from({ length: n }, (_, j) => base[(k + RANK_STRIDE * j) % PERIOD]!);
    vals.push(reduceExact(dtype, redop, perRank));
  }
  return encodeTable(dtype, vals);
}

export function rankPhase(rank: number): number {
  return (RANK_STRIDE * rank) % PERIOD;
}

/** Writes table[(phase + i) mod 11] into out[i] for every i (period fill, then doubling copies). */
export function fillPeriodic(out: View, table: View, phase: number): void {
  const len = out.length;
  const first = Math.min(len, PERIOD);
  for (let i = 0; i < first; i++) (out as Float64Array)[i] = (table as Float64Array)[(phase + i) % PERIOD]!;
  // out[i] depends on i mod 11 only: copy [0, filled) forward in chunks that are multiples of 11.
  let filled = first;
  while (filled < len) {
    const n = Math.min(filled, len - filled);
    out.copyWithin(filled, 0, n);
    filled += n;
  }
}

/** A byte pattern no correct result has (NaN for floats; odd values for integers). */
export function poison(bytes: Uint8Array): void {
  bytes.fill(0xa5);
}

function decoder(dtype: DTypeName): (x: number | bigint) => number {
  if (dtype === "float16") return (x) => fromFloat16Bits(Number(x));
  if (dtype === "bfloat16") return (x) => fromBFloat16Bits(Number(x));
  return (x) => Number(x);
}

/** How many of out[0..len) differ from table[(phase + i) mod 11]. `tolerant`: relative tolerance (avg). */
export function countWrong(out: View, table: View, phase: number, tolerant = 0, dtype?: DTypeName): number {
  let wrong = 0;
  let p = phase % PERIOD;
  const len = out.length;
  if (tolerant > 0 && dtype) {
    const dec = decoder(dtype);
    for (let i = 0; i < len; i++) {
      const a = dec(out[i]!);
      const b = dec(table[p]!);
      if (!(Math.abs(a - b) <= tolerant * Math.max(1, Math.abs(b)))) wrong++;
      if (++p === PERIOD) p = 0;
    }
    return wrong;
  }
  const o = out as Float64Array;
  const t = table as Float64Array;
  for (let i = 0; i < len; i++) {
    if (o[i] !== t[p]) wrong++;
    if (++p === PERIOD) p = 0;
  }
  return wrong;
}

/** Relative tolerance for a (dtype, redop): 0 (exact) except avg, which divides. */
export function tolerance(dtype: DTypeName, redop: RedOpName): number {
  if (redop !== "avg") return 0;
  return dtype === "float64" ? 1e-12 : dtype === "float32" ? 1e-6 : 1e-2;
}

export interface CheckContext {
  op: BenchOp;
  dtype: DTypeName;
  redop: RedOpName;
  n: number;
  rank: number;
  root: number;
  shape: PointShape;
}

/** Precomputed tables of one (dtype, redop, n): inputs and the reduction. */
export interface Tables {
  input: View;
  reduced: View;
}

export function tablesFor(dtype: DTypeName, redop: RedOpName, n: number): Tables {
  return { input: inputTable(dtype, redop), reduced: reducedTable(dtype, redop, n) };
}

/** Does this rank have an output for the op? */
export function hasOutput(op: BenchOp, rank: number, root: number): boolean {
  if (op === "reduce" || op === "gather") return rank === root;
  return op !== "barrier";
}

/** Fills this rank's send buffer for the op (scatter: only the root sends). */
export function fillSend(c: CheckContext, send: View, t: Tables): void {
  if (c.op === "scatter" && c.rank !== c.root) return;
  if (c.op === "barrier") return;
  fillPeriodic(send, t.input, rankPhase(c.rank));
}

/** Counts wrong elements of this rank's output (`recv` holds shape.recvElems elements). */
export function checkOutput(c: CheckContext, recv: View, t: Tables): number {
  const { op, n, rank, root, shape } = c;
  const tol = tolerance(c.dtype, c.redop);
  const part = shape.part;
  const block = (j: number) => recv.subarray(j * part, (j + 1) * part) as View;
  switch (op) {
    case "allreduce":
    case "reduce":
      return countWrong(recv.subarray(0, shape.count) as View, t.reduced, 0, tol, c.dtype);
    case "broadcast":
      return countWrong(recv.subarray(0, shape.count) as View, t.input, rankPhase(root));
    case "sendrecv":
      return countWrong(recv.subarray(0, shape.count) as View, t.input, rankPhase((rank - 1 + n) % n));
    case "allgather":
    case "gather": {
      let w = 0;
      for (let j = 0; j < n; j++) w += countWrong(block(j), t.input, rankPhase(j));
      return w;
    }
    case "scatter":
      return countWrong(recv.subarray(0, part) as View, t.input, (rank * part + rankPhase(root)) % PERIOD);
    case "reduce_scatter":
      return countWrong(recv.subarray(0, part) as View, t.reduced, (rank * part) % PERIOD, tol, c.dtype);
    case "alltoall": {
      let w = 0;
      for (let j = 0; j < n; j++) w += countWrong(block(j), t.input, (rank * part + rankPhase(j)) % PERIOD);
      return w;
    }
    case "barrier":
      return 0;
  }
}

// Independent references for tests: random tensors per dtype and f64 / exact-integer
// reductions (BigInt, wrapped to the dtype's width).
import type { DType, RedOp } from "../../src/client/index";

export const FLOAT_DTYPES: DType[] = ["float16", "bfloat16", "float32", "float64"];
export const INT_DTYPES: DType[] = ["int8", "uint8", "int16", "int32", "int64"];
export const ALL_DTYPES: DType[] = [...FLOAT_DTYPES, ...INT_DTYPES, "bool"];

const BITS: Record<string, number> = { int8: 8, uint8: 8, int16: 16, int32: 32, int64: 64 };

/** Seeded PRNG (mulberry32) so failures reproduce. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** JSON values for a random tensor: exactly representable in the dtype. */
export function randomValues(dtype: DType, n: number, rand: () => number, redop: RedOp = "sum"): (number | string | boolean)[] {
  const out: (number | string | boolean)[] = [];
  for (let i = 0; i < n; i++) {
    const r = rand();
    if (dtype === "bool") out.push(r < 0.5);
    else if (FLOAT_DTYPES.includes(dtype)) {
      if (redop === "prod") out.push([-2, -1, -0.5, 0.5, 1, 2][Math.floor(r * 6)]!);
      else out.push(Math.round((r * 20 - 10) * 4) / 4);
    } else if (dtype === "int64") {
      if (redop === "sum" || redop === "prod") out.push(String(BigInt(Math.floor(r * 2000) - 1000) * (redop === "prod" ? 1n : 1_000_000_007n)));
      else out.push(String(BigInt.asIntN(64, BigInt(Math.floor(r * 2 ** 52)) * 4099n - 2n ** 62n)));
    } else {
      const bits = BITS[dtype]!;
      const unsigned = dtype === "uint8";
      if (redop === "prod") out.push(unsigned ? Math.floor(r * 3) : Math.floor(r * 5) - 2);
      else if (redop === "sum") out.push(unsigned ? Math.floor(r * 60) : Math.floor(r * 60) - 30);
      else {
        const span = 2 ** bits;
        const v = Math.floor(r * span);
        out.push(unsigned ? v : v - span / 2);
      }
    }
  }
  return out;
}

function num(v: unknown): number {
  if (v === "NaN") return NaN;
  if (v === "Infinity") return Infinity;
  if (v === "-Infinity") return -Infinity;
  if (typeof v === "boolean") return v ? 1 : 0;
  return Number(v);
}

/** Reference reduction over ranks (inputs[rank] = JSON values). Floats in f64; ints exact. */
export function refReduce(dtype: DType, redop: RedOp, inputs: (number | string | boolean)[][]): (number | string | boolean)[] {
  const n = inputs[0]!.length;
  const out: (number | string | boolean)[] = [];
  for (let i = 0; i < n; i++) {
    const col = inputs.map((x) => x[i]!);
    if (dtype === "bool") {
      const b = col.map((v) => v === true || v === 1);
      const any = b.some((x) => x);
      const all = b.every((x) => x);
      const op = { sum: "bor", prod: "band", min: "band", max: "bor" }[redop as string] ?? redop;
      out.push(op === "bor" ? any : op === "band" ? all : b.filter((x) => x).length % 2 === 1);
    } else if (FLOAT_DTYPES.includes(dtype)) {
      const f = col.map(num);
      let r: number;
      switch (redop) {
        case "sum":
          r = f.reduce((a, b) => a + b, 0);
          break;
        case "avg":
          r = f.reduce((a, b) => a + b, 0) / f.length;
          break;
        case "prod":
          r = f.reduce((a, b) => a * b, 1);
          break;
        case "min":
          r = Math.min(...f);
          break;
        case "max":
          r = Math.max(...f);
          break;
        default:
          throw new Error(`no ${redop} on floats`);
      }
      out.push(r);
    } else {
      const bits = BITS[dtype]!;
      const wrap = (x: bigint) => (dtype === "uint8" ? BigInt.asUintN(bits, x) : BigInt.asIntN(bits, x));
      const b = col.map((v) => BigInt(v as string | number));
      let r: bigint;
      switch (redop) {
        case "sum":
          r = b.reduce((a, c) => a + c, 0n);
          break;
        case "prod":
          r = b.reduce((a, c) => a * c, 1n);
          break;
        case "min":
          r = b.reduce((a, c) => (c < a ? c : a));
          break;
        case "max":
          r = b.reduce((a, c) => (c > a ? c : a));
          break;
        case "band":
          r = b.reduce((a, c) => a & c);
          break;
        case "bor":
          r = b.reduce((a, c) => a | c);
          break;
        case "bxor":
          r = b.reduce((a, c) => a ^ c);
          break;
        default:
          throw new Error(`no ${redop} on ints`);
      }
      r = wrap(r);
      out.push(dtype === "int64" ? r.toString() : Number(r));
    }
  }
  return out;
}

const TOL: Record<string, number> = { float16: 2e-3, bfloat16: 1.6e-2, float32: 1e-6, float64: 1e-13 };

/** Asserts got (JSON values from the service) equals want (reference), with float tolerance. */
export function expectValues(dtype: DType, got: unknown[], want: unknown[], what: string): void {
  if (got.length !== want.length) throw new Error(`${what}: length ${got.length} != ${want.length}`);
  for (let i = 0; i < want.length; i++) {
    const g = got[i];
    const w = want[i];
    if (FLOAT_DTYPES.includes(dtype)) {
      const gn = num(g);
      const wn = num(w);
      if (Number.isNaN(wn) && Number.isNaN(gn)) continue;
      const tol = TOL[dtype]! * Math.max(1, Math.abs(wn)) * 4;
      if (!(Math.abs(gn - wn) <= tol)) throw new Error(`${what}[${i}]: got ${JSON.stringify(g)}, want ${JSON.stringify(w)} (${dtype})`);
    } else if (g !== w) {
      throw new Error(`${what}[${i}]: got ${JSON.stringify(g)}, want ${JSON.stringify(w)} (${dtype})`);
    }
  }
}

export function redopsFor(dtype: DType): RedOp[] {
  if (dtype === "bool") return ["sum", "prod", "min", "max", "band", "bor", "bxor"];
  if (FLOAT_DTYPES.includes(dtype)) return ["sum", "prod", "min", "max", "avg"];
  return ["sum", "prod", "min", "max", "band", "bor", "bxor"];
}

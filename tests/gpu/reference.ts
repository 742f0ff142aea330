// CPU reference for the GPU reduction kernels, computed independently of the CUDA and Zig code:
// floats in f64 (then rounded once to the dtype, round-to-nearest-even, by a generic rounding
// routine), integers exactly (BigInt for 64-bit), bool by the table's `bool_as`.
//
// Why exact comparison works for f16 / bf16 / f32: the kernels compute one op on two values
// in f32 (f16/bf16) or natively (f32) and round once; f64 (and f32 for 16-bit types) has at
// least 2p + 2 significand bits, so rounding the wider result to the dtype gives the
// correctly rounded result for + * / -- the same value this reference computes.
// Values compare equal when both are NaN or numerically equal (+0 equals -0).
import table from "../../src/ops/table.json" with { type: "json" };

export interface DType {
  name: string;
  short: string;
  code: number;
  bytes: number;
  kind: "float" | "int" | "bool";
}
export interface RedOp {
  name: string;
  code: number;
  kinds: string[];
  bool_as?: string;
}
export const dtypes = table.dtypes as DType[];
export const redops = table.redops as RedOp[];

/** Every supported (redop, dtype) pair of the table. */
export function pairs(): { redop: RedOp; dtype: DType }[] {
  const out: { redop: RedOp; dtype: DType }[] = [];
  for (const redop of redops) for (const dtype of dtypes) if (redop.kinds.includes(dtype.kind)) out.push({ redop, dtype });
  return out;
}

// ---- 16-bit float formats ------------------------------------------------------------------

interface Format {
  mantissaBits: number;
  exponentBits: number;
}
const F16: Format = { mantissaBits: 10, exponentBits: 5 };
const BF16: Format = { mantissaBits: 7, exponentBits: 8 };

function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** f64 -> bits of a binary format (round to nearest even; overflow to infinity). */
function encode(fmt: Format, x: number): number {
  const bias = (1 << (fmt.exponentBits - 1)) - 1;
  const expAll = (1 << fmt.exponentBits) - 1;
  const signBit = 1 << (fmt.mantissaBits + fmt.exponentBits);
  if (Number.isNaN(x)) return (expAll << fmt.mantissaBits) | (1 << (fmt.mantissaBits - 1));
  const sign = x < 0 || Object.is(x, -0) ? signBit : 0;
  const a = Math.abs(x);
  const inf = sign | (expAll << fmt.mantissaBits);
  if (a === Infinity) return inf;
  const eMin = 1 - bias;
  if (a < 2 ** eMin) {
    // subnormal (or rounds up to the smallest normal: q = 2^mantissaBits encodes it)
    const q = roundHalfEven(a / 2 ** (eMin - fmt.mantissaBits));
    return sign | q;
  }
  let e = Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  let q = roundHalfEven((a / 2 ** e - 1) * 2 ** fmt.mantissaBits);
  if (q === 2 ** fmt.mantissaBits) {
    q = 0;
    e++;
  }
  if (e > bias) return inf;
  return sign | ((e + bias) << fmt.mantissaBits) | q;
}

function decode(fmt: Format, bits: number): number {
  const bias = (1 << (fmt.exponentBits - 1)) - 1;
  const expAll = (1 << fmt.exponentBits) - 1;
  const sign = bits >> (fmt.mantissaBits + fmt.exponentBits) ? -1 : 1;
  const exp = (bits >> fmt.mantissaBits) & expAll;
  const mant = bits & ((1 << fmt.mantissaBits) - 1);
  if (exp === expAll) return mant ? NaN : sign * Infinity;
  if (exp === 0) return sign * mant * 2 ** (1 - bias - fmt.mantissaBits);
  return sign * (1 + mant / 2 ** fmt.mantissaBits) * 2 ** (exp - bias);
}

// ---- typed element access --------------------------------------------------------------------

/** A host array of `count` elements of `dtype`. */
export function alloc(dtype: DType, count: number): ArrayBufferView & { length: number } {
  switch (dtype.short) {
    case "f16":
    case "bf16":
    case "i16":
      return dtype.short === "i16" ? new Int16Array(count) : new Uint16Array(count);
    case "f32":
      return new Float32Array(count);
    case "f64":
      return new Float64Array(count);
    case "i8":
      return new Int8Array(count);
    case "u8":
    case "bool":
      return new Uint8Array(count);
    case "i32":
      return new Int32Array(count);
    case "i64":
      return new BigInt64Array(count);
  }
  throw new Error(`no host array for ${dtype.short}`);
}

/** Element i as a number (floats decoded) or bigint (i64). */
export function get(dtype: DType, arr: any, i: number): number | bigint {
  if (dtype.short === "f16") return decode(F16, arr[i]);
  if (dtype.short === "bf16") return decode(BF16, arr[i]);
  return arr[i];
}

/** Stores a reference result (rounded for floats, wrapped for ints). */
export function set(dtype: DType, arr: any, i: number, v: number | bigint): void {
  if (dtype.short === "f16") arr[i] = encode(F16, v as number);
  else if (dtype.short === "bf16") arr[i] = encode(BF16, v as number);
  else arr[i] = v; // typed arrays wrap ints and round f32 (nearest even)
}

// ---- random data -------------------------------------------------------------------------------

/** A seeded generator (xorshift128+), so failures reproduce from the printed seed. */
export class Rng {
  private s0: bigint;
  private s1: bigint;
  constructor(seed: number) {
    this.s0 = BigInt(seed) | 1n;
    this.s1 = 0x9e3779b97f4a7c15n ^ BigInt(seed * 7919);
    for (let i = 0; i < 16; i++) this.nextU64();
  }
  nextU64(): bigint {
    let s1 = this.s0;
    const s0 = this.s1;
    this.s0 = s0;
    s1 ^= (s1 << 23n) & 0xffffffffffffffffn;
    this.s1 = s1 ^ s0 ^ (s1 >> 17n) ^ (s0 >> 26n);
    return (this.s1 + s0) & 0xffffffffffffffffn;
  }
  /** Uniform in [0, 1). */
  next(): number {
    return Number(this.nextU64() >> 11n) / 2 ** 53;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  bytes(out: Uint8Array): void {
    for (let i = 0; i < out.length; i += 8) {
      let v = this.nextU64();
      for (let j = i; j < Math.min(i + 8, out.length); j++) {
        out[j] = Number(v & 0xffn);
        v >>= 8n;
      }
    }
  }
}

const specials = [NaN, Infinity, -Infinity, 0, -0, 1, -1];

/** Random elements: ints over all bit patterns; floats half the time over all bit patterns
 *  (subnormals, NaN payloads, overflow), else moderate magnitudes (so sums and products stay
 *  mostly finite); 2% specials (NaN, +-inf, +-0, +-1); bool 0 / 1. */
export function fill(dtype: DType, arr: any, rng: Rng): void {
  const n: number = arr.length;
  if (dtype.kind === "bool") {
    for (let i = 0; i < n; i++) arr[i] = rng.int(2);
    return;
  }
  if (dtype.kind === "int") {
    rng.bytes(new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength));
    return;
  }
  const rawBits = rng.next() < 0.5;
  if (rawBits) rng.bytes(new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength));
  for (let i = 0; i < n; i++) {
    const r = rng.next();
    if (r < 0.02) set(dtype, arr, i, specials[rng.int(specials.length)]!);
    else if (!rawBits) set(dtype, arr, i, (rng.next() * 2 - 1) * 2 ** (rng.int(16) - 8));
  }
}

// ---- the ops ---------------------------------------------------------------------------------

function wrapInt(dtype: DType, v: number): number {
  const bits = dtype.bytes * 8;
  const m = 2 ** bits;
  let r = ((v % m) + m) % m;
  if (dtype.short !== "u8" && r >= m / 2) r -= m;
  return r;
}

/** The effective op name: bool maps through the table's bool_as; avg reduces as sum. */
export function effectiveOp(redop: RedOp, dtype: DType): string {
  if (dtype.kind === "bool" && redop.bool_as) return redop.bool_as;
  if (redop.name === "avg") return "sum";
  return redop.name;
}

/** a op b for one element (exact or f64; the caller rounds with set()). */
export function apply(op: string, dtype: DType, a: number | bigint, b: number | bigint): number | bigint {
  if (dtype.kind === "bool") {
    const x = a !== 0;
    const y = b !== 0;
    const r = op === "band" ? x && y : op === "bor" ? x || y : op === "bxor" ? x !== y : undefined;
    if (r === undefined) throw new Error(`bool op ${op}`);
    return r ? 1 : 0;
  }
  if (dtype.kind === "float") {
    const x = a as number;
    const y = b as number;
    switch (op) {
      case "sum":
        return x + y;
      case "prod":
        return x * y;
      case "min":
        return Number.isNaN(x) || Number.isNaN(y) ? NaN : y < x ? y : x;
      case "max":
        return Number.isNaN(x) || Number.isNaN(y) ? NaN : y > x ? y : x;
    }
    throw new Error(`float op ${op}`);
  }
  if (dtype.short === "i64") {
    const x = a as bigint;
    const y = b as bigint;
    switch (op) {
      case "sum":
        return BigInt.asIntN(64, x + y);
      case "prod":
        return BigInt.asIntN(64, x * y);
      case "min":
        return y < x ? y : x;
      case "max":
        return y > x ? y : x;
      case "band":
        return x & y;
      case "bor":
        return x | y;
      case "bxor":
        return x ^ y;
    }
    throw new Error(`int op ${op}`);
  }
  const x = a as number;
  const y = b as number;
  switch (op) {
    case "sum":
      return wrapInt(dtype, x + y);
    case "prod":
      return dtype.bytes === 4 ? Math.imul(x, y) : wrapInt(dtype, x * y);
    case "min":
      return y < x ? y : x;
    case "max":
      return y > x ? y : x;
    case "band":
      return wrapInt(dtype, x & y);
    case "bor":
      return wrapInt(dtype, x | y);
    case "bxor":
      return wrapInt(dtype, x ^ y);
  }
  throw new Error(`int op ${op}`);
}

/** expected[i] = a[i] op b[i] for the whole arrays. */
export function reduceRef(redop: RedOp, dtype: DType, a: any, b: any): any {
  const op = effectiveOp(redop, dtype);
  const out = alloc(dtype, a.length) as any;
  for (let i = 0; i < a.length; i++) set(dtype, out, i, apply(op, dtype, get(dtype, a, i), get(dtype, b, i)));
  return out;
}

/** x / n in the accumulation type, rounded to the dtype (avg's last step). */
export function scaleRef(dtype: DType, a: any, n: number): any {
  const out = alloc(dtype, a.length) as any;
  for (let i = 0; i < a.length; i++) set(dtype, out, i, (get(dtype, a, i) as number) / n);
  return out;
}

function same(dtype: DType, x: number | bigint, y: number | bigint): boolean {
  if (dtype.kind === "float" && Number.isNaN(x as number)) return Number.isNaN(y as number);
  return x === y;
}

/** Indices where got differs from expected (up to `limit`), formatted for a failure message. */
export function mismatches(dtype: DType, got: any, expected: any, inputs: any[] = [], limit = 5): string[] {
  const out: string[] = [];
  for (let i = 0; i < expected.length && out.length < limit; i++) {
    const g = get(dtype, got, i);
    const e = get(dtype, expected, i);
    if (!same(dtype, g, e)) {
      const ins = inputs.map((arr) => String(get(dtype, arr, i))).join(", ");
      out.push(`[${i}] got ${String(g)} (raw ${String(got[i])}) expected ${String(e)} (raw ${String(expected[i])}) from (${ins})`);
    }
  }
  return out;
}

export const _test = { encode, decode, F16, BF16 };

// float16 / bfloat16 <-> number, exact (round to nearest even directly from float64, no double
// rounding through float32). float16 uses the platform's Float16Array when present.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const hasF16 = typeof (globalThis as { Float16Array?: unknown }).Float16Array === "function";
const F16 = (globalThis as unknown as { Float16Array: Float32ArrayConstructor }).Float16Array;
const f16buf = hasF16 ? new F16(1) : null;
const f16bits = f16buf ? new Uint16Array(f16buf.buffer) : null;

/** number -> bfloat16 bits, round to nearest even (from the float64 value), NaN stays NaN. */
export function toBFloat16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if (x !== x) return ((bits >>> 16) & 0x8000) | 0x7fc0;
  const f = f32[0]!;
  const low = bits & 0xffff;
  if (low === 0x8000 && f !== x) {
    // float32 rounding landed exactly on a bfloat16 midpoint: decide from the float64 value.
    return Math.abs(x) > Math.abs(f) ? (bits >>> 16) + 1 : bits >>> 16;
  }
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

export function fromBFloat16Bits(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0]!;
}

/** number -> float16 bits, round to nearest even from the float64 value. */
export function toFloat16Bits(x: number): number {
  if (f16buf && f16bits) {
    f16buf[0] = x;
    return f16bits[0]!;
  }
  return toFloat16BitsSoft(x);
}

export function fromFloat16Bits(h: number): number {
  if (f16buf && f16bits) {
    f16bits[0] = h;
    return f16buf[0]!;
  }
  return fromFloat16BitsSoft(h);
}

/** Portable float16 encoder (also the reference the tests check Float16Array against). */
export function toFloat16BitsSoft(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a !== a) return 0x7e00;
  if (a === Infinity) return sign | 0x7c00;
  if (a >= 65520) return sign | 0x7c00; // rounds past the largest finite half (65504)
  if (a < 2 ** -14) {
    // subnormal: units of 2^-24, round half to even
    const q = a / 2 ** -24;
    let n = Math.floor(q);
    const rem = q - n;
    if (rem > 0.5 || (rem === 0.5 && n % 2 === 1)) n++;
    return sign | n; // n may reach 0x400 = smallest normal, which is the right encoding
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const q = (a / 2 ** e - 1) * 1024; // exact in float64
  let m = Math.floor(q);
  const rem = q - m;
  if (rem > 0.5 || (rem === 0.5 && m % 2 === 1)) m++;
  if (m === 1024) {
    m = 0;
    e++;
  }
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | m;
}

export function fromFloat16BitsSoft(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m ? NaN : sign * Infinity;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

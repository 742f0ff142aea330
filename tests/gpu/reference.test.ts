// Checks the GPU tests' CPU reference itself (runs everywhere, no GPU needed): the 16-bit float
// rounding against Float16Array / the f32 bit pattern, and the ops on hand-computed cases.
import { describe, expect, test } from "bun:test";
import { _test, apply, dtypes, effectiveOp, pairs, redops, reduceRef, Rng, scaleRef, alloc } from "./reference";

const { encode, decode, F16, BF16 } = _test;
const dt = (short: string) => dtypes.find((d) => d.short === short)!;
const op = (name: string) => redops.find((r) => r.name === name)!;

describe("gpu reference: 16-bit floats", () => {
  test("f16: every bit pattern decodes like Float16Array and re-encodes to itself", () => {
    const f16 = new Float16Array(1);
    const bits = new Uint16Array(f16.buffer);
    for (let b = 0; b < 0x10000; b++) {
      bits[0] = b;
      const v = decode(F16, b);
      if (Number.isNaN(f16[0]!)) {
        expect(Number.isNaN(v)).toBe(true);
        continue;
      }
      expect(v).toBe(f16[0]!);
      expect(encode(F16, v)).toBe(b);
    }
  });

  test("f16: rounding of random f64 values matches Float16Array (one rounding, ties to even)", () => {
    const f16 = new Float16Array(1);
    const bits = new Uint16Array(f16.buffer);
    const rng = new Rng(1);
    for (let i = 0; i < 200_000; i++) {
      const x = (rng.next() * 2 - 1) * 2 ** (rng.int(44) - 28);
      f16[0] = x;
      expect(encode(F16, x)).toBe(bits[0]!);
    }
    // ties: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 -> 1 (even); 65520 -> inf
    expect(encode(F16, 1 + 2 ** -11)).toBe(0x3c00);
    expect(encode(F16, 1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(encode(F16, 65520)).toBe(0x7c00);
    expect(encode(F16, 65519.99)).toBe(0x7bff);
    expect(encode(F16, 2 ** -25)).toBe(0); // halfway to the smallest subnormal: even (0)
    expect(encode(F16, -0)).toBe(0x8000);
  });

  test("bf16: f32 values round like the bit trick (bits + 0x7fff + lsb) >> 16", () => {
    const f32 = new Float32Array(1);
    const u32 = new Uint32Array(f32.buffer);
    const rng = new Rng(2);
    for (let i = 0; i < 200_000; i++) {
      u32[0] = Number(rng.nextU64() & 0xffffffffn);
      const x = f32[0]!;
      if (Number.isNaN(x)) {
        expect(Number.isNaN(decode(BF16, encode(BF16, x)))).toBe(true);
        continue;
      }
      const b = u32[0]!;
      const trick = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
      expect(encode(BF16, x)).toBe(trick);
    }
    for (let b = 0; b < 0x10000; b++) {
      const v = decode(BF16, b);
      if (!Number.isNaN(v)) expect(encode(BF16, v)).toBe(b);
    }
  });
});

describe("gpu reference: ops", () => {
  test("bool follows the table's bool_as", () => {
    const bool = dt("bool");
    expect(effectiveOp(op("sum"), bool)).toBe("bor");
    expect(effectiveOp(op("prod"), bool)).toBe("band");
    expect(effectiveOp(op("min"), bool)).toBe("band");
    expect(effectiveOp(op("max"), bool)).toBe("bor");
    expect(apply("bxor", bool, 1, 1)).toBe(0);
    expect(apply("bor", bool, 0, 1)).toBe(1);
  });

  test("integers wrap, floats propagate NaN", () => {
    expect(apply("sum", dt("i8"), 127, 1)).toBe(-128);
    expect(apply("prod", dt("u8"), 16, 17)).toBe(16);
    expect(apply("prod", dt("i16"), -32768, -1)).toBe(-32768);
    expect(apply("prod", dt("i32"), 0x10000, 0x10001)).toBe(0x10000);
    expect(apply("sum", dt("i64"), 2n ** 63n - 1n, 1n)).toBe(-(2n ** 63n));
    expect(apply("bxor", dt("u8"), 0xf0, 0xff)).toBe(0x0f);
    expect(apply("min", dt("f32"), 1, NaN)).toBeNaN();
    expect(apply("max", dt("f32"), NaN, 1)).toBeNaN();
    expect(apply("min", dt("f64"), -1, 2)).toBe(-1);
  });

  test("reduceRef / scaleRef round once to the dtype", () => {
    const f16 = dt("f16");
    const a = alloc(f16, 1) as Uint16Array;
    const b = alloc(f16, 1) as Uint16Array;
    a[0] = encode(F16, 2048);
    b[0] = encode(F16, 1); // 2049 is a tie between 2048 and 2050 -> 2048
    expect(decode(F16, reduceRef(op("sum"), f16, a, b)[0])).toBe(2048);
    b[0] = encode(F16, 3); // 2051 -> tie between 2050 and 2052 -> 2052
    expect(decode(F16, reduceRef(op("sum"), f16, a, b)[0])).toBe(2052);
    const x = alloc(dt("f32"), 1) as Float32Array;
    x[0] = 1;
    expect(scaleRef(dt("f32"), x, 3)[0]).toBe(Math.fround(1 / 3));
  });

  test("the table has the pairs the kernels instantiate", () => {
    // 4 float redops x 4 float dtypes + 7 int redops x 5 ints + 7 on bool (avg: floats only)
    expect(pairs().length).toBe(5 * 4 + 7 * 5 + 7);
  });
});

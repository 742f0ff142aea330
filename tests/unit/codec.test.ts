// Tensor codec: round trips for every dtype through JSON data and b64, int64 extremes,
// non-finite floats, float16/bfloat16 rounding against independent references, bad input.
import { describe, expect, test } from "bun:test";
import { dtypes, type DTypeName } from "../../src/ops/table";
import { ApiError } from "../../src/errors";
import { encodeTensor, readData, writeB64, writeData, writeTensor } from "../../src/tensor/codec";
import { fromBFloat16Bits, fromFloat16Bits, fromFloat16BitsSoft, toBFloat16Bits, toFloat16Bits, toFloat16BitsSoft } from "../../src/tensor/half";
import { rng } from "../support/ref";

function roundTrip(dtype: DTypeName, data: unknown[]): unknown[] {
  const size = dtypes.find((d) => d.name === dtype)!.bytes;
  const buf = new Uint8Array(data.length * size);
  writeData(dtype, data, buf, "t");
  const viaJson = readData(dtype, buf);
  // b64 round trip of the same bytes
  const enc = encodeTensor(dtype, [data.length], buf, "b64");
  const back = new Uint8Array(buf.length);
  writeB64(enc.b64, back, "t");
  expect(back).toEqual(buf);
  return viaJson;
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof ApiError) return `${e.status} ${e.code}`;
    throw e;
  }
  return "no error";
}

describe("codec", () => {
  test("int64: numbers and strings in, exact decimal strings out, extremes", () => {
    const out = roundTrip("int64", ["9223372036854775807", "-9223372036854775808", 0, -1, 12345, "+42", "-0", 2 ** 53 - 1, -(2 ** 53 - 1)]);
    expect(out).toEqual(["9223372036854775807", "-9223372036854775808", "0", "-1", "12345", "42", "0", "9007199254740991", "-9007199254740991"]);
    // a JSON number past 2^53 - 1 may already be rounded (issue 18): refused, never guessed
    expect(code(() => writeData("int64", [2 ** 53], new Uint8Array(8), "t"))).toBe("400 invalid_request");
    expect(code(() => writeData("int64", ["9223372036854775808"], new Uint8Array(8), "t"))).toBe("400 invalid_request");
    expect(code(() => writeData("int64", ["-9223372036854775809"], new Uint8Array(8), "t"))).toBe("400 invalid_request");
    expect(code(() => writeData("int64", [1.5], new Uint8Array(8), "t"))).toBe("400 invalid_request");
    expect(code(() => writeData("int64", ["12abc"], new Uint8Array(8), "t"))).toBe("400 invalid_request");
  });

  test("small ints: range checked, exact", () => {
    expect(roundTrip("int8", [-128, 127, 0])).toEqual([-128, 127, 0]);
    expect(roundTrip("uint8", [0, 255, "7"])).toEqual([0, 255, 7]);
    expect(roundTrip("int16", [-32768, 32767])).toEqual([-32768, 32767]);
    expect(roundTrip("int32", [-2147483648, 2147483647])).toEqual([-2147483648, 2147483647]);
    for (const [dt, v] of [["int8", 128], ["uint8", -1], ["int16", 40000], ["int32", 2 ** 31], ["int32", 0.5], ["uint8", "x"]] as const) {
      expect(code(() => writeData(dt, [v], new Uint8Array(4), "t"))).toBe("400 invalid_request");
    }
  });

  test("floats: NaN and infinities as strings both ways; -0 kept in b64", () => {
    for (const dt of ["float16", "bfloat16", "float32", "float64"] as DTypeName[]) {
      expect(roundTrip(dt, ["NaN", "Infinity", "-Infinity", 1.5, -2, 0])).toEqual(["NaN", "Infinity", "-Infinity", 1.5, -2, 0]);
    }
    const b = new Uint8Array(8);
    writeData("float64", [-0], b, "t");
    expect(Object.is(new Float64Array(b.buffer)[0], -0)).toBe(true);
    expect(roundTrip("float64", [0.1, 1e308, 5e-324])).toEqual([0.1, 1e308, 5e-324]);
    expect(roundTrip("float32", [0.1])).toEqual([Math.fround(0.1)]);
    expect(code(() => writeData("float32", ["nope"], new Uint8Array(4), "t"))).toBe("400 invalid_request");
    expect(code(() => writeData("float32", [null], new Uint8Array(4), "t"))).toBe("400 invalid_request");
  });

  test("bool: true/false both ways", () => {
    expect(roundTrip("bool", [true, false, true, 1, 0])).toEqual([true, false, true, true, false]);
    expect(code(() => writeData("bool", [2], new Uint8Array(1), "t"))).toBe("400 invalid_request");
  });

  test("data length must equal product(shape); scalars", () => {
    expect(code(() => writeTensor({ dtype: "float32", shape: [2, 2], data: [1, 2, 3] }, new Uint8Array(16), "t"))).toBe("400 invalid_request");
    const s = new Uint8Array(4);
    writeTensor({ dtype: "int32", shape: [], data: [7] }, s, "t");
    expect(readData("int32", s)).toEqual([7]);
    writeTensor({ dtype: "int32", shape: [], data: 9 }, s, "t");
    expect(readData("int32", s)).toEqual([9]);
  });

  test("b64: exact length, invalid text, both or neither of data/b64", () => {
    const t = new Uint8Array(4);
    expect(code(() => writeB64("AAAA", t, "t"))).toBe("400 invalid_request"); // 3 bytes
    expect(code(() => writeB64("AAAAAAAA", t, "t"))).toBe("400 invalid_request"); // 6 bytes
    expect(code(() => writeB64("!!!!", t, "t"))).toBe("400 invalid_request");
    writeB64("AQIDBA==", t, "t");
    expect([...t]).toEqual([1, 2, 3, 4]);
    expect(code(() => writeTensor({ dtype: "uint8", shape: [4], data: [1, 2, 3, 4], b64: "AQIDBA==" }, t, "t"))).toBe("400 invalid_request");
    expect(code(() => writeTensor({ dtype: "uint8", shape: [4] }, t, "t"))).toBe("400 invalid_request");
  });

  test("float16: every bit pattern decodes and re-encodes to itself (NaNs stay NaN)", () => {
    for (let h = 0; h < 65536; h++) {
      const v = fromFloat16Bits(h);
      expect(v === fromFloat16BitsSoft(h) || (Number.isNaN(v) && Number.isNaN(fromFloat16BitsSoft(h)))).toBe(true);
      if (Number.isNaN(v)) {
        expect((toFloat16Bits(v) & 0x7c00) === 0x7c00 && (toFloat16Bits(v) & 0x3ff) !== 0).toBe(true);
      } else {
        expect(toFloat16Bits(v)).toBe(h);
      }
    }
  });

  test("float16: random doubles round to nearest even like the portable encoder", () => {
    const r = rng(7);
    for (let i = 0; i < 50000; i++) {
      const mag = 2 ** (Math.floor(r() * 40) - 26);
      const x = (r() * 2 - 1) * mag;
      expect(toFloat16Bits(x)).toBe(toFloat16BitsSoft(x));
    }
    // ties: 1 + 2^-11 is halfway between 1 and 1+2^-10 -> even (1)
    expect(toFloat16Bits(1 + 2 ** -11)).toBe(0x3c00);
    expect(toFloat16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(toFloat16Bits(65504)).toBe(0x7bff);
    expect(toFloat16Bits(65520)).toBe(0x7c00);
    expect(toFloat16Bits(2 ** -24)).toBe(0x0001);
  });

  test("bfloat16: round to nearest even from float64 (reference: nearest of the neighbouring bf16 values)", () => {
    // independent reference: exact rational comparison with the two bf16 neighbours
    const ref = (x: number): number => {
      if (Number.isNaN(x)) return 0x7fc0;
      let best = -1;
      let bestErr = Infinity;
      const cands: number[] = [];
      const f = new Float32Array([x]);
      const u = new Uint32Array(f.buffer)[0]! >>> 16;
      for (const c of [u - 1, u, u + 1]) if (c >= 0 && c <= 0xffff) cands.push(c);
      for (const c of cands) {
        const v = fromBFloat16Bits(c);
        if (Number.isNaN(v)) continue;
        const err = Math.abs(v - x);
        if (err < bestErr || (err === bestErr && (c & 1) === 0)) {
          best = c;
          bestErr = err;
        }
      }
      return best;
    };
    const r = rng(11);
    for (let i = 0; i < 50000; i++) {
      const x = (r() * 2 - 1) * 2 ** (Math.floor(r() * 60) - 30);
      expect(toBFloat16Bits(x)).toBe(ref(x));
    }
    // a double just above a bf16 midpoint whose float32 rounding lands exactly on the midpoint
    const mid = 1 + 2 ** -8; // halfway between 1 and 1 + 2^-7
    const above = mid + 2 ** -30; // rounds to mid in float32
    expect(Math.fround(above)).toBe(mid);
    expect(toBFloat16Bits(mid)).toBe(0x3f80); // tie -> even
    expect(toBFloat16Bits(above)).toBe(0x3f81); // not a tie in float64: up
    expect(toBFloat16Bits(NaN)).toBe(0x7fc0);
    expect(toBFloat16Bits(-Infinity)).toBe(0xff80);
  });

  test("bfloat16/float16 JSON values round-trip through the codec", () => {
    expect(roundTrip("bfloat16", [1, -2.5, 3.140625])).toEqual([1, -2.5, 3.140625]);
    expect(roundTrip("float16", [0.000060975551605224609375, 65504, -0.5])).toEqual([0.000060975551605224609375, 65504, -0.5]);
    // not representable: rounded
    expect(roundTrip("bfloat16", [1.001])).toEqual([1]);
  });
});

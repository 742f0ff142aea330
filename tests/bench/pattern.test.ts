// The benchmark's result check: outputs of every op, computed here by brute force from each
// rank's input (element by element, no tables), must check as 0 wrong; a corrupted element
// must be counted.
import { describe, expect, test } from "bun:test";
import { toBFloat16Bits, toFloat16Bits } from "../../src/tensor/half";
import { checkOutput, fillSend, inputValue, poison, tablesFor, viewOf, type CheckContext } from "../../src/bench/pattern";
import { pointShape, type BenchOp } from "../../src/bench/spec";
import type { DTypeName, RedOpName } from "../../src/ops/table";

const SIZE: Record<DTypeName, number> = { float16: 2, bfloat16: 2, float32: 4, float64: 8, int8: 1, uint8: 1, int16: 2, int32: 4, int64: 8, bool: 1 };

/** Independent reduction over ranks of plain numbers (BigInt for integers: exact, then wrapped on store). */
function reduceRef(dtype: DTypeName, redop: RedOpName, vals: number[]): number | bigint {
  if (dtype === "bool") {
    const b = vals.map((v) => v !== 0);
    const op = redop === "sum" || redop === "max" || redop === "bor" ? "or" : redop === "bxor" ? "xor" : "and";
    return Number(op === "or" ? b.some((x) => x) : op === "and" ? b.every((x) => x) : b.filter((x) => x).length % 2 === 1);
  }
  if (dtype.startsWith("float") || dtype === "bfloat16") {
    let acc = redop === "prod" ? 1 : redop === "min" ? Infinity : redop === "max" ? -Infinity : 0;
    for (const v of vals) acc = redop === "prod" ? acc * v : redop === "min" ? Math.min(acc, v) : redop === "max" ? Math.max(acc, v) : acc + v;
    return redop === "avg" ? acc / vals.length : acc;
  }
  let acc: bigint | null = null;
  for (const x of vals.map(BigInt)) {
    if (acc === null) acc = x;
    else if (redop === "sum") acc += x;
    else if (redop === "prod") acc *= x;
    else if (redop === "min") acc = x < acc ? x : acc;
    else if (redop === "max") acc = x > acc ? x : acc;
    else if (redop === "band") acc &= x;
    else if (redop === "bor") acc |= x;
    else acc ^= x;
  }
  return acc!;
}

/** Stores exact values into a fresh buffer of the dtype (typed-array conversion semantics). */
function store(dtype: DTypeName, vals: (number | bigint)[]): Uint8Array {
  const bytes = new Uint8Array(Math.max(vals.length, 1) * SIZE[dtype]);
  const v = viewOf(dtype, bytes, vals.length);
  vals.forEach((x, i) => {
    if (dtype === "float16") v[i] = toFloat16Bits(Number(x));
    else if (dtype === "bfloat16") v[i] = toBFloat16Bits(Number(x));
    else if (dtype === "int64") v[i] = BigInt.asIntN(64, BigInt(x));
    else if (dtype === "int8" || dtype === "int16" || dtype === "int32" || dtype === "uint8") v[i] = Number(BigInt.asIntN(32, BigInt(x)));
    else v[i] = Number(x);
  });
  return bytes;
}

/** Every rank's output of the op, by brute force: null where a rank has none. */
function simulate(op: BenchOp, dtype: DTypeName, redop: RedOpName, n: number, root: number, size: number): (Uint8Array | null)[] {
  const shape = pointShape(op, size, n, SIZE[dtype]);
  const inp = (j: number, k: number) => inputValue(dtype, redop, j, k);
  const ranks = Array.from({ length: n }, (_, j) => j);
  const part = shape.part;
  return ranks.map((r) => {
    const out: (number | bigint)[] = [];
    switch (op) {
      case "allreduce":
      case "reduce":
        if (op === "reduce" && r !== root) return null;
        for (let k = 0; k < shape.count; k++) out.push(reduceRef(dtype, redop, ranks.map((j) => inp(j, k))));
        break;
      case "broadcast":
        for (let k = 0; k < shape.count; k++) out.push(inp(root, k));
        break;
      case "sendrecv":
        for (let k = 0; k < shape.count; k++) out.push(inp((r + n - 1) % n, k));
        break;
      case "allgather":
      case "gather":
        if (op === "gather" && r !== root) return null;
        for (const j of ranks) for (let k = 0; k < part; k++) out.push(inp(j, k));
        break;
      case "scatter":
        for (let k = 0; k < part; k++) out.push(inp(root, r * part + k));
        break;
      case "reduce_scatter":
        for (let k = 0; k < part; k++) out.push(reduceRef(dtype, redop, ranks.map((j) => inp(j, r * part + k))));
        break;
      case "alltoall":
        for (const j of ranks) for (let k = 0; k < part; k++) out.push(inp(j, r * part + k));
        break;
      case "barrier":
        return null;
    }
    return store(dtype, out);
  });
}

const OPS: BenchOp[] = ["allreduce", "reduce", "broadcast", "allgather", "gather", "scatter", "reduce_scatter", "alltoall", "sendrecv"];
const CASES: [DTypeName, RedOpName][] = [
  ["float32", "sum"],
  ["float32", "prod"],
  ["float32", "max"],
  ["float32", "avg"],
  ["float64", "min"],
  ["float16", "sum"],
  ["bfloat16", "sum"],
  ["int8", "sum"],
  ["uint8", "prod"],
  ["int32", "bxor"],
  ["int64", "prod"],
  ["bool", "sum"],
  ["bool", "bxor"],
];

describe("checkOutput against brute-force outputs", () => {
  for (const [dtype, redop] of CASES) {
    for (const n of [1, 2, 3, 5]) {
      test(`${dtype} ${redop} n=${n}`, () => {
        const tables = tablesFor(dtype, redop, n);
        for (const op of OPS) {
          const root = n - 1;
          for (const size of [8 * n, 100 * SIZE[dtype] * n + 3, 1000]) {
            const shape = pointShape(op, size, n, SIZE[dtype]);
            if (shape.count === 0) continue;
            const outs = simulate(op, dtype, redop, n, root, size);
            for (let r = 0; r < n; r++) {
              const out = outs[r];
              if (!out) continue;
              const ctx: CheckContext = { op, dtype, redop, n, rank: r, root, shape };
              const view = viewOf(dtype, out, shape.recvElems);
              expect({ op, size, r, wrong: checkOutput(ctx, view, tables) }).toEqual({ op, size, r, wrong: 0 });
              // one corrupted element is one wrong value
              const bad = out.slice();
              const at = Math.floor(bad.byteLength / 2 / SIZE[dtype]) * SIZE[dtype];
              bad[at] = bad[at]! ^ 0x5a;
              bad[at + SIZE[dtype] - 1] = bad[at + SIZE[dtype] - 1]! ^ 0x40;
              expect(checkOutput(ctx, viewOf(dtype, bad, shape.recvElems), tables)).toBe(1);
            }
          }
        }
      });
    }
  }
});

describe("inputs", () => {
  test("fillSend writes rank r's inputs v(r, k)", () => {
    for (const [dtype, redop] of CASES) {
      const n = 3;
      const tables = tablesFor(dtype, redop, n);
      for (let r = 0; r < n; r++) {
        const shape = pointShape("alltoall", 300 * SIZE[dtype], n, SIZE[dtype]);
        const bytes = new Uint8Array(shape.sendElems * SIZE[dtype]);
        fillSend({ op: "alltoall", dtype, redop, n, rank: r, root: 0, shape }, viewOf(dtype, bytes), tables);
        const want = store(dtype, Array.from({ length: shape.sendElems }, (_, k) => inputValue(dtype, redop, r, k)));
        expect(Buffer.from(bytes).equals(Buffer.from(want))).toBe(true);
      }
    }
  });
  test("a poisoned (never written) output is all wrong", () => {
    const shape = pointShape("allreduce", 4096, 2, 4);
    const bytes = new Uint8Array(4096);
    poison(bytes);
    const ctx: CheckContext = { op: "allreduce", dtype: "float32", redop: "sum", n: 2, rank: 0, root: 0, shape };
    expect(checkOutput(ctx, viewOf("float32", bytes), tablesFor("float32", "sum", 2))).toBe(1024);
  });
  test("reductions stay exact: sums of half inputs over 64 ranks fit bfloat16", () => {
    const tables = tablesFor("bfloat16", "sum", 64);
    const shape = pointShape("allreduce", 22 * 2, 64, 2);
    const out = simulate("allreduce", "bfloat16", "sum", 64, 0, 44)[0]!;
    expect(checkOutput({ op: "allreduce", dtype: "bfloat16", redop: "sum", n: 64, rank: 0, root: 0, shape }, viewOf("bfloat16", out), tables)).toBe(0);
  });
});

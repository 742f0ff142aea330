// Agreement decisions on the control link (control/decision-wire.ts): members as runs, a
// gather's equal shapes once; decoding gives back exactly the decision that was encoded.
import { expect, test } from "bun:test";
import { decodeDecision, encodeDecision, fromRuns, toRuns } from "../../src/control/decision-wire";
import type { Decision } from "../../src/control/matcher";

test("runs of consecutive ranks", () => {
  expect(toRuns([])).toEqual([]);
  expect(toRuns([0, 1, 2, 3])).toEqual([[0, 3]]);
  expect(toRuns([0, 2, 3, 4, 7, 1023])).toEqual([[0, 0], [2, 4], [7, 7], [1023, 1023]]);
  const world = Array.from({ length: 1024 }, (_, i) => i).filter((r) => r !== 17 && r !== 600);
  expect(fromRuns(toRuns(world))).toEqual(world);
});

test("a 1,024-rank decision is a few dozen bytes on the wire, and decodes to itself", () => {
  const ranks = Array.from({ length: 1024 }, (_, i) => i);
  const d: Decision = { ok: true, seq: 9, opId: "123", ranks };
  const text = encodeDecision(d);
  expect(text.length).toBeLessThan(80);
  expect(decodeDecision(JSON.parse(text))).toEqual(d);
});

test("gathers: equal shapes go once, unequal ones as they are", () => {
  const same: Decision = { ok: true, seq: 1, opId: "5", ranks: [0, 1, 2], shapes: [[2, 3], [2, 3], [2, 3]] };
  expect(decodeDecision(JSON.parse(encodeDecision(same)))).toEqual(same);
  const uneven: Decision = { ok: true, seq: 1, opId: "5", ranks: [0, 1, 5], shapes: [[2], [3], [2]], retryOf: "4" };
  expect(decodeDecision(JSON.parse(encodeDecision(uneven)))).toEqual(uneven);
  const one: Decision = { ok: true, seq: 1, opId: "5", ranks: [4], shapes: [[7]] };
  expect(decodeDecision(JSON.parse(encodeDecision(one)))).toEqual(one);
});

test("failures and plain (re-issued) decisions pass through unchanged", () => {
  const fail: Decision = { ok: false, seq: 3, status: 504, code: "timeout", message: "m", details: { missing_ranks: [2] } };
  expect(decodeDecision(JSON.parse(encodeDecision(fail)))).toEqual(fail);
  const plain: Decision = { ok: true, seq: 2, opId: "7", ranks: [1, 3], dtype: "int32", shape: [4] };
  expect(decodeDecision(plain)).toEqual(plain);
});

// Worlds past 64 slots through bun:ffi: mr_submit's group is a bitset of MR_RANK_WORDS u64
// words, so ranks 64..1023 take part like any other (3 engines here, at slots spread over a
// world of 1,024: 0, 700 and 1023; both TCP and the same-host board paths).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { NativeDataPlane } from "../../src/native/engine";
import { constants, headerPath, parseConstants } from "../../src/native/ffi";
import { NativeError } from "../../src/native/types";
import { WORLD_SIZE_MAX } from "../../src/limits";

const worldSizeMax = 1024;
const ranks = Object.freeze([0, 700, 1023]) as number[];
let planes: NativeDataPlane[] = [];
let nextOpId = 1n;

beforeAll(() => {
  const clusterId = `wide-test-${process.pid}`;
  planes = ranks.map((rank) => new NativeDataPlane({ rank, worldSizeMax, clusterId, token: "wide", listenHost: "127.0.0.1" }));
  for (const a of planes) for (const b of planes) if (a !== b) a.setPeer(b.rank, "127.0.0.1", b.dataPort, b.hostId);
});

afterAll(() => {
  for (const p of planes) p.close();
});

describe("1,024-slot worlds", () => {
  test("the TS limit is the header's", () => {
    const fromHeader = parseConstants(readFileSync(headerPath, "utf8"));
    expect(fromHeader.MR_WORLD_SIZE_MAX).toBe(WORLD_SIZE_MAX);
    expect(constants.MR_RANK_WORDS! * 64).toBe(WORLD_SIZE_MAX);
  });

  test("allreduce int64 among ranks 0, 700, 1023", async () => {
    const count = 513;
    const bufs = planes.map((p, i) => {
      const b = p.alloc(count * 8);
      const v = new BigInt64Array(b.bytes.buffer, b.bytes.byteOffset, count);
      for (let k = 0; k < count; k++) v[k] = BigInt(ranks[i]! * 1_000_003 + k);
      return b;
    });
    const opId = nextOpId++;
    await Promise.all(planes.map((p, i) => p.run({ kind: "allreduce", dtype: "int64", redop: "sum", opId, ranks, count, send: bufs[i], recv: bufs[i], timeoutMs: 10_000 })));
    for (const b of bufs) {
      const v = new BigInt64Array(b.bytes.buffer, b.bytes.byteOffset, count);
      for (let k = 0; k < count; k++) expect(v[k]).toBe(BigInt((0 + 700 + 1023) * 1_000_003 + 3 * k));
      b.release();
    }
  });

  test("alltoall: counts indexed by global ranks past 64", async () => {
    // rank i sends (j + 1) elements to member j: value 10000*i + 100*j + k
    const n = ranks.length;
    const sends = planes.map((p, i) => {
      const total = (n * (n + 1)) / 2;
      const b = p.alloc(total * 4);
      const v = new Int32Array(b.bytes.buffer, b.bytes.byteOffset, total);
      let o = 0;
      for (let j = 0; j < n; j++) for (let k = 0; k <= j; k++) v[o++] = 10000 * i + 100 * j + k;
      return b;
    });
    const recvs = planes.map((p, j) => p.alloc(n * (j + 1) * 4));
    const opId = nextOpId++;
    await Promise.all(
      planes.map((p, i) =>
        p.run({
          kind: "alltoall",
          dtype: "int32",
          opId,
          ranks,
          count: 0,
          sendCounts: ranks.map((_, j) => j + 1),
          recvCounts: ranks.map(() => i + 1),
          send: sends[i],
          recv: recvs[i],
          timeoutMs: 10_000,
        }),
      ),
    );
    for (let j = 0; j < n; j++) {
      const v = new Int32Array(recvs[j]!.bytes.buffer, recvs[j]!.bytes.byteOffset, n * (j + 1));
      for (let i = 0; i < n; i++) for (let k = 0; k <= j; k++) expect(v[i * (j + 1) + k]).toBe(10000 * i + 100 * j + k);
    }
    for (const b of [...sends, ...recvs]) b.release();
  });

  test("a rank outside the world is refused before it reaches the engine", () => {
    const small = new NativeDataPlane({ rank: 0, worldSizeMax: 100, clusterId: `wide-small-${process.pid}`, listenHost: "127.0.0.1" });
    try {
      expect(() => small.run({ kind: "barrier", dtype: "uint8", opId: 1n, ranks: [0, 100], count: 0, timeoutMs: 1000 })).toThrow(NativeError);
    } finally {
      small.close();
    }
  });
});

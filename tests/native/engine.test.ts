// The native data plane through bun:ffi: 3 engines (ranks) in this process on loopback.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { NativeDataPlane, lastError } from "../../src/native/engine";
import { constants, missingSymbols, parsePrototypes, prototypes } from "../../src/native/ffi";
import { NativeError, type NativeBuffer, type NativeOp } from "../../src/native/types";

const n = 3;
const worldSizeMax = 4;
let planes: NativeDataPlane[] = [];
let nextOpId = 1n;
const all = [0, 1, 2];

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

beforeAll(() => {
  const clusterId = `bun-test-${process.pid}`;
  planes = all.map((rank) => new NativeDataPlane({ rank, worldSizeMax, clusterId, token: "s3cret", listenHost: "127.0.0.1" }));
  for (const a of planes) for (const b of planes) if (a !== b) a.setPeer(b.rank, "127.0.0.1", b.dataPort, b.hostId);
});

afterAll(() => {
  for (const p of planes) p.close();
});

describe("ffi", () => {
  test("symbols come from moonring.h and all resolve", () => {
    expect(prototypes.length).toBeGreaterThanOrEqual(20);
    expect(prototypes.map((p) => p.name)).toContain("mr_submit");
    expect(missingSymbols).toEqual([]);
    expect(constants.MR_EPEER).toBe(-3);
  });

  test("parser maps C types and rejects unknown ones", () => {
    const [p] = parsePrototypes("int64_t mr_x(mr_engine *e,\n const uint64_t *c, uint32_t k, size_t n);");
    expect(p!.name).toBe("mr_x");
    expect(p!.args.length).toBe(4);
    expect(() => parsePrototypes("float mr_y(void);")).toThrow(/no bun:ffi mapping/);
  });
});

describe("collectives over the native data plane", () => {
  test("engines have ports and one host id", () => {
    for (const p of planes) expect(p.dataPort).toBeGreaterThan(0);
    expect(new Set(planes.map((p) => p.hostId)).size).toBe(1);
  });

  test("allreduce f32 sum of random integers matches an f64 reference", async () => {
    const count = 1000;
    const r = rng(7);
    const inputs = all.map(() => Float32Array.from({ length: count }, () => Math.floor(r() * 2000) - 1000));
    const bufs = planes.map((p, i) => {
      const b = p.alloc(count * 4);
      new Float32Array(b.bytes.buffer, b.bytes.byteOffset, count).set(inputs[i]!);
      return b;
    });
    const opId = nextOpId++;
    await Promise.all(
      planes.map((p, i) =>
        p.run({ kind: "allreduce", dtype: "float32", redop: "sum", opId, ranks: all, count, send: bufs[i], recv: bufs[i], timeoutMs: 10_000 }),
      ),
    );
    for (let i = 0; i < n; i++) {
      const got = new Float32Array(bufs[i]!.bytes.buffer, bufs[i]!.bytes.byteOffset, count);
      for (let k = 0; k < count; k++) {
        const expected = inputs[0]![k]! + inputs[1]![k]! + inputs[2]![k]!;
        if (got[k] !== expected) throw new Error(`rank ${i} element ${k}: ${got[k]} != ${expected}`);
      }
      bufs[i]!.release();
    }
  });

  // Two ranks above 64 KiB on the board: each reduces half and writes it into the other's recv
  // when that is a shared buffer it can map (NOTES E27, E28), else the old copy path runs.
  // Every mix of shared and plain buffers, in and out of place, against an f64 reference.
  for (const kind of ["allreduce", "reduce"] as const) {
    for (const [shared0, shared1] of [[true, true], [true, false], [false, true], [false, false]]) {
      for (const inPlace of [false, true]) {
        test(`${kind}, 2 ranks, 1 MiB f64, shared buffers ${shared0}/${shared1}, in place ${inPlace}`, async () => {
          const count = (1 << 20) / 8 + 3; // odd: halves differ
          const r = rng(11);
          const pair = [planes[0]!, planes[1]!];
          const inputs = pair.map(() => Float64Array.from({ length: count }, () => Math.floor(r() * 2 ** 30) - 2 ** 29));
          const make = (p: NativeDataPlane, shared: boolean) => (shared ? p.allocShared(count * 8) : p.alloc(count * 8));
          const sends = pair.map((p, i) => make(p, [shared0, shared1][i]!));
          const recvs = inPlace ? sends : pair.map((p, i) => make(p, [shared0, shared1][i]!));
          sends.forEach((b, i) => new Float64Array(b.bytes.buffer, b.bytes.byteOffset, count).set(inputs[i]!));
          const opId = nextOpId++;
          await Promise.all(
            pair.map((p, i) => p.run({ kind, dtype: "float64", redop: "sum", root: 1, opId, ranks: [0, 1], count, send: sends[i], recv: kind === "reduce" && i === 0 ? undefined : recvs[i], timeoutMs: 10_000 })),
          );
          for (let i = 0; i < 2; i++) {
            if (kind === "reduce" && i === 0) continue;
            const got = new Float64Array(recvs[i]!.bytes.buffer, recvs[i]!.bytes.byteOffset, count);
            for (let k = 0; k < count; k++) {
              const expected = inputs[0]![k]! + inputs[1]![k]!;
              if (got[k] !== expected) throw new Error(`rank ${i} element ${k}: ${got[k]} != ${expected}`);
            }
          }
          for (const b of new Set([...sends, ...recvs])) b.release();
        });
      }
    }
  }

  test("allgather int32: block j is rank j's input", async () => {
    const count = 257;
    const sends = planes.map((p, i) => {
      const b = p.alloc(count * 4);
      const v = new Int32Array(b.bytes.buffer, b.bytes.byteOffset, count);
      for (let k = 0; k < count; k++) v[k] = i * 100000 + k;
      return b;
    });
    const recvs = planes.map((p) => p.alloc(count * 4 * n));
    const opId = nextOpId++;
    await Promise.all(
      planes.map((p, i) => p.run({ kind: "allgather", dtype: "int32", opId, ranks: all, count, send: sends[i], recv: recvs[i], timeoutMs: 10_000 })),
    );
    for (let i = 0; i < n; i++) {
      const v = new Int32Array(recvs[i]!.bytes.buffer, recvs[i]!.bytes.byteOffset, count * n);
      for (let j = 0; j < n; j++) for (let k = 0; k < count; k++) expect(v[j * count + k]).toBe(j * 100000 + k);
      sends[i]!.release();
      recvs[i]!.release();
    }
  });

  test("many small allreduces back to back (latency path), in a subgroup", async () => {
    const ranks = [0, 2];
    const bufs = ranks.map((r) => planes[r]!.alloc(8));
    for (let round = 0; round < 200; round++) {
      ranks.forEach((r, i) => new Float64Array(bufs[i]!.bytes.buffer, bufs[i]!.bytes.byteOffset, 1).set([r + round]));
      const opId = nextOpId++;
      await Promise.all(
        ranks.map((r, i) =>
          planes[r]!.run({ kind: "allreduce", dtype: "float64", redop: "sum", opId, ranks, count: 1, send: bufs[i], recv: bufs[i], timeoutMs: 10_000 }),
        ),
      );
      for (const b of bufs) expect(new Float64Array(b.bytes.buffer, b.bytes.byteOffset, 1)[0]).toBe(2 + 2 * round);
    }
    for (const b of bufs) b.release();
    for (const p of planes) expect(p.inFlight).toBe(0);
  });
});

describe("errors", () => {
  test("a bad argument rejects with NativeError EINVAL and a message", async () => {
    const b = planes[0]!.alloc(16);
    const opId = nextOpId++;
    const err = await planes[0]!
      .run({ kind: "allreduce", dtype: "float32", redop: "band", opId, ranks: all, count: 4, send: b, recv: b, timeoutMs: 1000 })
      .catch((e) => e);
    expect(err).toBeInstanceOf(NativeError);
    expect((err as NativeError).code).toBe("EINVAL");
    expect((err as NativeError).message).toContain("band");
    const err2 = await planes[0]!
      .run({ kind: "allreduce", dtype: "float32", redop: "sum", opId, ranks: [1, 2], count: 4, send: b, recv: b, timeoutMs: 1000 })
      .catch((e) => e);
    expect((err2 as NativeError).code).toBe("EINVAL");
    expect((err2 as NativeError).message).toContain("does not contain this rank");
    expect(lastError()).toContain("does not contain this rank");
    b.release();
  });

  test("a peer that never joins: ETIMEOUT naming it", async () => {
    const b = planes[0]!.alloc(8);
    const err = (await planes[0]!
      .run({ kind: "allreduce", dtype: "float64", redop: "sum", opId: nextOpId++, ranks: [0, 1], count: 1, send: b, recv: b, timeoutMs: 100 })
      .catch((e) => e)) as NativeError;
    expect(err).toBeInstanceOf(NativeError);
    expect(err.code).toBe("ETIMEOUT");
    expect(err.failedPeer).toBe(1);
    expect(err.message).toContain("rank 0");
    expect(err.message).toContain("rank 1");
    b.release();
  });

  test("runBlocking (mr_run_packed): exact result, refusals and failures like run()", () => {
    const p = planes[0]!;
    const b = p.alloc(16);
    const out = p.alloc(16);
    const input = Float64Array.from([3.5, -1, 2 ** 40, 7]);
    new Float64Array(b.bytes.buffer, b.bytes.byteOffset, 2).set(input.subarray(0, 2));
    p.runBlocking!({ kind: "allreduce", dtype: "float64", redop: "max", opId: nextOpId++, ranks: [0], count: 2, send: b, recv: out, timeoutMs: 1000 });
    expect(Array.from(new Float64Array(out.bytes.buffer, out.bytes.byteOffset, 2))).toEqual([3.5, -1]);
    // alltoall's counts go through a preallocated array: one rank gets its own part back.
    new Float64Array(b.bytes.buffer, b.bytes.byteOffset, 2).set([6, -2.25]);
    p.runBlocking!({ kind: "alltoall", dtype: "float64", opId: nextOpId++, ranks: [0], count: 2, sendCounts: [2], recvCounts: [2], send: b, recv: out, timeoutMs: 1000 });
    expect(Array.from(new Float64Array(out.bytes.buffer, out.bytes.byteOffset, 2))).toEqual([6, -2.25]);
    expect(() =>
      p.runBlocking!({ kind: "alltoall", dtype: "float64", opId: nextOpId++, ranks: [0], count: 2, sendCounts: [1.5], recvCounts: [2], send: b, recv: out, timeoutMs: 1000 }),
    ).toThrow(/bad count 1.5/);
    // Refused (nothing ran): EINVAL with the engine's message.
    const refused = (() => {
      try {
        p.runBlocking!({ kind: "allreduce", dtype: "float32", redop: "band", opId: nextOpId++, ranks: all, count: 4, send: b, recv: b, timeoutMs: 1000 });
      } catch (e) {
        return e as NativeError;
      }
    })();
    expect(refused).toBeInstanceOf(NativeError);
    expect(refused!.code).toBe("EINVAL");
    expect(refused!.message).toContain("band");
    // Ran and failed: the op's own error (its ticket released after reading it).
    const failed = (() => {
      try {
        p.runBlocking!({ kind: "allreduce", dtype: "float64", redop: "sum", opId: nextOpId++, ranks: [0, 1], count: 1, send: b, recv: b, timeoutMs: 100 });
      } catch (e) {
        return e as NativeError;
      }
    })();
    expect(failed).toBeInstanceOf(NativeError);
    expect(failed!.code).toBe("ETIMEOUT");
    expect(failed!.failedPeer).toBe(1);
    expect(failed!.message).toContain("rank 1");
    b.release();
    out.release();
  });

  test("runBlocking: op objects reused with other fields run as they are now (cached argument blocks)", () => {
    const p = planes[0]!;
    const view = (buf: NativeBuffer) => new Float64Array(buf.bytes.buffer, buf.bytes.byteOffset, 4);
    const bufs = [p.alloc(32), p.alloc(32), p.alloc(32)];
    view(bufs[0]!).set([1.5, -2, 8, 4]);
    view(bufs[1]!).set([-3, 9, 0.25, 6]);
    const ranks = Object.freeze([0]) as number[];
    const op: NativeOp = { kind: "allreduce", dtype: "float64", redop: "sum", opId: 0n, ranks, count: 4, send: bufs[0], recv: bufs[2], timeoutMs: 1000 };
    // Six other op objects in between: more than the blocks kept, so op's block is rewritten too.
    const others: NativeOp[] = Array.from({ length: 6 }, (_, i) => ({ kind: "allreduce", dtype: "float64", redop: "max", opId: 0n, ranks, count: 1 + (i % 4), send: bufs[1], recv: bufs[2], timeoutMs: 1000 }));
    const expected: number[][] = [];
    const got: number[][] = [];
    const run = (o: NativeOp, want: number[]) => {
      view(bufs[2]!).fill(-1);
      o.opId = nextOpId++;
      p.runBlocking!(o);
      got.push(Array.from(view(bufs[2]!)));
      expected.push(want);
    };
    run(op, [1.5, -2, 8, 4]);
    run(op, [1.5, -2, 8, 4]); // reused as is
    op.count = 2;
    run(op, [1.5, -2, -1, -1]);
    op.send = bufs[1];
    run(op, [-3, 9, -1, -1]);
    op.dtype = "float32"; // 2 float32 = the bytes of the first float64 only
    run(op, [-3, -1, -1, -1]);
    op.dtype = "float64";
    op.count = 4;
    for (const [i, o] of others.entries()) {
      run(o, [-3, 9, 0.25, 6].map((x, k) => (k < 1 + (i % 4) ? x : -1)));
      run(op, [-3, 9, 0.25, 6]);
    }
    // New op objects and ranks arrays per call, with equal fields or not, run as they are.
    for (let i = 0; i < 6; i++) run({ ...op, ranks: [0], send: bufs[i % 2], count: 3 + (i % 3 === 2 ? 1 : 0) }, [...(i % 2 === 0 ? [1.5, -2, 8] : [-3, 9, 0.25]), i % 3 === 2 ? (i % 2 === 0 ? 4 : 6) : -1]);
    expect(got).toEqual(expected);
    // Two data planes on one thread take turns binding mr_run_bound: each runs its own op.
    const q = planes[1]!;
    const qIn = q.alloc(32);
    const qOut = q.alloc(32);
    view(qIn).set([7, 7.5, -7, 70]);
    const qOp: NativeOp = { kind: "allreduce", dtype: "float64", redop: "min", opId: 0n, ranks: Object.freeze([1]) as number[], count: 4, send: qIn, recv: qOut, timeoutMs: 1000 };
    for (let i = 0; i < 3; i++) {
      view(qOut).fill(0);
      qOp.opId = nextOpId++;
      q.runBlocking!(qOp);
      expect(Array.from(view(qOut))).toEqual([7, 7.5, -7, 70]);
      run(op, [-3, 9, 0.25, 6]);
    }
    expect(got.at(-1)).toEqual([-3, 9, 0.25, 6]);
    qIn.release();
    qOut.release();
    // A ranks array that is not frozen may change in place: never trusted from the cache.
    const open = [0];
    const mutable: NativeOp = { ...op, ranks: open, opId: nextOpId++ };
    p.runBlocking!(mutable);
    open[0] = 3; // not a member of a 3-rank world's ops here: refused, not run with the old group
    mutable.opId = nextOpId++;
    expect(() => p.runBlocking!(mutable)).toThrow(NativeError);
    // alltoall counts arrays changed in place are read again.
    const counts = [4];
    const a2a: NativeOp = { kind: "alltoall", dtype: "float64", opId: nextOpId++, ranks, count: 4, sendCounts: counts, recvCounts: counts, send: bufs[0], recv: bufs[2], timeoutMs: 1000 };
    view(bufs[2]!).fill(-1);
    p.runBlocking!(a2a);
    expect(Array.from(view(bufs[2]!))).toEqual([1.5, -2, 8, 4]);
    counts[0] = 1;
    a2a.opId = nextOpId++;
    view(bufs[2]!).fill(-1);
    p.runBlocking!(a2a);
    expect(Array.from(view(bufs[2]!))).toEqual([1.5, -1, -1, -1]);
    for (const b of bufs) b.release();
  });

  test("op ids may be numbers below 2^53; other numbers are refused with EINVAL", async () => {
    const p = planes[0]!;
    const b = p.alloc(16);
    const out = p.alloc(16);
    new Float64Array(b.bytes.buffer, b.bytes.byteOffset, 2).set([2 ** 52 + 1, -0.5]);
    const ranks = Object.freeze([0]) as number[];
    const op: NativeOp = { kind: "allreduce", dtype: "float64", redop: "sum", opId: Number(nextOpId++), ranks, count: 2, send: b, recv: out, timeoutMs: 1000 };
    p.runBlocking!(op);
    expect(Array.from(new Float64Array(out.bytes.buffer, out.bytes.byteOffset, 2))).toEqual([2 ** 52 + 1, -0.5]);
    op.opId = 2 ** 53 - 1 - Number(nextOpId++); // the largest ids too (halves written separately)
    p.runBlocking!(op);
    await p.run({ ...op, opId: Number(nextOpId++) });
    for (const bad of [-256, 1.5, 2 ** 53, Number.NaN]) {
      op.opId = bad;
      expect(() => p.runBlocking!(op)).toThrow(/unsigned integer below 2\^53/);
      await expect(p.run({ ...op })).rejects.toThrow(/unsigned integer below 2\^53/);
    }
    b.release();
    out.release();
  });

  test("peerDown fails a waiting op at once with EPEER; setPeer brings the peer back", async () => {
    const b = planes[1]!.alloc(8);
    const pending = planes[1]!
      .run({ kind: "allreduce", dtype: "float64", redop: "sum", opId: nextOpId++, ranks: [1, 2], count: 1, send: b, recv: b, timeoutMs: 60_000 })
      .catch((e) => e);
    await Bun.sleep(5);
    planes[1]!.peerDown(2);
    const err = (await pending) as NativeError;
    expect(err.code).toBe("EPEER");
    expect(err.failedPeer).toBe(2);
    planes[1]!.setPeer(2, "127.0.0.1", planes[2]!.dataPort, planes[2]!.hostId);
    b.release();
  });
});

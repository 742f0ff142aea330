// Shared multi-rank test cases. They run against in-process worlds (fake data plane,
// tests/unit/inproc.test.ts) and real rank processes (libmoonring, tests/multirank/).
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { DType, RedOp } from "../../src/client/index";
import { all, expectOk } from "./http";
import { launchWorld, type LaunchedWorld } from "./launch-world";
import { ALL_DTYPES, FLOAT_DTYPES, expectValues, randomValues, redopsFor, refReduce, rng } from "./ref";

export interface WorldRef {
  urls: () => string[];
}

/** Launches a world of n rank processes for the enclosing describe (stopped after it); its urls once started. */
export function launchedWorldRef(n: number, opts: Parameters<typeof launchWorld>[1] = {}): WorldRef {
  return startedWorldRef(() => launchWorld(n, opts));
}

/** A world `start` makes for the enclosing describe (stopped after it); its urls once started. */
export function startedWorldRef(start: () => Promise<Pick<LaunchedWorld, "urls" | "stop">>): WorldRef {
  let w: Pick<LaunchedWorld, "urls" | "stop"> | undefined;
  beforeAll(async () => {
    w = await start();
  }, 90_000);
  afterAll(async () => {
    await w?.stop();
  }, 30_000);
  return {
    urls: () => {
      if (!w) throw new Error("world did not start");
      return w.urls;
    },
  };
}

function product(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Every op at world size N with non-zero roots and random data vs the reference. */
export function collectiveCases(n: number, world: WorldRef, seed = 1000 + n): void {
  const roots = n === 1 ? [0] : [n - 1, 1 % n];

  test(`N=${n} allreduce: every dtype x reduce op, random data`, async () => {
    const urls = world.urls();
    const rand = rng(seed);
    for (const dtype of ALL_DTYPES) {
      for (const redop of redopsFor(dtype)) {
        const shape = [2, 3];
        const inputs = urls.map(() => randomValues(dtype, 6, rand, redop));
        const res = expectOk(
          await all(urls, "/collective/allreduce", (r) => ({ tensor: { dtype, shape, data: inputs[r] }, op: redop })),
          `allreduce ${dtype} ${redop}`,
        );
        const want = refReduce(dtype, redop, inputs);
        res.forEach((b, r) => {
          expect(b.op).toBe("allreduce");
          expect(b.result.dtype).toBe(dtype);
          expect(b.result.shape).toEqual(shape);
          expect(b.active_ranks).toEqual(new Array(n).fill(1));
          expect(b.contributors).toEqual([...Array(n).keys()]);
          expect(b.failed_ranks).toEqual([]);
          expect(typeof b.elapsed_ms).toBe("number");
          expectValues(dtype, b.result.data, want, `rank ${r} allreduce ${dtype} ${redop}`);
        });
        // every rank agrees on seq
        expect(new Set(res.map((b) => b.seq)).size).toBe(1);
      }
    }
  });

  test(`N=${n} allreduce: b64 in -> b64 out, scalars, empty tensors, int64 extremes, non-finite`, async () => {
    const urls = world.urls();
    // b64 float32
    const vals = urls.map((_, r) => new Float32Array([r + 0.5, -r, 1e30, 2]));
    const res = expectOk(
      await all(urls, "/collective/allreduce", (r) => ({
        tensor: { dtype: "float32", shape: [4], b64: new Uint8Array(vals[r]!.buffer).toBase64() },
      })),
      "b64",
    );
    for (const b of res) {
      expect(b.result.data).toBeUndefined();
      const got = new Float32Array(Uint8Array.fromBase64(b.result.b64).buffer);
      const want = [0, 1, 2, 3].map((i) => vals.reduce((a, v) => a + v[i]!, 0));
      got.forEach((g, i) => expect(Math.abs(g - want[i]!)).toBeLessThanOrEqual(Math.abs(want[i]!) * 1e-6));
    }
    // scalar
    const sc = expectOk(await all(urls, "/collective/allreduce", (r) => ({ tensor: { dtype: "int32", shape: [], data: [r + 1] }, op: "prod" })), "scalar");
    const fact = [...Array(n).keys()].reduce((a, r) => a * (r + 1), 1);
    for (const b of sc) expect(b.result).toEqual({ dtype: "int32", shape: [], data: [fact] });
    // empty
    const em = expectOk(await all(urls, "/collective/allreduce", () => ({ tensor: { dtype: "float64", shape: [0, 3], data: [] } })), "empty");
    for (const b of em) expect(b.result).toEqual({ dtype: "float64", shape: [0, 3], data: [] });
    // int64 extremes: max / min / bxor keep every bit
    const big = ["9223372036854775807", "-9223372036854775808", "1", "-1"];
    const mx = expectOk(
      await all(urls, "/collective/allreduce", (r) => ({ tensor: { dtype: "int64", shape: [4], data: r === 0 ? big : ["0", "0", "0", "0"] }, op: "max" })),
      "int64 max",
    );
    const wantMax = n === 1 ? big : ["9223372036854775807", "0", "1", "0"];
    for (const b of mx) expect(b.result.data).toEqual(wantMax);
    // NaN / Infinity
    const nf = expectOk(
      await all(urls, "/collective/allreduce", (r) => ({ tensor: { dtype: "float64", shape: [3], data: [r === 0 ? "NaN" : 1, "Infinity", r === 0 ? "-Infinity" : -1] } })),
      "non-finite",
    );
    for (const b of nf) expect(b.result.data).toEqual(["NaN", "Infinity", "-Infinity"]);
  });

  test(`N=${n} reduce with non-zero dst`, async () => {
    const urls = world.urls();
    const rand = rng(seed + 1);
    for (const dst of roots) {
      for (const [dtype, redop] of [["float32", "sum"], ["int16", "max"], ["bfloat16", "min"], ["int64", "bxor"], ["float64", "avg"]] as [DType, RedOp][]) {
        const inputs = urls.map(() => randomValues(dtype, 5, rand, redop));
        const res = expectOk(await all(urls, "/collective/reduce", (r) => ({ tensor: { dtype, shape: [5], data: inputs[r] }, dst, op: redop })), `reduce ${dtype}`);
        const want = refReduce(dtype, redop, inputs);
        res.forEach((b, r) => {
          if (r === dst) expectValues(dtype, b.result.data, want, `reduce dst ${dst} rank ${r}`);
          else expect(b.result).toBeNull();
        });
      }
    }
  });

  test(`N=${n} broadcast from non-zero src`, async () => {
    const urls = world.urls();
    const rand = rng(seed + 2);
    for (const src of roots) {
      for (const dtype of ["float16", "int64", "bool", "uint8"] as DType[]) {
        const inputs = urls.map(() => randomValues(dtype, 7, rand, "max"));
        const res = expectOk(await all(urls, "/collective/broadcast", (r) => ({ tensor: { dtype, shape: [7], data: inputs[r] }, src })), `broadcast ${dtype}`);
        for (const b of res) expectValues(dtype, b.result.data, inputs[src]!, `broadcast from ${src}`);
      }
    }
  });

  test(`N=${n} allgather and gather (non-zero dst)`, async () => {
    const urls = world.urls();
    const rand = rng(seed + 3);
    for (const dtype of ["float32", "int8", "int64", "bfloat16"] as DType[]) {
      const inputs = urls.map(() => randomValues(dtype, 6, rand, "max"));
      const ag = expectOk(await all(urls, "/collective/allgather", (r) => ({ tensor: { dtype, shape: [3, 2], data: inputs[r] } })), `allgather ${dtype}`);
      for (const b of ag) {
        expect(b.result.length).toBe(n);
        b.result.forEach((t: any, j: number) => {
          expect(t.shape).toEqual([3, 2]);
          expectValues(dtype, t.data, inputs[j]!, `allgather block ${j}`);
        });
      }
      for (const dst of roots) {
        const g = expectOk(await all(urls, "/collective/gather", (r) => ({ tensor: { dtype, shape: [6], data: inputs[r] }, dst })), `gather ${dtype}`);
        g.forEach((b, r) => {
          if (r !== dst) return expect(b.result).toBeNull();
          b.result.forEach((t: any, j: number) => expectValues(dtype, t.data, inputs[j]!, `gather block ${j}`));
        });
      }
    }
  });

  test(`N=${n} scatter from non-zero src`, async () => {
    const urls = world.urls();
    const rand = rng(seed + 4);
    for (const src of roots) {
      for (const dtype of ["float64", "int32", "bool"] as DType[]) {
        const blocks = urls.map(() => randomValues(dtype, 4, rand, "max"));
        const res = expectOk(
          await all(urls, "/collective/scatter", (r) => (r === src ? { src, tensors: blocks.map((d) => ({ dtype, shape: [2, 2], data: d })) } : { src })),
          `scatter ${dtype}`,
        );
        res.forEach((b, r) => {
          expect(b.result.shape).toEqual([2, 2]);
          expect(b.result.dtype).toBe(dtype);
          expectValues(dtype, b.result.data, blocks[r]!, `scatter to ${r}`);
        });
      }
    }
  });

  test(`N=${n} reduce_scatter`, async () => {
    const urls = world.urls();
    const rand = rng(seed + 5);
    for (const [dtype, redop] of [["float32", "sum"], ["int32", "min"], ["float16", "max"], ["uint8", "bor"], ["float64", "avg"]] as [DType, RedOp][]) {
      const inputs = urls.map(() => urls.map(() => randomValues(dtype, 3, rand, redop)));
      const res = expectOk(
        await all(urls, "/collective/reduce_scatter", (r) => ({ tensors: inputs[r]!.map((d) => ({ dtype, shape: [3], data: d })), op: redop })),
        `reduce_scatter ${dtype}`,
      );
      res.forEach((b, r) => {
        const want = refReduce(dtype, redop, inputs.map((perRank) => perRank[r]!));
        expectValues(dtype, b.result.data, want, `reduce_scatter rank ${r}`);
      });
    }
  });

  test(`N=${n} alltoall with uneven sizes`, async () => {
    const urls = world.urls();
    const rand = rng(seed + 6);
    for (const dtype of ["float32", "int64", "int16"] as DType[]) {
      // rank i sends (i + j) % 3 + 0..1 elements to rank j (some blocks empty)
      const size = (i: number, j: number) => (i * 2 + j) % 4;
      const inputs = urls.map((_, i) => urls.map((_, j) => randomValues(dtype, size(i, j), rand, "max")));
      const res = expectOk(
        await all(urls, "/collective/alltoall", (i) => ({ tensors: inputs[i]!.map((d) => ({ dtype, shape: [d.length], data: d })) })),
        `alltoall ${dtype}`,
      );
      res.forEach((b, r) => {
        expect(b.result.length).toBe(n);
        b.result.forEach((t: any, j: number) => {
          expect(t.shape).toEqual([size(j, r)]);
          expectValues(dtype, t.data, inputs[j]![r]!, `alltoall ${j}->${r}`);
        });
      });
    }
  });

  test(`N=${n} barrier`, async () => {
    const urls = world.urls();
    const res = expectOk(await all(urls, "/collective/barrier", () => ({})), "barrier");
    for (const b of res) {
      expect(b.op).toBe("barrier");
      expect(b.result).toBeNull();
    }
  });

  test(`N=${n} larger float32 allreduce (64K elements, b64)`, async () => {
    const urls = world.urls();
    const count = 65536;
    const arrays = urls.map((_, r) => Float32Array.from({ length: count }, (_, i) => ((i * 7 + r * 13) % 101) - 50));
    const res = expectOk(
      await all(urls, "/collective/allreduce", (r) => ({ tensor: { dtype: "float32", shape: [count], b64: new Uint8Array(arrays[r]!.buffer).toBase64() } })),
      "big allreduce",
    );
    for (const b of res) {
      const got = new Float32Array(Uint8Array.fromBase64(b.result.b64).buffer);
      for (let i = 0; i < count; i += 997) expect(got[i]).toBe(arrays.reduce((a, v) => a + v[i]!, 0));
    }
  });

  void FLOAT_DTYPES;
  void product;
}

function sleep(ms: number) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `ok` until it holds (a condition, not a fixed sleep); fails after timeoutMs. */
async function waitUntil(what: string, ok: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** Agreement failures, tags and p2p at world size N >= 2. */
export function agreementCases(n: number, world: WorldRef): void {
  const last = n - 1;
  const t = (r: number) => ({ dtype: "float32", shape: [2], data: [r, 1] });

  const okAllreduce = async (what: string) => {
    const urls = world.urls();
    const res = expectOk(await all(urls, "/collective/allreduce", (r) => ({ tensor: t(r) })), what);
    for (const b of res) expect(b.result.data).toEqual([(n * (n - 1)) / 2, n]);
    return res;
  };

  test(`N=${n} mismatch (op) -> 409 on every rank naming each call, then a clean collective`, async () => {
    const urls = world.urls();
    const h = await import("./http");
    const res = await Promise.all(urls.map((u, r) => (r === last ? h.post(u, "/collective/broadcast", { tensor: t(r), src: 0 }) : h.post(u, "/collective/allreduce", { tensor: t(r) }))));
    res.forEach((x, r) => {
      expect(x.status).toBe(409);
      expect(x.body.error.code).toBe("collective_mismatch");
      for (let q = 0; q < n; q++) expect(x.body.error.message).toContain(`rank ${q} called`);
      expect(x.body.error.message).toContain("broadcast");
      expect(x.body.error.calls.length).toBe(n);
      void r;
    });
    await okAllreduce("after op mismatch");
  });

  test(`N=${n} mismatch in dtype, count, root and reduce op -> 409 each time`, async () => {
    const urls = world.urls();
    const variants: ((r: number) => [string, unknown])[] = [
      (r) => ["/collective/allreduce", { tensor: r === 0 ? { dtype: "float64", shape: [2], data: [1, 2] } : t(r) }],
      (r) => ["/collective/allreduce", { tensor: r === 0 ? { dtype: "float32", shape: [3], data: [1, 2, 3] } : t(r) }],
      (r) => ["/collective/reduce", { tensor: t(r), dst: r === 0 ? 1 : 0 }],
      (r) => ["/collective/allreduce", { tensor: t(r), op: r === last ? "max" : "sum" }],
    ];
    for (const v of variants) {
      const res = await Promise.all(urls.map((u, r) => {
        const [path, body] = v(r);
        return import("./http").then((h) => h.post(u, path, body));
      }));
      for (const x of res) {
        expect(x.status).toBe(409);
        expect(x.body.error.code).toBe("collective_mismatch");
      }
    }
    await okAllreduce("after mismatches");
  });

  test(`N=${n} timeout -> 504 with missing_ranks, then the next call of every rank starts fresh`, async () => {
    const urls = world.urls();
    const res = await Promise.all(
      urls.slice(0, last).map((u, r) => import("./http").then((h) => h.post(u, "/collective/allreduce", { tensor: t(r), timeout_ms: 300 }))),
    );
    for (const x of res) {
      expect(x.status).toBe(504);
      expect(x.body.error.code).toBe("timeout");
      expect(x.body.error.missing_ranks).toEqual([last]);
    }
    // the late rank never joined the abandoned collective and owes nothing
    await okAllreduce("after timeout");
  });

  test(`N=${n} tagged calls match by tag in any order, several in flight`, async () => {
    const urls = world.urls();
    const tags = ["a", "b", "c", "d"];
    const calls = urls.flatMap((u, r) => {
      const order = r % 2 === 0 ? tags : [...tags].reverse();
      return order.map((tag, k) =>
        import("./http").then((h) =>
          h.post(u, "/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [tags.indexOf(tag) * 100 + r] }, tag }).then((x) => ({ r, tag, x, k })),
        ),
      );
    });
    const out = await Promise.all(calls);
    for (const { tag, x } of out) {
      expect(x.status).toBe(200);
      const base = tags.indexOf(tag) * 100;
      expect(x.body.result.data).toEqual([base * n + (n * (n - 1)) / 2]);
    }
    await okAllreduce("after tags");
  });

  test(`N=${n} untagged calls of different groups match independently`, async () => {
    const urls = world.urls();
    const [a, b] = await Promise.all([
      all(urls, "/collective/allreduce", (r) => ({ tensor: { dtype: "int32", shape: [1], data: [r] }, group: "g1" })),
      all(urls, "/collective/allreduce", (r) => ({ tensor: { dtype: "int32", shape: [1], data: [10 * r] }, group: "g2" })),
    ]);
    for (const x of expectOk(a, "g1")) expect(x.result.data).toEqual([(n * (n - 1)) / 2]);
    for (const x of expectOk(b, "g2")) expect(x.result.data).toEqual([5 * n * (n - 1)]);
  });

  test(`N=${n} a rank's untagged calls are taken in arrival order even when an earlier body is still uploading`, async () => {
    const urls = world.urls();
    const count = 1024;
    const bigBytes = new Uint8Array(new Float32Array(count).fill(1).buffer);
    const big = (u: string, slow: boolean) =>
      fetch(`${u}/collective/allreduce?dtype=float32&shape=${count}`, {
        method: "POST",
        headers: { "content-type": "application/octet-stream" },
        body: slow
          ? new ReadableStream({
              async start(ctl) {
                ctl.enqueue(bigBytes.slice(0, 100));
                await sleep(300);
                ctl.enqueue(bigBytes.slice(100));
                ctl.close();
              },
            })
          : bigBytes,
      });
    const h = await import("./http");
    // every rank: the big call first, then, once every rank holds it (its place in line is
    // taken on arrival, before the body is read), a small one; rank 0's big body trickles in
    const bigs = urls.map((u, r) => big(u, r === 0));
    await waitUntil("every rank to hold its big call", async () => {
      const d = await Promise.all(urls.map((u) => h.get(u, "/debug/recent?limit=1")));
      return d.every((x) => x.status === 200 && x.body.calls_in_flight >= 1);
    });
    const smalls = urls.map((u, r) => h.post(u, "/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [r] } }));
    for (const res of await Promise.all(bigs)) {
      expect(res.status).toBe(200);
      expect(new Float32Array(await res.arrayBuffer())[count - 1]).toBe(n);
    }
    for (const x of await Promise.all(smalls)) {
      expect(x.status).toBe(200);
      expect(x.body.result.data).toEqual([(n * (n - 1)) / 2]);
    }
  });

  test(`N=${n} p2p: send/recv, per-tag ordering, tags independent`, async () => {
    const urls = world.urls();
    const h = await import("./http");
    // plain pair 0 -> last, bfloat16 with NaN
    const [s, rcv] = await Promise.all([
      h.post(urls[0]!, "/p2p/send", { tensor: { dtype: "bfloat16", shape: [3], data: [1.5, "NaN", -2] }, dst: last }),
      h.post(urls[last]!, "/p2p/recv", { src: 0 }),
    ]);
    expect(s.status).toBe(200);
    expect(s.body.ok).toBe(true);
    expect(rcv.status).toBe(200);
    expect(rcv.body.result).toEqual({ dtype: "bfloat16", shape: [3], data: [1.5, "NaN", -2] });
    // five sends with the same tag, each numbered by rank `last` before the next one starts
    // (its /debug/recent says so: no sleep); received in that order
    const nextSeq = async (): Promise<number> => {
      const d = await h.get(urls[last]!, "/debug/recent?limit=1");
      expect(d.status).toBe(200);
      return (d.body.p2p.sends as { dst: number; tag: string; next_seq: number }[]).find((x) => x.dst === 0 && x.tag === "seq")?.next_seq ?? 0;
    };
    const base = await nextSeq();
    const sends: Promise<unknown>[] = [];
    for (let k = 0; k < 5; k++) {
      sends.push(h.post(urls[last]!, "/p2p/send", { tensor: { dtype: "int64", shape: [1], data: [String(k)] }, dst: 0, tag: "seq" }));
      await waitUntil(`rank ${last} to number send ${k}`, async () => (await nextSeq()) === base + k + 1);
    }
    for (let k = 0; k < 5; k++) {
      const x = await h.post(urls[0]!, "/p2p/recv", { src: last, tag: "seq" });
      expect(x.status).toBe(200);
      expect(x.body.result.data).toEqual([String(k)]);
    }
    for (const x of (await Promise.all(sends)) as { status: number }[]) expect(x.status).toBe(200);
    // tag x sent first, tag y received first: no head-of-line blocking across tags
    const sx = h.post(urls[0]!, "/p2p/send", { tensor: { dtype: "uint8", shape: [1], data: [1] }, dst: last, tag: "x" });
    const sy = h.post(urls[0]!, "/p2p/send", { tensor: { dtype: "uint8", shape: [1], data: [2] }, dst: last, tag: "y" });
    const ry = await h.post(urls[last]!, "/p2p/recv", { src: 0, tag: "y" });
    const rx = await h.post(urls[last]!, "/p2p/recv", { src: 0, tag: "x" });
    expect(ry.body.result.data).toEqual([2]);
    expect(rx.body.result.data).toEqual([1]);
    expect((await sx).status).toBe(200);
    expect((await sy).status).toBe(200);
  });

  test(`N=${n} p2p timeouts: recv without send and send without recv -> 504, then a clean exchange`, async () => {
    const urls = world.urls();
    const h = await import("./http");
    const r1 = await h.post(urls[last]!, "/p2p/recv", { src: 0, tag: "t", timeout_ms: 200 });
    expect(r1.status).toBe(504);
    expect(r1.body.error.code).toBe("timeout");
    expect(r1.body.error.missing_ranks).toEqual([0]);
    const s1 = await h.post(urls[0]!, "/p2p/send", { tensor: { dtype: "int8", shape: [1], data: [7] }, dst: last, tag: "t", timeout_ms: 200 });
    expect(s1.status).toBe(504);
    expect(s1.body.error.code).toBe("timeout");
    const [s2, r2] = await Promise.all([
      h.post(urls[0]!, "/p2p/send", { tensor: { dtype: "int8", shape: [1], data: [8] }, dst: last, tag: "t" }),
      h.post(urls[last]!, "/p2p/recv", { src: 0, tag: "t" }),
    ]);
    expect(s2.status).toBe(200);
    expect(r2.body.result.data).toEqual([8]);
  });
}

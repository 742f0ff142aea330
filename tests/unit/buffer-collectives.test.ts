// Collectives on host buffers ({"buffer": id} bodies) with 3 rank services in this process over
// the fake data plane: every collective against values computed here, groups (dst/src are group
// ranks, as for tensor bodies), and the runner's bookkeeping (/debug/recent) for buffer calls.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sleep } from "../../src/util/net";
import { get, post, type Reply } from "../support/http";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "warn";

const N = 3;
let w: InprocWorld;

beforeAll(async () => {
  w = await startInprocWorld(N);
  for (const u of w.urls) expect((await post(u, "/groups", { name: "pair", ranks: [1, 2] })).status).toBe(200);
});
afterAll(async () => {
  await w?.stop();
});

async function buffer(r: number, shape: number[], data: number[]): Promise<string> {
  const res = await post(w.urls[r]!, "/buffers", { dtype: "int32", shape, data });
  expect(res.status).toBe(201);
  return res.body.buffer;
}

async function read(r: number, id: string): Promise<{ shape: number[]; data: number[] }> {
  const res = await get(w.urls[r]!, `/buffers/${id}`);
  expect(res.status).toBe(200);
  return { shape: res.body.shape, data: res.body.data };
}

/** POST /collective/{op} on `ranks` at once; body(r) builds rank r's body. */
function call(ranks: number[], op: string, body: (r: number) => unknown): Promise<Reply[]> {
  return Promise.all(ranks.map((r) => post(w.urls[r]!, `/collective/${op}`, body(r))));
}

function ok(replies: Reply[]): any[] {
  for (const r of replies) if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${JSON.stringify(r.body)}`);
  return replies.map((r) => r.body);
}

const all = [0, 1, 2];
/** Rank r's input: [10r + 1, ..., 10r + k]. */
const values = (r: number, k: number) => Array.from({ length: k }, (_, i) => 10 * r + i + 1);

describe("collectives on host buffers, 3 ranks", () => {
  test("allreduce (sum, max), broadcast from src 1, reduce to dst 2: in place", async () => {
    const ids = await Promise.all(all.map((r) => buffer(r, [2], values(r, 2))));
    ok(await call(all, "allreduce", (r) => ({ buffer: ids[r] })));
    for (const r of all) expect((await read(r, ids[r]!)).data).toEqual([1 + 11 + 21, 2 + 12 + 22]);
    const mx = await Promise.all(all.map((r) => buffer(r, [2], values(r, 2))));
    ok(await call(all, "allreduce", (r) => ({ buffer: mx[r], op: "max" })));
    for (const r of all) expect((await read(r, mx[r]!)).data).toEqual([21, 22]);
    const bc = await Promise.all(all.map((r) => buffer(r, [3], values(r, 3))));
    ok(await call(all, "broadcast", (r) => ({ buffer: bc[r], src: 1 })));
    for (const r of all) expect((await read(r, bc[r]!)).data).toEqual([11, 12, 13]);
    const rd = await Promise.all(all.map((r) => buffer(r, [2], values(r, 2))));
    const answers = ok(await call(all, "reduce", (r) => ({ buffer: rd[r], dst: 2 })));
    expect(answers.map((a) => a.result?.buffer ?? null)).toEqual([null, null, rd[2]]);
    expect((await read(2, rd[2]!)).data).toEqual([33, 36]);
  });

  test("allgather, gather to dst 1, scatter from src 2, reduce_scatter, alltoall: results in new buffers", async () => {
    const ids = await Promise.all(all.map((r) => buffer(r, [2], values(r, 2))));
    const ag = ok(await call(all, "allgather", (r) => ({ buffer: ids[r] })));
    for (const r of all) expect(await read(r, ag[r].result.buffer)).toEqual({ shape: [3, 2], data: [1, 2, 11, 12, 21, 22] });
    const ga = ok(await call(all, "gather", (r) => ({ buffer: ids[r], dst: 1 })));
    expect(ga[0].result).toBeNull();
    expect(ga[2].result).toBeNull();
    expect(await read(1, ga[1].result.buffer)).toEqual({ shape: [3, 2], data: [1, 2, 11, 12, 21, 22] });
    const lists = await Promise.all(all.map((r) => buffer(r, [3, 2], values(r, 6))));
    // off the src, "out" names the result buffer (a body without "buffer"/"out" is a tensor call)
    const outs = await Promise.all(all.map((r) => buffer(r, [2], [0, 0])));
    const sc = ok(await call(all, "scatter", (r) => (r === 2 ? { buffer: lists[r], src: 2 } : { out: outs[r], src: 2 })));
    expect(sc.map((a) => a.result.buffer).slice(0, 2)).toEqual(outs.slice(0, 2));
    for (const r of all) expect(await read(r, sc[r].result.buffer)).toEqual({ shape: [2], data: [21 + 2 * r, 22 + 2 * r] });
    const rs = ok(await call(all, "reduce_scatter", (r) => ({ buffer: lists[r] })));
    for (const r of all) {
      const want = [0, 1].map((i) => all.reduce((a, q) => a + values(q, 6)[2 * r + i]!, 0));
      expect(await read(r, rs[r].result.buffer)).toEqual({ shape: [2], data: want });
    }
    const aa = ok(await call(all, "alltoall", (r) => ({ buffer: lists[r] })));
    for (const r of all) {
      const want = all.flatMap((q) => values(q, 6).slice(2 * r, 2 * r + 2));
      expect(await read(r, aa[r].result.buffer)).toEqual({ shape: [3, 2], data: want });
    }
  });

  test("in group [1, 2], dst/src are group ranks for buffers as for tensors: gather dst 0 lands on global rank 1", async () => {
    const pair = [1, 2];
    const tensors = ok(await call(pair, "gather", (r) => ({ tensor: { dtype: "int32", shape: [2], data: values(r, 2) }, dst: 0, group: "pair" })));
    expect(tensors[0].result.map((t: any) => t.data)).toEqual([values(1, 2), values(2, 2)]);
    expect(tensors[1].result).toBeNull();
    const ids = await Promise.all(pair.map((r) => buffer(r, [2], values(r, 2))));
    const bufs = ok(await call(pair, "gather", (r) => ({ buffer: ids[r - 1], dst: 0, group: "pair" })));
    expect(bufs[1].result).toBeNull();
    expect(await read(1, bufs[0].result.buffer)).toEqual({ shape: [2, 2], data: [...values(1, 2), ...values(2, 2)] });
    // answers in group terms, like tensor bodies
    for (const b of bufs) {
      expect(b.contributors).toEqual([0, 1]);
      expect(b.group).toEqual({ name: "pair", ranks: [1, 2] });
    }
    // broadcast from group rank 1 = global rank 2; a list op's buffer has one block per group member
    const bc = await Promise.all(pair.map((r) => buffer(r, [1], [r * 100])));
    ok(await call(pair, "broadcast", (r) => ({ buffer: bc[r - 1], src: 1, group: "pair" })));
    for (const r of pair) expect((await read(r, bc[r - 1]!)).data).toEqual([200]);
    const lists = await Promise.all(pair.map((r) => buffer(r, [2, 1], values(r, 2))));
    const rs = ok(await call(pair, "reduce_scatter", (r) => ({ buffer: lists[r - 1], group: "pair" })));
    expect((await read(1, rs[0].result.buffer)).data).toEqual([11 + 21]);
    expect((await read(2, rs[1].result.buffer)).data).toEqual([12 + 22]);
    // dst out of the group's range: the same 400 as for tensors
    const bad = await post(w.urls[1]!, "/collective/gather", { buffer: ids[0], dst: 2, group: "pair" });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain('dst 2 is out of range for group "pair" of 2 ranks');
  });

  test("buffer calls are recorded in /debug/recent and counted like tensor calls", async () => {
    const ids = await Promise.all(all.map((r) => buffer(r, [4], values(r, 4))));
    const answers = ok(await call(all, "allreduce", (r) => ({ buffer: ids[r], op: "min" })));
    const recent = (await get(w.urls[1]!, "/debug/recent")).body.recent as any[];
    const entry = recent.find((e) => e.seq === answers[1].seq && e.op === "allreduce");
    expect(entry).toMatchObject({ op: "allreduce", group: "world", dtype: "int32", count: 4, outcome: "ok" });
    const refused = await post(w.urls[1]!, "/collective/allreduce", { buffer: ids[1], op: "avg" });
    expect(refused.status).toBe(400);
    expect(refused.body.error.message).toContain("avg needs a floating dtype");
  });
});

describe("buffer collectives and failures", () => {
  test("a rank dies while an allgather on buffers moves: rank 0 re-issues it among the survivors (new op id), results [3, k]", async () => {
    const w4 = await startInprocWorld(4);
    try {
      const s = w4.services;
      const ids: string[] = [];
      for (const [r, u] of w4.urls.entries()) ids.push((await post(u, "/buffers", { dtype: "int32", shape: [2], data: values(r, 2) })).body.buffer);
      s[3]!.dataPlane.run = () => new Promise<void>(() => {}); // joins the agreement, never finishes its part
      const calls = w4.urls.map((u, r) => post(u, "/collective/allgather", { buffer: ids[r], timeout_ms: 20_000 }).catch((e) => ({ status: -1, body: String(e) })));
      const until = Date.now() + 10_000;
      while (w4.hub.log.filter((x) => x.kind === "allgather").length < 3) {
        if (Date.now() > until) throw new Error("survivors never submitted");
        await sleep(5);
      }
      const firstId = w4.hub.log[0]!.opId;
      s[3]!.link!.declareLost("test: rank 3 dies");
      const res = await Promise.all(calls.slice(0, 3));
      for (const [r, x] of res.entries()) {
        expect(x.status).toBe(200);
        expect(x.body).toMatchObject({ contributors: [0, 1, 2], failed_ranks: [3], active_ranks: [1, 1, 1, 0] });
        const got = await get(w4.urls[r]!, `/buffers/${x.body.result.buffer}`);
        expect(got.body).toMatchObject({ shape: [3, 2], data: [1, 2, 11, 12, 21, 22] });
      }
      const again = w4.hub.log.filter((x) => x.kind === "allgather" && x.opId !== firstId);
      expect(again.map((x) => x.rank).sort()).toEqual([0, 1, 2]);
      expect(s[0]!.coordinator!.stats).toMatchObject({ failures: 1, retries: 1 });
    } finally {
      await w4.stop();
    }
  }, 30_000);
});

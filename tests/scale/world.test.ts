// Issue 20 item 4: a world of many ranks. N rank services in this process (real HTTP,
// real control links and agreement, the fake in-process data plane of
// tests/support/fake-dataplane.ts) run every collective once, each checked against values
// computed here exactly (integers), in a world of WORLD_SIZE_MAX (1,024) slots. N is 256 by
// default (MOONRING_SCALE_RANKS=1024 for all slots: on a 2-core machine its rendezvous takes
// ~80 s and its first collectives did not complete; see the failover report). Heartbeat threads
// are off (N Workers would not fit 2 cores) and heartbeats slow: this shows the control
// plane's tables, masks and messages at scale, not failure detection.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";
import { WORLD_SIZE_MAX } from "../../src/limits";

process.env.MOONRING_LOG ??= "error";

const N = Number(process.env.MOONRING_SCALE_RANKS ?? 256);
const SLOTS = WORLD_SIZE_MAX;
let w: InprocWorld;

async function all(path: string, body: (r: number) => unknown): Promise<any[]> {
  const res = await Promise.all(
    w.urls.map((u, r) =>
      fetch(u + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body(r)) }).then(async (x) => ({ status: x.status, body: (await x.json()) as any })),
    ),
  );
  const bad = res.findIndex((x) => x.status !== 200);
  if (bad >= 0) throw new Error(`${path}: rank ${bad} got ${res[bad]!.status}: ${JSON.stringify(res[bad]!.body).slice(0, 300)}`);
  return res.map((x) => x.body);
}

const i32 = (data: number[]) => ({ dtype: "int32", shape: [data.length], data });

/** A list result has one entry per slot: the active ranks' first elements, null for the free slots. */
function listed(result: any[]): number[] {
  expect(result.length).toBe(SLOTS);
  expect(result.slice(N).every((t) => t === null)).toBe(true);
  return result.slice(0, N).map((t) => t.data[0]);
}

beforeAll(async () => {
  w = await startInprocWorld(N, { worldSizeMax: SLOTS, heartbeatThread: false, heartbeatIntervalMs: 5000, heartbeatTimeoutMs: 600_000, rendezvousTimeoutMs: 600_000 });
}, 600_000);

afterAll(async () => {
  await w?.stop();
}, 120_000);

describe(`in-process world of ${N} ranks in ${SLOTS} slots`, () => {
  test("the world has 1,024 slots, N of them active", async () => {
    const c = (await (await fetch(`${w.urls[N - 1]}/cluster`)).json()) as any;
    expect(c.world_size).toBe(SLOTS);
    expect(c.active_ranks.length).toBe(SLOTS);
    expect(c.active_ranks.filter((x: number) => x === 1).length).toBe(N);
  });

  test("allreduce (sum), reduce (max to the last rank), broadcast", async () => {
    const ar = await all("/collective/allreduce", (r) => ({ tensor: i32([r, 1, -r]) }));
    const s = (N * (N - 1)) / 2;
    for (const b of ar) {
      expect(b.result.data).toEqual([s, N, -s]);
      expect(b.contributors.length).toBe(N);
    }
    const rd = await all("/collective/reduce", (r) => ({ tensor: i32([r % 100, -r]), op: "max", dst: N - 1 }));
    expect(rd[N - 1].result.data).toEqual([Math.min(99, N - 1), 0]);
    const bc = await all("/collective/broadcast", (r) => ({ tensor: i32(r === N - 3 ? [7, 77, 777] : [0, 0, 0]), src: N - 3 }));
    for (const b of bc) expect(b.result.data).toEqual([7, 77, 777]);
  }, 120_000);

  test("allgather, gather (to rank 5), scatter", async () => {
    const ag = await all("/collective/allgather", (r) => ({ tensor: i32([r * 3]) }));
    for (const b of [ag[0], ag[N >> 1], ag[N - 1]]) expect(listed(b.result)).toEqual(Array.from({ length: N }, (_, r) => r * 3));
    const ga = await all("/collective/gather", (r) => ({ tensor: i32([r + 1]), dst: 5 }));
    expect(listed(ga[5].result)).toEqual(Array.from({ length: N }, (_, r) => r + 1));
    const sc = await all("/collective/scatter", (r) => (r === N - 2 ? { src: N - 2, tensors: Array.from({ length: N }, (_, i) => i32([i * 2, 1])) } : { src: N - 2 }));
    sc.forEach((b, r) => expect(b.result.data).toEqual([r * 2, 1]));
  }, 120_000);

  test("reduce_scatter, alltoall, barrier", async () => {
    // rank r gives block i = [r + i]: rank i gets sum over r of (r + i)
    const rs = await all("/collective/reduce_scatter", (r) => ({ tensors: Array.from({ length: N }, (_, i) => i32([r + i])) }));
    rs.forEach((b, i) => expect(b.result.data).toEqual([(N * (N - 1)) / 2 + N * i]));
    // rank i sends [i * 1024 + j] to rank j
    const aa = await all("/collective/alltoall", (i) => ({ tensors: Array.from({ length: N }, (_, j) => i32([i * N + j])) }));
    for (const j of [0, N >> 2, N - 1]) expect(listed(aa[j].result)).toEqual(Array.from({ length: N }, (_, i) => i * N + j));
    const ba = await all("/collective/barrier", () => ({}));
    for (const b of ba) expect(b.result).toBeNull();
  }, 300_000);
});

// A rank dies in the middle of a collective (it never called; the others wait for it), the
// survivors' call completes without it, then a replacement started with `serve --join` takes
// the dead slot and is admitted with POST /membership/activate: Mooncake's test_recovery and
// test_allgather_reduce_scatter_recovery (mooncake-pg/tests/test_pg_elastic.py) over real
// rank processes. Every process started here is ended here.
import { afterAll, describe, expect, test } from "bun:test";
import type { LaunchedWorld } from "../support/launch-world";
import { cluster, expectOk, get, Harness, i32, kill9, post, randInts, sumOver, waitHealth, waitJoined, waitState } from "../support/fault";

const h = new Harness();
afterAll(() => h.cleanup());

const N = 4;
const all = [0, 1, 2, 3];

async function pidOf(url: string): Promise<number> {
  return (await get(url, "/health")).body.pid;
}

/** serve --join into `rank`'s slot, then activate it through `via`; checks the answer. */
async function replace(w: LaunchedWorld, rank: number, via: string): Promise<void> {
  const j = h.join(w, rank, N);
  await waitState([w.urls[0]!], rank, "awaiting", 30_000);
  const waiting = await get(j.url, "/health");
  expect(waiting.status).toBe(503);
  expect(waiting.body.state).toBe("awaiting");
  const a = await post(via, "/membership/activate", { ranks: [rank] });
  expect(a.status).toBe(200);
  expect(a.body.active_ranks).toEqual([1, 1, 1, 1]);
  // answered once every active rank applied it: each one's view has that epoch already
  for (const u of w.urls) expect((await cluster(u)).epoch).toBeGreaterThanOrEqual(a.body.epoch);
  await waitHealth(j.url, "healthy");
}

/** Every rank's allreduce over the full world again (Mooncake: sum of range(N)). */
async function fullAllreduce(w: LaunchedWorld): Promise<void> {
  for (const b of expectOk(await Promise.all(w.urls.map((u, r) => post(u, "/collective/allreduce", { tensor: i32([r, 1]) }))), "full allreduce")) {
    expect(b.result.data).toEqual([0 + 1 + 2 + 3, 4]);
    expect(b.contributors).toEqual(all);
    expect(b.active_ranks).toEqual([1, 1, 1, 1]);
  }
}

/**
 * The survivors call `path`; `victim` never does and is killed once they all wait in it. Returns the
 * survivors' answers (checked to be 200, without the victim, naming it failed).
 */
async function killDuring(w: LaunchedWorld, victim: number, path: string, body: (r: number) => Record<string, unknown>): Promise<any[]> {
  const survivors = all.filter((r) => r !== victim);
  const pid = await pidOf(w.urls[victim]!);
  const t0 = performance.now();
  const pending = Promise.all(survivors.map((r) => post(w.urls[r]!, path, { ...body(r), timeout_ms: 20_000 })));
  await waitJoined(w.urls[0]!, survivors);
  const tk = performance.now();
  kill9(pid);
  const res = expectOk(await pending, `${path} with rank ${victim} killed`);
  console.log(`${path}: survivors answered ${(performance.now() - tk).toFixed(1)} ms after kill -9 of rank ${victim} (call started ${(tk - t0).toFixed(0)} ms before)`);
  for (const b of res) {
    expect(b.contributors).toEqual(survivors);
    expect(b.failed_ranks).toEqual([victim]);
    expect(b.active_ranks).toEqual(all.map((r) => (r === victim ? 0 : 1)));
  }
  return res;
}

describe("recovery", () => {
  let w: LaunchedWorld;

  test("test_recovery: allreduce with rank 1 killed mid-call completes among the survivors; a replacement joins slot 1; full results again", async () => {
    w = await h.launch(N);
    const inputs = all.map(() => randInts(4));
    const res = await killDuring(w, 1, "/collective/allreduce", (r) => ({ tensor: i32(inputs[r]!) }));
    for (const b of res) expect(b.result.data).toEqual(sumOver(inputs, [0, 2, 3]));
    // later calls: the dead rank is simply not there, failed_ranks empty once every view has it
    await waitState(w.urls.filter((_, r) => r !== 1), 1, "failed");
    for (const b of expectOk(await Promise.all([0, 2, 3].map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!) }))), "later")) {
      expect(b.failed_ranks).toEqual([]);
      expect(b.result.data).toEqual(sumOver(inputs, [0, 2, 3]));
    }
    await replace(w, 1, w.urls[2]!);
    await fullAllreduce(w);
  }, 60_000);

  test("test_allgather_reduce_scatter_recovery: allgather with rank 3 killed mid-call (null slot), reduce_scatter among 3 of 4 slots, replacement, full lists again", async () => {
    const inputs = all.map(() => randInts(3));
    const res = await killDuring(w, 3, "/collective/allgather", (r) => ({ tensor: i32(inputs[r]!) }));
    for (const b of res) {
      expect(b.result[3]).toBeNull();
      for (const r of [0, 1, 2]) expect(b.result[r].data).toEqual(inputs[r]);
    }
    // reduce_scatter with 3 active ranks of 4 slots: one entry per slot, null for the dead one
    const lists = all.map(() => all.map(() => randInts(2)));
    const rs = expectOk(
      await Promise.all([0, 1, 2].map((r) => post(w.urls[r]!, "/collective/reduce_scatter", { tensors: all.map((j) => (j === 3 ? null : i32(lists[r]![j]!))) }))),
      "reduce_scatter",
    );
    rs.forEach((b, r) => expect(b.result.data).toEqual([0, 1].map((k) => [0, 1, 2].reduce((a, c) => a + lists[c]![r]![k]!, 0))));
    await replace(w, 3, w.urls[0]!);
    const ag = expectOk(await Promise.all(w.urls.map((u, r) => post(u, "/collective/allgather", { tensor: i32(inputs[r]!) }))), "allgather after recovery");
    for (const b of ag) for (const r of all) expect(b.result[r].data).toEqual(inputs[r]);
    const rs4 = expectOk(await Promise.all(w.urls.map((u, r) => post(u, "/collective/reduce_scatter", { tensors: all.map((j) => i32(lists[r]![j]!)) }))), "reduce_scatter after recovery");
    rs4.forEach((b, r) => expect(b.result.data).toEqual([0, 1].map((k) => all.reduce((a, c) => a + lists[c]![r]![k]!, 0))));
  }, 60_000);

  test("gather to rank 0 with rank 2 killed mid-call (the dead rank is not the root); replacement; full gather", async () => {
    const inputs = all.map(() => randInts(2));
    const res = await killDuring(w, 2, "/collective/gather", (r) => ({ tensor: i32(inputs[r]!), dst: 0 }));
    expect(res[0].result[2]).toBeNull();
    for (const r of [0, 1, 3]) expect(res[0].result[r].data).toEqual(inputs[r]);
    expect(res[1].result).toBeNull();
    await replace(w, 2, w.urls[3]!);
    const g = expectOk(await Promise.all(w.urls.map((u, r) => post(u, "/collective/gather", { tensor: i32(inputs[r]!), dst: 0 }))), "gather after recovery");
    for (const r of all) expect(g[0].result[r].data).toEqual(inputs[r]);
  }, 60_000);

  test("broadcast from rank 3 with rank 1 killed mid-call; a dead root is refused with 400 naming it; replacement; full broadcast", async () => {
    const inputs = all.map(() => randInts(3));
    const res = await killDuring(w, 1, "/collective/broadcast", (r) => ({ tensor: i32(inputs[r]!), src: 3 }));
    for (const b of res) expect(b.result.data).toEqual(inputs[3]);
    await waitState([w.urls[0]!], 1, "failed");
    const bad = await post(w.urls[0]!, "/collective/broadcast", { tensor: i32(inputs[0]!), src: 1 });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain("src 1 is not an active rank");
    await replace(w, 1, w.urls[3]!);
    for (const b of expectOk(await Promise.all(w.urls.map((u, r) => post(u, "/collective/broadcast", { tensor: i32(inputs[r]!), src: 1 }))), "broadcast from the replacement")) {
      expect(b.result.data).toEqual(inputs[1]);
    }
    await fullAllreduce(w);
  }, 60_000);

  test("p2p with a replaced rank: sequence numbers start over with the new incarnation, both ways, for every tag (issue 18 item 8)", async () => {
    /** rank a sends `data` to rank b (tag), b receives it: both answers checked. */
    const exchange = async (a: number, b: number, tag: string | undefined, data: number[]) => {
      const [sent, got] = await Promise.all([
        post(w.urls[a]!, "/p2p/send", { tensor: i32(data), dst: b, ...(tag === undefined ? {} : { tag }), timeout_ms: 10_000 }),
        post(w.urls[b]!, "/p2p/recv", { src: a, ...(tag === undefined ? {} : { tag }), timeout_ms: 10_000 }),
      ]);
      expect([sent.status, sent.body?.error?.message]).toEqual([200, undefined]);
      expect([got.status, got.body?.error?.message]).toEqual([200, undefined]);
      expect(got.body.result.data).toEqual(data);
    };
    // the old incarnation of rank 2 talks to ranks 0 and 1, twice on one tag
    for (const tag of [undefined, "t"]) {
      await exchange(0, 2, tag, randInts(3));
      await exchange(2, 0, tag, randInts(3));
      await exchange(2, 0, tag, randInts(3));
    }
    await exchange(1, 2, "t", randInts(2));
    kill9(await pidOf(w.urls[2]!));
    await waitState([w.urls[0]!, w.urls[1]!, w.urls[3]!], 2, "failed");
    await replace(w, 2, w.urls[1]!);
    // the new incarnation numbers from 0; the survivors must too (they sent 1-2 to the old one)
    for (const tag of [undefined, "t"]) {
      await exchange(0, 2, tag, randInts(4));
      await exchange(2, 0, tag, randInts(4));
      await exchange(2, 0, tag, randInts(4));
    }
    await exchange(1, 2, "t", randInts(2));
    await exchange(2, 1, "t", randInts(2));
    await exchange(3, 2, undefined, randInts(2));
  }, 60_000);

  test("a replacement must start with --join; a failed slot cannot be activated; activating an active rank changes nothing", async () => {
    const c = await cluster(w.urls[0]!);
    expect(c.active_ranks).toEqual([1, 1, 1, 1]);
    const bad = await post(w.urls[0]!, "/membership/activate", { ranks: [7] });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain("out of range");
    const ok = await post(w.urls[2]!, "/membership/activate", { ranks: [2] }); // already active: no change
    expect(ok.status).toBe(200);
    expect(ok.body.epoch).toBe(c.epoch);
    // a dead slot can't be activated until a replacement registers there with --join
    kill9(await pidOf(w.urls[3]!));
    await waitState([w.urls[0]!], 3, "failed");
    const dead = await post(w.urls[1]!, "/membership/activate", { ranks: [3] });
    expect(dead.status).toBe(400);
    expect(dead.body.error.message).toContain("rank 3 is failed");
    expect(dead.body.error.message).toContain("--join");
    const noJoin = h.join(w, 3, N, [], { join: false });
    expect(await noJoin.proc.exited).toBe(3);
    expect(noJoin.stderr()).toContain("a replacement must start with --join");
  }, 30_000);
});

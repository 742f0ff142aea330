// A rank dies (kill -9) or hangs (SIGSTOP) and the survivors go on among the active ranks:
// Mooncake's test_failed_rank scenarios (mooncake-pg/tests/test_pg_elastic.py) over real rank
// processes. Values are checked against references computed over the `contributors` each
// response names. Every process started here is ended here.
import { afterEach, describe, expect, test } from "bun:test";
import { cluster, expectOk, get, Harness, i32, kill9, post, randInts, sumOver, waitFor, waitHealth, waitJoined, waitState } from "../support/fault";

const h = new Harness();
afterEach(() => h.cleanup());

describe("failed rank", () => {
  test("test_failed_rank: kill -9 before the collectives — every op runs among the survivors, null slots, 400 for a dead root, p2p fails fast", async () => {
    const w = await h.launch(4);
    const urls = w.urls;
    const alive = [0, 2, 3];
    kill9(w.pids[1]!);
    await waitState(alive.map((r) => urls[r]!), 1, "failed");
    // The launcher says so (a world in network namespaces has no launcher: MOONRING_TEST_NETNS).
    if (!("spawnRank" in w)) expect(await w.waitForLine(/^rank 1 exited/)).toContain("ranks 0, 2, 3 keep running");
    const c = await cluster(urls[0]!);
    expect(c.active_ranks).toEqual([1, 0, 1, 1]);
    expect(c.ranks[1].state).toBe("failed");
    expect(c.ranks[1].reason).toContain("control link closed");
    for (const r of alive) expect((await get(urls[r]!, "/health")).body).toMatchObject({ ready: true, state: "healthy" });

    const inputs: number[][] = [];
    for (const r of alive) inputs[r] = randInts(5);
    const call = (path: string, body: (r: number) => unknown) => Promise.all(alive.map((r) => post(urls[r]!, path, body(r))));

    // allreduce
    for (const b of expectOk(await call("/collective/allreduce", (r) => ({ tensor: i32(inputs[r]!) })), "allreduce")) {
      expect(b.active_ranks).toEqual([1, 0, 1, 1]);
      expect(b.contributors).toEqual(alive);
      expect(b.failed_ranks).toEqual([]);
      expect(b.result.data).toEqual(sumOver(inputs, b.contributors));
    }
    // allgather: null in the dead slot
    for (const b of expectOk(await call("/collective/allgather", (r) => ({ tensor: i32(inputs[r]!) })), "allgather")) {
      expect(b.result).toHaveLength(4);
      expect(b.result[1]).toBeNull();
      for (const r of alive) expect(b.result[r].data).toEqual(inputs[r]);
    }
    // gather to rank 0 (the dead rank is not the root)
    const g = expectOk(await call("/collective/gather", (r) => ({ tensor: i32(inputs[r]!), dst: 0 })), "gather");
    expect(g[0].result[1]).toBeNull();
    for (const r of alive) expect(g[0].result[r].data).toEqual(inputs[r]);
    expect(g[1].result).toBeNull();
    // broadcast from rank 2
    for (const b of expectOk(await call("/collective/broadcast", (r) => ({ tensor: i32(inputs[r]!), src: 2 })), "broadcast")) {
      expect(b.result.data).toEqual(inputs[2]);
      expect(b.contributors).toEqual(alive);
    }
    // reduce_scatter and alltoall with one entry per slot (null for the dead one)
    const lists: Record<number, number[][]> = {};
    for (const r of alive) lists[r] = [0, 1, 2, 3].map(() => randInts(3));
    const listOf = (r: number) => [0, 1, 2, 3].map((j) => (j === 1 ? null : i32(lists[r]![j]!)));
    const rs = expectOk(await call("/collective/reduce_scatter", (r) => ({ tensors: listOf(r) })), "reduce_scatter");
    alive.forEach((r, i) => {
      const expected = [0, 1, 2].map((k) => alive.reduce((a, c) => a + lists[c]![r]![k]!, 0));
      expect(rs[i].result.data).toEqual(expected);
    });
    const a2a = expectOk(await call("/collective/alltoall", (r) => ({ tensors: listOf(r) })), "alltoall");
    alive.forEach((r, i) => {
      expect(a2a[i].result[1]).toBeNull();
      for (const src of alive) expect(a2a[i].result[src].data).toEqual(lists[src]![r]);
    });
    for (const b of expectOk(await call("/collective/barrier", () => ({})), "barrier")) expect(b.result).toBeNull();

    // a rooted op whose root is dead: 400 naming the rank
    const bad = await post(urls[0]!, "/collective/gather", { tensor: i32([1]), dst: 1 });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain("dst 1 is not an active rank");
    expect(bad.body.error.message).toContain("failed");
    const bad2 = await post(urls[2]!, "/collective/broadcast", { tensor: i32([1]), src: 1 });
    expect(bad2.status).toBe(400);
    // p2p to and from the dead rank fails at once with a clear error
    const t0 = performance.now();
    const s = await post(urls[0]!, "/p2p/send", { tensor: i32([1]), dst: 1 });
    const rv = await post(urls[3]!, "/p2p/recv", { src: 1 });
    const p2pMs = performance.now() - t0;
    expect(s.status).toBe(503);
    expect(s.body.error.code).toBe("peer_failed");
    expect(s.body.error.message).toContain("rank 1 is not active (state failed");
    expect(rv.status).toBe(503);
    console.log(`p2p to/from a dead rank answered in ${p2pMs.toFixed(1)} ms`);

    // between collectives: kill rank 3 right after a collective; the next one goes on without it
    kill9(w.pids[3]!);
    const left = [0, 2];
    const t1 = performance.now();
    const after = expectOk(await Promise.all(left.map((r) => post(urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 20_000 }))), "allreduce after kill");
    console.log(`first allreduce after kill -9 between collectives: ${(performance.now() - t1).toFixed(1)} ms`);
    for (const b of after) {
      expect(b.contributors).toEqual(left);
      expect(b.active_ranks).toEqual([1, 0, 1, 0]);
      expect([[], [3]]).toContainEqual(b.failed_ranks);
      expect(b.result.data).toEqual(sumOver(inputs, left));
    }
  }, 60_000);

  test("kill -9 while the bytes move (big allreduce in flight): every survivor's result is exactly the sum over the contributors it reports", async () => {
    const w = await h.launch(4);
    const count = 4 * 1024 * 1024;
    const call = async (r: number) => {
      const data = new Float32Array(count).fill(r + 1);
      data[r] = 1000 * (r + 1); // one distinct element per rank
      try {
        const res = await fetch(`${w.urls[r]}/collective/allreduce?dtype=float32&shape=${count}&timeout_ms=30000`, {
          method: "POST",
          headers: { "content-type": "application/octet-stream" },
          body: data,
        });
        if (res.status !== 200) return { r, status: res.status, body: await res.text() };
        return { r, status: 200, contributors: res.headers.get("x-moonring-contributors")!.split(",").map(Number), out: new Float32Array(await res.arrayBuffer()) };
      } catch (e) {
        return { r, status: -1, body: String(e) };
      }
    };
    // Ranks 0-2 call first and wait in agreement; rank 3 calls once they do, so the collective
    // is seen pending and is decided when it leaves rank 0's pending list: every rank joined and
    // the data plane moves bytes (a 16 MiB allreduce of 4 ranks takes 100s of ms). (Polling for
    // "pending, then gone" alone missed a pending spell shorter than one poll: a 30 s wait.)
    const first = Promise.all([0, 1, 2].map(call));
    await waitJoined(w.urls[0]!, [0, 1, 2]);
    const last = call(3);
    await waitFor("the allreduce to be decided", async () => ((await get(w.urls[0]!, "/debug/recent?limit=1")).body.pending as unknown[]).length === 0, 30_000);
    kill9(w.pids[3]!);
    const res = [...(await first), await last];
    // Rank 3's HTTP connection died with it (-1), unless it had answered before the kill: nothing
    // failed before, so then with its complete result (checked below with the survivors').
    expect([-1, 200]).toContain(res[3]!.status);
    // A survivor whose part completed before the death keeps its result (all four contributed);
    // the others take part in the re-issue, which runs among exactly them (docs/api-extensions.md).
    const survivors = res.slice(0, 3);
    for (const x of survivors) {
      if (x.status !== 200) throw new Error(`rank ${x.r} answered ${x.status}: ${x.body}\nworld:\n${w.stderrText().slice(-4000)}`);
    }
    const reissued = survivors.filter((x) => !x.contributors!.includes(3)).map((x) => x.r);
    if (res[3]!.status === 200) expect(res[3]!.contributors).toEqual([0, 1, 2, 3]);
    for (const x of res[3]!.status === 200 ? res : survivors) {
      const contributors = x.contributors!;
      expect(contributors).toEqual(contributors.includes(3) ? [0, 1, 2, 3] : reissued);
      const base = contributors.reduce((a, c) => a + c + 1, 0);
      const out = x.out!;
      let wrong = 0;
      for (let i = 0; i < count; i++) {
        const special = contributors.includes(i) ? 1000 * (i + 1) - (i + 1) : 0;
        if (out[i] !== base + special) wrong++;
      }
      expect(wrong).toBe(0);
    }
    const m = (await get(w.urls[0]!, "/metrics")).body as string;
    console.log(`big allreduce with kill -9 in flight: contributors ${JSON.stringify(survivors.map((x) => x.contributors))}; ${m.split("\n").find((l) => l.startsWith("moonring_collective_reissues_total"))}`);
    // and the world goes on
    const next = expectOk(await Promise.all([0, 1, 2].map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: i32([r]) }))), "next");
    for (const b of next) expect(b.result.data).toEqual([3]);
  }, 90_000);

  test("two ranks killed at once while the others wait (untagged allgather and a tagged allreduce in flight): both complete among the two survivors", async () => {
    const w = await h.launch(4);
    const inputs = [0, 1, 2, 3].map(() => randInts(2));
    const pending = Promise.all([
      ...[0, 1].map((r) => post(w.urls[r]!, "/collective/allgather", { tensor: i32(inputs[r]!), timeout_ms: 20_000 })),
      ...[1, 0].map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), tag: "t1", timeout_ms: 20_000 })),
    ]);
    await waitJoined(w.urls[0]!, [0, 1], 2);
    kill9(w.pids[2]!);
    kill9(w.pids[3]!);
    const [g0, g1, t1, t0] = expectOk(await pending, "calls with two ranks killed");
    for (const b of [g0, g1]) {
      expect(b.contributors).toEqual([0, 1]);
      expect(b.failed_ranks).toEqual([2, 3]);
      expect(b.result.map((t: any) => t?.data ?? null)).toEqual([inputs[0], inputs[1], null, null]);
    }
    for (const b of [t0, t1]) {
      expect(b.contributors).toEqual([0, 1]);
      expect(b.result.data).toEqual(sumOver(inputs, [0, 1]));
    }
    expect((await cluster(w.urls[1]!)).active_ranks).toEqual([1, 1, 0, 0]);
  }, 60_000);

  test("a hung rank (SIGSTOP: its sockets stay open) is removed after the heartbeat timeout; the collective waiting for it completes without it", async () => {
    const w = await h.launch(3, ["--heartbeat-interval-ms", "200", "--heartbeat-timeout-ms", "1000"]);
    const inputs = [randInts(3), randInts(3), randInts(3)];
    const pending = Promise.all([0, 1].map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 20_000 })));
    await waitJoined(w.urls[0]!, [0, 1]);
    const t0 = performance.now();
    h.stop(w.pids[2]!);
    const res = expectOk(await pending, "allreduce with a hung rank");
    console.log(`hung rank: survivors answered ${(performance.now() - t0).toFixed(0)} ms after SIGSTOP (heartbeat timeout 1000 ms)`);
    for (const b of res) {
      expect(b.contributors).toEqual([0, 1]);
      expect(b.failed_ranks).toEqual([2]);
      expect(b.result.data).toEqual(sumOver(inputs, [0, 1]));
    }
    const c = await cluster(w.urls[1]!);
    expect(c.ranks[2].state).toBe("failed");
    expect(c.ranks[2].reason).toContain("no heartbeat");
    await waitHealth(w.urls[0]!, "healthy");
  }, 60_000);
});

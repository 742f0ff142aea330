// Issue 18 item 4: a busy event loop is not a death. A rank whose JS thread is busy for four
// heartbeat timeouts (POST /debug/block, a test hook standing in for decoding a huge body)
// still heartbeats from its heartbeat thread, so nobody is removed and nobody declares the
// coordinator lost: the next allreduce has every rank as a contributor and the epoch is
// unchanged. Every process started here is ended here.
import { afterEach, describe, expect, test } from "bun:test";
import { cluster, expectOk, get, Harness, i32, post, randInts, sumOver } from "../support/fault";

const h = new Harness();
afterEach(() => h.cleanup());

const FAST = ["--heartbeat-interval-ms", "200", "--heartbeat-timeout-ms", "1000"];
const BLOCK_MS = 4000;

async function allreduceAll(urls: string[]): Promise<void> {
  const inputs = urls.map(() => randInts(8));
  const res = expectOk(await Promise.all(urls.map((u, r) => post(u, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 20_000 }))), "allreduce");
  for (const b of res) {
    expect(b.contributors).toEqual(urls.map((_, r) => r));
    expect(b.result.data).toEqual(sumOver(inputs, b.contributors));
  }
}

describe("a blocked event loop is not a failure", () => {
  for (const blocked of [0, 1]) {
    test(`rank ${blocked}'s event loop busy for ${BLOCK_MS} ms (heartbeat timeout 1000 ms): nobody is removed`, async () => {
      const w = await h.launch(3, FAST, { MOONRING_TEST_HOOKS: "1" });
      await allreduceAll(w.urls);
      const before = await cluster(w.urls[0]!);
      const t0 = performance.now();
      // a call waiting on the blocked rank while it is blocked
      const others = w.urls.map((_, r) => r).filter((r) => r !== blocked);
      const inputs = w.urls.map(() => randInts(4));
      const waiting = Promise.all(others.map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 30_000 })));
      const block = await post(w.urls[blocked]!, "/debug/block", { ms: BLOCK_MS });
      expect(block.status).toBe(200);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(BLOCK_MS);
      const late = await post(w.urls[blocked]!, "/collective/allreduce", { tensor: i32(inputs[blocked]!), timeout_ms: 30_000 });
      for (const x of [late, ...(await waiting)]) {
        expect(x.status).toBe(200);
        expect(x.body.contributors).toEqual([0, 1, 2]);
        expect(x.body.result.data).toEqual(sumOver(inputs, [0, 1, 2]));
      }
      await allreduceAll(w.urls);
      for (const u of w.urls) {
        const c = await cluster(u);
        expect(c.epoch).toBe(before.epoch);
        expect(c.ranks.map((r: any) => r.state)).toEqual(["healthy", "healthy", "healthy"]);
        expect((await get(u, "/health")).body.state).toBe("healthy");
      }
    }, 60_000);
  }

  test("the hook is off unless MOONRING_TEST_HOOKS=1", async () => {
    const w = await h.launch(2, FAST);
    expect((await post(w.urls[0]!, "/debug/block", { ms: 1 })).status).toBe(404);
  }, 60_000);
});

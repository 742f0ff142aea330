// Rank 0 is the coordinator (agreement, membership). Its death is not survivable: the other
// ranks must not hang but fail fast with 503 master_lost and report state "failed"
// (docs/api-extensions.md "Rank 0"). Every process started here is ended here.
import { afterEach, describe, expect, test } from "bun:test";
import { sleep } from "../../src/util/net";
import { get, Harness, i32, kill9, post, waitHealth } from "../support/fault";

const h = new Harness();
afterEach(() => h.cleanup());

describe("rank 0 lost", () => {
  test("kill -9 of rank 0: calls waiting in agreement and every later call end at once with 503 master_lost; /health says failed", async () => {
    const w = await h.launch(3);
    const pending = Promise.all([1, 2].map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: i32([r]), timeout_ms: 20_000 })));
    await sleep(200);
    const t0 = performance.now();
    kill9(w.pids[0]!);
    const res = await pending;
    const ms = performance.now() - t0;
    console.log(`rank 0 killed: waiting calls answered ${ms.toFixed(1)} ms later`);
    for (const x of res) {
      expect(x.status).toBe(503);
      expect(x.body.error.code).toBe("master_lost");
      expect(x.body.error.failed_ranks).toEqual([0]);
    }
    for (const r of [1, 2]) {
      const hb = await waitHealth(w.urls[r]!, "failed");
      expect(hb).toMatchObject({ status: "failed", ready: false, master_lost: true });
      expect(hb.error).toContain("rank 0");
    }
    const later = await post(w.urls[1]!, "/collective/barrier", {});
    expect(later.status).toBe(503);
    expect(later.body.error.code).toBe("master_lost");
    const p2p = await post(w.urls[2]!, "/p2p/send", { tensor: i32([1]), dst: 1 });
    expect(p2p.body.error.code).toBe("master_lost");
    const act = await post(w.urls[2]!, "/membership/activate", { ranks: [1] });
    expect(act.body.error.code).toBe("master_lost");
    expect(await w.waitForLine(/^rank 0 exited/)).toContain("ranks 1, 2 keep running");
  }, 60_000);

  test("rank 0 hangs (SIGSTOP): the others declare it lost after the heartbeat timeout instead of waiting for timeout_ms", async () => {
    const w = await h.launch(3, ["--heartbeat-interval-ms", "200", "--heartbeat-timeout-ms", "1000"]);
    const pending = Promise.all([1, 2].map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: i32([r]), timeout_ms: 30_000 })));
    await sleep(200);
    const t0 = performance.now();
    h.stop(w.pids[0]!);
    const res = await pending;
    console.log(`rank 0 hung: waiting calls answered ${(performance.now() - t0).toFixed(0)} ms later (heartbeat timeout 1000 ms)`);
    for (const x of res) {
      expect(x.status).toBe(503);
      expect(x.body.error.code).toBe("master_lost");
      expect(x.body.error.message).toContain("heartbeat");
    }
    expect((await get(w.urls[1]!, "/health")).body.state).toBe("failed");
  }, 60_000);
});

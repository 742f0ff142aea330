// --rejoin auto (issue 20 item 3): a rank process killed and started again with the same
// identity (same --rank, no --join: what a container or pod restart does) replaces its dead
// predecessor and becomes active by itself; nobody calls /membership/activate. Every process
// started here is ended here.
import { afterEach, describe, expect, test } from "bun:test";
import { cluster, expectOk, get, Harness, i32, kill9, post, randInts, sumOver, waitFor, waitState } from "../support/fault";

const h = new Harness();
afterEach(() => h.cleanup());

const FAST = ["--heartbeat-interval-ms", "200", "--heartbeat-timeout-ms", "1000"];

async function allreduceAmong(urls: string[], members: number[]): Promise<void> {
  const inputs = urls.map(() => randInts(5));
  const res = expectOk(await Promise.all(members.map((r) => post(urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 20_000 }))), "allreduce");
  for (const b of res) {
    expect(b.contributors).toEqual(members);
    expect(b.result.data).toEqual(sumOver(inputs, members));
  }
}

describe("--rejoin auto", () => {
  test("rank 2 killed and restarted with the same identity (no --join): active again with no operator action", async () => {
    const w = await h.launch(4, [...FAST, "--rejoin", "auto"]);
    await allreduceAmong(w.urls, [0, 1, 2, 3]);
    const before = await cluster(w.urls[0]!);
    kill9(w.pids[2]!);
    // restarted at once, before or after the old process is found dead: either way it rejoins
    const restarted = h.join(w, 2, 4, [...FAST, "--rejoin", "auto"], { join: false });
    await waitFor("the restarted rank 2 to be active and ready", async () => (await get(restarted.url, "/health")).body?.ready === true, 30_000);
    await waitState(w.urls, 2, "healthy", 30_000);
    const after = await cluster(w.urls[1]!);
    expect(after.active_ranks).toEqual([1, 1, 1, 1]);
    expect(after.ranks[2].pid).not.toBe(before.ranks[2].pid);
    expect(after.epoch).toBeGreaterThan(before.epoch);
    await allreduceAmong(w.urls, [0, 1, 2, 3]);
    const g = expectOk(await Promise.all([0, 1, 2, 3].map((r) => post(w.urls[r]!, "/collective/allgather", { tensor: i32([r + 100]) }))), "allgather");
    for (const b of g) expect(b.result.map((t: any) => t.data)).toEqual([[100], [101], [102], [103]]);
  }, 90_000);

  test("--rejoin manual (the default) still refuses a restart without --join", async () => {
    const w = await h.launch(2, FAST);
    kill9(w.pids[1]!);
    await waitState([w.urls[0]!], 1, "failed");
    const restarted = h.join(w, 1, 2, FAST, { join: false });
    expect(await restarted.proc.exited).toBe(3);
    expect(restarted.stderr()).toContain("duplicate rank 1");
  }, 60_000);
});

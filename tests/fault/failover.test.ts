// Coordinator failover (issue 20): rank 0 coordinates until it dies; then the survivors elect
// the lowest live rank, which marks rank 0 failed in a new epoch and coordinates from then on.
// Calls that waited in agreement at the lost coordinator are sent again to the new one, so
// they complete among the survivors (contributors say who); a restarted rank 0 is found by
// the new coordinator and rejoins as an ordinary rank. Every process started here is ended here.
import { afterEach, describe, expect, test } from "bun:test";
import { cluster, expectOk, get, Harness, i32, kill9, post, randInts, sumOver, waitFor, waitState } from "../support/fault";

const h = new Harness();
afterEach(() => h.cleanup());

const FAST = ["--heartbeat-interval-ms", "200", "--heartbeat-timeout-ms", "1000"];

/** Waits until rank 0 lists one pending collective that `ranks` joined. */
async function waitJoined(url: string, ranks: number[]): Promise<void> {
  await waitFor(`ranks ${ranks.join(", ")} to wait in agreement`, async () => {
    const d = (await get(url, "/debug/recent?limit=1")).body;
    return d.pending?.some((p: any) => ranks.every((r) => p.joined.includes(r)));
  });
}

async function allreduceAmong(urls: (string | undefined)[], members: number[]): Promise<any[]> {
  const inputs = urls.map(() => randInts(6));
  const res = expectOk(await Promise.all(members.map((r) => post(urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 20_000 }))), "allreduce");
  for (const b of res) {
    expect(b.contributors).toEqual(members);
    expect(b.result.data).toEqual(sumOver(inputs, members));
  }
  return res;
}

describe("coordinator failover", () => {
  test("kill -9 of rank 0 while the others wait in agreement: rank 1 takes over, the waiting calls complete among the survivors", async () => {
    const w = await h.launch(4, FAST);
    await allreduceAmong(w.urls, [0, 1, 2, 3]);
    const survivors = [1, 2, 3];
    const inputs = w.urls.map(() => randInts(6));
    const pending = Promise.all(survivors.map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 30_000 })));
    await waitJoined(w.urls[0]!, survivors);
    const killedAt = Date.now();
    kill9(w.pids[0]!);
    const res = expectOk(await pending, "allreduce waiting when rank 0 died");
    const firstMs = Date.now() - killedAt;
    for (const b of res) {
      expect(b.contributors).toEqual(survivors);
      expect(b.result.data).toEqual(sumOver(inputs, survivors));
    }
    for (const r of survivors) {
      const c = await cluster(w.urls[r]!);
      expect(c.coordinator).toBe(1);
      expect(c.ranks[0].state).toBe("failed");
      expect(c.active_ranks).toEqual([0, 1, 1, 1]);
    }
    const f = (await cluster(w.urls[2]!)).failovers.at(-1);
    expect(f.lost).toEqual([0]);
    expect(f.coordinator).toBe(1);
    console.log(
      `failover (kill -9 rank 0, heartbeat 200/1000 ms): detected ${f.detected_at_ms - killedAt} ms, new coordinator followed ${f.resumed_at_ms - killedAt} ms, waiting allreduce completed ${firstMs} ms after the kill`,
    );
    // the world goes on: every collective among the survivors, any root
    await allreduceAmong(w.urls, survivors);
    const bc = expectOk(await Promise.all(survivors.map((r) => post(w.urls[r]!, "/collective/broadcast", { tensor: i32(r === 3 ? [7, 8] : [0, 0]), src: 3 }))), "broadcast");
    for (const b of bc) expect(b.result.data).toEqual([7, 8]);
    const g = expectOk(await Promise.all(survivors.map((r) => post(w.urls[r]!, "/collective/allgather", { tensor: i32([r * 10]) }))), "allgather");
    for (const b of g) expect(b.result.map((t: any) => t?.data ?? null)).toEqual([null, [10], [20], [30]]);
    // membership changes go to the new coordinator
    const dead = await post(w.urls[2]!, "/membership/deactivate", { ranks: [3] });
    expect(dead.status).toBe(200);
    await waitState([w.urls[1]!, w.urls[2]!], 3, "left");
    await allreduceAmong(w.urls, [1, 2]);
  }, 90_000);

  test("rank 0 hangs (SIGSTOP): after the heartbeat timeout rank 1 takes over and the waiting calls complete", async () => {
    const w = await h.launch(3, FAST);
    const survivors = [1, 2];
    const inputs = w.urls.map(() => randInts(6));
    const pending = Promise.all(survivors.map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 30_000 })));
    await waitJoined(w.urls[0]!, survivors);
    const stoppedAt = Date.now();
    h.stop(w.pids[0]!);
    const res = expectOk(await pending, "allreduce waiting when rank 0 hung");
    console.log(`failover (SIGSTOP rank 0, heartbeat timeout 1000 ms): waiting allreduce completed ${Date.now() - stoppedAt} ms later`);
    for (const b of res) {
      expect(b.contributors).toEqual(survivors);
      expect(b.result.data).toEqual(sumOver(inputs, survivors));
    }
    expect((await cluster(w.urls[2]!)).coordinator).toBe(1);
    await allreduceAmong(w.urls, survivors);
  }, 90_000);

  test("the new coordinator dies too: rank 2 takes over from rank 1", async () => {
    const w = await h.launch(4, FAST);
    kill9(w.pids[0]!);
    await waitFor("rank 1 to coordinate", async () => (await cluster(w.urls[3]!)).coordinator === 1);
    await allreduceAmong(w.urls, [1, 2, 3]);
    kill9(w.pids[1]!);
    await waitFor("rank 2 to coordinate", async () => (await cluster(w.urls[3]!)).coordinator === 2);
    await allreduceAmong(w.urls, [2, 3]);
    expect((await cluster(w.urls[3]!)).active_ranks).toEqual([0, 0, 1, 1]);
  }, 90_000);

  test("rank 0 restarted in place at once (a container restart): the survivors fail over instead of following the new process", async () => {
    // A heartbeat timeout long enough that the restarted process answers at rank 0's address
    // (its heartbeat port too) while the survivors still try to reconnect: they must not take
    // it for their coordinator (its matcher never saw their calls; they waited for good).
    const SLOW = ["--heartbeat-interval-ms", "200", "--heartbeat-timeout-ms", "5000", "--rejoin", "auto"];
    const w = await h.launch(3, SLOW);
    const survivors = [1, 2];
    const inputs = w.urls.map(() => randInts(6));
    const pending = Promise.all(survivors.map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 30_000 })));
    await waitJoined(w.urls[0]!, survivors);
    kill9(w.pids[0]!);
    const restarted = h.join(w, 0, 3, SLOW, { join: false });
    const res = expectOk(await pending, "allreduce waiting when rank 0 was restarted in place");
    for (const b of res) {
      expect(b.contributors).toEqual(survivors);
      expect(b.result.data).toEqual(sumOver(inputs, survivors));
    }
    await waitState(w.urls.slice(1), 0, "healthy", 30_000).catch((e) => {
      throw new Error(`${e.message}\nrestarted rank 0 said:\n${restarted.stderr()}\nworld:\n${w.stderrText().slice(-3000)}`);
    });
    await waitFor("the restarted rank 0 to be ready", async () => (await get(restarted.url, "/health")).body?.ready === true, 30_000);
    expect((await cluster(w.urls[2]!)).coordinator).toBe(1);
    await allreduceAmong(w.urls, [0, 1, 2]);
  }, 90_000);

  test("a restarted rank 0 (--rejoin auto) is found by the new coordinator and rejoins as an ordinary rank", async () => {
    const w = await h.launch(3, [...FAST, "--rejoin", "auto"]);
    kill9(w.pids[0]!);
    await waitFor("rank 1 to coordinate", async () => (await cluster(w.urls[2]!)).coordinator === 1);
    const restarted = h.join(w, 0, 3, [...FAST, "--rejoin", "auto"], { join: false });
    await waitState(w.urls.slice(1), 0, "healthy", 30_000).catch((e) => {
      throw new Error(`${e.message}\nrestarted rank 0 said:\n${restarted.stderr()}\nworld:\n${w.stderrText().slice(-3000)}`);
    });
    await waitFor("the restarted rank 0 to be ready", async () => (await get(restarted.url, "/health")).body?.ready === true, 30_000);
    const c = await cluster(restarted.url);
    expect(c.coordinator).toBe(1);
    expect(c.active_ranks).toEqual([1, 1, 1]);
    await allreduceAmong(w.urls, [0, 1, 2]);
  }, 90_000);
});

// Fault tolerance without timing luck: the matcher's dropRanks/retry, and in-process worlds
// (real HTTP and control links, fake data plane) where a rank's data-plane part is made to
// hang so that its death always lands while the bytes "move": the survivors' ops fail with
// EPEER once rank 0 removes it, and rank 0 re-issues the collective among them.
import { afterEach, describe, expect, test } from "bun:test";
import type { CallDesc, Decision } from "../../src/control/matcher";
import { Matcher } from "../../src/control/matcher";
import { Membership } from "../../src/control/membership";
import { NativeError, type NativeOp } from "../../src/native/types";
import { sleep } from "../../src/util/net";
import { post } from "../support/http";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "error";

function membership(n: number): Membership {
  const m = new Membership(n);
  for (let r = 0; r < n; r++) {
    m.upsert({ rank: r, url: `http://x:${r}`, dataHost: "x", dataPort: r, hostId: "1", pid: r, instance: `i${r}`, state: "healthy", active: true });
  }
  m.setEpoch(1);
  return m;
}

const desc = (over: Partial<CallDesc> = {}): CallDesc => ({
  op: "allreduce",
  group: "world",
  tag: null,
  dtype: "int32",
  count: 1,
  shape: [1],
  root: null,
  redop: "sum",
  timeoutMs: 10_000,
  ...over,
});

describe("matcher: dropRanks and retry", () => {
  test("dropping the missing member decides among the rest; a dropped member that joined is told it is out", () => {
    const m = membership(4);
    const matcher = new Matcher(m);
    const got = new Map<number, Decision>();
    for (const r of [0, 1, 2]) matcher.join(r, desc(), (d) => got.set(r, d));
    expect(got.size).toBe(0);
    m.update([{ rank: 3, state: "failed", active: false }]);
    matcher.dropRanks([3], "failed");
    for (const r of [0, 1, 2]) expect(got.get(r)).toMatchObject({ ok: true, ranks: [0, 1, 2] });

    const got2 = new Map<number, Decision>();
    for (const r of [0, 2]) matcher.join(r, desc(), (d) => got2.set(r, d));
    m.update([{ rank: 2, state: "failed", active: false }]);
    matcher.dropRanks([2], "failed");
    expect(got2.get(2)).toMatchObject({ ok: false, status: 503, code: "not_ready" });
    expect(got2.has(0)).toBe(false); // still waits for rank 1
    matcher.join(1, desc(), (d) => got2.set(1, d));
    expect(got2.get(0)).toMatchObject({ ok: true, ranks: [0, 1] });
    expect(matcher.pendingCount()).toBe(0);
  });

  test("dropping the root fails the collective for every member with 503 peer_failed", () => {
    const m = membership(3);
    const matcher = new Matcher(m);
    const got = new Map<number, Decision>();
    for (const r of [0, 1]) matcher.join(r, desc({ op: "broadcast", root: 2, redop: null }), (d) => got.set(r, d));
    m.update([{ rank: 2, state: "failed", active: false }]);
    matcher.dropRanks([2], "failed");
    for (const r of [0, 1]) {
      expect(got.get(r)).toMatchObject({ ok: false, status: 503, code: "peer_failed" });
      expect((got.get(r) as { message: string }).message).toContain("root (src 2)");
    }
  });

  test("retry re-decides the same calls among a subset with a new op id; alltoall block shapes follow the ranks they were for", () => {
    const m = membership(3);
    const matcher = new Matcher(m);
    const first = new Map<number, Decision>();
    const calls = new Map<number, CallDesc>();
    for (const r of [0, 1, 2]) {
      // rank r sends a block of r + j + 1 elements to rank j
      const d = desc({ op: "alltoall", count: -1, redop: null, shapes: [0, 1, 2].map((j) => [r + j + 1]), blockRanks: [0, 1, 2] });
      calls.set(r, d);
      matcher.join(r, d, (x) => first.set(r, x));
    }
    const opId = (first.get(0) as { opId: string }).opId;
    calls.delete(1);
    const again = new Map<number, Decision>();
    matcher.retry(opId, 1, "world", null, calls, (r, d) => again.set(r, d));
    for (const r of [0, 2]) {
      const d = again.get(r) as { ok: true; opId: string; ranks: number[]; retryOf: string; shapes: number[][] };
      expect(d.ok).toBe(true);
      expect(d.ranks).toEqual([0, 2]);
      expect(d.retryOf).toBe(opId);
      expect(d.opId).not.toBe(opId);
      expect(d.shapes).toEqual([0, 2].map((src) => [src + r + 1])); // what each sender had for r
    }
  });
});

describe("in-process worlds: re-issue among survivors, partition rule", () => {
  let w: InprocWorld | null = null;
  afterEach(async () => {
    await w?.stop();
    w = null;
  });

  test("a rank dies while the data plane moves: the survivors' ops fail with EPEER, rank 0 re-issues the collective among them (new op id, same inputs)", async () => {
    w = await startInprocWorld(4);
    const s = w.services;
    // rank 3 joins the agreement but its data-plane part never finishes
    s[3]!.dataPlane.run = () => new Promise<void>(() => {});
    const inputs = [5, 7, 11, 13];
    const calls = s.map((_, r) =>
      post(w!.urls[r]!, "/collective/allreduce", { tensor: { dtype: "int64", shape: [1], data: [inputs[r]] }, timeout_ms: 20_000 }).catch((e) => ({ status: -1, body: String(e) })),
    );
    const until = Date.now() + 10_000;
    while (w.hub.log.filter((x) => x.kind === "allreduce").length < 3) {
      if (Date.now() > until) throw new Error("survivors never submitted");
      await sleep(5);
    }
    const firstId = w.hub.log[0]!.opId;
    s[3]!.link!.declareLost("test: rank 3 dies"); // its control link drops, like a killed process
    const res = await Promise.all(calls.slice(0, 3));
    for (const x of res) {
      expect(x.status).toBe(200);
      expect(x.body.contributors).toEqual([0, 1, 2]);
      expect(x.body.failed_ranks).toEqual([3]);
      expect(x.body.active_ranks).toEqual([1, 1, 1, 0]);
      expect(x.body.result.data).toEqual(["23"]);
    }
    const ops = w.hub.log.filter((x) => x.kind === "allreduce");
    const second = ops.filter((x) => x.opId !== firstId);
    expect(second.map((x) => x.rank).sort()).toEqual([0, 1, 2]);
    for (const x of second) expect(x.ranks).toEqual([0, 1, 2]);
    expect(s[0]!.coordinator!.stats).toMatchObject({ failures: 1, retries: 1 });
  }, 30_000);

  test("partition rule: a data-plane failure between two live ranks removes the higher one; never rank 0 (a reporter that lost its link to rank 0 goes)", async () => {
    w = await startInprocWorld(4, { heartbeatIntervalMs: 100, heartbeatTimeoutMs: 600 });
    const s = w.services;
    const m0 = s[0]!.membership;
    // rank 1 reports rank 2; rank 2 answers rank 0's ping: both live -> rank 2 (the higher) goes
    s[1]!.participant.opFailed("1", 2, "test: link broke");
    for (let i = 0; i < 200 && m0.isActive(2); i++) await sleep(5);
    expect(m0.get(2)).toMatchObject({ state: "failed", active: false });
    expect(m0.get(2)!.reason).toContain("partition");
    // rank 3 reports rank 0: rank 0 is alive by definition -> the reporter goes
    s[3]!.participant.opFailed("2", 0, "test: link to rank 0 broke");
    for (let i = 0; i < 200 && m0.isActive(3); i++) await sleep(5);
    expect(m0.get(3)!.reason).toContain("the coordinator stays");
    expect(m0.activeRanks()).toEqual([0, 1]);
  }, 30_000);

  test("a blackholed data-plane link (timeouts, no link error) between two live ranks: the link check fails and the higher rank is removed", async () => {
    w = await startInprocWorld(3, { heartbeatIntervalMs: 100, heartbeatTimeoutMs: 500 });
    const s = w.services;
    // ranks 1 and 2 can't exchange a byte: their ops together time out naming each other
    for (const [me, other] of [[1, 2], [2, 1]] as const) {
      const plane = s[me]!.dataPlane;
      const run = plane.run.bind(plane);
      plane.run = (op: NativeOp) =>
        op.ranks.includes(other)
          ? new Promise((_, reject) => setTimeout(() => reject(new NativeError(`rank ${me}: no data from rank ${other}`, "ETIMEOUT", other)), op.timeoutMs))
          : run(op);
    }
    const first = await Promise.all(
      w.urls.map((u, r) => post(u, "/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [r + 1] }, timeout_ms: 1000 })),
    );
    for (const x of first) expect(x.status).toBe(504);
    const m0 = s[0]!.membership;
    for (let i = 0; i < 400 && m0.isActive(2); i++) await sleep(5);
    expect(m0.get(2)!.state).toBe("failed");
    expect(m0.get(2)!.reason).toContain("link check");
    expect(s[0]!.coordinator!.stats.linkChecks).toBe(1);
    const next = await Promise.all([0, 1].map((r) => post(w!.urls[r]!, "/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [r + 1] } })));
    for (const x of next) {
      expect(x.status).toBe(200);
      expect(x.body.result.data).toEqual([3]);
    }
  }, 30_000);

  test("a data-plane timeout on a link that works (a slow op): the link check passes and nobody is removed", async () => {
    w = await startInprocWorld(3, { heartbeatIntervalMs: 100, heartbeatTimeoutMs: 500 });
    const s = w.services;
    const plane = s[1]!.dataPlane;
    const run = plane.run.bind(plane);
    let once = true;
    plane.run = (op: NativeOp) => {
      if (once && op.kind === "allreduce") {
        once = false;
        return new Promise((_, reject) => setTimeout(() => reject(new NativeError("rank 1: slow op", "ETIMEOUT", 2)), 50));
      }
      return run(op);
    };
    const first = await Promise.all(w.urls.map((u, r) => post(u, "/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [r] }, timeout_ms: 1000 })));
    expect(first[1]!.status).toBe(504);
    const co = s[0]!.coordinator!;
    for (let i = 0; i < 600 && co.stats.linkChecksPassed === 0; i++) await sleep(5);
    expect(co.stats).toMatchObject({ linkChecks: 1, linkChecksPassed: 1, failures: 0 });
    expect(s[0]!.membership.activeRanks()).toEqual([0, 1, 2]);
    const next = await Promise.all(w.urls.map((u, r) => post(u, "/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [r] } })));
    for (const x of next) expect(x.body.result.data).toEqual([3]);
  }, 30_000);

  test("an unresponsive peer (no answer to rank 0's ping) is removed after the heartbeat timeout", async () => {
    w = await startInprocWorld(3, { heartbeatIntervalMs: 100, heartbeatTimeoutMs: 600 });
    const s = w.services;
    const onPush = s[2]!.participant.onPush.bind(s[2]!.participant);
    s[2]!.participant.onPush = (msg) => {
      if (msg.t !== "ping") onPush(msg); // deaf to pings, still heartbeating
    };
    s[1]!.participant.opFailed("1", 2, "test: link broke");
    const m0 = s[0]!.membership;
    for (let i = 0; i < 400 && m0.isActive(2); i++) await sleep(5);
    expect(m0.get(2)!.reason).toContain("did not answer rank 0");
    // the removed rank knows why: failed with rank 0's reason, not "master lost"
    for (let i = 0; i < 200 && s[2]!.link!.connected; i++) await sleep(5);
    const health = (await fetch(`${w.urls[2]}/health`).then((r) => r.json())) as Record<string, unknown>;
    expect(health).toMatchObject({ state: "failed", ready: false });
    expect(health.master_lost).toBeUndefined();
    expect(String(health.error)).toContain("did not answer rank 0");
  }, 30_000);
});

// /metrics: a strict Prometheus text-format (0.0.4) parser checks every line; promtool (Debian
// `prometheus`, installed by scripts/apt-tools.sh when absent) lints it too. process_* and
// event-loop metrics, build info, HTTP requests by route and status. /livez: liveness apart
// from readiness.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import pkg from "../../package.json" with { type: "json" };
import type { RankService } from "../../src/server/service";
import { parseExposition, type Sample } from "../support/exposition";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "error";

const one = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
  samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));

async function until<T>(what: string, probe: () => Promise<T | null | undefined | false>, deadlineMs = 10_000): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

let w: InprocWorld;
let s: RankService;
const scrape = async (svc = s) => {
  const res = await fetch(`${svc.url}/metrics`);
  expect(res.headers.get("content-type")).toContain("text/plain; version=0.0.4");
  return res.text();
};

beforeAll(async () => {
  w = await startInprocWorld(2, { heartbeatIntervalMs: 100, heartbeatTimeoutMs: 800 });
  s = w.services[0]!;
});
afterAll(async () => {
  await w?.stop();
});

describe("/metrics", () => {
  test("strictly well-formed, with process, runtime, build and HTTP-by-route metrics", async () => {
    const body = (t: number, r: number) => JSON.stringify({ tensor: { dtype: "int32", shape: [1], data: [t + r] } });
    for (let t = 0; t < 3; t++) {
      const answers = await Promise.all(w.urls.map((u, r) => fetch(`${u}/collective/allreduce`, { method: "POST", body: body(t, r) })));
      expect(answers.map((a) => a.status)).toEqual([200, 200]);
    }
    expect((await fetch(`${s.url}/buffers/nope`)).status).toBe(404);
    expect((await fetch(`${s.url}/no/such/route`)).status).toBe(404);
    expect((await fetch(`${s.url}/collective/allreduce`, { method: "POST", body: "{" })).status).toBe(400);
    const { samples, types } = parseExposition(await scrape());
    expect(types.get("process_cpu_seconds_total")).toBe("counter");
    expect(one(samples, "process_cpu_seconds_total")[0]!.value).toBeGreaterThan(0);
    expect(one(samples, "process_resident_memory_bytes")[0]!.value).toBeGreaterThan(1 << 20);
    const start = one(samples, "process_start_time_seconds")[0]!.value;
    expect(start).toBeLessThanOrEqual(Date.now() / 1000 + 1);
    expect(start).toBeGreaterThan(Date.now() / 1000 - 24 * 3600);
    expect(one(samples, "process_open_fds")[0]!.value).toBeGreaterThan(2);
    expect(one(samples, "moonring_build_info", { rank: "0", version: pkg.version, bun: Bun.version })[0]!.value).toBe(1);
    expect(types.get("moonring_event_loop_lag_seconds")).toBe("gauge");
    // the fast path (no Hono) and the Hono routes count alike, by route pattern and status
    expect(one(samples, "moonring_http_requests_total", { route: "/collective/:op", code: "200", method: "POST" })[0]!.value).toBe(3);
    expect(one(samples, "moonring_http_requests_total", { route: "/collective/:op", code: "400" })[0]!.value).toBe(1);
    expect(one(samples, "moonring_http_requests_total", { route: "/buffers/:id", code: "404", method: "GET" })[0]!.value).toBe(1);
    expect(one(samples, "moonring_http_requests_total", { route: "unmatched", code: "404" })[0]!.value).toBe(1);
    expect(one(samples, "moonring_ops_total", { op: "allreduce", outcome: "ok" })[0]!.value).toBe(3);
  });

  test("a blocked event loop shows in moonring_event_loop_lag_seconds", async () => {
    const t0 = performance.now();
    while (performance.now() - t0 < 700) {
      // block the loop: the 250 ms sampler fires ~450+ ms late
    }
    const lag = await until("the lag sample", async () => {
      const v = one(parseExposition(await scrape()).samples, "moonring_event_loop_lag_seconds")[0]!.value;
      return v >= 0.3 ? v : null;
    });
    expect(lag).toBeLessThan(60);
  });

  test("promtool check metrics is clean (Debian prometheus package)", async () => {
    const inst = spawnSync("sh", ["scripts/apt-tools.sh", "promtool", "prometheus"], { encoding: "utf8", timeout: 600_000 });
    if (inst.status !== 0) {
      console.warn(`SKIP promtool check: could not install the prometheus package: ${inst.stderr.slice(-300)}`);
      return;
    }
    const r = spawnSync("promtool", ["check", "metrics"], { input: await scrape(), encoding: "utf8" });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe("");
    expect(r.status).toBe(0);
  }, 620_000);
});

describe("/livez (liveness) vs /health (readiness)", () => {
  test("alive and ready; once rank 0 is gone rank 1 takes over and stays so; a rank that lost every coordinator is neither, and says why", async () => {
    const r1 = w.services[1]!;
    for (const svc of w.services) {
      expect((await fetch(`${svc.url}/livez`)).status).toBe(200);
      expect((await fetch(`${svc.url}/health`)).status).toBe(200);
    }
    await s.stop();
    await until("rank 1 to coordinate", async () => r1.isCoordinator);
    expect((await fetch(`${r1.url}/livez`)).status).toBe(200);
    expect((await fetch(`${r1.url}/health`)).status).toBe(200);
    // what a rank that found no coordinator to follow does (control/failover in service.ts)
    r1.participant.lost("no active rank is left to take over (test)");
    const dead = await until("rank 1 not live", async () => {
      const res = await fetch(`${r1.url}/livez`);
      return res.status === 503 ? ((await res.json()) as { live: boolean; error: string }) : null;
    });
    expect(dead.live).toBe(false);
    expect(dead.error).toContain("no active rank is left to take over");
    expect((await fetch(`${r1.url}/health`)).status).toBe(503);
  });

  test("a rank removed as failed is not live; one that left on purpose or awaits is", async () => {
    const r1 = w.services[1]!;
    const m = r1.membership;
    // the view rank 0 would push: rank 1 removed as failed (its own participant applies it so)
    const lostBefore = r1.participant.masterLost;
    r1.participant.masterLost = null;
    try {
      m.update([{ rank: 1, state: "failed", active: false, reason: "heartbeat silence" }]);
      let res = await fetch(`${r1.url}/livez`);
      expect(res.status).toBe(503);
      expect(((await res.json()) as { error: string }).error).toContain("heartbeat silence");
      m.update([{ rank: 1, state: "left", active: false }]);
      res = await fetch(`${r1.url}/livez`);
      expect(res.status).toBe(200);
      expect((await fetch(`${r1.url}/health`)).status).toBe(503);
    } finally {
      r1.participant.masterLost = lostBefore;
    }
  });
});

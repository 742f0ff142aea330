// Issue 18 item 10: /health and /livez give strangers (token set, none given) readiness only,
// not pid, ports or urls; pending calls are capped (429, the count never leaks on errors);
// bodies are capped (413, with and without Content-Length).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "warn";

const t = (v: number) => ({ dtype: "int32", shape: [1], data: [v] });

describe("probes with a token set", () => {
  let w: InprocWorld;
  beforeAll(async () => {
    w = await startInprocWorld(2, { token: "s3cret" });
  }, 60_000);
  afterAll(async () => {
    await w?.stop();
  });

  test("without the token: status, ready, state only; with it: the full answer", async () => {
    for (const url of w.urls) {
      const anon = await fetch(url + "/health");
      expect(anon.status).toBe(200);
      expect(await anon.json()).toEqual({ status: "ok", ready: true, state: "healthy" });
      const wrong = await fetch(url + "/health", { headers: { authorization: "Bearer nope" } });
      expect(Object.keys((await wrong.json()) as object).sort()).toEqual(["ready", "state", "status"]);
      const live = await fetch(url + "/livez");
      expect(await live.json()).toEqual({ live: true, state: "healthy" });
      const full = (await (await fetch(url + "/health", { headers: { authorization: "Bearer s3cret" } })).json()) as Record<string, unknown>;
      expect(full.pid).toBe(process.pid);
      expect(typeof full.data_port).toBe("number");
      const fullLive = (await (await fetch(url + "/livez", { headers: { authorization: "Bearer s3cret" } })).json()) as Record<string, unknown>;
      expect(fullLive.pid).toBe(process.pid);
    }
  });
});

describe("caps", () => {
  let w: InprocWorld;
  const max = 3;
  beforeAll(async () => {
    w = await startInprocWorld(2, { maxPendingCalls: max, maxBodyBytes: 4096 });
  }, 60_000);
  afterAll(async () => {
    await w?.stop();
  });
  const post = (r: number, path: string, body: unknown, init: RequestInit = {}) =>
    fetch(w.urls[r] + path, { method: "POST", headers: { "content-type": "application/json" }, body: typeof body === "string" ? body : JSON.stringify(body), ...init });

  test("pending calls past the cap are 429 (collectives and p2p); bad requests don't leak the count", async () => {
    for (let i = 0; i < 2 * max; i++) expect((await post(0, "/collective/allreduce", { tensor: t(1), oops: 1 })).status).toBe(400);
    expect((await post(0, "/p2p/recv", { src: 1, timeout_ms: 0 })).status).toBe(400);
    // max calls wait for rank 1 (distinct tags: none waits behind another)
    const waiting = Array.from({ length: max }, (_, i) => post(0, "/collective/allreduce", { tensor: t(i), tag: `k${i}`, timeout_ms: 20_000 }));
    const until = Date.now() + 10_000;
    while (w.services[0]!.callsInFlight < max && Date.now() < until) await Bun.sleep(5);
    expect(w.services[0]!.callsInFlight).toBe(max);
    for (const [path, body] of [["/collective/allreduce", { tensor: t(9) }], ["/collective/barrier", {}], ["/p2p/recv", { src: 1 }], ["/p2p/send", { dst: 1, tensor: t(1) }]] as const) {
      const r = await post(0, path, body);
      expect(r.status).toBe(429);
      const e = ((await r.json()) as { error: { code: string; message: string; limit: number } }).error;
      expect(e.code).toBe("too_many_requests");
      expect(e.limit).toBe(max);
      expect(e.message).toContain("pending calls");
    }
    // rank 1 joins: the waiting calls complete, and rank 0 takes calls again
    const peers = Array.from({ length: max }, (_, i) => post(1, "/collective/allreduce", { tensor: t(10 * i), tag: `k${i}` }));
    for (const [i, r] of (await Promise.all(waiting)).entries()) {
      expect(r.status).toBe(200);
      expect(((await r.json()) as { result: { data: number[] } }).result.data).toEqual([11 * i]);
    }
    await Promise.all(peers);
    expect(w.services[0]!.callsInFlight).toBe(0);
    const again = await Promise.all([0, 1].map((r) => post(r, "/collective/allreduce", { tensor: t(r + 1) })));
    for (const r of again) expect(r.status).toBe(200);
  });

  test("bodies over --max-body-bytes are 413, with or without Content-Length", async () => {
    const big = JSON.stringify({ tensor: { dtype: "float32", shape: [2000], data: new Array(2000).fill(1.5) } });
    expect(big.length).toBeGreaterThan(4096);
    for (const path of ["/collective/allreduce", "/p2p/send", "/buffers"]) {
      const sized = await post(0, path, big);
      expect([path, sized.status]).toEqual([path, 413]);
      // chunked: no Content-Length, the limit is enforced while reading
      const stream = new ReadableStream<Uint8Array>({
        start(ctl) {
          const bytes = new TextEncoder().encode(big);
          for (let i = 0; i < bytes.length; i += 1000) ctl.enqueue(bytes.subarray(i, i + 1000));
          ctl.close();
        },
      });
      // keepalive off: Bun's fetch reuses a connection whose streamed body the server cut
      // short (the server drains it and answers the next request fine: checked with a raw socket)
      const chunked = await post(0, path, "", { body: stream, keepalive: false });
      expect(chunked.status).toBe(413);
      expect(((await chunked.json()) as { error: { code: string } }).error.code).toBe("too_large");
    }
    expect(w.services[0]!.callsInFlight).toBe(0);
  });
});

// REST surface in-process via app.request(): schema and input errors (400/401/413/503/404),
// introspection routes, octet-stream, world-size-1 collectives, the typed client.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { MoonringClient, MoonringError, fromBFloat16, tensor, toBFloat16 } from "../../src/client/index";
import { RankService, DEFAULT_MAX_BODY_BYTES, collectivePathOp } from "../../src/server/service";
import { FakeHub } from "../support/fake-dataplane";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "warn";

async function req(svc: RankService, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const init: RequestInit = body === undefined ? { method: "GET", headers } : {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  };
  const res = await svc.app.request(path, init);
  const text = await res.text();
  let json: any = text;
  try {
    json = JSON.parse(text);
  } catch {
    // text
  }
  return { status: res.status, body: json, headers: res.headers };
}

describe("REST errors (world of 2, rank 0 alone is enough for input checks)", () => {
  let w: InprocWorld;
  let s: RankService;
  beforeAll(async () => {
    w = await startInprocWorld(2, { maxBodyBytes: 4096, maxTensorBytes: 1024 });
    s = w.services[0]!;
  });
  afterAll(async () => {
    await w?.stop();
  });

  const bad = async (path: string, body: unknown, status: number, code: string, contains?: string) => {
    const r = await req(s, path, body);
    expect(r.status).toBe(status);
    expect(r.body.error.code).toBe(code);
    expect(typeof r.body.error.message).toBe("string");
    if (contains) expect(r.body.error.message).toContain(contains);
    if (path.startsWith("/collective/")) {
      // over HTTP the service's fast path (no Hono) serves JSON collectives: the same answer as
      // the Hono route for the same request
      const text = typeof body === "string" ? body : JSON.stringify(body);
      const headers = { "content-type": "application/json", "content-length": String(Buffer.byteLength(text)) };
      const viaHono = await s.app.request(path, { method: "POST", headers, body: text });
      const fast = await fetch(s.url + path, { method: "POST", headers, body: text });
      expect(fast.status).toBe(viaHono.status);
      expect(fast.headers.get("content-type")).toBe(viaHono.headers.get("content-type"));
      expect(await fast.json()).toEqual(await viaHono.json());
    }
    return r;
  };
  const f32 = { dtype: "float32", shape: [2], data: [1, 2] };

  test("400 invalid_request for every kind of bad input", async () => {
    await bad("/collective/allreduce", "{not json", 400, "invalid_request", "malformed JSON");
    await bad("/collective/allreduce", "[1,2]", 400, "invalid_request");
    await bad("/collective/allreduce", { tensor: { dtype: "float8", shape: [1], data: [1] } }, 400, "invalid_request", "unknown dtype");
    await bad("/collective/allreduce", { tensor: f32, op: "mean" }, 400, "invalid_request", "unknown reduce op");
    await bad("/collective/frobnicate", {}, 400, "invalid_request", "unknown collective");
    await bad("/collective/allreduce", { tensor: { dtype: "float32", shape: [3], data: [1, 2] } }, 400, "invalid_request", "shape needs 3");
    await bad("/collective/allreduce", { tensor: { dtype: "float32", shape: [-1], data: [] } }, 400, "invalid_request");
    await bad("/collective/allreduce", { tensor: { dtype: "float32", shape: [1.5], data: [1] } }, 400, "invalid_request");
    await bad("/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [1] }, op: "avg" }, 400, "invalid_request", "avg");
    await bad("/collective/allreduce", { tensor: f32, op: "bxor" }, 400, "invalid_request", "bxor");
    await bad("/collective/allreduce", { tensor: { dtype: "int8", shape: [1], data: [300] } }, 400, "invalid_request", "int8");
    await bad("/collective/allreduce", {}, 400, "invalid_request", "tensor");
    await bad("/collective/reduce", { tensor: f32, dst: 2 }, 400, "invalid_request", "out of range");
    await bad("/collective/broadcast", { tensor: f32, src: 5 }, 400, "invalid_request", "out of range");
    await bad("/collective/broadcast", { tensor: f32 }, 400, "invalid_request", "src");
    await bad("/collective/gather", { tensor: f32, dst: -1 }, 400, "invalid_request");
    await bad("/collective/scatter", { src: 0 }, 400, "invalid_request", "tensors");
    await bad("/collective/scatter", { src: 0, tensors: [f32] }, 400, "invalid_request", "expected 2");
    await bad("/collective/reduce_scatter", { tensors: [f32, f32, f32] }, 400, "invalid_request", "expected 2");
    await bad("/collective/reduce_scatter", { tensors: [f32, { dtype: "float32", shape: [3], data: [1, 2, 3] }] }, 400, "invalid_request", "equal shapes");
    await bad("/collective/alltoall", { tensors: [f32, { dtype: "int32", shape: [1], data: [1] }] }, 400, "invalid_request", "dtype");
    await bad("/collective/allreduce", { tensor: f32, timeout_ms: 0 }, 400, "invalid_request");
    await bad("/collective/allreduce", { tensor: f32, tag: 5 }, 400, "invalid_request");
    await bad("/p2p/send", { tensor: f32, dst: 0 }, 400, "invalid_request", "itself");
    await bad("/p2p/send", { tensor: f32, dst: 9 }, 400, "invalid_request", "out of range");
    await bad("/p2p/recv", { src: "one" }, 400, "invalid_request");
    // bad input never takes the rank down
    expect((await req(s, "/health")).status).toBe(200);
  });

  test("413 too_large: body and tensor limits", async () => {
    const big = { tensor: { dtype: "float64", shape: [200], data: new Array(200).fill(1) } }; // 1600 B > 1024
    await bad("/collective/allreduce", big, 413, "too_large", "1024");
    const huge = { tensor: { dtype: "uint8", shape: [8000], data: new Array(8000).fill(1) } }; // body > 4096
    await bad("/collective/allreduce", huge, 413, "too_large");
    await bad("/collective/allreduce", { tensor: { dtype: "float32", shape: [1e9, 1e9], data: [] } }, 413, "too_large");
  });

  test("fast path: which URLs it takes (the rest go through Hono)", () => {
    expect(collectivePathOp("http://127.0.0.1:29500/collective/allreduce")).toBe("allreduce");
    expect(collectivePathOp("http://h:1/collective/reduce_scatter?x=1")).toBe("reduce_scatter");
    expect(collectivePathOp("http://h:1/collective/frobnicate")).toBe("frobnicate"); // 400 unknown collective, as via Hono
    expect(collectivePathOp("http://h:1/collective/")).toBeNull();
    expect(collectivePathOp("http://h:1/collective/allreduce/")).toBeNull();
    expect(collectivePathOp("http://h:1/collective/all%72educe")).toBeNull();
    expect(collectivePathOp("http://h:1/p2p/send")).toBeNull();
    expect(collectivePathOp("http://h:1/x/collective/allreduce")).toBeNull();
  });

  test("404 JSON for unknown routes", async () => {
    const r = await req(s, "/nope");
    expect(r.status).toBe(404);
    expect(r.body.error.code).toBe("not_found");
  });

  test("health, cluster, metrics, openapi, debug/recent", async () => {
    const h = await req(s, "/health");
    expect(h.status).toBe(200);
    expect(h.body).toMatchObject({ status: "ok", rank: 0, world_size: 2, ready: true, pid: process.pid, state: "healthy" });
    const c = await req(s, "/cluster");
    expect(c.body.epoch).toBe(1);
    expect(c.body.world_size).toBe(2);
    expect(c.body.active_ranks).toEqual([1, 1]);
    expect(c.body.ranks.map((x: any) => [x.rank, x.state])).toEqual([[0, "healthy"], [1, "healthy"]]);
    expect(c.body.ranks[1].url).toBe(w.urls[1]);
    const m = await req(s, "/metrics");
    expect(m.status).toBe(200);
    expect(m.headers.get("content-type")).toContain("text/plain");
    expect(m.body).toContain("moonring_errors_total{rank=\"0\",code=\"invalid_request\"}");
    expect(m.body).toContain("# TYPE moonring_op_latency_seconds histogram");
    const o = await req(s, "/openapi.json");
    const jsonBody = (p: string) => o.body.paths[p].post.requestBody.content["application/json"].schema.anyOf?.[0] ?? o.body.paths[p].post.requestBody.content["application/json"].schema;
    expect(o.body.openapi).toBe("3.1.0");
    for (const op of ["allreduce", "reduce", "broadcast", "allgather", "gather", "scatter", "reduce_scatter", "alltoall", "barrier"]) {
      expect(jsonBody(`/collective/${op}`).type).toBe("object");
    }
    expect(jsonBody("/collective/allreduce").properties.tensor.$ref).toBe("#/components/schemas/Tensor");
    expect(o.body.components.schemas.Tensor.properties.dtype.enum).toContain("bfloat16");
    expect(JSON.stringify(o.body)).not.toContain("$defs");
    expect(o.body.paths["/p2p/send"]).toBeDefined();
    const d = await req(s, "/debug/recent");
    expect(Array.isArray(d.body.recent)).toBe(true);
  });

  test("collective metrics and /debug/recent record outcome and timing", async () => {
    const [a, b] = await Promise.all(w.urls.map((u, r) => fetch(u + "/collective/allreduce", { method: "POST", body: JSON.stringify({ tensor: { dtype: "int32", shape: [1], data: [r] } }) })));
    expect(a!.status).toBe(200);
    expect(b!.status).toBe(200);
    const d = await req(s, "/debug/recent?limit=1");
    expect(d.body.recent[0]).toMatchObject({ op: "allreduce", outcome: "ok", dtype: "int32", count: 1, bytes: 4 });
    expect(typeof d.body.recent[0].elapsed_ms).toBe("number");
    const m = await req(s, "/metrics");
    expect(m.body).toMatch(/moonring_ops_total\{rank="0",op="allreduce",outcome="ok"\} \d+/);
  });

  test("octet-stream extension: raw bytes in and out", async () => {
    const vals = await Promise.all(
      w.urls.map((u, r) =>
        fetch(`${u}/collective/allreduce?dtype=float64&shape=2,2&op=max`, {
          method: "POST",
          headers: { "content-type": "application/octet-stream" },
          body: new Float64Array([r, -r - 1, 10 * r, 0.5]),
        }),
      ),
    );
    for (const res of vals) {
      expect(res.status).toBe(200);
      expect(res.headers.get("x-moonring-dtype")).toBe("float64");
      expect(res.headers.get("x-moonring-shape")).toBe("2,2");
      expect([...new Float64Array(await res.arrayBuffer())]).toEqual([1, -1, 10, 0.5]);
    }
    const wrong = await s.app.request("/collective/allreduce?dtype=float64&shape=3", {
      method: "POST",
      headers: { "content-type": "application/octet-stream" },
      body: new Uint8Array(8),
    });
    expect(wrong.status).toBe(400);
  });

  test("typed client: TypedArrays in and out, typed errors", async () => {
    const clients = w.urls.map((u) => new MoonringClient(u));
    const out = await Promise.all(clients.map((c, r) => c.allreduce(tensor("int64", [BigInt(r) * 10n ** 15n, -1n]), "sum")));
    for (const t of out) expect([...(t.data as BigInt64Array)]).toEqual([10n ** 15n, -2n]);
    const bf = await Promise.all(clients.map((c, r) => c.allreduce({ dtype: "bfloat16", shape: [2], data: toBFloat16([r, 1.5]) }, "max")));
    for (const t of bf) expect([...fromBFloat16(t.data as Uint16Array)]).toEqual([1, 1.5]);
    const jsonClients = w.urls.map((u) => new MoonringClient(u, { wire: "json" }));
    const g = await Promise.all(jsonClients.map((c, r) => c.allgather(tensor("bool", [r === 0, true]))));
    for (const list of g) expect(list.map((t) => [...t!.data])).toEqual([[1, 1], [0, 1]]);
    const oct = w.urls.map((u) => new MoonringClient(u, { wire: "octet" }));
    const gg = await Promise.all(oct.map((c, r) => c.gather(tensor("float32", [r, r]), 1)));
    expect(gg[0]).toBeNull();
    expect(gg[1]!.map((t) => [...t!.data])).toEqual([[0, 0], [1, 1]]);
    let err: unknown;
    try {
      await clients[0]!.allreduce(tensor("int32", [1]), "avg");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MoonringError);
    expect((err as MoonringError).code).toBe("invalid_request");
    expect((err as MoonringError).status).toBe(400);
    const sc = await Promise.all(clients.map((c, r) => c.scatter(r === 1 ? [tensor("int16", [5]), tensor("int16", [6])] : null, 1)));
    expect(sc.map((t) => [...t.data])).toEqual([[5], [6]]);
    const [, got] = await Promise.all([clients[0]!.send(tensor("float64", [Math.PI]), 1, { tag: "pi" }), clients[1]!.recv(0, { tag: "pi" })]);
    expect([...got.data]).toEqual([Math.PI]);
  });
});

describe("readiness and auth", () => {
  test("503 not_ready before rendezvous completes; /health 503 with ready:false", async () => {
    const hub = new FakeHub();
    // rank 1 of a world of 2 whose rank 0 never comes
    const s = new RankService({
      rank: 1,
      worldSize: 2,
      worldSizeMax: 2,
      masterHost: "127.0.0.1",
      masterPort: 9, // discard port: nothing listens
      host: "127.0.0.1",
      port: 0,
      device: "cpu",
      join: false,
      maxBodyBytes: DEFAULT_MAX_BODY_BYTES,
      maxTensorBytes: 1 << 20,
      rendezvousTimeoutMs: 60_000,
      dataPlaneFactory: (o) => hub.create(o),
    });
    await s.start();
    try {
      const h = await req(s, "/health");
      expect(h.status).toBe(503);
      expect(h.body).toMatchObject({ ready: false, rank: 1, world_size: 2, pid: process.pid, state: "awaiting" });
      const r = await req(s, "/collective/allreduce", { tensor: { dtype: "float32", shape: [1], data: [1] } });
      expect(r.status).toBe(503);
      expect(r.body.error.code).toBe("not_ready");
      const p = await req(s, "/p2p/recv", { src: 0 });
      expect(p.status).toBe(503);
    } finally {
      await s.stop();
    }
  });

  test("MOONRING_TOKEN: 401 without the bearer token, /health stays open", async () => {
    const w = await startInprocWorld(2, { token: "s3cret" });
    try {
      const s = w.services[0]!;
      const body = { tensor: { dtype: "float32", shape: [1], data: [1] } };
      const noAuth = await req(s, "/collective/allreduce", body);
      expect(noAuth.status).toBe(401);
      expect(noAuth.body.error.code).toBe("unauthorized");
      expect((await req(s, "/collective/allreduce", body, { authorization: "Bearer wrong" })).status).toBe(401);
      expect((await req(s, "/cluster")).status).toBe(401);
      expect((await req(s, "/health")).status).toBe(200);
      const res = await Promise.all(
        w.urls.map((u) => fetch(u + "/collective/allreduce", { method: "POST", headers: { authorization: "Bearer s3cret" }, body: JSON.stringify(body) })),
      );
      for (const r of res) expect(r.status).toBe(200);
      // the control link refuses a wrong token too
      const ws = await fetch(w.urls[0]!.replace("http", "http") + "/internal/ws?rank=1", { headers: { upgrade: "websocket", connection: "upgrade" } });
      expect(ws.status).toBe(401);
    } finally {
      await w.stop();
    }
  });
});

describe("world of 1", () => {
  let w: InprocWorld;
  beforeAll(async () => {
    w = await startInprocWorld(1);
  });
  afterAll(async () => {
    await w?.stop();
  });
  test("every op works locally without the data plane", async () => {
    const s = w.services[0]!;
    const t = { dtype: "float32", shape: [2], data: [1.5, -2] };
    for (const [op, body, want] of [
      ["allreduce", { tensor: t, op: "avg" }, t],
      ["reduce", { tensor: t, dst: 0 }, t],
      ["broadcast", { tensor: t, src: 0 }, t],
      ["allgather", { tensor: t }, [t]],
      ["gather", { tensor: t, dst: 0 }, [t]],
      ["scatter", { src: 0, tensors: [t] }, t],
      ["reduce_scatter", { tensors: [t] }, t],
      ["alltoall", { tensors: [t] }, [t]],
      ["barrier", {}, null],
    ] as [string, unknown, unknown][]) {
      const r = await req(s, `/collective/${op}`, body);
      expect(r.status).toBe(200);
      expect(r.body.op).toBe(op);
      expect(r.body.result).toEqual(want);
      expect(r.body.active_ranks).toEqual([1]);
    }
    expect(w.hub.log.length).toBe(0);
  });
});

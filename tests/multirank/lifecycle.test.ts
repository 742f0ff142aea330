// launch / serve lifecycle over real processes: ready lines, signals leaving nothing running,
// a dying rank, a killed launcher, serve with torchrun variables, rendezvous retries and
// refusals, auth, limits. Every process started here is ended here.
import { afterEach, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { freePortRange, sleep } from "../../src/util/net";
import { all, get, post } from "../support/http";
import { CLI, collect, launchWorld, pidAlive, waitGone, type LaunchedWorld } from "../support/launch-world";

const started: Subprocess[] = [];
const worlds: LaunchedWorld[] = [];

afterEach(async () => {
  for (const w of worlds.splice(0)) await w.stop().catch(() => {});
  for (const p of started.splice(0)) {
    if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    await p.exited;
  }
});

function serve(args: string[], env: Record<string, string> = {}) {
  const e: Record<string, string> = { ...(process.env as Record<string, string>), MOONRING_LOG: "info", ...env };
  for (const k of ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MOONRING_TOKEN"]) if (!(k in env)) delete e[k];
  const p = Bun.spawn([process.execPath, CLI, "serve", ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: e });
  started.push(p);
  const lines: string[] = [];
  const err = collect(p.stderr, lines);
  collect(p.stdout, []);
  return { p, stderr: err.text };
}

async function waitHealthy(url: string, timeoutMs = 30_000): Promise<any> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      const r = await get(url, "/health");
      if (r.status === 200) return r.body;
    } catch {
      // not up
    }
    if (Date.now() > until) throw new Error(`${url} not healthy in ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** The first /health answer of a service that may not listen yet (any status). */
async function waitAnswering(url: string, timeoutMs = 30_000): Promise<{ status: number; body: any }> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await get(url, "/health");
    } catch {
      // not listening yet
    }
    if (Date.now() > until) throw new Error(`${url} did not answer in ${timeoutMs} ms`);
    await sleep(50);
  }
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`no ${what} in ${timeoutMs} ms`);
    await sleep(50);
  }
}

describe("launch", () => {
  test("prints `rank R ready http://HOST:PORT` per rank; SIGTERM stops every rank", async () => {
    const w = await launchWorld(3);
    const ready = w.stdoutLines.filter((l) => / ready /.test(l));
    expect(ready).toEqual([0, 1, 2].map((r) => `rank ${r} ready http://127.0.0.1:${w.port + r}`));
    for (const [r, u] of w.urls.entries()) {
      const h = await get(u, "/health");
      expect(h.status).toBe(200);
      expect(h.body).toMatchObject({ status: "ok", rank: r, world_size: 3, ready: true, state: "healthy", pid: w.pids[r] });
    }
    const c = await get(w.urls[1]!, "/cluster");
    expect(c.body).toMatchObject({ epoch: 1, world_size: 3, active_ranks: [1, 1, 1] });
    expect(c.body.ranks.map((x: any) => x.url)).toEqual(w.urls);
    expect(new Set(w.pids).size).toBe(3);
    const code = await w.stop("SIGTERM");
    expect(code).toBe(0);
    for (const pid of w.pids) expect(pidAlive(pid)).toBe(false);
  }, 30_000);

  test("a rank that dies is reported and the other ranks keep running; SIGINT then stops the rest", async () => {
    const w = await launchWorld(3);
    worlds.push(w);
    process.kill(w.pids[2]!, "SIGKILL");
    const line = await w.waitForLine(/^rank 2 exited/);
    expect(line).toContain("ranks 0, 1 keep running");
    expect((await get(w.urls[0]!, "/health")).status).toBe(200);
    expect((await get(w.urls[1]!, "/health")).status).toBe(200);
    worlds.pop();
    expect(await w.stop("SIGINT")).toBe(0);
  }, 30_000);

  test("a SIGKILLed launcher leaves no rank behind", async () => {
    const w = await launchWorld(2);
    w.proc.kill("SIGKILL");
    await w.proc.exited;
    expect(await waitGone(w.pids, 10_000)).toEqual([]);
  }, 30_000);

  test("MOONRING_TOKEN: REST needs the bearer token; /health stays open", async () => {
    const w = await launchWorld(2, { token: "tok-123" });
    worlds.push(w);
    const body = { tensor: { dtype: "int32", shape: [1], data: [1] } };
    const denied = await post(w.urls[0]!, "/collective/allreduce", body);
    expect(denied.status).toBe(401);
    expect(denied.body.error.code).toBe("unauthorized");
    expect((await get(w.urls[0]!, "/health")).status).toBe(200);
    const ok = await Promise.all(w.urls.map((u) => post(u, "/collective/allreduce", body, { authorization: "Bearer tok-123" })));
    for (const x of ok) expect(x.body.result.data).toEqual([2]);
  }, 30_000);

  test("limits: 413 too_large over --max-tensor-bytes, and the world keeps working", async () => {
    const w = await launchWorld(2, { args: ["--max-tensor-bytes", "1K", "--max-body-bytes", "64K"] });
    worlds.push(w);
    const big = await post(w.urls[0]!, "/collective/allreduce", { tensor: { dtype: "float64", shape: [200], data: new Array(200).fill(0) } });
    expect(big.status).toBe(413);
    expect(big.body.error.code).toBe("too_large");
    const body = await post(w.urls[0]!, "/collective/allreduce", "x".repeat(70 * 1024));
    expect(body.status).toBe(413);
    const malformed = await post(w.urls[1]!, "/collective/allreduce", "{oops");
    expect(malformed.status).toBe(400);
    expect(malformed.body.error.code).toBe("invalid_request");
    const avg = await post(w.urls[1]!, "/collective/allreduce", { tensor: { dtype: "int8", shape: [1], data: [1] }, op: "avg" });
    expect(avg.status).toBe(400);
    const ok = await all(w.urls, "/collective/allreduce", (r) => ({ tensor: { dtype: "float64", shape: [2], data: [r, 1] } }));
    for (const x of ok) expect(x.body.result.data).toEqual([1, 2]);
  }, 30_000);

  test("--help for every command", async () => {
    for (const cmd of [["--help"], ["launch", "--help"], ["serve", "--help"], ["bench", "--help"]]) {
      const p = Bun.spawnSync([process.execPath, CLI, ...cmd]);
      expect(p.exitCode).toBe(0);
      expect(p.stdout.toString()).toContain("Usage");
    }
    const bad = Bun.spawnSync([process.execPath, CLI, "launch", "--nproc", "x"]);
    expect(bad.exitCode).toBe(64);
    expect(bad.stderr.toString()).toContain("--nproc must be an integer");
  });
});

describe("serve", () => {
  test("torchrun variables; a rank started before rank 0 retries with a clear log line", async () => {
    const port = await freePortRange(2);
    const env = (r: number) => ({ RANK: String(r), WORLD_SIZE: "2", MASTER_ADDR: "127.0.0.1", MASTER_PORT: String(port), MOONRING_PORT: String(port + r) });
    const r1 = serve([], env(1));
    const r1Early = await waitAnswering(`http://127.0.0.1:${port + 1}`);
    expect(r1Early.status).toBe(503);
    expect(r1Early.body).toMatchObject({ ready: false, rank: 1, state: "awaiting" });
    const early = await post(`http://127.0.0.1:${port + 1}`, "/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [1] } });
    expect(early.status).toBe(503);
    expect(early.body.error.code).toBe("not_ready");
    // rank 0 starts only once rank 1 has logged a failed attempt (the test is about the retry)
    await waitFor(() => r1.stderr().includes("waiting for rank 0"), "rank 1's retry log line");
    serve([], env(0));
    const h1 = await waitHealthy(`http://127.0.0.1:${port + 1}`);
    expect(h1).toMatchObject({ rank: 1, world_size: 2, ready: true });
    await waitHealthy(`http://127.0.0.1:${port}`);
    expect(r1.stderr()).toContain("waiting for rank 0");
    // duplicate rank and world-size disagreement are refused with a clear error
    const dup = serve(["--rank", "1", "--world-size", "2", "--master", `127.0.0.1:${port}`, "--port", "0"]);
    expect(await dup.p.exited).toBe(3);
    expect(dup.stderr()).toContain("duplicate rank 1");
    const ws = serve(["--rank", "1", "--world-size", "3", "--master", `127.0.0.1:${port}`, "--port", "0"]);
    expect(await ws.p.exited).toBe(3);
    expect(ws.stderr()).toContain("world size disagreement");
    // the original world still works
    const res = await all([`http://127.0.0.1:${port}`, `http://127.0.0.1:${port + 1}`], "/collective/allreduce", (r) => ({ tensor: { dtype: "int64", shape: [1], data: [String(r + 1)] } }));
    for (const x of res) expect(x.body.result.data).toEqual(["3"]);
  }, 30_000);

  test("launch --max-world-size leaves free slots; serve --join waits in awaiting; lists have null for inactive slots", async () => {
    const w = await launchWorld(2, { args: ["--max-world-size", "3"] });
    worlds.push(w);
    const j = serve(["--rank", "2", "--world-size", "3", "--master", `127.0.0.1:${w.port}`, "--port", String(w.port + 2), "--join"]);
    const url2 = `http://127.0.0.1:${w.port + 2}`;
    const until = Date.now() + 20_000;
    let c: any;
    for (;;) {
      c = (await get(w.urls[1]!, "/cluster")).body;
      if (c.ranks.length === 3 || Date.now() > until) break;
      await sleep(50);
    }
    expect(c).toMatchObject({ epoch: 2, world_size: 3, active_ranks: [1, 1, 0] });
    expect(c.ranks[2]).toMatchObject({ rank: 2, state: "awaiting", active: false });
    const h = await get(url2, "/health");
    expect(h.status).toBe(503);
    expect(h.body).toMatchObject({ rank: 2, ready: false, state: "awaiting" });
    expect((await post(url2, "/collective/barrier", {})).body.error.code).toBe("not_ready");
    const ag = await all(w.urls, "/collective/allgather", (r) => ({ tensor: { dtype: "int32", shape: [1], data: [r] } }));
    for (const x of ag) {
      expect(x.status).toBe(200);
      expect(x.body.active_ranks).toEqual([1, 1, 0]);
      expect(x.body.result[2]).toBeNull();
      expect(x.body.result[1].data).toEqual([1]);
    }
    j.p.kill("SIGTERM");
    expect(await j.p.exited).toBe(0);
  }, 30_000);
});

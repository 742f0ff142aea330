// Helpers for the fault-tolerance suites (tests/fault): real rank processes (launch, serve
// --join), kill -9, waiting for rank 0's view to reach every rank, and references computed
// over the ranks a response says contributed. Every process started here is ended by cleanup().
import type { Subprocess } from "bun";
import { sleep } from "../../src/util/net";
import { get, post, type Reply } from "./http";
import { CLI, collect, launchWorld, pidAlive, waitGone, type LaunchedWorld } from "./launch-world";
import type { NetnsWorld } from "./netns-world";

export interface Joiner {
  rank: number;
  url: string;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  stderr: () => string;
}

/** Owns the worlds and joiners of a test file; cleanup() ends all of them. */
export class Harness {
  private worlds: LaunchedWorld[] = [];
  private procs: Subprocess[] = [];
  private stopped: number[] = [];

  async launch(n: number, args: string[] = [], env: Record<string, string> = {}): Promise<LaunchedWorld> {
    const w = await launchWorld(n, { args, env });
    this.worlds.push(w);
    return w;
  }

  /** `serve --rank R --join` against world w (a replacement for a dead slot, or a new rank). */
  join(w: LaunchedWorld, rank: number, worldSize: number, extra: string[] = [], opts: { join?: boolean } = {}): Joiner {
    if ("spawnRank" in w) {
      // A world in network namespaces (MOONRING_TEST_NETNS): the rank starts in its own.
      const j = (w as NetnsWorld).spawnRank(rank, worldSize, extra, opts.join !== false);
      return { rank, url: j.url, proc: j.proc as unknown as Joiner["proc"], stderr: j.stderr };
    }
    const env: Record<string, string> = { ...(process.env as Record<string, string>), MOONRING_LOG: process.env.MOONRING_LOG ?? "warn" };
    for (const k of ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MOONRING_TOKEN"]) delete env[k];
    const port = w.port + rank;
    const proc = Bun.spawn(
      [process.execPath, CLI, "serve", "--rank", String(rank), "--world-size", String(worldSize), "--master", `127.0.0.1:${w.port}`, "--port", String(port), ...(opts.join === false ? [] : ["--join"]), ...extra],
      { stdin: "ignore", stdout: "pipe", stderr: "pipe", env },
    );
    this.procs.push(proc);
    const lines: string[] = [];
    const err = collect(proc.stderr, lines);
    collect(proc.stdout, []);
    return { rank, url: `http://127.0.0.1:${port}`, proc, stderr: err.text };
  }

  /** SIGSTOP (a hung rank); cleanup() kills it. */
  stop(pid: number): void {
    this.stopped.push(pid);
    process.kill(pid, "SIGSTOP");
  }

  async cleanup(): Promise<void> {
    for (const pid of this.stopped.splice(0)) if (pidAlive(pid)) process.kill(pid, "SIGKILL");
    for (const p of this.procs.splice(0)) {
      if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
      await p.exited;
    }
    for (const w of this.worlds.splice(0)) await w.stop().catch((e) => console.error(`cleanup: ${(e as Error).message}`));
  }
}

export function kill9(pid: number): void {
  process.kill(pid, "SIGKILL");
}

export async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 20_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    let v: T | null | undefined | false = null;
    try {
      v = await fn();
    } catch {
      v = null;
    }
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

export async function cluster(url: string): Promise<any> {
  return (await get(url, "/cluster")).body;
}

/** Waits until every url's /cluster shows `rank` in `state`. */
export async function waitState(urls: string[], rank: number, state: string, timeoutMs = 20_000): Promise<void> {
  await waitFor(
    `rank ${rank} ${state} on ${urls.join(", ")}`,
    async () => {
      for (const u of urls) {
        const c = await cluster(u);
        if (c.ranks.find((r: any) => r.rank === rank)?.state !== state) return false;
      }
      return true;
    },
    timeoutMs,
  );
}

/**
 * Waits until the coordinator at `coordUrl` holds `count` collectives that every rank of `ranks`
 * has joined (their calls wait in agreement): a kill after this hits calls in flight, with no
 * fixed sleep that may be too short under load.
 */
export async function waitJoined(coordUrl: string, ranks: number[], count = 1, timeoutMs = 20_000): Promise<void> {
  await waitFor(
    `ranks ${ranks.join(", ")} to wait in ${count} collective(s) at ${coordUrl}`,
    async () => {
      const pending = ((await get(coordUrl, "/debug/recent?limit=1")).body?.pending ?? []) as { joined: number[] }[];
      return pending.filter((c) => ranks.every((r) => c.joined.includes(r))).length >= count;
    },
    timeoutMs,
  );
}

/** Waits until `url` answers /health with `state`. */
export async function waitHealth(url: string, state: string, timeoutMs = 20_000): Promise<any> {
  return waitFor(`${url} /health state ${state}`, async () => {
    const h = await get(url, "/health");
    return h.body?.state === state ? h.body : null;
  }, timeoutMs);
}

/** Random int32 vector in [-1000, 1000). */
export function randInts(n: number): number[] {
  return Array.from({ length: n }, () => Math.floor(Math.random() * 2000) - 1000);
}

export function i32(data: number[]): { dtype: "int32"; shape: number[]; data: number[] } {
  return { dtype: "int32", shape: [data.length], data };
}

/** Elementwise sum of inputs[c] over the contributors (exact in int32 for these ranges). */
export function sumOver(inputs: (number[] | undefined)[], contributors: number[]): number[] {
  const n = inputs.find((x) => x)!.length;
  const out = new Array<number>(n).fill(0);
  for (const c of contributors) for (let i = 0; i < n; i++) out[i]! += inputs[c]![i]!;
  return out;
}

export function expectOk(replies: Reply[], what: string): any[] {
  replies.forEach((x, i) => {
    if (x.status !== 200) throw new Error(`${what}: call ${i} got ${x.status}: ${JSON.stringify(x.body).slice(0, 400)}`);
  });
  return replies.map((x) => x.body);
}

export { get, post, waitGone, pidAlive };

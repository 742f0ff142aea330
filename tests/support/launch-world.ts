// Real rank processes for multi-rank tests: `bun src/cli.ts launch` on free loopback ports.
// stop() ends the launcher and checks that every rank process is gone.
import type { Subprocess } from "bun";
import { freePortRange, sleep } from "../../src/util/net";
import { launchNetnsWorld, netnsLayout } from "./netns-world";

export const ROOT = new URL("../../", import.meta.url).pathname;
export const CLI = `${ROOT}src/cli.ts`;

export interface LaunchedWorld {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  urls: string[];
  pids: number[];
  port: number;
  stdoutLines: string[];
  stderrText: () => string;
  waitForLine: (re: RegExp, timeoutMs?: number) => Promise<string>;
  stop: (signal?: "SIGTERM" | "SIGINT") => Promise<number>;
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function waitGone(pids: number[], timeoutMs = 8000): Promise<number[]> {
  const until = Date.now() + timeoutMs;
  let alive = pids.filter(pidAlive);
  while (alive.length && Date.now() < until) {
    await sleep(50);
    alive = alive.filter(pidAlive);
  }
  return alive;
}

/** Reads a stream line by line into `lines` (and a text buffer). */
export function collect(stream: ReadableStream<Uint8Array>, lines: string[], onLine?: () => void): { text: () => string } {
  let buf = "";
  let all = "";
  void (async () => {
    const dec = new TextDecoder();
    for await (const chunk of stream) {
      const s = dec.decode(chunk, { stream: true });
      all += s;
      buf += s;
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        onLine?.();
      }
    }
  })().catch(() => {});
  return { text: () => all };
}

export async function launchWorld(
  n: number,
  opts: { args?: string[]; env?: Record<string, string>; token?: string; readyTimeoutMs?: number } = {},
): Promise<LaunchedWorld> {
  // MOONRING_TEST_NETNS: the ranks in network namespaces as separate hosts (tests/support/netns-world.ts).
  const layout = netnsLayout();
  if (layout) return launchNetnsWorld(n, layout, opts);
  const port = await freePortRange(n);
  const env: Record<string, string> = { ...(process.env as Record<string, string>), MOONRING_LOG: process.env.MOONRING_LOG ?? "warn", ...opts.env };
  if (opts.token) env.MOONRING_TOKEN = opts.token;
  else delete env.MOONRING_TOKEN;
  const proc = Bun.spawn([process.execPath, CLI, "launch", "--nproc", String(n), "--port", String(port), ...(opts.args ?? [])], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env,
  });
  const stdoutLines: string[] = [];
  let wake: (() => void) | null = null;
  collect(proc.stdout, stdoutLines, () => wake?.());
  const errLines: string[] = [];
  const err = collect(proc.stderr, errLines);
  const waitForLine = async (re: RegExp, timeoutMs = 30_000) => {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const hit = stdoutLines.find((l) => re.test(l));
      if (hit) return hit;
      if (proc.exitCode !== null) throw new Error(`launch exited (${proc.exitCode}) before printing ${re}; stderr:\n${err.text()}`);
      if (Date.now() > until) throw new Error(`launch did not print ${re} within ${timeoutMs} ms; stdout:\n${stdoutLines.join("\n")}\nstderr:\n${err.text()}`);
      await Promise.race([new Promise<void>((r) => (wake = r)), sleep(100)]);
    }
  };
  const headers: Record<string, string> = opts.token ? { authorization: `Bearer ${opts.token}` } : {};
  try {
    for (let r = 0; r < n; r++) await waitForLine(new RegExp(`^rank ${r} ready `), opts.readyTimeoutMs ?? 60_000);
  } catch (e) {
    proc.kill("SIGKILL");
    throw e;
  }
  const urls = Array.from({ length: n }, (_, r) => `http://127.0.0.1:${port + r}`);
  const pids = await Promise.all(urls.map(async (u) => ((await (await fetch(u + "/health", { headers })).json()) as { pid: number }).pid));
  const stop = async (signal: "SIGTERM" | "SIGINT" = "SIGTERM") => {
    if (proc.exitCode === null) proc.kill(signal);
    const code = await Promise.race([proc.exited, sleep(10_000).then(() => -1)]);
    if (code === -1) proc.kill("SIGKILL");
    const left = await waitGone(pids);
    for (const pid of left) process.kill(pid, "SIGKILL");
    if (left.length) throw new Error(`rank processes still running after launch stopped: ${left.join(", ")}`);
    return code;
  };
  return { proc, urls, pids, port, stdoutLines, stderrText: err.text, waitForLine, stop };
}

// Issue 18 item 9: ranks whose stderr pipe closes (`launch ... | head -2`) keep serving and stop
// on SIGTERM. Before the fix, every log line's EPIPE became an uncaught exception whose handler
// logged again: the rank spun at 100% CPU, stopped answering and ignored SIGTERM.
import { expect, test } from "bun:test";
import { freePortRange, sleep } from "../../src/util/net";
import { CLI, collect, pidAlive, waitGone } from "../support/launch-world";

process.env.MOONRING_LOG ??= "warn";

async function until<T>(what: string, deadlineMs: number, probe: () => Promise<T | null>): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await probe().catch(() => null);
    if (v !== null) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${deadlineMs} ms`);
    await sleep(50);
  }
}

/** The launcher's children (its rank processes), as the kernel lists them. */
function childPids(pid: number): number[] {
  try {
    return require("node:fs").readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

test("a world whose stderr reader went away keeps serving and stops on SIGTERM", async () => {
  const port = await freePortRange(2);
  const env = { ...(process.env as Record<string, string>), MOONRING_LOG: "info" }; // info: lines at every start
  const proc = Bun.spawn([process.execPath, CLI, "launch", "--nproc", "2", "--port", String(port)], { stdin: "ignore", stdout: "pipe", stderr: "pipe", env });
  const urls = [0, 1].map((r) => `http://127.0.0.1:${port + r}`);
  let pids: number[] = [];
  const ranks = new Set<number>();
  const watch = setInterval(() => childPids(proc.pid).forEach((p) => ranks.add(p)), 20);
  try {
    // read the first chunk of stderr, then close the pipe's read end (as `| head -1` does)
    const reader = proc.stderr.getReader();
    await reader.read();
    await reader.cancel();
    const lines: string[] = [];
    collect(proc.stdout, lines);
    await until("both ranks ready", 60_000, async () => (lines.some((l) => l.startsWith("rank 1 ready")) && lines.some((l) => l.startsWith("rank 0 ready")) ? true : null));
    pids = await Promise.all(urls.map(async (u) => ((await (await fetch(u + "/health", { signal: AbortSignal.timeout(5000) })).json()) as { pid: number }).pid));
    // they answer collectives (and log while doing so: warn lines go to the dead pipe too)
    const res = await Promise.all(
      urls.map((u, r) =>
        fetch(u + "/collective/allreduce", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ tensor: { dtype: "int32", shape: [2], data: [r + 1, 10 * (r + 1)] } }),
          signal: AbortSignal.timeout(20_000),
        }).then((x) => x.json() as Promise<{ result: { data: number[] } }>),
      ),
    );
    for (const r of res) expect(r.result.data).toEqual([3, 30]);
    // a bad request makes a rank log an error line: it must still answer afterwards
    await fetch(urls[0] + "/collective/allreduce", { method: "POST", body: "{", signal: AbortSignal.timeout(5000) });
    expect((await fetch(urls[0] + "/health", { signal: AbortSignal.timeout(5000) })).status).toBe(200);
    proc.kill("SIGTERM");
    const code = await Promise.race([proc.exited, sleep(15_000).then(() => "stuck")]);
    expect(code).toBe(0);
    expect(await waitGone(pids, 10_000)).toEqual([]);
  } finally {
    clearInterval(watch);
    childPids(proc.pid).forEach((p) => ranks.add(p));
    if (proc.exitCode === null) proc.kill("SIGKILL");
    for (const pid of new Set([...pids, ...ranks])) if (pidAlive(pid)) process.kill(pid, "SIGKILL");
  }
}, 120_000);

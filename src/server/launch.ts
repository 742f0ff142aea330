// `moonring launch`: N `serve` children on this host (rank r on port P + r), in the foreground.
// Prints `rank R ready http://HOST:PORT` per rank once the world is ready; forwards SIGINT/
// SIGTERM and leaves nothing running; when a rank dies after startup the others keep running
// and the launcher says so. Children watch their stdin pipe, so even a SIGKILLed launcher
// leaves no ranks behind.
import type { Subprocess } from "bun";
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { writeLine } from "../util/log";
import { httpUrl, sleep } from "../util/net";

/**
 * A rank's host buffers are /dev/shm files named moonring-arena-PID-N (zig/src/transport/arena.zig):
 * a rank that exits cleanly removes them, one killed (kill -9) cannot, so its launcher does.
 * (Any engine start on the host also sweeps the files of dead pids.)
 */
function removeSharedFilesOf(pid: number): void {
  const prefix = `moonring-arena-${pid}-`;
  let names: string[] = [];
  try {
    names = readdirSync("/dev/shm");
  } catch {
    return; // no /dev/shm: nothing was shared
  }
  for (const name of names) if (name.startsWith(prefix)) rmSync(`/dev/shm/${name}`, { force: true });
}

export interface LaunchOptions {
  nproc: number;
  port: number;
  host: string;
  device: "cpu" | "cuda";
  maxWorldSize: number;
  readyTimeoutMs: number;
  /** Extra flags passed to every serve child. */
  serveArgs: string[];
  cliPath: string;
}

/**
 * Secure by default: without MOONRING_TOKEN, the job gets a fresh secret of its own. Its ranks
 * use it for the data-plane handshake and REST; processes of this user on this host may call
 * REST without it (MOONRING_LOCAL_USER_AUTH: they could read it from the ranks' environment
 * anyway); anyone else needs it: it is in a file only this user can read.
 */
function jobSecret(port: number, nproc: number): { env: Record<string, string>; tokenFile: string | null; files: string[] } {
  const given = process.env.MOONRING_TOKEN;
  if (given) return { env: { MOONRING_TOKEN: given }, tokenFile: null, files: [] };
  const token = randomBytes(32).toString("hex");
  const tokenFile = launchTokenFile(port);
  const dir = dirname(tokenFile);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = statSync(dir);
  if (st.uid !== process.getuid?.() || (st.mode & 0o077) !== 0) throw new Error(`${dir} must be a private directory of this user (mode 0700)`);
  // one file per rank port: a client of any rank (MoonringClient) finds it by its URL
  const files = Array.from({ length: nproc }, (_, r) => launchTokenFile(port + r));
  for (const f of files) writeFileSync(f, token + "\n", { mode: 0o600 });
  return { env: { MOONRING_TOKEN: token, MOONRING_LOCAL_USER_AUTH: "1" }, tokenFile, files };
}

/** Where launch keeps the secret of the job whose rank 0 serves on `port` (this user only). */
export function launchTokenFile(port: number): string {
  return join(process.env.XDG_RUNTIME_DIR || tmpdir(), `moonring-${process.getuid?.() ?? "user"}`, `launch-${port}.token`);
}

/**
 * The secret of a job launched by this user on this host with rank 0 on `port` (serve --join
 * next to a launched job finds it by itself), or null. Only a file of this user, mode 0600.
 */
export function readLaunchToken(port: number): string | null {
  const file = launchTokenFile(port);
  try {
    const st = statSync(file);
    if (st.uid !== process.getuid?.() || (st.mode & 0o077) !== 0) return null;
    const token = readFileSync(file, "utf8").trim();
    return /^[0-9a-f]{64}$/.test(token) ? token : null;
  } catch {
    return null;
  }
}

export async function launchMain(o: LaunchOptions): Promise<number> {
  const children: (Subprocess<"pipe", "inherit", "inherit"> | null)[] = [];
  const alive = new Set<number>();
  let shuttingDown = false;
  let ready = false;
  const connectHost = o.host === "0.0.0.0" ? "127.0.0.1" : o.host === "::" ? "::1" : o.host;
  const say = (line: string) => writeLine(process.stdout, line + "\n");
  const warn = (line: string) => writeLine(process.stderr, `moonring launch: ${line}\n`);

  let resolveDone!: (code: number) => void;
  const done = new Promise<number>((r) => (resolveDone = r));
  const secret = jobSecret(o.port, o.nproc);
  if (secret.tokenFile) {
    warn(`a per-job token guards the data plane and REST (MOONRING_TOKEN in ${secret.tokenFile}; this user's local processes need none)`);
    void done.then(() => secret.files.forEach((f) => rmSync(f, { force: true })));
  }

  const shutdown = async (why: string, code: number) => {
    if (shuttingDown) return;
    shuttingDown = true;
    if (why) warn(`${why}; stopping ${alive.size} rank${alive.size === 1 ? "" : "s"}`);
    for (const r of alive) children[r]?.kill("SIGTERM");
    const until = Date.now() + 5000;
    while (alive.size > 0 && Date.now() < until) await sleep(25);
    for (const r of alive) {
      warn(`rank ${r} did not stop in 5 s; killing it`);
      children[r]?.kill("SIGKILL");
    }
    await Promise.all(children.map((c) => c?.exited));
    resolveDone(code);
  };
  process.on("SIGINT", () => void shutdown("SIGINT", 0));
  process.on("SIGTERM", () => void shutdown("SIGTERM", 0));

  for (let r = 0; r < o.nproc; r++) {
    const args = serveCommand(o, r, connectHost);
    // one host: local rank = rank, as torchrun sets them (the GPU choice reads them)
    const env = { ...process.env, ...secret.env, LOCAL_RANK: String(r), LOCAL_WORLD_SIZE: String(o.nproc) };
    const child = Bun.spawn(args, { stdin: "pipe", stdout: "inherit", stderr: "inherit", env });
    children.push(child);
    alive.add(r);
    void child.exited.then((code) => {
      alive.delete(r);
      removeSharedFilesOf(child.pid);
      if (shuttingDown) return;
      const how = child.signalCode ? `signal ${child.signalCode}` : `code ${code}`;
      if (!ready) {
        void shutdown(`rank ${r} (pid ${child.pid}) exited with ${how} before the world was ready`, 1);
        return;
      }
      const rest = [...alive].sort((a, b) => a - b);
      say(`rank ${r} exited (pid ${child.pid}, ${how}); ${rest.length ? `ranks ${rest.join(", ")} keep running` : "no ranks left"}`);
      if (rest.length === 0) void shutdown("", 1);
    });
  }

  // Wait for every rank's /health to say ready.
  const urls = Array.from({ length: o.nproc }, (_, r) => httpUrl(connectHost, o.port + r));
  const shown = Array.from({ length: o.nproc }, (_, r) => httpUrl(o.host, o.port + r));
  const headers: Record<string, string> = { authorization: `Bearer ${secret.env.MOONRING_TOKEN}` };
  const missing = await waitReady(urls, headers, o.readyTimeoutMs, () => shuttingDown);
  if (missing.length > 0) void shutdown(`ranks ${missing.join(", ")} not ready after ${Math.round(o.readyTimeoutMs / 1000)} s`, 1);
  if (!shuttingDown) {
    ready = true;
    for (let r = 0; r < o.nproc; r++) say(`rank ${r} ready ${shown[r]}`);
  }
  return done;
}

/** The `moonring serve` command line of rank r. */
function serveCommand(o: LaunchOptions, r: number, connectHost: string): string[] {
  return [
    process.execPath,
    o.cliPath,
    "serve",
    "--rank", String(r),
    "--world-size", String(o.nproc),
    "--master", `${o.host.includes(":") ? `[${connectHost}]` : connectHost}:${o.port}`,
    "--port", String(o.port + r),
    "--host", o.host,
    "--device", o.device,
    "--exit-with-parent",
    ...(o.maxWorldSize !== o.nproc ? ["--max-world-size", String(o.maxWorldSize)] : []),
    ...o.serveArgs,
  ];
}

/**
 * Polls every rank's /health until all say ready, or `stopped()`; returns the ranks still not
 * ready when the timeout passed (empty otherwise).
 */
async function waitReady(urls: string[], headers: Record<string, string>, timeoutMs: number, stopped: () => boolean): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  const isReady = new Array<boolean>(urls.length).fill(false);
  while (!stopped() && isReady.some((x) => !x)) {
    if (Date.now() > deadline) return isReady.flatMap((x, r) => (x ? [] : [r]));
    await Promise.all(
      urls.map(async (u, r) => {
        if (isReady[r]) return;
        try {
          const res = await fetch(`${u}/health`, { headers, signal: AbortSignal.timeout(2000) });
          const body = (await res.json()) as { ready?: boolean };
          if (res.status === 200 && body.ready) isReady[r] = true;
        } catch {
          // not up yet
        }
      }),
    );
    if (isReady.some((x) => !x)) await sleep(50);
  }
  return [];
}

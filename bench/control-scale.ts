// Coordination cost vs world size (issue 20 item 4): the time of one small collective (an
// 8-byte int32 allreduce, and a barrier) when every rank calls it at once over REST, for
//   - in-process worlds (N rank services in this process, fake data plane: control plane only),
//   - real rank processes (`launch`, the native data plane),
// next to the same harness's floor: every rank answering a trivial GET (/livez) at once.
// In-process worlds also report the coordinator's own share: the time rank 0's control-link
// handler spends per allreduce (parsing the N joins, matching, encoding and sending the N
// decisions), the part a hierarchy of coordinators would split.
// Usage: bun bench/control-scale.ts [--inproc 16,64,256,1024] [--procs 2,4,8] [--iters 20]
// Prints one JSON line per point and a markdown table.
import type { ServerWebSocket } from "bun";
import type { LinkData } from "../src/control/hub";
import type { RankService } from "../src/server/service";
import { startInprocWorld } from "../tests/support/inproc-world";
import { launchWorld } from "../tests/support/launch-world";

process.env.MOONRING_LOG ??= "error";
// One process fetches from every rank at once: Bun allows 256 concurrent requests unless told
// (read at start-up), which queued a 1,024-rank world's calls and measured the queue.
if (!process.env.BUN_CONFIG_MAX_HTTP_REQUESTS) {
  const p = Bun.spawn([process.execPath, ...process.argv.slice(1)], { env: { ...process.env, BUN_CONFIG_MAX_HTTP_REQUESTS: "8192" }, stdio: ["inherit", "inherit", "inherit"] });
  process.exit(await p.exited);
}

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : dflt;
}
const list = (s: string) => (s ? s.split(",").map(Number).filter((x) => x > 0) : []);
const iters = Number(arg("iters", "20"));

async function timeAll(urls: string[], path: string, body: ((r: number) => unknown) | null): Promise<number> {
  const t0 = performance.now();
  const res = await Promise.all(
    urls.map((u, r) =>
      body === null
        ? fetch(u + path)
        : fetch(u + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body(r)) }),
    ),
  );
  const ms = performance.now() - t0;
  for (const x of res) {
    if (x.status !== 200) throw new Error(`${path}: ${x.status} ${await x.text()}`);
    await x.arrayBuffer();
  }
  return ms;
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

interface Point {
  kind: "inproc" | "procs";
  n: number;
  allreduce_ms: number;
  barrier_ms: number;
  livez_ms: number;
  /** In-process only: rank 0's control-link handler time per allreduce. */
  coordinator_ms: number | null;
}

/** Sums the time rank 0's hub spends handling control-link messages (in-process worlds). */
function coordinatorClock(svc: RankService | undefined): (() => number) | null {
  const ws = svc?.hub?.websocket;
  if (!ws) return null;
  const handle = ws.message;
  let ms = 0;
  (ws as { message: typeof handle }).message = (s: ServerWebSocket<LinkData>, text: string | Buffer) => {
    const t0 = performance.now();
    handle(s, text);
    ms += performance.now() - t0;
  };
  return () => {
    const v = ms;
    ms = 0;
    return v;
  };
}

async function measure(kind: Point["kind"], urls: string[], coordinator: RankService | undefined): Promise<Point> {
  const n = urls.length;
  const allreduce = (r: number) => ({ tensor: { dtype: "int32", shape: [2], data: [r, 1] } });
  for (let i = 0; i < 3; i++) await timeAll(urls, "/collective/barrier", () => ({}));
  const clock = coordinatorClock(coordinator);
  const a: number[] = [];
  const b: number[] = [];
  const l: number[] = [];
  const c: number[] = [];
  for (let i = 0; i < iters; i++) {
    clock?.();
    a.push(await timeAll(urls, "/collective/allreduce", allreduce));
    if (clock) c.push(clock());
    b.push(await timeAll(urls, "/collective/barrier", () => ({})));
    l.push(await timeAll(urls, "/livez", null));
  }
  const p: Point = { kind, n, allreduce_ms: median(a), barrier_ms: median(b), livez_ms: median(l), coordinator_ms: clock ? median(c) : null };
  console.log(JSON.stringify(p));
  return p;
}

const points: Point[] = [];
for (const n of list(arg("inproc", "16,64,256"))) {
  const t0 = performance.now();
  const w = await startInprocWorld(n, { heartbeatThread: false, heartbeatIntervalMs: 5000, heartbeatTimeoutMs: 600_000, rendezvousTimeoutMs: 600_000 });
  console.error(`in-process world of ${n}: ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  points.push(await measure("inproc", w.urls, w.services[0]));
  await w.stop();
}
for (const n of list(arg("procs", "2,4,8"))) {
  const w = await launchWorld(n, { readyTimeoutMs: 120_000 });
  try {
    points.push(await measure("procs", w.urls, undefined));
  } finally {
    await w.stop();
  }
}
console.log("\n| world | ranks | allreduce 8 B (ms) | barrier (ms) | GET /livez on every rank (ms) | allreduce / livez | coordinator per allreduce (ms) |");
console.log("|---|---:|---:|---:|---:|---:|---:|");
for (const p of points) {
  const co = p.coordinator_ms === null ? "—" : p.coordinator_ms.toFixed(2);
  console.log(`| ${p.kind === "inproc" ? "in-process, fake data plane" : "processes, native data plane"} | ${p.n} | ${p.allreduce_ms.toFixed(2)} | ${p.barrier_ms.toFixed(2)} | ${p.livez_ms.toFixed(2)} | ${(p.allreduce_ms / p.livez_ms).toFixed(2)} | ${co} |`);
}
process.exit(0);

// A world of N rank services in one process (fake data plane) running every collective once,
// each checked exactly; exits 0 when all match. Run by tests/scale/world-1024.test.ts in a
// child process because every rank's call waits for all the others, so the client needs one
// connection per rank at once: Bun's fetch allows BUN_CONFIG_MAX_HTTP_REQUESTS (256 unless set
// at process start) and queues the rest.
// Usage: Malloc=1 BUN_CONFIG_MAX_HTTP_REQUESTS=8192 bun tests/support/scale-world.ts N
//
// The parent starts it with Malloc=1: with Bun's own allocator its ~3.5 GB heap shreds into
// tens of thousands of memory maps and, at vm.max_map_count, the process spins in madvise for
// good (tests/support/vm-maps.ts). Its progress lines and summary give its map count.
// MOONRING_SCALE_TAKE_MAPS=45000 takes that many map slots first: without Malloc=1 the world
// then hangs in the same livelock every run (the reproduction), with it it passes.
import { startInprocWorld } from "./inproc-world";
import { mapCount, mapLimit, takeMapSlots } from "./vm-maps";

process.env.MOONRING_LOG ??= "error";
const N = Number(process.argv[2] ?? 1024);

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`world of ${N}: ${what}`);
}
const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
const i32 = (data: number[]) => ({ dtype: "int32", shape: [data.length], data });

const takeMaps = Number(process.env.MOONRING_SCALE_TAKE_MAPS ?? 0);
if (takeMaps > 0) await takeMapSlots(takeMaps);
const limit = mapLimit();
/** The most memory maps this process had at a progress line (the parent checks it against the limit). */
let mapsMax = 0;

const t0 = performance.now();
// progress on stderr: the parent shows its tail when this process fails or has to be killed
const progress = (what: string) => {
  const maps = mapCount();
  mapsMax = Math.max(mapsMax, maps);
  process.stderr.write(`[scale-world ${Math.round(performance.now() - t0)} ms] ${what} (${maps} of ${limit} memory maps)\n`);
};
progress(`starting ${N} ranks${takeMaps > 0 ? ` (${takeMaps} map slots taken)` : ""}${process.env.Malloc === "1" ? "" : "; no Malloc=1: this may hang (see above)"}`);
const w = await startInprocWorld(N, { heartbeatThread: false, heartbeatIntervalMs: 5000, heartbeatTimeoutMs: 600_000, rendezvousTimeoutMs: 240_000 });
const startMs = performance.now() - t0;
progress("ready");
const times: Record<string, number> = {};
/** A call's answer is an error long before the parent's deadline (tests/scale/world-1024.test.ts). */
const callTimeoutMs = 120_000;

async function all(path: string, body: (r: number) => unknown): Promise<any[]> {
  const t = performance.now();
  progress(`${path}: ${N} calls`);
  const pending = new Set(w.urls.keys());
  // A call that never answers shows up here (which ranks, how many) instead of as a silent hang.
  const watch = setInterval(() => progress(`${path}: ${pending.size} calls unanswered, ranks ${[...pending].slice(0, 8).join(",")}...`), 30_000);
  try {
    const res = await Promise.all(
      w.urls.map((u, r) =>
        fetch(u + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body(r)), signal: AbortSignal.timeout(callTimeoutMs) })
          .then(async (x) => ({ status: x.status, body: (await x.json()) as any }))
          .catch((e: Error) => {
            throw new Error(`world of ${N}: ${path}: rank ${r}: ${e.name}: ${e.message}`);
          })
          .finally(() => pending.delete(r)),
      ),
    );
    times[path.slice(12)] = Math.round(performance.now() - t);
    const bad = res.findIndex((x) => x.status !== 200);
    if (bad >= 0) throw new Error(`world of ${N}: ${path}: rank ${bad} got ${res[bad]!.status}: ${JSON.stringify(res[bad]!.body).slice(0, 300)}`);
    return res.map((x) => x.body);
  } finally {
    clearInterval(watch);
  }
}
const firsts = (list: any[]) => list.map((t) => t.data[0]);
const range = (f: (i: number) => number) => Array.from({ length: N }, (_, i) => f(i));

try {
  const s = (N * (N - 1)) / 2;
  for (const b of await all("/collective/allreduce", (r) => ({ tensor: i32([r, 1, -r]) }))) check(same(b.result.data, [s, N, -s]) && b.contributors.length === N, "allreduce");
  const rd = await all("/collective/reduce", (r) => ({ tensor: i32([r % 100, -r]), op: "max", dst: N - 1 }));
  check(same(rd[N - 1].result.data, [Math.min(99, N - 1), 0]), "reduce");
  for (const b of await all("/collective/broadcast", (r) => ({ tensor: i32(r === N - 3 ? [7, 77, 777] : [0, 0, 0]), src: N - 3 }))) check(same(b.result.data, [7, 77, 777]), "broadcast");
  const ag = await all("/collective/allgather", (r) => ({ tensor: i32([r * 3]) }));
  for (const b of [ag[0], ag[N >> 1], ag[N - 1]]) check(same(firsts(b.result), range((r) => r * 3)), "allgather");
  const ga = await all("/collective/gather", (r) => ({ tensor: i32([r + 1]), dst: 5 }));
  check(same(firsts(ga[5].result), range((r) => r + 1)), "gather");
  const sc = await all("/collective/scatter", (r) => (r === N - 2 ? { src: N - 2, tensors: range((i) => i).map((i) => i32([i * 2, 1])) } : { src: N - 2 }));
  sc.forEach((b, r) => check(same(b.result.data, [r * 2, 1]), `scatter to ${r}`));
  const rs = await all("/collective/reduce_scatter", (r) => ({ tensors: range((i) => r + i).map((v) => i32([v])) }));
  rs.forEach((b, i) => check(same(b.result.data, [s + N * i]), `reduce_scatter ${i}`));
  const aa = await all("/collective/alltoall", (i) => ({ tensors: range((j) => i * N + j).map((v) => i32([v])) }));
  for (const j of [0, N >> 2, N - 1]) check(same(firsts(aa[j].result), range((i) => i * N + j)), `alltoall to ${j}`);
  for (const b of await all("/collective/barrier", () => ({}))) check(b.result === null, "barrier");
  progress("all checked");
  console.log(JSON.stringify({ ranks: N, start_ms: Math.round(startMs), ms: times, maps_max: mapsMax, map_limit: limit, maps_taken: takeMaps }));
} finally {
  progress("stopping");
  await w.stop();
  progress("stopped");
}
process.exit(0);

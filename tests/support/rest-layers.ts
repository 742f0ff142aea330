// Where an 8-byte REST allreduce spends its time, layer by layer, in one run (issue 12):
//   bun tests/support/rest-layers.ts [iterations] [rounds]
// 2 ranks (`launch`, native engine, each also on a Unix socket) and an HTTP echo server per
// rank; one client process drives both ranks at once (Promise.all per iteration, keep-alive
// fetch), like `bench --via rest`. Each variant adds one layer to the previous one:
//   echo          plain Bun.serve echo of an 8-byte octet body (client + HTTP hop)
//   barrier       REST barrier: HTTP + agreement through rank 0 (no data plane, no tensor)
//   shm           allreduce on shared buffers {"buffer": id}: + data plane op (no tensor codec)
//   shm-unix      the same over the ranks' Unix sockets
//   json          allreduce with a JSON/base64 tensor: + decode, buffers, encode
//   octet         allreduce with an octet-stream body: Hono route instead of the JSON fast path
// Rounds alternate the variants (machine load drifts); p50 and p90 are medians over rounds (us).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { freePortRange, sleep } from "../../src/util/net";
import { CLI, ROOT } from "./launch-world";

const iters = Number(process.argv[2] ?? 500);
const rounds = Number(process.argv[3] ?? 5);
const N = 2;
const port = await freePortRange(N);
const dir = mkdtempSync(`${tmpdir()}/moonring-layers-`);
const env = { ...process.env, MOONRING_LOG: "warn" };
const world = Bun.spawn([process.execPath, CLI, "launch", "--nproc", String(N), "--port", String(port), "--unix", `${dir}/r{rank}.sock`], { stdin: "ignore", stdout: "pipe", stderr: "inherit", env });
const echoes = Array.from({ length: N }, () => Bun.spawn([process.execPath, `${ROOT}src/bench/echo-server.ts`, "0"], { stdin: "pipe", stdout: "pipe", stderr: "inherit" }));

async function firstLine(p: { stdout: ReadableStream<Uint8Array> }, count = 1): Promise<string> {
  const reader = p.stdout.getReader();
  let text = "";
  while (text.split("\n").length <= count) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`exited early: ${text}`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return text;
}

try {
  await firstLine(world, N);
  const echoUrls = await Promise.all(echoes.map(async (e) => `http://127.0.0.1:${(await firstLine(e)).trim().split(" ")[1]}/echo`));
  const urls = Array.from({ length: N }, (_, r) => `http://127.0.0.1:${port + r}`);
  const json = { "content-type": "application/json" };
  const ids = await Promise.all(
    urls.map(async (u) => ((await (await fetch(u + "/buffers", { method: "POST", headers: json, body: JSON.stringify({ dtype: "float64", shape: [1], device: "cpu" }) })).json()) as { buffer: string }).buffer),
  );
  const eight = new Uint8Array(8);
  const post = async (url: string, init: RequestInit) => {
    const res = await fetch(url, { method: "POST", ...init });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`);
  };
  const variants: Record<string, (r: number) => Promise<void>> = {
    echo: (r) => post(echoUrls[r]!, { headers: { "content-type": "application/octet-stream" }, body: eight }),
    barrier: (r) => post(`${urls[r]}/collective/barrier`, { headers: json, body: "{}" }),
    shm: (r) => post(`${urls[r]}/collective/allreduce`, { headers: json, body: `{"buffer":"${ids[r]}"}` }),
    "shm-unix": (r) => post("http://localhost/collective/allreduce", { unix: `${dir}/r${r}.sock`, headers: json, body: `{"buffer":"${ids[r]}"}` } as RequestInit),
    json: (r) => post(`${urls[r]}/collective/allreduce`, { headers: json, body: `{"tensor":{"dtype":"float64","shape":[1],"b64":"AAAAAAAA8D8="}}` }),
    octet: (r) => post(`${urls[r]}/collective/allreduce?dtype=float64&shape=1`, { headers: { "content-type": "application/octet-stream" }, body: eight }),
  };
  const results: Record<string, { p50: number[]; p90: number[] }> = {};
  for (let round = 0; round < rounds; round++) {
    for (const [name, call] of Object.entries(variants)) {
      const once = () => Promise.all(Array.from({ length: N }, (_, r) => call(r)));
      for (let i = 0; i < 100; i++) await once();
      const t: number[] = [];
      for (let i = 0; i < iters; i++) {
        const t0 = performance.now();
        await once();
        t.push((performance.now() - t0) * 1000);
      }
      t.sort((a, b) => a - b);
      const r = (results[name] ??= { p50: [], p90: [] });
      r.p50.push(t[t.length >> 1]!);
      r.p90.push(t[Math.floor(t.length * 0.9)]!);
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
  const echoP50 = median(results.echo!.p50);
  console.log(`# 8-byte calls, ${N} ranks, ${iters} x ${rounds} rounds; loadavg ${(await Bun.file("/proc/loadavg").text()).trim()}`);
  console.log("variant     p50(us)  p90(us)  p50/echo");
  for (const [name, r] of Object.entries(results)) {
    console.log(`${name.padEnd(10)} ${median(r.p50).toFixed(0).padStart(8)} ${median(r.p90).toFixed(0).padStart(8)} ${(median(r.p50) / echoP50).toFixed(2).padStart(9)}`);
  }
} finally {
  world.kill("SIGTERM");
  for (const e of echoes) e.kill("SIGTERM");
  await Promise.race([Promise.all([world.exited, ...echoes.map((e) => e.exited)]), sleep(10_000)]);
  rmSync(dir, { recursive: true, force: true });
}

// REST 8-byte allreduce latency (p50/p99 per call) at N ranks.
//   bun tests/support/rest-latency.ts N [null|native] [iterations] [shared|per-rank]
// null: rank processes with a data plane that moves nothing (control-plane overhead only);
// native: `launch` with the real engine.
// shared: one client process drives every rank (Promise.all per iteration);
// per-rank: one client process per rank, as N separate programs would (default).
import { freePortRange, sleep } from "../../src/util/net";
import { CLI } from "./launch-world";

if (process.argv[2] === "client") {
  // child: loop allreduce on one rank, print latencies (us) as JSON
  const [url, rank, iters] = [process.argv[3]!, Number(process.argv[4]), Number(process.argv[5])];
  const body = JSON.stringify({ tensor: { dtype: "float64", shape: [1], data: [rank] } });
  const headers = { "content-type": "application/json" };
  const lat: number[] = [];
  for (let i = 0; i < iters + 200; i++) {
    const t0 = performance.now();
    const res = await fetch(url + "/collective/allreduce", { method: "POST", body, headers });
    await res.text();
    if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
    if (i >= 200) lat.push((performance.now() - t0) * 1000);
  }
  await Bun.write(Bun.stdout, JSON.stringify(lat)); // all of it before exiting (a pipe takes 64 KiB at once)
  process.exit(0);
}

const n = Number(process.argv[2] ?? 2);
const mode = process.argv[3] ?? "null";
const iters = Number(process.argv[4] ?? 3000);
const clients = process.argv[5] ?? "per-rank";
const port = await freePortRange(n);
const procs: ReturnType<typeof Bun.spawn>[] = [];
const env = { ...process.env, MOONRING_LOG: "warn" };
if (mode === "null") {
  for (let r = 0; r < n; r++) {
    procs.push(Bun.spawn([process.execPath, new URL("./nullplane-serve.ts", import.meta.url).pathname, String(r), String(n), String(port), String(port + r)], { stdin: "pipe", stdout: "inherit", stderr: "inherit", env }));
  }
} else {
  procs.push(Bun.spawn([process.execPath, CLI, "launch", "--nproc", String(n), "--port", String(port)], { stdin: "ignore", stdout: "ignore", stderr: "inherit", env }));
}
const urls = Array.from({ length: n }, (_, r) => `http://127.0.0.1:${port + r}`);
try {
  for (const u of urls) {
    for (let i = 0; ; i++) {
      try {
        if ((await fetch(u + "/health")).status === 200) break;
      } catch {
        // starting
      }
      if (i > 600) throw new Error(`${u} not ready`);
      await sleep(50);
    }
  }
  let lat: number[] = [];
  if (clients === "per-rank") {
    const kids = urls.map((u, r) => Bun.spawn([process.execPath, import.meta.path, "client", u, String(r), String(iters)], { stdout: "pipe", stderr: "inherit" }));
    const outs = await Promise.all(kids.map((k) => new Response(k.stdout).text()));
    for (const o of outs) lat.push(...(JSON.parse(o) as number[]));
  } else {
    const bodies = urls.map((_, r) => JSON.stringify({ tensor: { dtype: "float64", shape: [1], data: [r] } }));
    const headers = { "content-type": "application/json" };
    for (let i = 0; i < iters + 200; i++) {
      await Promise.all(
        urls.map(async (u, r) => {
          const t0 = performance.now();
          const res = await fetch(u + "/collective/allreduce", { method: "POST", body: bodies[r], headers });
          await res.text();
          if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
          if (i >= 200) lat.push((performance.now() - t0) * 1000);
        }),
      );
    }
  }
  lat = lat.sort((a, b) => a - b);
  const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(lat.length * p))]!.toFixed(0);
  const recent = await Promise.all(urls.map(async (u) => ((await (await fetch(u + "/debug/recent?limit=1000")).json()) as { recent: { agree_ms: number; data_ms: number }[] }).recent));
  const med = (k: "agree_ms" | "data_ms") => {
    const v = recent.flat().map((e) => e[k]).sort((a, b) => a - b);
    return (v[Math.floor(v.length / 2)]! * 1000).toFixed(0);
  };
  console.log(
    `N=${n} ${mode} (${clients} clients): 8-byte allreduce through REST, ${iters} iterations: p50 ${q(0.5)} us, p99 ${q(0.99)} us per call` +
      ` (server side: agreement p50 ${med("agree_ms")} us, data plane p50 ${med("data_ms")} us)`,
  );
} finally {
  for (const p of procs) p.kill("SIGTERM");
  await Promise.all(procs.map((p) => p.exited));
}

// Measures failure handling at 4 ranks over real rank processes (bun src/cli.ts launch):
//   detection   = rank 0 marks the rank failed (its /cluster changed_at_ms) - the kill (Date.now())
//   applied     = every survivor's /cluster shows it failed - the kill (polled, ~1 ms steps)
//   first ok    = the kill -> the survivors' first successful allreduce among themselves
// Scenarios: kill -9 of an idle rank (the survivors call right after the kill), kill -9 of a
// rank the others wait for (agreement phase), kill -9 while a 16 MiB allreduce moves bytes
// (data-plane failure, re-issue among survivors), SIGSTOP (a hung rank: heartbeat only).
// Usage: bun tests/support/fault-timing.ts [--trials 5] [--json]
import { sleep } from "../../src/util/net";
import { get, post } from "./http";
import { launchWorld, type LaunchedWorld } from "./launch-world";

const args = process.argv.slice(2);
const trials = Number(args[args.indexOf("--trials") + 1] ?? 5) || 5;
const asJson = args.includes("--json");
const N = 4;
const victim = 3;
const survivors = [0, 1, 2];

async function failedAt(w: LaunchedWorld): Promise<number> {
  for (;;) {
    const c = (await get(w.urls[0]!, "/cluster")).body;
    const r = c.ranks[victim];
    if (r.state === "failed") return r.changed_at_ms as number;
    await sleep(1);
  }
}

async function appliedAt(w: LaunchedWorld): Promise<number> {
  const pending = new Set(survivors);
  for (;;) {
    for (const s of [...pending]) {
      const c = (await get(w.urls[s]!, "/cluster")).body;
      if (c.ranks[victim].state === "failed") pending.delete(s);
    }
    if (pending.size === 0) return Date.now();
  }
}

async function allreduceOk(w: LaunchedWorld): Promise<number> {
  for (;;) {
    const res = await Promise.all(survivors.map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [r] }, timeout_ms: 30_000 })));
    if (res.every((x) => x.status === 200 && !x.body.contributors.includes(victim))) return Date.now();
  }
}

type Row = { detection: number; applied: number; firstOk: number };

async function trial(kind: "idle" | "waiting" | "in-flight" | "hung"): Promise<Row> {
  const w = await launchWorld(N, { env: { MOONRING_LOG: "error" } });
  try {
    const pid = w.pids[victim]!;
    let tKill = 0;
    let firstOk: Promise<number>;
    if (kind === "idle") {
      await Promise.all(w.urls.map((u, r) => post(u, "/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [r] } })));
      tKill = Date.now();
      process.kill(pid, "SIGKILL");
      firstOk = allreduceOk(w);
    } else if (kind === "waiting" || kind === "hung") {
      const pending = Promise.all(survivors.map((r) => post(w.urls[r]!, "/collective/allreduce", { tensor: { dtype: "int32", shape: [1], data: [r] }, timeout_ms: 30_000 })));
      await sleep(200);
      tKill = Date.now();
      process.kill(pid, kind === "hung" ? "SIGSTOP" : "SIGKILL");
      firstOk = pending.then((res) => {
        if (!res.every((x) => x.status === 200)) throw new Error(`${kind}: ${JSON.stringify(res.map((x) => x.body)).slice(0, 300)}`);
        return Date.now();
      });
    } else {
      const count = 4 * 1024 * 1024;
      const big = (r: number) =>
        fetch(`${w.urls[r]}/collective/allreduce?dtype=float32&shape=${count}&timeout_ms=30000`, {
          method: "POST",
          headers: { "content-type": "application/octet-stream" },
          body: new Float32Array(count).fill(r),
        }).then((res) => res.status, () => -1);
      const pending = Promise.all([0, 1, 2, 3].map(big));
      let seen = false;
      for (;;) {
        const d = (await get(w.urls[0]!, "/debug/recent?limit=1")).body;
        if (d.pending.length > 0) seen = true;
        else if (seen) break;
      }
      tKill = Date.now();
      process.kill(pid, "SIGKILL");
      firstOk = pending.then((st) => {
        if (!st.slice(0, 3).every((s) => s === 200)) throw new Error(`in-flight: statuses ${st}`);
        return Date.now();
      });
    }
    const [det, app, ok] = await Promise.all([failedAt(w), appliedAt(w), firstOk]);
    return { detection: det - tKill, applied: app - tKill, firstOk: ok - tKill };
  } finally {
    try {
      process.kill(w.pids[victim]!, "SIGKILL");
    } catch {
      // gone
    }
    await w.stop().catch(() => {});
  }
}

function stats(xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b);
  const med = s[Math.floor(s.length / 2)]!;
  return `${String(med).padStart(5)} (${s[0]}..${s[s.length - 1]})`;
}

const kinds = ["idle", "waiting", "in-flight", "hung"] as const;
const labels: Record<(typeof kinds)[number], string> = {
  idle: "kill -9, idle; survivors call right after",
  waiting: "kill -9 while the others wait for it",
  "in-flight": "kill -9 during a 16 MiB allreduce (re-issue)",
  hung: "SIGSTOP (hung): heartbeat timeout 2000 ms",
};
const out: Record<string, Row[]> = {};
for (const k of kinds) {
  out[k] = [];
  for (let i = 0; i < trials; i++) out[k]!.push(await trial(k));
}
if (asJson) {
  console.log(JSON.stringify({ ranks: N, trials, results: out }));
} else {
  console.log(`fault timing at ${N} ranks (${trials} trials each; ms after the signal: median (min..max))`);
  console.log(`${"scenario".padEnd(46)} ${"detected by rank 0".padEnd(20)} ${"applied by all".padEnd(20)} first successful collective`);
  for (const k of kinds) {
    const rows = out[k]!;
    console.log(`${labels[k].padEnd(46)} ${stats(rows.map((r) => r.detection)).padEnd(20)} ${stats(rows.map((r) => r.applied)).padEnd(20)} ${stats(rows.map((r) => r.firstOk))}`);
  }
}

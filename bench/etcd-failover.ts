// Failover times with `--rendezvous etcd://` (issue 20 item 2) against the built-in rendezvous,
// alternated round by round on the same machine: a 4-rank world (heartbeat 200/1000 ms), ranks
// 1-3 waiting in an allreduce at rank 0, then rank 0 killed with SIGKILL. Three cases:
//   builtin          the built-in rendezvous
//   etcd             a 3-member etcd cluster, all members up
//   etcd-leader-too  the etcd raft leader killed together with rank 0 (etcd elects a new
//                    leader while the ranks elect a new coordinator through it)
// Reports, per case, the median and range of: detection (the survivors saw rank 0 lost), the
// new coordinator followed, and the waiting allreduce completed (exact sums checked), all from
// the kill. Usage: bun bench/etcd-failover.ts [rounds=3] [case...]. Every process started is ended.
import { freePortRange } from "../src/util/net";
import { EtcdCluster, etcdMissing, serveWithEtcd, type EtcdRank } from "../tests/support/etcd-cluster";
import { cluster, get, i32, post, randInts, sumOver, waitFor } from "../tests/support/fault";
import { launchWorld } from "../tests/support/launch-world";
import { loadavg, uptime } from "node:os";

const FAST = ["--heartbeat-interval-ms", "200", "--heartbeat-timeout-ms", "1000"];
const N = 4;
const SURVIVORS = [1, 2, 3];
type Case = "builtin" | "etcd" | "etcd-leader-too";
type Times = { detected: number; followed: number; completed: number };

async function waitingAllreduce(urls: string[], kill: () => void): Promise<Times> {
  const inputs = urls.map(() => randInts(7));
  const pending = Promise.all(SURVIVORS.map((r) => post(urls[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 30_000 })));
  await waitFor("the survivors waiting at rank 0", async () => {
    const d = (await get(urls[0]!, "/debug/recent?limit=1")).body;
    return d.pending?.some((p: any) => SURVIVORS.every((r) => p.joined.includes(r)));
  });
  const killedAt = Date.now();
  kill();
  const res = await pending;
  const completed = Date.now() - killedAt;
  for (const x of res) {
    if (x.status !== 200) throw new Error(`allreduce after the kill: ${x.status} ${JSON.stringify(x.body).slice(0, 300)}`);
    if (JSON.stringify(x.body.result.data) !== JSON.stringify(sumOver(inputs, SURVIVORS))) throw new Error("allreduce after the kill: wrong sum");
  }
  const f = (await cluster(urls[3]!)).failovers.at(-1);
  return { detected: f.detected_at_ms - killedAt, followed: f.resumed_at_ms - killedAt, completed };
}

async function round(kind: Case): Promise<Times> {
  if (kind === "builtin") {
    const w = await launchWorld(N, { args: FAST });
    try {
      return await waitingAllreduce(w.urls, () => process.kill(w.pids[0]!, "SIGKILL"));
    } finally {
      await w.stop().catch(() => {});
    }
  }
  const etcd = await EtcdCluster.start(3);
  const procs: EtcdRank[] = [];
  try {
    const port = await freePortRange(N);
    const url = etcd.url(`bench-${crypto.randomUUID().slice(0, 8)}`);
    for (let r = 0; r < N; r++) procs.push(serveWithEtcd(r, N, port + r, url, FAST));
    for (const p of procs) await waitFor(`rank ${p.rank} ready`, async () => (await get(p.url, "/health")).body?.ready === true, 60_000);
    const etcdLeader = await etcd.waitLeader();
    const t = await waitingAllreduce(
      procs.map((p) => p.url),
      () => {
        procs[0]!.proc.kill("SIGKILL");
        if (kind === "etcd-leader-too") etcd.kill9(etcdLeader);
      },
    );
    // an outlier says why (MOONRING_LOG=warn shows the survivors' failover steps)
    if (t.followed > 5000) for (const p of procs.slice(1)) console.log(`--- rank ${p.rank}:\n${p.stderr().slice(-2000)}`);
    return t;
  } finally {
    for (const p of procs) {
      p.proc.kill("SIGKILL");
      await p.proc.exited;
    }
    await etcd.stop();
  }
}

const skip = etcdMissing();
if (skip) {
  console.error(`bench/etcd-failover.ts: ${skip}`);
  process.exit(2);
}
const rounds = Number(process.argv[2] ?? 3);
const all: Case[] = ["builtin", "etcd", "etcd-leader-too"];
const cases = process.argv[3] ? all.filter((c) => process.argv.slice(3).includes(c)) : all;
const results = new Map<Case, Times[]>(cases.map((c) => [c, []]));
console.log(`load at start: ${loadavg().map((x) => x.toFixed(1)).join(" ")} (uptime ${Math.round(uptime())} s)`);
for (let i = 0; i < rounds; i++) {
  for (const c of cases) {
    const t = await round(c);
    results.get(c)!.push(t);
    console.log(`round ${i + 1} ${c}: detected ${t.detected} ms, followed ${t.followed} ms, allreduce completed ${t.completed} ms (load ${loadavg()[0]!.toFixed(1)})`);
  }
}
const stat = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return `${s[Math.floor(s.length / 2)]} (${s[0]}-${s.at(-1)})`;
};
console.log("\n| case | detected (ms) | new coordinator followed (ms) | waiting allreduce completed (ms) |\n|---|---|---|---|");
for (const c of cases) {
  const t = results.get(c)!;
  console.log(`| ${c} | ${stat(t.map((x) => x.detected))} | ${stat(t.map((x) => x.followed))} | ${stat(t.map((x) => x.completed))} |`);
}
console.log(`load at end: ${loadavg().map((x) => x.toFixed(1)).join(" ")}`);
process.exit(0);

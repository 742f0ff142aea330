// Rank processes in network namespaces standing for separate hosts, with the test verbs
// provider as their RDMA NIC (issue 15: "the whole collective + p2p + fault suite at 2–5 ranks
// across namespaces"). MOONRING_TEST_NETNS selects the layout for every launchWorld() of a
// test run, so the same suites (tests/multirank, tests/fault, tests/verbs) run across
// namespaces unchanged:
//   rank  — each rank in a namespace of its own: every link between ranks is RDMA verbs;
//   pairs — ranks 2k and 2k+1 share a namespace (one "host"): shm within, verbs across.
// Each namespace gets its own hostname (unshare --uts), so host ids differ as between
// machines, and an address on a bridge in a hub namespace; a veth from the test's own
// namespace reaches the ranks' HTTP ports. Ranks run `serve` with MOONRING_TRANSPORT=auto
// (unless the test names a transport) and MOONRING_VERBS_LIB=<test provider>.
// Needs root, `ip netns` and `unshare`; `npm run test:netns` runs it (.ci/run). stop() ends every
// rank process and removes every namespace and veth made here.
import type { Subprocess } from "bun";
import { sleep } from "../../src/util/net";
import { get } from "./http";
import { CLI, collect, waitGone, type LaunchedWorld } from "./launch-world";
import { bridgeNamespaces, removeNamespaces, sh, type BridgedNamespaces } from "./netns";

export type NetnsLayout = "rank" | "pairs";
// (Not ROOT from launch-world: that module imports this one.)
export const PROVIDER = `${new URL("../../", import.meta.url).pathname}zig/zig-out/lib/libmoonring_fakeverbs.so`;

/** The layout MOONRING_TEST_NETNS asks for, or null (ranks on loopback as usual). */
export function netnsLayout(): NetnsLayout | null {
  const v = process.env.MOONRING_TEST_NETNS;
  if (!v) return null;
  if (v === "rank" || v === "pairs") return v;
  throw new Error(`MOONRING_TEST_NETNS=${v}: expected "rank" or "pairs"`);
}

/** Why namespaces can't be made here, or null. */
export function netnsProbe(): string | null {
  if (process.platform !== "linux") return "not Linux";
  if (process.getuid?.() !== 0) return "not root";
  try {
    if (!sh(["ip", "netns", "list"]).ok) return "ip netns is not usable";
    if (!sh(["unshare", "--uts", "true"]).ok) return "unshare --uts is not permitted";
  } catch (e) {
    return (e as Error).message;
  }
  if (!Bun.file(PROVIDER).size) return `${PROVIDER} is not built (run zig build)`;
  return null;
}

export function namespaceOf(layout: NetnsLayout, rank: number): number {
  return layout === "pairs" ? Math.floor(rank / 2) : rank;
}

let worldSerial = 0;

/** Namespaces made by this process and not removed yet: removed at exit too (a test that
 * timed out in its launch or stop would otherwise leave them behind). */
const liveNets = new Set<BridgedNamespaces>();
process.on("exit", () => {
  for (const net of liveNets) removeNamespaces(net);
});

function removeNet(net: BridgedNamespaces): void {
  removeNamespaces(net);
  liveNets.delete(net);
}

/** A /24 under 10.0.0.0/8 that no route of this namespace uses (concurrent runs pick others). */
function freeSubnet(): string {
  const routes = Bun.spawnSync(["ip", "-4", "route", "show"], { stdout: "pipe" }).stdout.toString();
  for (let k = 0; k < 2000; k++) {
    const seed = (process.pid * 7 + worldSerial * 131 + k * 17) % 50_000;
    const subnet = `10.${150 + (seed % 100)}.${Math.floor(seed / 100) % 250 + 1}`;
    if (!routes.includes(`${subnet}.`)) return subnet;
  }
  throw new Error("no free 10.x.y.0/24 subnet for the namespaces");
}

export interface NetnsWorld extends LaunchedWorld {
  layout: NetnsLayout;
  /** Starts `serve` for `rank` in its namespace (a replacement or a new rank); ended by stop(). */
  spawnRank: (rank: number, worldSize: number, extra: string[], join: boolean) => { proc: Subprocess<"pipe", "pipe", "pipe">; url: string; stderr: () => string };
}

function maxWorldSizeOf(n: number, args: string[]): number {
  const i = args.indexOf("--max-world-size");
  return i >= 0 ? Math.max(n, Number(args[i + 1])) : n;
}

/** n ranks (`serve` each) in namespaces laid out as `layout`; resolves once every rank is ready. */
export async function launchNetnsWorld(n: number, layout: NetnsLayout, opts: { args?: string[]; env?: Record<string, string>; readyTimeoutMs?: number } = {}): Promise<NetnsWorld> {
  const why = netnsProbe();
  if (why) throw new Error(`MOONRING_TEST_NETNS=${layout}: network namespaces are not usable here: ${why}`);
  const serial = `${process.pid % 10000}${String.fromCharCode(97 + (worldSerial++ % 26))}`;
  const slots = maxWorldSizeOf(n, opts.args ?? []);
  const nsCount = namespaceOf(layout, slots - 1) + 1;
  const subnet = freeSubnet();
  const net: BridgedNamespaces = {
    hub: `mrn${serial}h`,
    namespaces: Array.from({ length: nsCount }, (_, k) => `mrn${serial}${k}`),
    addrs: Array.from({ length: nsCount }, (_, k) => `${subnet}.${k + 1}`),
    host: { veth: `mrn${serial}t`, addr: `${subnet}.254` },
  };
  liveNets.add(net);
  const failed = bridgeNamespaces(net);
  if (failed) {
    removeNet(net);
    throw new Error(`network namespaces: ${failed}`);
  }
  const port = 29000 + (process.pid % 90) * 10;
  const addrOf = (rank: number) => net.addrs[namespaceOf(layout, rank)]!;
  const urlOf = (rank: number) => `http://${addrOf(rank)}:${port + rank}`;
  const procs: Subprocess<"pipe", "pipe", "pipe">[] = [];
  const stderrs: { rank: number; text: () => string }[] = [];

  const spawnRank = (rank: number, worldSize: number, extra: string[], join: boolean) => {
    const env: Record<string, string> = {
      ...(process.env as Record<string, string>),
      MOONRING_LOG: process.env.MOONRING_LOG ?? "warn",
      MOONRING_TRANSPORT: "auto",
      ...opts.env,
      MOONRING_VERBS_LIB: PROVIDER,
    };
    for (const k of ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MOONRING_TOKEN", "MOONRING_TEST_NETNS"]) delete env[k];
    const ns = namespaceOf(layout, rank);
    const serve = [process.execPath, CLI, "serve", "--rank", String(rank), "--world-size", String(worldSize), "--master", `${addrOf(0)}:${port}`];
    serve.push("--host", addrOf(rank), "--port", String(port + rank), "--exit-with-parent", ...(join ? ["--join"] : []), ...extra);
    // Its own hostname per namespace and world: a host id of its own, as on another machine
    // (two test runs at once must not share one: same-host shared memory is found by host id).
    const script = `hostname mrn-${serial}-host${ns} && exec "$@"`;
    const proc = Bun.spawn(["ip", "netns", "exec", net.namespaces[ns]!, "unshare", "--uts", "sh", "-c", script, "sh", ...serve], { stdin: "pipe", stdout: "pipe", stderr: "pipe", env });
    procs.push(proc);
    const err = collect(proc.stderr, []);
    collect(proc.stdout, []);
    stderrs.push({ rank, text: err.text });
    return { proc, url: urlOf(rank), stderr: err.text };
  };

  const stderrText = () => stderrs.map((s) => s.text().split("\n").filter((l) => l).map((l) => `[rank ${s.rank}] ${l}`).join("\n")).join("\n");
  const stop = async () => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGTERM");
    const until = Date.now() + 10_000;
    for (const p of procs) await Promise.race([p.exited, sleep(Math.max(0, until - Date.now()))]);
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    const left = await waitGone(pids);
    for (const pid of left) process.kill(pid, "SIGKILL");
    removeNet(net);
    if (left.length) throw new Error(`rank processes still running after stop: ${left.join(", ")}`);
    // A rank that crashed (not killed by the test) fails the world, with what it said.
    const crashed = procs.filter((p) => p.signalCode !== null && p.signalCode !== "SIGKILL" && p.signalCode !== "SIGTERM");
    if (crashed.length) throw new Error(`rank processes crashed (${crashed.map((p) => `pid ${p.pid}: ${p.signalCode}`).join(", ")}):\n${stderrText().slice(-8000)}`);
    // Between namespaces verbs must carry every link: a fallback to tcp would make the run prove nothing.
    const fallbacks = stderrText().split("\n").filter((l) => /verbs.*(not available|not made|declined)|using tcp/.test(l));
    if (fallbacks.length) throw new Error(`verbs fell back in a namespace world:\n${fallbacks.join("\n")}`);
    return 0;
  };

  for (let r = 0; r < n; r++) spawnRank(r, n, opts.args ?? [], false);
  const urls = Array.from({ length: n }, (_, r) => urlOf(r));
  const pids: number[] = [];
  try {
    const until = Date.now() + (opts.readyTimeoutMs ?? 60_000);
    for (let r = 0; r < n; r++) {
      for (;;) {
        const h = await get(urls[r]!, "/health").catch(() => ({ status: 0, body: null }));
        if (h.status === 200 && h.body.ready) {
          pids[r] = h.body.pid;
          break;
        }
        if (procs[r]!.exitCode !== null || Date.now() > until) throw new Error(`rank ${r} in ${net.namespaces[namespaceOf(layout, r)]} did not become ready; stderr:\n${stderrText()}`);
        await sleep(50);
      }
    }
    for (const u of urls) {
      const verbs = (await get(u, "/cluster")).body.data_plane.verbs;
      if (!verbs.usable) throw new Error(`${u}: verbs not usable in its namespace: ${verbs.detail}`);
    }
  } catch (e) {
    for (const p of procs) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    removeNet(net);
    throw e;
  }
  const waitForLine = async (re: RegExp) => {
    throw new Error(`a namespace world has no launcher output to wait for (${re})`);
  };
  return { proc: procs[0]! as any, urls, pids, port, stdoutLines: [], stderrText, waitForLine, stop, layout, spawnRank };
}

// Two "hosts" made of network namespaces, two ranks each, on the default transport choice
// (MOONRING_TRANSPORT=auto) with the test verbs provider as the RDMA device: ranks of one
// namespace share a host (shm links and the shared-memory board), ranks of different
// namespaces talk RDMA verbs over the veth addresses (the provider's GIDs are each
// namespace's own IPv4 addresses, like RoCE v2). Each namespace gets its own hostname
// (unshare --uts), so the host ids differ as between machines.
//
// Layout: namespaces A (ranks 0, 1 at SUBNET.1) and B (ranks 2, 3 at SUBNET.2) meet on a
// bridge in a hub namespace; a third veth gives this test's own namespace SUBNET.254 to reach
// the ranks' HTTP ports (nothing else is added here). Needs root and `ip netns`;
// skipped with a message where that isn't permitted. Every process and namespace made here
// is removed here.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { sleep } from "../../src/util/net";
import { CLI } from "../support/launch-world";
import { get, post } from "../support/http";
import { bridgeNamespaces, removeNamespaces, sh } from "../support/netns";
import { agreementCases, collectiveCases } from "../support/suites";
import { PROVIDER, onSystemVerbs, providerMissing } from "./provider";

const id = `${process.pid % 100000}`;
const NS = [`mrv${id}a`, `mrv${id}b`];
const HUB = `mrv${id}h`;
const HOST_VETH = `mrv${id}t`;
// A subnet of its own per run: test runs of other checkouts on this machine may overlap, and
// this one's address sits in the host's namespace.
const SUBNET = `10.${100 + (process.pid % 100)}.${(Math.floor(process.pid / 100) % 250) + 1}`;
const ADDR = [`${SUBNET}.1`, `${SUBNET}.2`];
const TEST_ADDR = `${SUBNET}.254`;
const N = 4;
const nsOf = (r: number) => (r < 2 ? 0 : 1);
const port = 29700 + (process.pid % 50) * 10;
const url = (r: number) => `http://${ADDR[nsOf(r)]}:${port + r}`;

/** Whether namespaces can be made here (checked before any test is registered). */
function probe(): string | null {
  if (process.platform !== "linux") return "not Linux";
  if (process.getuid?.() !== 0) return "not root";
  try {
    if (!sh(["ip", "netns", "list"]).ok) return "ip netns is not usable";
    if (!sh(["unshare", "--uts", "true"]).ok) return "unshare --uts is not permitted";
  } catch (e) {
    return (e as Error).message;
  }
  // The namespaces' GIDs are the test provider's: a real NIC's GIDs are its own addresses.
  if (onSystemVerbs) return "MOONRING_TEST_VERBS=system: the namespace tests need the test provider";
  return providerMissing();
}

const NET = { hub: HUB, namespaces: NS, addrs: ADDR, host: { veth: HOST_VETH, addr: TEST_ADDR } };
const setup = () => bridgeNamespaces(NET);
const teardown = () => removeNamespaces(NET);

let skipReason: string | null = probe();
if (skipReason) console.warn(`SKIP verbs netns tests: ${skipReason} (they need root, ip netns, unshare and the test provider)`);
let ranks: Subprocess[] = [];
const stderr: string[][] = [];

function startRank(r: number): Subprocess {
  const e: Record<string, string> = {
    ...(process.env as Record<string, string>),
    MOONRING_LOG: "warn",
    MOONRING_TRANSPORT: "auto",
    MOONRING_VERBS_LIB: PROVIDER,
  };
  for (const k of ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MOONRING_TOKEN"]) delete e[k];
  const ns = nsOf(r);
  const serve = [process.execPath, CLI, "serve", "--rank", String(r), "--world-size", String(N), "--master", `${ADDR[0]}:${port}`, "--host", ADDR[ns]!, "--port", String(port + r)];
  // Its own hostname per namespace: a different host id, as on another machine.
  const script = `hostname mrv-host-${ns} && exec "$@"`;
  const p = Bun.spawn(["ip", "netns", "exec", NS[ns]!, "unshare", "--uts", "sh", "-c", script, "sh", ...serve], { stdin: "ignore", stdout: "ignore", stderr: "pipe", env: e });
  const lines: string[] = [];
  stderr[r] = lines;
  (async () => {
    const dec = new TextDecoder();
    for await (const chunk of p.stderr) lines.push(...dec.decode(chunk).split("\n").filter((l) => l));
  })().catch(() => {});
  return p;
}

async function waitReady(): Promise<void> {
  const until = Date.now() + 60_000;
  for (let r = 0; r < N; r++) {
    for (;;) {
      const h = await get(url(r), "/health").catch(() => ({ status: 0, body: null }));
      if (h.status === 200 && h.body.ready) break;
      if (Date.now() > until) throw new Error(`rank ${r} in ${NS[nsOf(r)]} did not become ready; stderr:\n${stderr[r]?.join("\n")}`);
      await sleep(100);
    }
  }
}

async function stopRanks(): Promise<void> {
  for (const p of ranks.splice(0)) {
    if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    await p.exited;
  }
}

describe.skipIf(skipReason !== null)("verbs between network namespaces as hosts, shm within each", () => {
  beforeAll(async () => {
    const failed = setup();
    if (failed) {
      teardown();
      throw new Error(`network namespaces: ${failed}`);
    }
    ranks = [0, 1, 2, 3].map(startRank);
    await waitReady();
  }, 90_000);

  afterAll(async () => {
    await stopRanks();
    if (!skipReason) teardown();
  }, 30_000);

  const ref = { urls: () => [0, 1, 2, 3].map(url) };

  test("each rank's /cluster: shm to the rank of its own namespace, verbs to the other namespace's ranks", async () => {
    // alltoall with a block per pair: every pair exchanges bytes, so every pair has a link.
    const block = (src: number, dst: number) => ({ dtype: "int32", shape: [3], data: [src, dst, 1000 * src + dst] });
    const res = await Promise.all([0, 1, 2, 3].map((r) => post(url(r), "/collective/alltoall", { tensors: [0, 1, 2, 3].map((d) => block(r, d)) })));
    res.forEach((x, r) => {
      expect(x.status).toBe(200);
      expect(x.body.result.map((t: any) => t.data)).toEqual([0, 1, 2, 3].map((src) => [src, r, 1000 * src + r]));
    });
    for (let r = 0; r < N; r++) {
      const dp = (await get(url(r), "/cluster")).body.data_plane;
      expect(dp.verbs.usable).toBe(true);
      const byPeer = new Map<number, string>(dp.links.map((l: any) => [l.peer, l.transport]));
      for (let p = 0; p < N; p++) {
        if (p === r) continue;
        expect({ peer: p, transport: byPeer.get(p) }).toEqual({ peer: p, transport: nsOf(p) === nsOf(r) ? "shm" : "verbs" });
      }
    }
  }, 60_000);

  collectiveCases(N, ref);
  agreementCases(N, ref);

  test("kill -9 of rank 3 during a 16 MiB allreduce: the survivors answer without it (no hang), then go on", async () => {
    const count = 4 << 20; // float32: 16 MiB per rank, several ring steps over verbs
    const body = (r: number) => ({
      tensor: { dtype: "float32", shape: [count], b64: Buffer.from(new Float32Array(count).fill(r + 1).buffer).toString("base64") },
      timeout_ms: 30_000,
    });
    // One whole run first: the kill lands halfway through the next one (mid-transfer).
    const w0 = performance.now();
    for (const x of await Promise.all([0, 1, 2, 3].map((r) => post(url(r), "/collective/allreduce", body(r))))) {
      expect({ status: x.status, body: x.status === 200 ? "ok" : x.body }).toEqual({ status: 200, body: "ok" });
      const got = new Float32Array(Buffer.from(x.body.result.b64, "base64").buffer);
      expect([got[0], got[count - 1]]).toEqual([10, 10]);
    }
    const wholeMs = performance.now() - w0;
    console.log(`netns kill test: the whole run took ${wholeMs.toFixed(0)} ms`);
    const pid = (await get(url(3), "/health")).body.pid as number;
    const t0 = performance.now();
    const pending = Promise.all([0, 1, 2, 3].map((r) => post(url(r), "/collective/allreduce", body(r)).catch((e) => ({ status: 0, body: String(e) }))));
    await sleep(wholeMs / 2);
    process.kill(pid, "SIGKILL");
    const res = await pending;
    console.log(
      `netns kill -9 rank 3 ${(wholeMs / 2).toFixed(0)} ms into a ${wholeMs.toFixed(0)} ms allreduce: survivors answered ${res
        .slice(0, 3)
        .map((x) => `${x.status} ${x.status === 200 ? `contributors ${x.body.contributors}` : JSON.stringify(x.body).slice(0, 160)}`)
        .join("; ")} after ${(performance.now() - t0).toFixed(0)} ms`,
    );
    for (const x of res.slice(0, 3)) {
      if (x.status === 200) {
        // Finished among the survivors (re-issued without rank 3) or before it died.
        const want = x.body.contributors.reduce((a: number, c: number) => a + c + 1, 0);
        const got = new Float32Array(Buffer.from(x.body.result.b64, "base64").buffer);
        expect({ contributors: x.body.contributors, first: got[0], last: got[count - 1] }).toEqual({ contributors: x.body.contributors, first: want, last: want });
        if (!x.body.contributors.includes(3)) expect(x.body.failed_ranks).toContain(3);
      } else {
        // Failed naming the dead rank, well within the timeout.
        expect(JSON.stringify(x.body)).toContain("rank 3");
      }
    }
    // The survivors go on among themselves.
    const until = Date.now() + 20_000;
    for (;;) {
      const c = (await get(url(0), "/cluster")).body;
      if (c.active_ranks[3] === 0 || Date.now() > until) break;
      await sleep(50);
    }
    console.log(`netns kill test: rank 3 ${(await get(url(0), "/cluster")).body.active_ranks[3] === 0 ? "removed" : "still active"} ${(performance.now() - t0).toFixed(0)} ms after the call`);
    const small = await Promise.all([0, 1, 2].map((r) => post(url(r), "/collective/allreduce", { tensor: { dtype: "int32", shape: [2], data: [r + 1, 10] }, timeout_ms: 20_000 })));
    for (const x of small) {
      expect({ status: x.status, body: x.status === 200 ? "ok" : x.body }).toEqual({ status: 200, body: "ok" });
      expect(x.body.contributors).toEqual([0, 1, 2]);
      expect(x.body.result.data).toEqual([6, 30]);
    }
  }, 90_000);
});

// The verbs suite for a world in network namespaces (tests/support/netns-world.ts): which
// transport each pair uses, every collective and p2p against independent references, and
// kill -9 of a rank mid-allreduce. Used by tests/verbs/netns.test.ts (npm test) and
// tests/netns/collectives.test.ts (npm run test:netns).
import { describe, expect, test } from "bun:test";
import { get, post } from "./http";
import { killMidAllreduce } from "./kill-mid-op";
import { launchNetnsWorld, namespaceOf, netnsProbe, type NetnsLayout } from "./netns-world";
import { agreementCases, collectiveCases, startedWorldRef } from "./suites";

const skipReason = netnsProbe();

export function netnsWorldSuite(layout: NetnsLayout, n: number): void {
  if (skipReason) {
    console.warn(`SKIP verbs across network namespaces (${layout}, ${n} ranks): ${skipReason} (needs root, ip netns, unshare and the test provider)`);
    return;
  }
  const hosts = namespaceOf(layout, n - 1) + 1;
  describe(`verbs across network namespaces: ${n} ranks on ${hosts} "hosts" (${layout === "rank" ? "one rank each" : "two ranks per host, shm within"})`, () => {
    const ref = startedWorldRef(() => launchNetnsWorld(n, layout));

    test(`N=${n} each rank's /cluster: shm to the ranks of its own namespace, verbs to every other`, async () => {
      // alltoall with a block per pair: every pair exchanges bytes, so every pair has a link.
      const urls = ref.urls();
      const block = (src: number, dst: number) => ({ dtype: "int32", shape: [3], data: [src, dst, 1000 * src + dst] });
      const res = await Promise.all(urls.map((u, r) => post(u, "/collective/alltoall", { tensors: urls.map((_, d) => block(r, d)) })));
      res.forEach((x, r) => {
        expect(x.status).toBe(200);
        expect(x.body.result.map((t: any) => t.data)).toEqual(urls.map((_, src) => [src, r, 1000 * src + r]));
      });
      for (let r = 0; r < n; r++) {
        const dp = (await get(urls[r]!, "/cluster")).body.data_plane;
        expect(dp.verbs.usable).toBe(true);
        const byPeer = new Map<number, string>(dp.links.map((l: any) => [l.peer, l.transport]));
        for (let p = 0; p < n; p++) {
          if (p === r) continue;
          const want = namespaceOf(layout, p) === namespaceOf(layout, r) ? "shm" : "verbs";
          expect({ rank: r, peer: p, transport: byPeer.get(p) }).toEqual({ rank: r, peer: p, transport: want });
        }
      }
    }, 60_000);

    collectiveCases(n, ref);
    agreementCases(n, ref);

    // With two ranks per host the lower one carries its host's traffic to the other hosts
    // (the higher one's part may be done by then): kill a rank on the wire to the end.
    const victim = layout === "pairs" ? 2 : n - 1;
    test(`N=${n} kill -9 of rank ${victim} during a 64 MiB allreduce: the survivors answer without it, then go on`, async () => {
      await killMidAllreduce(ref.urls(), victim, `netns ${layout} N=${n}`);
    }, 90_000);
  });
}

// Every collective and p2p over the RDMA verbs link kind (MOONRING_TRANSPORT=verbs) at 2..5
// ranks, with the test verbs provider standing in for an RDMA NIC (MOONRING_VERBS_LIB; no
// machine here has one). The shared suites (tests/support/suites.ts) check values against
// independent references; GET /cluster must say every live link is verbs.
import { describe, expect, test } from "bun:test";
import { agreementCases, collectiveCases, launchedWorldRef } from "../support/suites";
import { expectedDevice, providerMissing, verbsEnv } from "./provider";

const missing = providerMissing();
if (missing) console.warn(`SKIP verbs collectives: ${missing}`);

for (const n of missing ? [] : [2, 3, 4, 5]) {
  describe(`verbs: launched world of ${n}`, () => {
    const ref = launchedWorldRef(n, { env: verbsEnv() });
    collectiveCases(n, ref);
    // Agreement failures, tags and p2p: at the smallest and largest size (the rest is the
    // control plane, the same for every transport).
    if (n === 2 || n === 5) agreementCases(n, ref);

    test(`N=${n} a 4 MiB broadcast and allreduce: large messages go zero-copy (RDMA read into the posted receive)`, async () => {
      const urls = ref.urls();
      const before = await Promise.all(urls.map(async (u) => ((await (await fetch(`${u}/cluster`)).json()) as any).data_plane.verbs.rendezvous_direct_bytes as number));
      const count = 1 << 20; // float32: 4 MiB
      const b64 = (r: number) => Buffer.from(new Float32Array(count).map((_, i) => (i % 1000) + r).buffer).toString("base64");
      const post = (path: string, body: (r: number) => unknown) =>
        Promise.all(urls.map((u, r) => fetch(`${u}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body(r)) }).then((x) => x.json() as any)));
      for (const b of await post("/collective/broadcast", (r) => ({ tensor: { dtype: "float32", shape: [count], b64: b64(r) }, src: n - 1 }))) {
        const got = new Float32Array(Buffer.from(b.result.b64, "base64").buffer);
        expect([got[0], got[999], got[count - 1]]).toEqual([n - 1, 999 + n - 1, ((count - 1) % 1000) + n - 1]);
      }
      const sumR = (n * (n - 1)) / 2;
      for (const b of await post("/collective/allreduce", (r) => ({ tensor: { dtype: "float32", shape: [count], b64: b64(r) } }))) {
        const got = new Float32Array(Buffer.from(b.result.b64, "base64").buffer);
        expect([got[0], got[7], got[count - 1]]).toEqual([sumR, 7 * n + sumR, ((count - 1) % 1000) * n + sumR]);
      }
      const after = await Promise.all(urls.map(async (u) => ((await (await fetch(`${u}/cluster`)).json()) as any).data_plane.verbs.rendezvous_direct_bytes as number));
      // Every rank but the root receives the broadcast's 4 MiB in a posted receive.
      expect(after.filter((a, r) => a > before[r]!).length).toBeGreaterThanOrEqual(n - 1);
      // ... and the link byte counters have it under transport="verbs", sent and received.
      const metrics = await (await fetch(`${urls[n - 1]}/metrics`)).text();
      const tx = metrics.split("\n").filter((l) => l.startsWith("moonring_dataplane_bytes_total{") && l.includes('transport="verbs"') && l.includes('direction="tx"'));
      expect(tx.reduce((a, l) => a + Number(l.split(" ").pop()), 0)).toBeGreaterThanOrEqual(4 << 20);
    }, 60_000);

    test(`N=${n} GET /cluster: every live link of every rank is verbs, on the test provider's device`, async () => {
      let links = 0;
      for (const url of ref.urls()) {
        const c = (await (await fetch(`${url}/cluster`)).json()) as any;
        expect(c.data_plane.verbs.usable).toBe(true);
        expect(c.data_plane.verbs.detail).toContain(expectedDevice);
        for (const l of c.data_plane.links) expect(l.transport).toBe("verbs");
        links += c.data_plane.links.length;
      }
      expect(links).toBeGreaterThan(0);
    });
  });
}

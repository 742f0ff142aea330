// Every collective and p2p over the RDMA verbs link kind (MOONRING_TRANSPORT=verbs) at 2..5
// ranks, with the test verbs provider standing in for an RDMA NIC (MOONRING_VERBS_LIB; no
// machine here has one). The shared suites (tests/support/suites.ts) check values against
// independent references; GET /cluster must say every live link is verbs.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { launchWorld, type LaunchedWorld } from "../support/launch-world";
import { agreementCases, collectiveCases } from "../support/suites";
import { expectedDevice, providerMissing, verbsEnv } from "./provider";

const missing = providerMissing();
if (missing) console.warn(`SKIP verbs collectives: ${missing}`);

for (const n of missing ? [] : [2, 3, 4, 5]) {
  describe(`verbs: launched world of ${n}`, () => {
    let w: LaunchedWorld | undefined;
    beforeAll(async () => {
      w = await launchWorld(n, { env: verbsEnv() });
    }, 90_000);
    afterAll(async () => {
      await w?.stop();
    }, 30_000);
    const ref = {
      urls: () => {
        if (!w) throw new Error("world did not start");
        return w.urls;
      },
    };
    collectiveCases(n, ref);
    // Agreement failures, tags and p2p: at the smallest and largest size (the rest is the
    // control plane, the same for every transport).
    if (n === 2 || n === 5) agreementCases(n, ref);

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

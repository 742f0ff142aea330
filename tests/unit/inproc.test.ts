// The control plane end to end with N rank services in this process over a fake in-process
// data plane (tests/support/fake-dataplane.ts): real HTTP, real control links and agreement.
import { afterAll, beforeAll, describe } from "bun:test";
import { agreementCases, collectiveCases } from "../support/suites";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "warn";

for (const n of [1, 2, 3, 4]) {
  describe(`in-process world of ${n}`, () => {
    let w: InprocWorld;
    beforeAll(async () => {
      w = await startInprocWorld(n);
    });
    afterAll(async () => {
      await w?.stop();
    });
    const ref = { urls: () => w.urls };
    collectiveCases(n, ref);
    if (n >= 2) agreementCases(n, ref);
  });
}

// Every op at world sizes 1..4 over real rank processes (bun src/cli.ts launch) and the
// native data plane, with non-zero roots and random data vs independent references; then
// agreement failures, tags and p2p. One launched world per world size.
import { afterAll, beforeAll, describe } from "bun:test";
import { launchWorld, type LaunchedWorld } from "../support/launch-world";
import { agreementCases, collectiveCases } from "../support/suites";

for (const n of [1, 2, 3, 4]) {
  describe(`launched world of ${n}`, () => {
    let w: LaunchedWorld | undefined;
    beforeAll(async () => {
      w = await launchWorld(n);
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
    if (n >= 2) agreementCases(n, ref);
  });
}

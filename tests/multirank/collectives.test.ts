// Every op at world sizes 1..4 over real rank processes (bun src/cli.ts launch) and the
// native data plane, with non-zero roots and random data vs independent references; then
// agreement failures, tags and p2p. One launched world per world size.
import { describe } from "bun:test";
import { agreementCases, collectiveCases, launchedWorldRef } from "../support/suites";

for (const n of [1, 2, 3, 4]) {
  describe(`launched world of ${n}`, () => {
    const ref = launchedWorldRef(n);
    collectiveCases(n, ref);
    if (n >= 2) agreementCases(n, ref);
  });
}

// kill -9 of a peer over a verbs link: the survivor's op fails with EPEER naming it, long
// before its deadline (tests/native/kill.test.ts does the same over tcp and shm). The ranks run
// in child processes with MOONRING_TRANSPORT=verbs and the test provider.
import { expect, test } from "bun:test";
import { expectedDevice, providerMissing, verbsEnv } from "./provider";

const missing = providerMissing();
if (missing) console.warn(`SKIP verbs kill test: ${missing}`);

test.skipIf(missing !== null)("killed peer over verbs: EPEER naming it, well before the deadline", async () => {
  const p = Bun.spawn([process.execPath, `${import.meta.dir}/kill-survivor.ts`], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...(process.env as Record<string, string>), ...verbsEnv(), MOONRING_LOG: "warn" },
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  expect(await p.exited).toBe(0);
  const result = JSON.parse(out.trim().split("\n").pop()!) as any;
  console.log(`verbs kill: survivor failed ${result.ms.toFixed(0)} ms after kill -9 (op deadline 60000 ms): ${result.error?.message}`);
  expect(result.links.links).toEqual([{ peer: 1, transport: "verbs" }]);
  expect(result.error).not.toBeNull();
  expect(result.error.code).toBe("EPEER");
  expect(result.error.failedPeer).toBe(1);
  expect(result.error.message).toContain("rank 1");
  expect(result.ms).toBeLessThan(30_000);
  expect(err).toContain(`RDMA verbs on ${expectedDevice}`);
}, 60_000);

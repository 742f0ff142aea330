// Issue 20 item 4: an in-process world of 1,024 ranks (every slot of WORLD_SIZE_MAX) runs every
// collective, each checked exactly (tests/support/scale-world.ts, in a child process with one
// HTTP connection per rank allowed: see there).
import { expect, test } from "bun:test";
import { WORLD_SIZE_MAX } from "../../src/limits";

/** About 35 s on the 2-CPU dev box; a hang is killed at this and reported. */
const childDeadlineMs = 420_000;

test(`an in-process world of ${WORLD_SIZE_MAX} ranks runs every collective`, async () => {
  const p = Bun.spawn([process.execPath, new URL("../support/scale-world.ts", import.meta.url).pathname, String(WORLD_SIZE_MAX)], {
    env: { ...process.env, BUN_CONFIG_MAX_HTTP_REQUESTS: "8192" },
    stdout: "pipe",
    stderr: "pipe",
  });
  // Killed well before the test's own timeout, so a hang reports the child's progress lines.
  const killer = setTimeout(() => p.kill("SIGKILL"), childDeadlineMs);
  const [code, out, err] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]).finally(() => clearTimeout(killer));
  if (code !== 0) throw new Error(`scale-world exited ${code}${p.signalCode ? ` (${p.signalCode}, past ${childDeadlineMs} ms)` : ""}:\n${err.slice(-3000)}`);
  const summary = JSON.parse(out.trim().split("\n").at(-1)!);
  console.log(`world of ${summary.ranks}: ready in ${summary.start_ms} ms; per collective (ms): ${JSON.stringify(summary.ms)}`);
  expect(summary.ranks).toBe(WORLD_SIZE_MAX);
}, 600_000);

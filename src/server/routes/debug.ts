// Test hooks, mounted only when MOONRING_TEST_HOOKS=1 (never in a deployment):
//   POST /debug/block {"ms"}  keeps this rank's event loop busy for `ms` (a stand-in for a huge
//   JSON body or base64 tensor being decoded), to show that liveness does not depend on it.
import type { Hono } from "hono";
import { z } from "zod";
import { readJson } from "../body";
import { parseOrThrow } from "../schemas";
import type { DebugFacade } from "./facade";

const blockSchema = z.strictObject({ ms: z.number().int().min(0).max(60_000) });

export const testHooksEnabled = (): boolean => process.env.MOONRING_TEST_HOOKS === "1";

export function debugRoutes(app: Hono, svc: DebugFacade): void {
  app.post("/debug/block", async (c) => {
    const { ms } = parseOrThrow(blockSchema, await readJson(c, 1 << 10));
    svc.log.warn(`test hook: blocking the event loop for ${ms} ms`);
    const until = performance.now() + ms;
    while (performance.now() < until) {
      // busy on purpose
    }
    return c.json({ ok: true, blocked_ms: ms });
  });
}

// Rank-service-to-rank-service endpoints (metadata only): rendezvous on rank 0, p2p offers.
// The control link (WebSocket /internal/ws) is upgraded in service.ts before Hono.
import type { Hono } from "hono";
import { NotFound } from "../../errors";
import { readJson } from "../body";
import { p2pOfferSchema, registerSchema } from "../../control/wire";
import { parseOrThrow } from "../schemas";
import type { RankService } from "../service";
import { requireReady } from "./collective";
import { z } from "zod";

const readySchema = z.strictObject({ rank: z.number().int().min(0) });

export function internalRoutes(app: Hono, svc: RankService): void {
  const rz = () => {
    if (!svc.rendezvous) throw new NotFound(`rank ${svc.rank} is not the rendezvous master (rank 0 is)`);
    return svc.rendezvous;
  };
  const waitMs = (v: string | undefined) => Math.max(0, Math.min(30_000, Number(v ?? 0) || 0));

  app.post("/internal/rendezvous/register", async (c) => {
    const body = parseOrThrow(registerSchema, await readJson(c, 1 << 20));
    return c.json(rz().register(body));
  });

  app.get("/internal/rendezvous/table", async (c) => c.json(await rz().table(waitMs(c.req.query("wait_ms")))));

  app.post("/internal/rendezvous/ready", async (c) => {
    const body = parseOrThrow(readySchema, await readJson(c, 1 << 20));
    return c.json(await rz().ready(body.rank, waitMs(c.req.query("wait_ms"))));
  });

  app.post("/internal/p2p/offer", async (c) => {
    requireReady(svc);
    const body = parseOrThrow(p2pOfferSchema, await readJson(c, 1 << 20));
    await svc.p2p.offer(body);
    return c.json({ ok: true });
  });
}

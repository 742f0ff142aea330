// Rank-service-to-rank-service endpoints (metadata only): rendezvous on rank 0, p2p offers.
// The control link (WebSocket /internal/ws) is upgraded in service.ts before Hono.
import type { Context, Hono } from "hono";
import { NotFound } from "../../errors";
import { readJson } from "../body";
import { p2pOfferSchema, registerSchema } from "../../control/wire";
import { parseOrThrow } from "../schemas";
import type { InternalFacade } from "./facade";
import { requireReady } from "./collective";
import { z } from "zod";

const readySchema = z.strictObject({ rank: z.number().int().min(0) });
const followSchema = z.strictObject({ url: z.string().regex(/^https?:\/\/[^\s]+$/).max(2048) });

export function internalRoutes(app: Hono, svc: InternalFacade): void {
  const rz = () => {
    if (!svc.rendezvous) throw new NotFound(`rank ${svc.rank} is not the rendezvous master (rank 0 is)`);
    return svc.rendezvous;
  };
  /** Registration that reached a rank which doesn't coordinate goes on to the coordinator (307). */
  const elsewhere = (c: Context): Response | null => {
    if (svc.rendezvous && !svc.rendezvous.redirect && svc.isCoordinator) return null;
    const to = svc.rendezvous?.redirect ?? svc.membership.get(svc.membership.coordinator)?.url;
    if (!to || to === svc.url) return svc.notCoordinator();
    const u = new URL(c.req.url);
    return c.redirect(`${to}${u.pathname}${u.search}`, 307);
  };

  app.get("/internal/whoami", (c) =>
    c.json({
      rank: svc.rank,
      instance: svc.instance,
      pid: process.pid,
      phase: svc.phase,
      coordinator: svc.membership.coordinator,
      epoch: svc.membership.epoch,
      complete: svc.rendezvous ? svc.rendezvous.isComplete : svc.phase === "ready",
    }),
  );

  app.post("/internal/follow", async (c) => {
    const body = parseOrThrow(followSchema, await readJson(c, 1 << 16));
    return c.json({ ok: svc.followWorld(body.url) });
  });
  const waitMs = (v: string | undefined) => Math.max(0, Math.min(30_000, Number(v ?? 0) || 0));

  app.post("/internal/rendezvous/register", async (c) => {
    const away = elsewhere(c);
    if (away) return away;
    const body = parseOrThrow(registerSchema, await readJson(c, 1 << 20));
    return c.json(rz().register(body));
  });

  app.get("/internal/rendezvous/table", async (c) => {
    if (svc.rendezvous?.redirect) return c.json(await svc.rendezvous.table(0));
    return elsewhere(c) ?? c.json(await rz().table(waitMs(c.req.query("wait_ms"))));
  });

  app.post("/internal/rendezvous/ready", async (c) => {
    const away = elsewhere(c);
    if (away) return away;
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

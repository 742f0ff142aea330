// GET /health, /cluster, /metrics, /openapi.json, /debug/recent
import type { Hono } from "hono";
import { buildOpenApi } from "../openapi";
import type { RankService } from "../service";

export function introspectionRoutes(app: Hono, svc: RankService): void {
  app.get("/health", (c) => {
    const ready = svc.ready;
    return c.json(
      {
        status: ready ? "ok" : svc.phase === "failed" ? "failed" : "starting",
        rank: svc.rank,
        world_size: svc.membership.worldSize,
        ready,
        pid: process.pid,
        state: svc.state,
        epoch: svc.membership.epoch,
        phase: svc.phase,
        url: svc.url,
        data_port: svc.dataPlane?.dataPort ?? null,
        device: svc.config.device,
        uptime_s: Math.round((Date.now() - svc.startedAt) / 100) / 10,
        ...(svc.failure ? { error: svc.failure } : {}),
      },
      ready ? 200 : 503,
    );
  });

  app.get("/cluster", (c) => c.json(svc.membership.toClusterJSON()));

  app.get("/metrics", (c) => {
    const extra: string[] = [
      "# HELP moonring_ready 1 when this rank completed rendezvous and is active.",
      "# TYPE moonring_ready gauge",
      `moonring_ready{rank="${svc.rank}"} ${svc.ready ? 1 : 0}`,
      "# HELP moonring_epoch Membership epoch.",
      "# TYPE moonring_epoch gauge",
      `moonring_epoch{rank="${svc.rank}"} ${svc.membership.epoch}`,
    ];
    if (svc.matcher) {
      extra.push(
        "# HELP moonring_pending_collectives Collectives waiting for members (rank 0 only).",
        "# TYPE moonring_pending_collectives gauge",
        `moonring_pending_collectives{rank="${svc.rank}"} ${svc.matcher.pendingCount()}`,
      );
    }
    return c.text(svc.metrics.render(extra), 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
  });

  let openapi: unknown = null;
  app.get("/openapi.json", (c) => {
    openapi ??= buildOpenApi();
    return c.json(openapi);
  });

  app.get("/debug/recent", (c) => {
    const limit = Math.max(1, Math.min(1000, Number(c.req.query("limit") ?? 100) || 100));
    return c.json({
      rank: svc.rank,
      recent: svc.metrics.recentEntries(limit),
      ...(svc.matcher ? { pending: svc.matcher.pending() } : {}),
    });
  });
}

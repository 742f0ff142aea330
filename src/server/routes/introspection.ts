// GET /health (readiness), /livez (liveness), /cluster, /metrics, /openapi.json, /debug/recent
import type { Context, Hono } from "hono";
import { renderApiReference } from "../api-reference";
import { buildOpenApi } from "../openapi";
import { serverOf } from "../auth";
import type { TrafficRecord } from "../../native/types";
import type { IntrospectionFacade } from "./facade";

export function introspectionRoutes(app: Hono, svc: IntrospectionFacade): void {
  app.get("/health", (c) => health(svc, c));

  // Liveness (kubelet livenessProbe), distinct from readiness (/health): a rank that is starting,
  // awaiting activation or left on purpose is alive; one that can never serve again (removed as
  // failed, rendezvous failed for good, coordinator lost) is not, so the kubelet restarts it.
  app.get("/livez", async (c) => {
    const why = svc.deadReason();
    if (!(await svc.isCaller(c.req.header("authorization"), c.req.raw, serverOf(c)))) return c.json({ live: why === null, state: svc.state }, why === null ? 200 : 503);
    return c.json({ live: why === null, rank: svc.rank, state: svc.state, pid: process.pid, ...(why ? { error: why } : {}) }, why === null ? 200 : 503);
  });

  app.get("/cluster", (c) => {
    const dataPlane = svc.dataPlaneLinks();
    return c.json({ ...svc.membership.toClusterJSON(), failovers: svc.failoverLog(), ...(dataPlane ? { data_plane: dataPlane } : {}) });
  });

  app.get("/metrics", (c) => {
    const extra: string[] = [
      "# HELP moonring_ready 1 when this rank completed rendezvous and is active.",
      "# TYPE moonring_ready gauge",
      `moonring_ready{rank="${svc.rank}"} ${svc.ready ? 1 : 0}`,
      "# HELP moonring_epoch Membership epoch.",
      "# TYPE moonring_epoch gauge",
      `moonring_epoch{rank="${svc.rank}"} ${svc.membership.epoch}`,
    ];
    if (svc.coordinator) {
      extra.push(
        "# HELP moonring_rank_failures_total Ranks rank 0 removed as failed.",
        "# TYPE moonring_rank_failures_total counter",
        `moonring_rank_failures_total{rank="${svc.rank}"} ${svc.coordinator.stats.failures}`,
        "# HELP moonring_collective_reissues_total Collectives re-issued among survivors after a member failed.",
        "# TYPE moonring_collective_reissues_total counter",
        `moonring_collective_reissues_total{rank="${svc.rank}"} ${svc.coordinator.stats.retries}`,
      );
    }
    extra.push(...dataPlaneTrafficLines(svc));
    if (svc.matcher) {
      extra.push(
        "# HELP moonring_pending_collectives Collectives waiting for members (rank 0 only).",
        "# TYPE moonring_pending_collectives gauge",
        `moonring_pending_collectives{rank="${svc.rank}"} ${svc.matcher.pendingCount()}`,
      );
    }
    return c.text(svc.metrics.render(extra), 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
  });

  // Built on first request, when every route is registered: the document is the app's routes.
  let openapi: Record<string, unknown> | null = null;
  app.get("/openapi.json", (c) => c.json((openapi ??= buildOpenApi(app.routes))));
  app.get("/docs", (c) => c.html(renderApiReference((openapi ??= buildOpenApi(app.routes)))));

  app.get("/debug/recent", (c) => {
    const limit = Math.max(1, Math.min(1000, Number(c.req.query("limit") ?? 100) || 100));
    return c.json({
      rank: svc.rank,
      recent: svc.metrics.recentEntries(limit),
      ...(svc.matcher ? { pending: svc.matcher.pending() } : {}),
      calls_in_flight: svc.callsInFlight,
      p2p: svc.p2p.pending(),
    });
  });
}

/** GET /health: readiness; strangers (no token) learn readiness only. */
async function health(svc: IntrospectionFacade, c: Context): Promise<Response> {
  const ready = svc.ready;
  const state = svc.state;
  const status = ready ? "ok" : state === "failed" || state === "left" ? state : "starting";
  // Probes carry no token: with one set, strangers learn readiness only (no pid, ports, urls).
  if (!(await svc.isCaller(c.req.header("authorization"), c.req.raw, serverOf(c)))) return c.json({ status, ready, state }, ready ? 200 : 503);
  const self = svc.membership.get(svc.rank);
  const why = svc.participant?.masterLost
    ? `no coordinator: ${svc.participant.masterLost}`
    : (state === "failed" || state === "left") && self?.reason
      ? self.reason
      : null;
  return c.json(
    {
      status,
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
      heartbeat: { interval_ms: svc.heartbeatIntervalMs, timeout_ms: svc.heartbeatTimeoutMs },
      auth: svc.authMode,
      ...(svc.securityWarning() ? { security_warning: svc.securityWarning() } : {}),
      ...(svc.participant?.masterLost ? { master_lost: true } : {}),
      ...(svc.failure ? { error: svc.failure } : why ? { error: why } : {}),
    },
    ready ? 200 : 503,
  );
}

/** moonring_dataplane_bytes_total{transport, peer, direction}: what the native links moved. */
function dataPlaneTrafficLines(svc: IntrospectionFacade): string[] {
  let records: TrafficRecord[] = [];
  try {
    records = svc.dataPlane?.traffic?.() ?? [];
  } catch (e) {
    if (svc.phase !== "stopping") svc.log.warn(`data-plane traffic counters: ${(e as Error).message}`);
    return [];
  }
  const lines = [
    "# HELP moonring_dataplane_bytes_total Bytes this rank's data plane sent to (tx) / received from (rx) a peer over links, by link kind (same-host collectives on the shared board move no link bytes).",
    "# TYPE moonring_dataplane_bytes_total counter",
  ];
  for (const t of records) {
    for (const [direction, v] of [["tx", t.txBytes], ["rx", t.rxBytes]] as const) {
      lines.push(`moonring_dataplane_bytes_total{rank="${svc.rank}",transport="${t.transport}",peer="${t.peer}",direction="${direction}"} ${v}`);
    }
  }
  return lines;
}

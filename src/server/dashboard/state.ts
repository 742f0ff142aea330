// What the dashboard shows, as one JSON snapshot: this rank, every rank's state (rank 0 knows the
// whole job), membership events, collectives waiting for members (rank 0: who has called and who
// hasn't), recent ops, failures with their cause. Membership events are recorded from the
// moment the service is built (Membership.onChange), not from when a page opens.
import type { MembershipView } from "../../control/membership";
import type { DashboardSource } from "../routes/facade";

/** Membership events kept (oldest dropped first). */
export const EVENTS_MAX = 256;
/** Recent ops sent per snapshot. */
export const RECENT_MAX = 120;

export interface MembershipEvent {
  at: string;
  epoch: number;
  rank: number;
  from: string | null;
  to: string;
  active: boolean;
  reason?: string;
}

export class DashboardState {
  readonly events: MembershipEvent[] = [];
  private listeners = new Set<() => void>();

  /** Each rank's state and activity as last recorded (events are the differences). */
  private known = new Map<number, { state: string; active: boolean }>();

  constructor(private readonly svc: DashboardSource) {
    svc.membership.onChange((view) => this.record(view));
  }

  /** Called on every membership change (SSE streams push at once instead of at their next tick). */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Records what changed since the last call; rendezvous registers ranks without telling listeners, so snapshots call it too. */
  private record(view: MembershipView): void {
    const at = new Date().toISOString();
    let changed = false;
    for (const r of view.ranks) {
      const p = this.known.get(r.rank);
      if (p && p.state === r.state && p.active === r.active) continue;
      if (!p && r.state === "awaiting" && !r.active && view.epoch === 0) continue; // a slot not yet registered
      this.known.set(r.rank, { state: r.state, active: r.active });
      this.events.push({ at, epoch: view.epoch, rank: r.rank, from: p?.state ?? null, to: r.state, active: r.active, ...(r.reason ? { reason: r.reason } : {}) });
      changed = true;
    }
    if (this.events.length > EVENTS_MAX) this.events.splice(0, this.events.length - EVENTS_MAX);
    if (changed) for (const l of this.listeners) l();
  }

  snapshot(): Record<string, unknown> {
    const svc = this.svc;
    const m = svc.membership;
    this.record(m.view());
    const cluster = m.toClusterJSON() as { ranks: Record<string, unknown>[]; groups: Record<string, number[]> };
    const recent = svc.metrics.recentEntries(RECENT_MAX);
    const failedRanks = cluster.ranks.filter((r) => r.state === "failed").map((r) => ({ rank: r.rank, reason: r.reason ?? null, at: r.changed_at ?? null }));
    const failedOps = recent.filter((e) => e.outcome !== "ok").slice(0, 20).map((e) => ({ seq: e.seq, op: e.op, outcome: e.outcome, message: e.message ?? null, at: e.started_at }));
    const selfFailure = svc.deadReason();
    return {
      now: new Date().toISOString(),
      rank: svc.rank,
      coordinator: svc.rank === 0,
      state: svc.state,
      phase: svc.phase,
      ready: svc.ready,
      epoch: m.epoch,
      world_size: m.worldSize,
      uptime_s: Math.round((Date.now() - svc.startedAt) / 1000),
      ranks: cluster.ranks,
      groups: cluster.groups,
      events: this.events.slice(-100).reverse(),
      // rank 0: collectives not every member has called yet (who has, who hasn't)
      waiting: (svc.matcher?.pending() ?? []).map((p) => ({ ...p, missing: p.members.filter((r) => !p.joined.includes(r)) })),
      // this rank: collectives matched and moving on the data plane (or failed, awaiting re-issue)
      running: svc.collectives?.inFlight() ?? [],
      recent,
      failures: { self: selfFailure, ranks: failedRanks, ops: failedOps },
    };
  }
}

const states = new WeakMap<DashboardSource, DashboardState>();

export function dashboardState(svc: DashboardSource): DashboardState {
  let s = states.get(svc);
  if (!s) {
    s = new DashboardState(svc);
    states.set(svc, s);
  }
  return s;
}

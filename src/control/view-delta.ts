// Membership views on the control links as deltas. A full view is every rank's record (~250
// bytes each), and the coordinator pushed it to every rank on each change: a failure or a rejoin
// in a 1,024-rank world sent 1,024 x 250 KB (and every rank parsed 250 KB). The coordinator now
// sends the records that changed since the view it pushed before, with that view's epoch as
// `base`; a rank whose epoch is `base` applies it, any other asks for the full view
// ({t:"view_full"}). A rank that (re)connects gets the full view, as before.
import type { Membership, MembershipView, RankRecord } from "./membership";

export interface ViewDelta {
  /** The epoch of the view this delta applies to. */
  base: number;
  epoch: number;
  worldSize: number;
  coordinator?: number;
  /** Records that changed (or appeared) since `base`. */
  ranks: RankRecord[];
  /** Records gone since `base`. */
  removed: number[];
  groups?: Record<string, number[]>;
}

/** The coordinator's side: what it last pushed, record by record. */
export class ViewDeltas {
  private epoch = -1;
  private records = new Map<number, string>();

  /** The message that brings every rank holding the last pushed view to `view`. */
  next(view: MembershipView): { t: "view"; view: MembershipView } | { t: "view"; delta: ViewDelta } {
    const fresh = this.epoch < 0;
    const base = this.epoch;
    const changed: RankRecord[] = [];
    const seen = new Set<number>();
    for (const r of view.ranks) {
      seen.add(r.rank);
      const text = JSON.stringify(r);
      if (this.records.get(r.rank) === text) continue;
      this.records.set(r.rank, text);
      changed.push(r);
    }
    const removed = [...this.records.keys()].filter((r) => !seen.has(r));
    for (const r of removed) this.records.delete(r);
    this.epoch = view.epoch;
    if (fresh) return { t: "view", view };
    return { t: "view", delta: { base, epoch: view.epoch, worldSize: view.worldSize, coordinator: view.coordinator, ranks: changed, removed, groups: view.groups } };
  }
}

/**
 * A rank's side: applies `delta` on top of its view. False when its view is not the delta's
 * base (it missed a push): it must fetch the full view.
 */
export function applyViewDelta(m: Membership, delta: ViewDelta): boolean {
  if (m.epoch !== delta.base) return delta.epoch <= m.epoch; // stale (nothing to do), or a push missed
  const records = new Map(m.all().map((r) => [r.rank, r]));
  for (const r of delta.removed) records.delete(r);
  for (const r of delta.ranks) records.set(r.rank, r);
  const view: MembershipView = {
    epoch: delta.epoch,
    worldSize: delta.worldSize,
    coordinator: delta.coordinator,
    ranks: [...records.values()].sort((a, b) => a.rank - b.rank),
    groups: delta.groups ?? m.allGroups(),
  };
  m.applyView(view);
  return true;
}

// Membership: the world's slots, which ranks are active, and the epoch of the current view.
// One instance per rank service. Rank 0 (the coordinator) owns the authoritative view and
// pushes it to the others (see rendezvous.ts / coordinator-link.ts); every other module asks
// this one "who takes part?" so fault tolerance (deactivate, failures, joiners) can extend it
// in one place: change the view with applyView()/setState(), listeners are told.

export type RankState = "healthy" | "awaiting" | "failed" | "left";

export interface RankRecord {
  rank: number;
  /** Control-plane base URL, e.g. http://127.0.0.1:29500 */
  url: string;
  dataHost: string;
  dataPort: number;
  /** Decimal string of the data plane's u64 host id (same host => shm). */
  hostId: string;
  pid: number;
  /** Random per process: tells a retry from a duplicate. */
  instance: string;
  state: RankState;
  active: boolean;
}

export interface MembershipView {
  epoch: number;
  worldSize: number;
  ranks: RankRecord[];
}

export type MembershipListener = (view: MembershipView, previous: MembershipView) => void;

export class Membership {
  private _epoch = 0;
  private records = new Map<number, RankRecord>();
  private listeners: MembershipListener[] = [];
  private activeCache: number[] | null = null;
  private maskCache: number[] | null = null;

  /** worldSize = number of slots (launch --max-world-size M gives M slots, N of them used at start). */
  constructor(
    readonly worldSize: number,
    readonly initialWorldSize: number = worldSize,
  ) {}

  get epoch(): number {
    return this._epoch;
  }

  get(rank: number): RankRecord | undefined {
    return this.records.get(rank);
  }

  all(): RankRecord[] {
    return [...this.records.values()].sort((a, b) => a.rank - b.rank);
  }

  /** Active global ranks, ascending (the members of group "world"). */
  activeRanks(): number[] {
    if (!this.activeCache) this.activeCache = this.all().filter((r) => r.active).map((r) => r.rank);
    return this.activeCache;
  }

  /** Members of a group. Named groups other than "world" span the active world for now. */
  groupRanks(_group: string): number[] {
    return this.activeRanks();
  }

  isActive(rank: number): boolean {
    return this.records.get(rank)?.active === true;
  }

  /** 0/1 per slot, as in /cluster and responses. */
  activeMask(): number[] {
    if (!this.maskCache) {
      const mask = new Array<number>(this.worldSize).fill(0);
      for (const r of this.activeRanks()) mask[r] = 1;
      this.maskCache = mask;
    }
    return this.maskCache.slice();
  }

  view(): MembershipView {
    return { epoch: this._epoch, worldSize: this.worldSize, ranks: this.all().map((r) => ({ ...r })) };
  }

  /** Replaces the whole view (a rank applying rank 0's view). Ignores stale epochs. */
  applyView(view: MembershipView): boolean {
    if (view.epoch < this._epoch) return false;
    const previous = this.view();
    this.records = new Map(view.ranks.map((r) => [r.rank, { ...r }]));
    this._epoch = view.epoch;
    this.activeCache = null;
    this.maskCache = null;
    for (const l of this.listeners) l(this.view(), previous);
    return true;
  }

  /** Adds or replaces one record without changing the epoch (rendezvous registration). */
  upsert(record: RankRecord): void {
    this.records.set(record.rank, { ...record });
    this.activeCache = null;
    this.maskCache = null;
  }

  /** Changes ranks' state/activity and bumps the epoch; listeners are told. */
  update(changes: { rank: number; state?: RankState; active?: boolean }[]): number {
    const previous = this.view();
    for (const c of changes) {
      const r = this.records.get(c.rank);
      if (!r) continue;
      if (c.state) r.state = c.state;
      if (c.active !== undefined) r.active = c.active;
    }
    this._epoch++;
    this.activeCache = null;
    this.maskCache = null;
    for (const l of this.listeners) l(this.view(), previous);
    return this._epoch;
  }

  /** Sets the epoch (rendezvous completion makes epoch 1). */
  setEpoch(epoch: number): void {
    this._epoch = epoch;
  }

  onChange(listener: MembershipListener): () => void {
    this.listeners.push(listener);
    return () => {
      this.listeners = this.listeners.filter((l) => l !== listener);
    };
  }

  /** The /cluster document. */
  toClusterJSON(): Record<string, unknown> {
    return {
      epoch: this._epoch,
      world_size: this.worldSize,
      active_ranks: this.activeMask(),
      ranks: this.all().map((r) => ({
        rank: r.rank,
        url: r.url,
        state: r.state,
        active: r.active,
        pid: r.pid,
        data_host: r.dataHost,
        data_port: r.dataPort,
      })),
    };
  }

  /**
   * Maps a list argument (scatter/reduce_scatter/alltoall `tensors`) onto slots: a list of
   * worldSize entries is per slot; a list of exactly the active count is per active rank.
   * Returns, per active rank (group order), the index into the list; null if the length fits neither.
   */
  listIndexForActive(length: number): number[] | null {
    const active = this.activeRanks();
    if (length === this.worldSize) return active;
    if (length === active.length) return active.map((_, i) => i);
    return null;
  }
}

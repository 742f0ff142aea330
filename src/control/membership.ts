// Membership: the world's slots, which ranks are active, and the epoch of the current view.
// One instance per rank service. Rank 0 (the coordinator) owns the authoritative view and
// pushes it to the others (coordinator.ts, over the control links); every other module asks
// this one "who takes part?": failures, deactivation and joiners change the view in one place
// (update() on rank 0, applyView() elsewhere) and listeners are told.
//
// Groups (POST /groups) are part of the view: a named group is a fixed, ascending list of
// global ranks (group rank i = ranks[i]); its members at any time are those ranks that are
// active. A group name never defined spans the active world (its own matching stream).

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
  /** UDP port of the rank's heartbeat thread (control/liveness.ts); 0/absent: none. */
  hbPort?: number;
  /** A restarted process of this slot rejoins by itself ("auto") or waits for activate ("manual"). */
  rejoin?: "auto" | "manual";
  state: RankState;
  active: boolean;
  /** Why the rank is failed / left (set by rank 0), and when (epoch ms). */
  reason?: string;
  changedAt?: number;
}

export interface MembershipView {
  epoch: number;
  worldSize: number;
  /** The rank that coordinates (agreement, membership): 0 until it fails, then the survivor elected. */
  coordinator?: number;
  ranks: RankRecord[];
  /** Named groups: name -> ascending global ranks. */
  groups?: Record<string, number[]>;
}

export type MembershipListener = (view: MembershipView, previous: MembershipView) => void;

export class Membership {
  private _epoch = 0;
  private records = new Map<number, RankRecord>();
  private listeners: MembershipListener[] = [];
  private activeCache: number[] | null = null;
  private maskCache: number[] | null = null;
  private groups = new Map<string, number[]>();
  /** The coordinating rank of this view (see MembershipView.coordinator). */
  coordinator = 0;

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

  /** Active members of a group, ascending global rank (a name never defined: the active world). */
  groupRanks(group: string): number[] {
    const def = this.groups.get(group);
    if (!def) return this.activeRanks();
    return def.filter((r) => this.isActive(r));
  }

  /** The fixed member list of a defined group (index = group rank); null for "world" and undefined names. */
  groupDef(group: string): number[] | null {
    return this.groups.get(group) ?? null;
  }

  /** Slots of a group: its size for a defined group, the world size otherwise. */
  groupSize(group: string): number {
    return this.groups.get(group)?.length ?? this.worldSize;
  }

  /** Group rank -> global rank (identity for the world). */
  toGlobal(group: string, groupRank: number): number {
    const def = this.groups.get(group);
    return def ? def[groupRank]! : groupRank;
  }

  /** Global rank -> group rank (identity for the world; -1 if not a member). */
  toGroupRank(group: string, rank: number): number {
    const def = this.groups.get(group);
    return def ? def.indexOf(rank) : rank;
  }

  allGroups(): Record<string, number[]> {
    return Object.fromEntries([...this.groups].map(([k, v]) => [k, v.slice()]));
  }

  /** Defines (or redefines) a group; no epoch change (rank 0 pushes the view). */
  defineGroup(name: string, ranks: number[]): void {
    this.groups.set(name, [...new Set(ranks)].sort((a, b) => a - b));
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
    return {
      epoch: this._epoch,
      worldSize: this.worldSize,
      coordinator: this.coordinator,
      ranks: this.all().map((r) => ({ ...r })),
      groups: this.allGroups(),
    };
  }

  /** Replaces the whole view (a rank applying rank 0's view). Ignores stale epochs. */
  applyView(view: MembershipView): boolean {
    if (view.epoch < this._epoch) return false;
    const previous = this.view();
    this.records = new Map(view.ranks.map((r) => [r.rank, { ...r }]));
    if (view.groups) this.groups = new Map(Object.entries(view.groups).map(([k, v]) => [k, v.slice()]));
    this._epoch = view.epoch;
    this.coordinator = view.coordinator ?? 0;
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
  update(changes: { rank: number; state?: RankState; active?: boolean; reason?: string }[], coordinator?: number): number {
    const previous = this.view();
    if (coordinator !== undefined) this.coordinator = coordinator;
    const now = Date.now();
    for (const c of changes) {
      const r = this.records.get(c.rank);
      if (!r) continue;
      if (c.state && c.state !== r.state) r.changedAt = now;
      if (c.state) r.state = c.state;
      if (c.active !== undefined) r.active = c.active;
      if (c.reason !== undefined) r.reason = c.reason;
      else if (c.state === "healthy") delete r.reason;
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
      coordinator: this.coordinator,
      active_ranks: this.activeMask(),
      ranks: this.all().map((r) => ({
        rank: r.rank,
        url: r.url,
        state: r.state,
        active: r.active,
        pid: r.pid,
        data_host: r.dataHost,
        data_port: r.dataPort,
        ...(r.reason ? { reason: r.reason } : {}),
        ...(r.changedAt ? { changed_at: new Date(r.changedAt).toISOString(), changed_at_ms: r.changedAt } : {}),
      })),
      groups: this.allGroups(),
    };
  }

  /**
   * Maps a list argument (scatter/reduce_scatter/alltoall `tensors`) onto slots: a list of
   * worldSize entries is per slot; a list of exactly the active count is per active rank.
   * Returns, per active rank (group order), the index into the list; null if the length fits neither.
   */
  listIndexForActive(length: number, group = "world"): number[] | null {
    const active = this.groupRanks(group);
    if (length === this.groupSize(group)) return active.map((r) => this.toGroupRank(group, r));
    if (length === active.length) return active.map((_, i) => i);
    return null;
  }
}

// Rendezvous, coordinator leadership and membership epochs in etcd (serve --rendezvous
// etcd://...; issue 20 item 2), as torchrun's etcd rendezvous keeps its state there. Keys, under
// /moonring/<job>/ (docs/api-extensions.md "etcd rendezvous"):
//   leader  {rank, url, instance, since_ms} of the coordinator, held under its lease: created by
//           txn if absent (rank 0 at start), or taken over by txn on the mod_revision of a lost
//           coordinator's record (the survivor the heartbeat election names). Ranks find the
//           coordinator to register with, and follow it after a failover, by reading/watching it.
//   view    the membership view of every epoch (MembershipView JSON), written by the coordinator
//           in a txn that holds only while `leader` still names it and `view` is unchanged since
//           it read it (mod_revision): a deposed coordinator can't write an epoch.
// Rank deaths are still found by the heartbeats (coordinator.ts); etcd holds who leads and the
// view, so a coordinator cut off from the others can't go on leading a world of its own.
import type { Logger } from "../util/log";
import { EtcdClient, EtcdError, type KeyValue } from "./etcd";
import type { MembershipView } from "./membership";

export interface LeaderRecord {
  rank: number;
  url: string;
  instance: string;
  since_ms: number;
}

/** What a rank service asks of a rendezvous store other than the built-in one (rank 0's HTTP). */
export interface RendezvousStore {
  readonly description: string;
  /** First contact: fails with a clear error (not a hang) when the store can't be reached. */
  open(deadlineMs: number): Promise<void>;
  /** The coordinator now, or null. */
  leader(): Promise<LeaderRecord | null>;
  /** Takes the lead unless a live coordinator holds it; returns the holder (this rank if it won). */
  claim(self: LeaderRecord, lostInstances: Set<string>): Promise<LeaderRecord>;
  /** Waits (bounded) for a coordinator that `accept`s; null when none came within `timeoutMs`. */
  waitLeader(accept: (l: LeaderRecord) => boolean, timeoutMs: number): Promise<LeaderRecord | null>;
  /** The last view a coordinator wrote, or null. */
  readView(): Promise<MembershipView | null>;
  /** Writes a view (fenced on leadership); later calls supersede waiting ones. */
  publishView(view: MembershipView): void;
  /** Called when another coordinator holds the lead while this rank thought it led. */
  onDeposed: (holder: LeaderRecord | null) => void;
  close(): Promise<void>;
}

/** Lease TTL (s): long enough to ride out an etcd leader election, short enough that a dead job's key goes. */
export function leaseTtlS(heartbeatTimeoutMs: number): number {
  return Math.max(5, Math.ceil((3 * heartbeatTimeoutMs) / 1000));
}

function parseLeader(kv: KeyValue | null): LeaderRecord | null {
  if (!kv) return null;
  try {
    const v = JSON.parse(kv.value) as LeaderRecord;
    return typeof v.rank === "number" && typeof v.url === "string" && typeof v.instance === "string" ? v : null;
  } catch {
    return null;
  }
}

/** How many compare-and-swap rounds claim() and a view write try before giving up this time. */
const CAS_ROUNDS_MAX = 8;
/** How long close() tries to revoke the lease (a stopping rank does not wait for a dead etcd). */
const CLOSE_DEADLINE_MS = 1000;
/** One watch's span while waiting for a leader (a dead member's stream is given up after it). */
const WATCH_SPAN_MS = 2000;

export class EtcdStore implements RendezvousStore {
  readonly prefix: string;
  private lease: string | null = null;
  private keeper: ReturnType<typeof setInterval> | null = null;
  /** The exact leader value this process wrote (the fence of its view writes); null when not leading. */
  private mine: string | null = null;
  private pendingView: MembershipView | null = null;
  private writing = false;
  private closed = false;
  private keeperWarned = false;
  onDeposed: (holder: LeaderRecord | null) => void = () => {};

  constructor(
    private readonly client: EtcdClient,
    job: string,
    private readonly ttlS: number,
    private readonly log: Logger,
  ) {
    this.prefix = `/moonring/${job || "default"}/`;
  }

  get description(): string {
    return `etcd ${this.client.endpoints.join(",")} (keys ${this.prefix}*)`;
  }

  private get leaderKey(): string {
    return this.prefix + "leader";
  }

  private get viewKey(): string {
    return this.prefix + "view";
  }

  async open(deadlineMs: number): Promise<void> {
    await this.client.call("/v3/kv/range", { key: Buffer.from(this.leaderKey).toString("base64") }, deadlineMs);
  }

  /**
   * The lease the leader key hangs on: granted at the first claim, not at open, so only
   * candidates and coordinators keep one alive (etcd load stays flat with the world size).
   */
  private async ensureLease(): Promise<string> {
    if (!this.lease) {
      this.lease = await this.client.leaseGrant(this.ttlS);
      this.keeper ??= setInterval(() => void this.keep(), Math.max(500, (this.ttlS * 1000) / 3));
      this.keeper.unref?.();
    }
    return this.lease;
  }

  async leader(): Promise<LeaderRecord | null> {
    return parseLeader((await this.client.get(this.leaderKey)).kv);
  }

  async claim(self: LeaderRecord, lostInstances: Set<string>): Promise<LeaderRecord> {
    const value = JSON.stringify(self);
    for (let round = 0; round < CAS_ROUNDS_MAX; round++) {
      const { kv } = await this.client.get(this.leaderKey);
      const holder = parseLeader(kv);
      if (holder?.instance === self.instance) return this.won(value, self);
      if (holder && kv && !lostInstances.has(holder.instance)) return holder;
      // absent (create-if-absent), or held by a lost coordinator (compare its mod_revision)
      const compare = kv ? { key: this.leaderKey, target: "MOD" as const, modRevision: kv.modRevision } : { key: this.leaderKey, target: "CREATE" as const, createRevision: 0 };
      const r = await this.client.txn([compare], [{ put: { key: this.leaderKey, value, lease: await this.ensureLease() } }]);
      if (r.succeeded) return this.won(value, self);
    }
    throw new Error(`etcd: the leader key ${this.leaderKey} kept changing while rank ${self.rank} tried to claim it`);
  }

  private won(value: string, self: LeaderRecord): LeaderRecord {
    this.mine = value;
    this.log.info(`leads in etcd (${this.leaderKey})`);
    return self;
  }

  async waitLeader(accept: (l: LeaderRecord) => boolean, timeoutMs: number): Promise<LeaderRecord | null> {
    const until = performance.now() + timeoutMs;
    for (;;) {
      const { kv, revision } = await this.client.get(this.leaderKey);
      const l = parseLeader(kv);
      if (l && accept(l)) return l;
      const left = until - performance.now();
      if (left <= 0) return null;
      await this.client.watchChange(this.leaderKey, revision + 1, Math.min(left, WATCH_SPAN_MS));
    }
  }

  async readView(): Promise<MembershipView | null> {
    const { kv } = await this.client.get(this.viewKey);
    if (!kv) return null;
    try {
      return JSON.parse(kv.value) as MembershipView;
    } catch {
      return null;
    }
  }

  publishView(view: MembershipView): void {
    this.pendingView = view;
    if (!this.writing) void this.writeViews();
  }

  /** Writes the newest pending view, one at a time; a failed write is tried again at the next keep(). */
  private async writeViews(): Promise<void> {
    this.writing = true;
    try {
      while (this.pendingView && this.mine && !this.closed) {
        const view = this.pendingView;
        this.pendingView = null;
        const ok = await this.writeView(view).catch((e: Error) => {
          this.log.warn(`etcd: could not write epoch ${view.epoch}: ${e.message}`);
          if (!this.pendingView) this.pendingView = view;
          return null;
        });
        if (ok === null) return;
      }
    } finally {
      this.writing = false;
    }
  }

  private async writeView(view: MembershipView): Promise<boolean> {
    const value = JSON.stringify(view);
    for (let round = 0; round < CAS_ROUNDS_MAX; round++) {
      const mine = this.mine;
      if (!mine) return false;
      const { kv } = await this.client.get(this.viewKey);
      const r = await this.client.txn(
        [
          { key: this.leaderKey, target: "VALUE", value: mine },
          kv ? { key: this.viewKey, target: "MOD", modRevision: kv.modRevision } : { key: this.viewKey, target: "CREATE", createRevision: 0 },
        ],
        [{ put: { key: this.viewKey, value } }],
        [{ range: { key: this.leaderKey } }],
      );
      if (r.succeeded) return true;
      const holder = parseLeader(r.ranges[0] ?? null);
      if (holder && JSON.stringify(holder) !== mine) {
        this.deposed(holder);
        return false;
      }
      // the view changed under us (our own earlier write raced), or the leader key expired: again
      if (!holder) await this.reassert();
    }
    throw new Error(`the view key ${this.viewKey} kept changing`);
  }

  private deposed(holder: LeaderRecord | null): void {
    if (!this.mine) return;
    this.mine = null;
    this.log.error(`etcd: deposed: ${holder ? `rank ${holder.rank} (${holder.url}) leads now` : "the leader key is gone"}`);
    this.onDeposed(holder);
  }

  /** Puts our leader record back after its lease lapsed (etcd unreachable longer than the TTL). */
  private async reassert(): Promise<void> {
    const mine = this.mine;
    if (!mine) return;
    const r = await this.client.txn([{ key: this.leaderKey, target: "CREATE", createRevision: 0 }], [{ put: { key: this.leaderKey, value: mine, lease: await this.ensureLease() } }]);
    if (r.succeeded) this.log.warn(`etcd: the leader key had lapsed; put it back (${this.leaderKey})`);
  }

  /** Keeps the lease alive (a new one if it lapsed) and checks that this coordinator still leads. */
  private async keep(): Promise<void> {
    if (this.closed || !this.lease) return;
    try {
      const ttl = await this.client.leaseKeepAlive(this.lease);
      if (ttl <= 0) {
        this.lease = await this.client.leaseGrant(this.ttlS);
        this.log.warn("etcd: the lease lapsed (etcd unreachable for longer than its TTL); granted a new one");
      }
      if (this.mine) {
        const holder = await this.leader();
        if (!holder) await this.reassert();
        else if (JSON.stringify(holder) !== this.mine) this.deposed(holder);
        if (this.pendingView && !this.writing) void this.writeViews();
      }
      if (this.keeperWarned) this.log.info("etcd: reachable again");
      this.keeperWarned = false;
    } catch (e) {
      if (!this.keeperWarned || !(e instanceof EtcdError)) this.log.warn(`etcd: lease keepalive failed: ${(e as Error).message}`);
      this.keeperWarned = true;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.keeper) clearInterval(this.keeper);
    this.keeper = null;
    // revoking the lease deletes the leader key if we held it: a clean hand-over, no TTL wait
    if (this.lease) await this.client.leaseRevoke(this.lease, CLOSE_DEADLINE_MS).catch(() => {});
    this.lease = null;
    this.mine = null;
  }
}

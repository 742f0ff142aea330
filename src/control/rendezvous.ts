// Rendezvous through rank 0's control plane.
//   1. every rank (rank 0 too, over its own HTTP) registers: control URL, data-plane host/port,
//      host id, pid, a per-process instance id; duplicate ranks and world-size disagreement
//      are refused with 409 conflict.
//   2. every rank long-polls the rank table until all N initial ranks registered (epoch 1),
//      then tells its data plane where each peer listens (setPeer).
//   3. every rank reports ready; rank services answer /health 200 once all N have.
// Joiners (`serve --join`) register as "awaiting" (inactive) and are admitted later.
import type { RegisterBody } from "./wire";
import { Conflict, InvalidRequest, NotReady } from "../errors";
import type { Logger } from "../util/log";
import { sleep } from "../util/net";
import type { Membership, MembershipView, RankRecord } from "./membership";
import type { PeerClient } from "./peers";

export class RendezvousServer {
  private complete = false;
  private readySet = new Set<number>();
  private tableWaiters: (() => void)[] = [];
  private readyWaiters: (() => void)[] = [];
  /** Called when the view changes after the world is complete (joiners): rank 0 pushes it. */
  onViewChange: (view: MembershipView) => void = () => {};
  /** Called once all initial ranks registered (epoch 1). */
  onComplete: () => void = () => {};
  /** Whether the process registered for `rank` is gone (no control link, heartbeat silent). */
  previousGone: (rank: number) => boolean = () => false;
  /** Removes the gone process of `rank` (a restart of it registers): the coordinator's markRemoved. */
  replaced: (rank: number, why: string) => void = () => {};
  /** Set when this rendezvous was abandoned for an established world's coordinator at that URL. */
  redirect: string | null = null;

  constructor(
    private membership: Membership,
    private log: Logger,
  ) {}

  /** A coordinator that took over an established world: rendezvous is long done. */
  adopt(): void {
    this.complete = true;
    for (const r of this.membership.all()) this.readySet.add(r.rank);
    for (let r = 0; r < this.membership.initialWorldSize; r++) this.readySet.add(r);
  }

  get isComplete(): boolean {
    return this.complete;
  }

  get allReady(): boolean {
    return this.readySet.size >= this.membership.initialWorldSize;
  }

  register(b: RegisterBody): { ok: true; epoch: number; complete: boolean } {
    const m = this.membership;
    const N = m.initialWorldSize;
    const M = m.worldSize;
    const from = `rank ${b.rank} (pid ${b.pid} at ${b.url})`;
    if (b.world_size !== N && b.world_size !== M) {
      throw new Conflict(
        `world size disagreement: ${from} says world size ${b.world_size}, rank 0 (master) has ${N}${M !== N ? ` (max ${M})` : ""}`,
        { rank: b.rank, world_size: b.world_size, master_world_size: N },
      );
    }
    if (b.rank >= M) {
      throw new InvalidRequest(`${from}: rank ${b.rank} is out of range for world size ${M}`, { rank: b.rank });
    }
    // --rejoin auto: a process registering for a slot of a running world is a restart of that
    // rank (the same identity, e.g. a pod restarted in place): it joins without --join, and
    // replaces the slot's previous process once that one is gone.
    const auto = b.rejoin === "auto" && this.complete;
    const join = b.join === true || b.rank >= N || auto;
    const prev = m.get(b.rank);
    if (prev && prev.instance !== b.instance) this.takeSlot(b, prev, from, auto, join);
    if (prev && prev.instance === b.instance) return { ok: true, epoch: m.epoch, complete: this.complete }; // a retry
    const record: RankRecord = {
      rank: b.rank,
      url: b.url,
      dataHost: b.data_host,
      dataPort: b.data_port,
      hostId: b.host_id,
      pid: b.pid,
      instance: b.instance,
      hbPort: b.hb_port ?? 0,
      rejoin: b.rejoin ?? "manual",
      state: join ? "awaiting" : "healthy",
      active: !join,
    };
    m.upsert(record);
    this.log.info(`rendezvous: registered ${from}${join ? " as a joiner (awaiting)" : ""}`);
    this.registered();
    return { ok: true, epoch: m.epoch, complete: this.complete };
  }

  /** A new process for a slot `prev` holds: it replaces a failed, left or (auto) gone one, else 409/503. */
  private takeSlot(b: RegisterBody, prev: RankRecord, from: string, auto: boolean, join: boolean): void {
    let replaceable = prev.state === "failed" || prev.state === "left";
    if (!replaceable && auto) {
      if (!this.previousGone(b.rank)) {
        throw new NotReady(`rank ${b.rank}: its previous process (pid ${prev.pid} at ${prev.url}) still looks alive; retry once it is gone`, {
          rank: b.rank,
          registered_pid: prev.pid,
        });
      }
      this.replaced(b.rank, `restarted: a new process (pid ${b.pid} at ${b.url}) registered for its slot`);
      replaceable = true;
    }
    if (!replaceable || !join) {
      throw new Conflict(
        `duplicate rank ${b.rank}: already registered by pid ${prev.pid} at ${prev.url}; refusing ${from}` +
          (replaceable ? " (a replacement must start with --join)" : ""),
        { rank: b.rank, registered_pid: prev.pid, registered_url: prev.url },
      );
    }
  }

  /** After a registration: the last of the initial ranks completes rendezvous (epoch 1); a joiner makes a new epoch. */
  private registered(): void {
    const m = this.membership;
    const N = m.initialWorldSize;
    if (!this.complete) {
      let n = 0;
      for (let r = 0; r < N; r++) if (m.get(r)?.active) n++;
      if (n === N) {
        this.complete = true;
        m.setEpoch(1);
        this.log.info(`rendezvous: all ${N} ranks registered (epoch 1)`);
        for (const w of this.tableWaiters.splice(0)) w();
        this.onComplete();
      }
    } else {
      m.update([]); // new epoch with the joiner in it
      this.onViewChange(m.view());
    }
  }

  /** Abandons this (fresh) rendezvous for the coordinator of an established world at `url`. */
  abandon(url: string): void {
    this.redirect = url;
    for (const w of this.tableWaiters.splice(0)) w();
    for (const w of this.readyWaiters.splice(0)) w();
  }

  async table(waitMs: number): Promise<{ complete: boolean; view: MembershipView; redirect?: string }> {
    if (this.redirect) return { complete: false, view: this.membership.view(), redirect: this.redirect };
    if (!this.complete && waitMs > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.tableWaiters = this.tableWaiters.filter((w) => w !== done);
          resolve();
        }, waitMs);
        const done = () => {
          clearTimeout(t);
          resolve();
        };
        this.tableWaiters.push(done);
      });
    }
    if (this.redirect) return { complete: false, view: this.membership.view(), redirect: this.redirect };
    return { complete: this.complete, view: this.membership.view() };
  }

  async ready(rank: number, waitMs: number): Promise<{ all_ready: boolean }> {
    this.readySet.add(rank);
    if (this.allReady) for (const w of this.readyWaiters.splice(0)) w();
    if (!this.allReady && waitMs > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.readyWaiters = this.readyWaiters.filter((w) => w !== done);
          resolve();
        }, waitMs);
        const done = () => {
          clearTimeout(t);
          resolve();
        };
        this.readyWaiters.push(done);
      });
    }
    return { all_ready: this.allReady };
  }
}

/** Thrown when rank 0 refuses this rank for good (duplicate rank, world-size disagreement). */
export class RendezvousRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RendezvousRefused";
  }
}

/** The rendezvous this rank waited in was abandoned: an established world's coordinator is at `url`. */
export class RendezvousRedirected extends Error {
  constructor(readonly url: string) {
    super(`rendezvous moved to the coordinator of the running world at ${url}`);
    this.name = "RendezvousRedirected";
  }
}

/** A rank's side: register (retrying with back-off while rank 0 is not up), fetch the table, report ready. */
export class RendezvousClient {
  constructor(
    private masterUrl: string,
    private peers: PeerClient,
    private log: Logger,
    private deadlineMs: number,
    /** The URL of a running world's coordinator this rank was told to join instead (or null). */
    private redirected: () => string | null = () => null,
  ) {}

  private async retrying<T>(what: string, fn: () => Promise<T>): Promise<T> {
    const until = Date.now() + this.deadlineMs;
    let delay = 50;
    for (let attempt = 1; ; attempt++) {
      const moved = this.redirected();
      if (moved) throw new RendezvousRedirected(moved);
      try {
        return await fn();
      } catch (e) {
        const err = e as Error & { status?: number; code?: string };
        if (err.status === 409 || err.status === 400 || err.status === 401) {
          throw new RendezvousRefused(`rendezvous refused by rank 0 at ${this.masterUrl}: ${err.message}`);
        }
        if (Date.now() + delay > until) {
          throw new Error(`rendezvous: ${what} failed for ${Math.round(this.deadlineMs / 1000)} s; last error: ${err.message}`);
        }
        if (attempt === 1 || attempt % 10 === 0) {
          this.log.info(`rendezvous: waiting for rank 0 at ${this.masterUrl} (${what}, attempt ${attempt}): ${err.message}; retrying in ${delay} ms`);
        }
        await sleep(delay);
        delay = Math.min(Math.round(delay * 1.6), 2000);
      }
    }
  }

  register(body: RegisterBody): Promise<{ ok: true; epoch: number; complete: boolean }> {
    return this.retrying("register", () => this.peers.post(`${this.masterUrl}/internal/rendezvous/register`, body, 5000, "register"));
  }

  async table(): Promise<MembershipView> {
    for (;;) {
      const r = await this.retrying("rank table", () =>
        this.peers.get<{ complete: boolean; view: MembershipView; redirect?: string }>(`${this.masterUrl}/internal/rendezvous/table?wait_ms=10000`, 15000, "table").then(answered),
      );
      if (r.redirect) throw new RendezvousRedirected(r.redirect);
      if (r.complete) return r.view;
    }
  }

  async ready(rank: number): Promise<void> {
    for (;;) {
      const r = await this.retrying("ready", () =>
        this.peers.post<{ all_ready: boolean }>(`${this.masterUrl}/internal/rendezvous/ready?wait_ms=10000`, { rank }, 15000, "ready").then(answered),
      );
      if (r.all_ready) return;
    }
  }
}

/** A 2xx answer without a JSON object (an empty body seen under 1,024 concurrent long polls) is retried. */
function answered<T>(body: T | null): T {
  if (body === null || typeof body !== "object") throw new Error("empty answer");
  return body;
}

// Rank 0's side of fault tolerance and elastic membership. Rank 0 owns the view; every change
// of it (a failure, a graceful leave, a joiner admitted, a group defined) is made here, once for
// the whole group, and pushed to every rank as {t:"view"}. Ranks apply it (peerDown / setPeer
// on their data plane) and answer {t:"view_ack", epoch, retry}; nothing is decided on a rank
// from its own view alone.
//
// Failure evidence, all reconciled here:
//   - a control link (WebSocket) that closes: immediate ({t:"bye"} first: a graceful stop, "left");
//   - a rank silent for the heartbeat timeout (every rank sends {t:"hb"} each interval);
//   - a rank's data-plane op failing with a peer error: the rank reports {t:"suspect", peer}; rank 0
//     pings the peer: no answer within the heartbeat timeout -> the peer failed; an answer -> the
//     data-plane link between two live ranks broke (a partition): the higher of the two is removed
//     (never rank 0), so the survivors can talk to each other;
//   - a rank's data-plane op timing out waiting for a peer (a blackholed link raises no error):
//     after the ping, rank 0 asks both to run a tiny barrier between them (a link check, timeout
//     = the heartbeat timeout); if it fails, the higher of the two is removed; if it works, the
//     op was merely slow and nobody is removed.
//
// Shrink and continue: open collectives drop the removed ranks (matcher.dropRanks). Collectives
// already decided whose data-plane part failed on some members are re-issued: each rank's view
// ack lists its ops that failed and wait (after the ops touching removed ranks have settled);
// once every active rank acked the current epoch, each such op is decided again among the ranks
// that listed it (a new op id, the same calls) and {t:"retry", opId, d} goes to each of them.
// Members whose part had completed keep their result (their response says who contributed).
import { rootField } from "../ops/table";
import { Conflict, InvalidRequest, NotReady, Timeout } from "../errors";
import type { Logger } from "../util/log";
import { sleep } from "../util/net";
import type { RetryItem } from "./collective";
import type { CoordinatorHub } from "./hub";
import type { Liveness } from "./liveness";
import type { CallDesc, Decision, Matcher } from "./matcher";
import type { Membership, MembershipView, RankState } from "./membership";
import type { RendezvousServer } from "./rendezvous";
import { ViewDeltas } from "./view-delta";

export const DEFAULT_HEARTBEAT_INTERVAL_MS = 500;
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 2000;

export interface FaultOptions {
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  /** The heartbeat thread's view of each rank (control/liveness.ts); Liveness.none() without one. */
  liveness: Liveness;
  /** This coordinator's own rank (0, or the survivor that took over: control/failover.ts). */
  self: number;
}

interface AckState {
  epoch: number;
  retry: RetryItem[];
}

interface Waiter {
  resolve: () => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Probe {
  id: number;
  /** reporter -> what it saw ("peer": a link error; "timeout": no data within the op's timeout) */
  reporters: Map<number, { why: string; kind: "peer" | "timeout" }>;
  timer: ReturnType<typeof setTimeout>;
}

interface LinkCheck {
  id: number;
  ranks: [number, number];
  why: string;
  done: Map<number, { ok: boolean; error?: string }>;
  timer: ReturnType<typeof setTimeout>;
}

/** How many re-issued op ids are remembered (an op is re-issued at most once per id). */
const RETRIED_MAX = 4096;
/** After a control link closes: how long past one heartbeat interval to listen for the rank's heartbeat. */
const CLOSE_GRACE_MS = 250;
/** How long activate waits for a joiner's control link to come up. */
const LINK_WAIT_MS = 10_000;

export class Coordinator {
  private lastSeen = new Map<number, number>();
  private acks = new Map<number, AckState>();
  private waiters: Waiter[] = [];
  private retried = new Set<string>();
  private probes = new Map<number, Probe>();
  private checks = new Map<string, LinkCheck>();
  private byes = new Set<number>();
  private pingSeq = 1;
  private stopped = false;
  private timer: ReturnType<typeof setInterval> | null = null;
  private lastTick = 0;
  /** View changes go out as deltas against the view pushed before (view-delta.ts). */
  private deltas = new ViewDeltas();
  /** Failures and re-issues since start (metrics, tests). */
  readonly stats = { failures: 0, retries: 0, linkChecks: 0, linkChecksPassed: 0 };

  constructor(
    private membership: Membership,
    private matcher: Matcher,
    private hub: CoordinatorHub,
    private rendezvous: RendezvousServer,
    /** Delivers a message to rank 0's own participant. */
    private local: (msg: Record<string, unknown>) => void,
    private log: Logger,
    readonly opts: FaultOptions,
  ) {}

  start(): void {
    const hub = this.hub;
    hub.onRankConnected = (r) => {
      this.lastSeen.set(r, performance.now());
      this.byes.delete(r);
      // a rank that reconnects may have missed views meanwhile
      if (this.rendezvous.isComplete) this.hub.sendTo(r, { t: "view", view: this.membership.view() });
      const rec = this.membership.get(r);
      if (rec?.state === "awaiting" && rec.rejoin === "auto" && this.rendezvous.isComplete) {
        // --rejoin auto: a restarted rank becomes active as soon as its control link is up
        this.log.info(`rank ${r} (pid ${rec.pid}) rejoins by itself (--rejoin auto)`);
        this.activate([r]).catch((e: Error) => this.log.warn(`auto rejoin of rank ${r}: ${e.message}`));
      }
    };
    hub.onRankDisconnected = (r, code, reason, instance) => this.linkClosed(r, code, reason, instance);
    hub.onMessage = (r, msg) => {
      this.lastSeen.set(r, performance.now());
      switch (msg.t) {
        case "hb":
          return true;
        case "view_ack":
          this.onAck(r, msg);
          return true;
        case "pong":
          this.onPong(r, msg);
          return true;
        case "linkcheck_done":
          this.onLinkCheckDone(r, msg);
          return true;
        case "bye":
          this.byes.add(r);
          return true;
      }
      return false;
    };
    hub.handle("suspect", (r, msg) => this.suspect(r, Number(msg.peer), String(msg.why ?? ""), msg.kind === "timeout" ? "timeout" : "peer"));
    hub.handle("activate", (_r, msg) => this.activate(msg.ranks));
    hub.handle("deactivate", (_r, msg) => this.deactivate(msg.ranks));
    hub.handle("group", (_r, msg) => this.defineGroup(msg.name, msg.ranks));
    hub.handle("view_full", () => ({ view: this.membership.view() }));
    this.membership.onChange((view) => this.onViewChange(view));
    this.lastTick = performance.now();
    this.timer = setInterval(() => this.tick(), this.opts.heartbeatIntervalMs);
    this.timer.unref?.();
  }

  /**
   * A coordinator that took over (failover): every active rank gets `graceMs` to connect and
   * heartbeat before the usual timeout applies, so ranks that never follow are removed.
   */
  expect(ranks: number[], graceMs: number): void {
    const at = performance.now() + graceMs;
    for (const r of ranks) if (r !== this.opts.self && !this.lastSeen.has(r)) this.lastSeen.set(r, at);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const p of this.probes.values()) clearTimeout(p.timer);
    this.probes.clear();
    for (const c of this.checks.values()) clearTimeout(c.timer);
    this.checks.clear();
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new NotReady("rank 0 is shutting down"));
    }
  }

  private push(rank: number, msg: Record<string, unknown>): void {
    if (rank === this.opts.self) this.local(msg);
    else this.hub.sendTo(rank, msg);
  }

  private onViewChange(view: MembershipView): void {
    this.hub.broadcast(this.deltas.next(view));
    this.check();
  }

  /** Pushes the current view without a new epoch (groups changed). */
  private pushView(): void {
    this.hub.broadcast({ t: "view", view: this.membership.view() });
  }

  // ---- liveness ----

  private tick(): void {
    const now = performance.now();
    const gap = now - this.lastTick;
    this.lastTick = now;
    const interval = this.opts.heartbeatIntervalMs;
    if (gap > interval * 2 + 250) {
      // This process stalled (a huge body, GC): don't blame the ranks for our own silence.
      for (const [r, t] of this.lastSeen) this.lastSeen.set(r, Math.max(t, now - interval));
    }
    this.hub.broadcast({ t: "hb" });
    if (!this.rendezvous.allReady) return;
    for (const [r, seen] of this.lastSeen) {
      const rec = this.membership.get(r);
      if (!rec || rec.state === "failed" || rec.state === "left") continue;
      // The heartbeat thread's datagrams count as much as control-link messages: a rank whose
      // event loop is busy still heartbeats from its worker (and ours still hears it).
      const silent = Math.min(now - seen, this.opts.liveness.silentMs(r));
      if (silent > this.opts.heartbeatTimeoutMs) {
        this.lastSeen.delete(r);
        this.markRemoved([r], "failed", `no heartbeat for ${Math.round(silent)} ms (timeout ${this.opts.heartbeatTimeoutMs} ms)`);
        this.hub.disconnect(r, 4002, "removed: heartbeat timeout");
      }
    }
  }

  private linkClosed(rank: number, code: number, reason: string, instance: string): void {
    const rec = this.membership.get(rank);
    const seen = this.lastSeen.get(rank);
    this.lastSeen.delete(rank); // the slot's next link (if any) starts the clock again
    // the link of an older process of this slot (a replacement registered meanwhile): not news
    if (rec && instance && rec.instance !== instance) return;
    if (!rec || rec.state === "failed" || rec.state === "left") return;
    if (!this.rendezvous.allReady && rec.state !== "awaiting") {
      this.log.warn(`control link from rank ${rank} closed during rendezvous (code ${code})`);
      return;
    }
    if (this.byes.delete(rank)) {
      this.markRemoved([rank], "left", "stopped (it said bye and closed its control link)");
      return;
    }
    const why = `its control link closed (code ${code}${reason ? `: ${reason}` : ""})`;
    if (!this.opts.liveness.running || (rec.hbPort ?? 0) === 0) {
      this.markRemoved([rank], "failed", why);
      return;
    }
    // A closed link alone is no proof of death (a broken connection; the rank reconnects):
    // removed only when its heartbeat thread is silent too, one interval and a margin later.
    const closedAt = performance.now();
    if (seen !== undefined) this.lastSeen.set(rank, seen);
    setTimeout(() => {
      if (this.stopped || this.hub.isConnected(rank) || this.membership.get(rank)?.instance !== rec.instance) return;
      if (this.opts.liveness.silentMs(rank) < performance.now() - closedAt) {
        this.log.info(`rank ${rank}'s control link closed (code ${code}) but its heartbeat goes on: waiting for it to reconnect`);
        return; // tick() removes it if it goes silent
      }
      this.lastSeen.delete(rank);
      this.markRemoved([rank], "failed", `${why}, and its heartbeat stopped`);
    }, this.opts.heartbeatIntervalMs + CLOSE_GRACE_MS).unref?.();
  }

  /**
   * Removes ranks from the world (state failed or left), once for the whole group: a new epoch,
   * the view pushed to every rank, open collectives continue without them.
   */
  markRemoved(ranks: number[], state: Extract<RankState, "failed" | "left">, reason: string): boolean {
    if (this.stopped) return false;
    const changes: { rank: number; state: RankState; active: boolean; reason: string }[] = [];
    for (const r of ranks) {
      const rec = this.membership.get(r);
      if (!rec || r === this.opts.self || rec.state === "failed" || rec.state === "left") continue;
      changes.push({ rank: r, state, active: false, reason });
    }
    if (changes.length === 0) return false;
    const removed = changes.map((c) => c.rank);
    if (state === "failed") this.stats.failures += removed.length;
    for (const r of removed) {
      this.lastSeen.delete(r); // a later process of this slot starts its own clock
      const p = this.probes.get(r);
      if (p) clearTimeout(p.timer);
      this.probes.delete(r);
    }
    const epoch = this.membership.update(changes);
    this.log[state === "failed" ? "warn" : "info"](
      `rank${removed.length > 1 ? "s" : ""} ${removed.join(", ")} ${state}: ${reason} (epoch ${epoch}; active: ${this.membership.activeRanks().join(", ")})`,
    );
    this.matcher.dropRanks(removed, state === "failed" ? "failed" : "left the world");
    return true;
  }

  // ---- data-plane suspicion ----

  /** A rank's data-plane op failed (a link error) or timed out naming `peer` (see the header). */
  suspect(reporter: number, peer: number, why: string, kind: "peer" | "timeout" = "peer"): Record<string, unknown> {
    const m = this.membership;
    if (!m.isActive(reporter)) throw new NotReady(`rank ${reporter} is not active (state ${m.get(reporter)?.state ?? "unknown"})`);
    if (!Number.isInteger(peer) || peer === reporter || !m.isActive(peer)) return { ok: true, action: "none" };
    const self = this.opts.self;
    if (peer === self && kind === "timeout") {
      this.startLinkCheck(reporter, self, why);
      return { ok: true, action: "checking" };
    }
    if (peer === self) {
      // the coordinator answers the reporter, so it is alive: their data-plane link broke; the coordinator stays.
      this.markRemoved([reporter], "failed", `its data-plane link to rank ${self} (the coordinator) broke (${why}) while its control link stayed up (a partition); the coordinator stays`);
      return { ok: true, action: "removed", rank: reporter };
    }
    const p = this.probes.get(peer);
    if (p) {
      if (p.reporters.get(reporter)?.kind !== "peer") p.reporters.set(reporter, { why, kind });
      return { ok: true, action: "probing" };
    }
    const id = this.pingSeq++;
    const probe: Probe = {
      id,
      reporters: new Map([[reporter, { why, kind }]]),
      timer: setTimeout(() => {
        if (this.probes.get(peer) !== probe) return;
        this.probes.delete(peer);
        this.markRemoved([peer], "failed", `did not answer rank 0 within ${this.opts.heartbeatTimeoutMs} ms after rank ${reporter} reported: ${why}`);
        this.hub.disconnect(peer, 4002, "removed: unresponsive");
      }, this.opts.heartbeatTimeoutMs),
    };
    this.probes.set(peer, probe);
    this.push(peer, { t: "ping", id });
    return { ok: true, action: "probing" };
  }

  private onPong(rank: number, msg: Record<string, unknown>): void {
    const p = this.probes.get(rank);
    if (!p || p.id !== msg.id) return;
    clearTimeout(p.timer);
    this.probes.delete(rank);
    // `rank` is alive and answers rank 0: the data-plane link between it and each reporter
    // broke while both live. Remove the higher rank of each pair (never rank 0). A timeout is
    // no proof of a broken link: check the link first.
    for (const [reporter, { why, kind }] of p.reporters) {
      if (!this.membership.isActive(reporter) || !this.membership.isActive(rank)) continue;
      if (kind === "timeout") {
        this.startLinkCheck(reporter, rank, why);
        continue;
      }
      const victim = reporter === this.opts.self ? rank : Math.max(reporter, rank);
      const other = victim === rank ? reporter : rank;
      this.markRemoved(
        [victim],
        "failed",
        `its data-plane link with rank ${other} broke (${why}) while both answer rank 0 (a partition): the higher rank of the pair is removed`,
      );
    }
  }

  /** Both ranks run a tiny data-plane barrier between them; a failure means a partition. */
  private startLinkCheck(a: number, b: number, why: string): void {
    const ranks: [number, number] = a < b ? [a, b] : [b, a];
    const key = `${ranks[0]}-${ranks[1]}`;
    if (this.checks.has(key)) return;
    const id = this.pingSeq++;
    const timeoutMs = this.opts.heartbeatTimeoutMs;
    const check: LinkCheck = {
      id,
      ranks,
      why,
      done: new Map(),
      timer: setTimeout(() => this.finishLinkCheck(key, check), timeoutMs * 2 + 1000),
    };
    this.checks.set(key, check);
    this.stats.linkChecks++;
    const opId = this.matcher.allocOpId();
    this.log.info(`checking the data-plane link between ranks ${ranks[0]} and ${ranks[1]} (${why})`);
    for (const r of ranks) this.push(r, { t: "linkcheck", id, ranks, opId, timeoutMs });
  }

  onLinkCheckDone(rank: number, msg: Record<string, unknown>): void {
    for (const [key, c] of this.checks) {
      if (c.id !== msg.id || !c.ranks.includes(rank)) continue;
      c.done.set(rank, { ok: msg.ok === true, error: typeof msg.error === "string" ? msg.error : undefined });
      if (c.done.size === 2) this.finishLinkCheck(key, c);
      return;
    }
  }

  private finishLinkCheck(key: string, c: LinkCheck): void {
    if (this.checks.get(key) !== c) return;
    this.checks.delete(key);
    clearTimeout(c.timer);
    const [a, b] = c.ranks;
    const failed = c.ranks.filter((r) => c.done.get(r)?.ok !== true);
    if (failed.length === 0) {
      this.stats.linkChecksPassed++;
      this.log.info(`the data-plane link between ranks ${a} and ${b} works: the op was slow, nobody is removed`);
      return;
    }
    if (!this.membership.isActive(a) || !this.membership.isActive(b)) return;
    const victim = a === this.opts.self ? b : b === this.opts.self ? a : Math.max(a, b);
    const detail = c.ranks.map((r) => `rank ${r}: ${c.done.get(r)?.error ?? (c.done.get(r)?.ok ? "ok" : "no answer")}`).join("; ");
    this.markRemoved(
      [victim],
      "failed",
      `the data-plane link between ranks ${a} and ${b} carries nothing (after ${c.why}; link check: ${detail}) while both answer rank 0 (a partition): the higher rank of the pair is removed`,
    );
  }

  // ---- view acks, re-issues ----

  /** A rank applied a view (rank 0's own participant calls this directly). */
  onAck(rank: number, msg: Record<string, unknown>): void {
    const epoch = Number(msg.epoch);
    const prev = this.acks.get(rank);
    if (prev && prev.epoch > epoch) return;
    this.acks.set(rank, { epoch, retry: Array.isArray(msg.retry) ? (msg.retry as RetryItem[]) : [] });
    this.check();
  }

  /** When every active rank applied the current epoch: wake waiters, re-issue failed ops. */
  private check(): void {
    const epoch = this.membership.epoch;
    const active = this.membership.activeRanks();
    for (const r of active) if ((this.acks.get(r)?.epoch ?? -1) < epoch) return;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.resolve();
    }
    this.reissue(active);
  }

  private missingAcks(): number[] {
    const epoch = this.membership.epoch;
    return this.membership.activeRanks().filter((r) => (this.acks.get(r)?.epoch ?? -1) < epoch);
  }

  /** Resolves once every active rank applied the current view (re-targets when it changes). */
  waitApplied(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          const missing = this.missingAcks();
          reject(
            new Timeout(`not every active rank applied epoch ${this.membership.epoch} within ${timeoutMs} ms (missing: ${missing.join(", ")})`, {
              missing_ranks: missing,
            }),
          );
        }, timeoutMs),
      };
      this.waiters.push(w);
      this.check();
    });
  }

  private reissue(active: number[]): void {
    const byOp = new Map<string, Map<number, RetryItem>>();
    for (const r of active) {
      const st = this.acks.get(r);
      if (!st || st.retry.length === 0) continue;
      const later: RetryItem[] = [];
      for (const it of st.retry) {
        if (this.retried.has(it.opId)) continue;
        // Re-issued only once the view removed one of its members: until then the failure is
        // unexplained (a suspect being probed, a closed link in its grace period).
        if (it.ranks.every((x) => this.membership.isActive(x))) {
          later.push(it);
          continue;
        }
        let m = byOp.get(it.opId);
        if (!m) byOp.set(it.opId, (m = new Map()));
        m.set(r, it);
      }
      st.retry = later;
    }
    for (const [opId, items] of byOp) {
      this.retried.add(opId);
      if (this.retried.size > RETRIED_MAX) this.retried.delete(this.retried.values().next().value as string);
      this.stats.retries++;
      const first = items.values().next().value as RetryItem;
      const members = [...items.keys()].sort((a, b) => a - b);
      const root = first.desc.root;
      if (root !== null && !items.has(root)) {
        const field = rootField(first.desc.op);
        const rec = this.membership.get(root);
        const failed = !this.membership.isActive(root);
        const message = failed
          ? `${first.desc.op} (seq ${first.seq}): the root (${field} ${root}) ${rec?.state ?? "failed"} during the call${rec?.reason ? `: ${rec.reason}` : ""}`
          : `${first.desc.op} (seq ${first.seq}): a member failed after the root (${field} ${root}) had finished its part; the root's data can't be sent again`;
        const error = { status: 503, code: "peer_failed", message, details: { seq: first.seq, failed_ranks: first.ranks.filter((r) => !this.membership.isActive(r)) } };
        for (const r of members) this.push(r, { t: "retry", opId, error });
        continue;
      }
      const calls = new Map<number, CallDesc>();
      for (const [r, it] of items) calls.set(r, it.desc);
      this.log.info(`re-issuing ${first.desc.op} (seq ${first.seq}, op ${opId}) among ranks ${members.join(", ")} (was ${first.ranks.join(", ")})`);
      this.matcher.retry(opId, first.seq, first.group, first.tag, calls, (r: number, d: Decision) => {
        if (d.ok) this.push(r, { t: "retry", opId, d });
        else this.push(r, { t: "retry", opId, error: { status: d.status, code: d.code, message: d.message, details: d.details } });
      });
    }
  }

  // ---- activate / deactivate / groups ----

  private parseRanks(v: unknown, what: string): number[] {
    if (!Array.isArray(v) || v.length === 0 || !v.every((x) => Number.isInteger(x))) {
      throw new InvalidRequest(`${what}: "ranks" must be a non-empty list of ranks`);
    }
    const ranks = [...new Set(v as number[])].sort((a, b) => a - b);
    for (const r of ranks) {
      if (r < 0 || r >= this.membership.worldSize) {
        throw new InvalidRequest(`${what}: rank ${r} is out of range for world size ${this.membership.worldSize}`, { rank: r });
      }
    }
    return ranks;
  }

  private answer(): Record<string, unknown> {
    return { epoch: this.membership.epoch, active_ranks: this.membership.activeMask() };
  }

  /** POST /membership/activate: admits ranks that wait in "awaiting" (or left ones still running). */
  async activate(v: unknown): Promise<Record<string, unknown>> {
    const ranks = this.parseRanks(v, "activate");
    const m = this.membership;
    const todo: number[] = [];
    for (const r of ranks) {
      const rec = m.get(r);
      if (!rec) throw new InvalidRequest(`activate: rank ${r} has not registered; start it with \`serve --rank ${r} ... --join\` first`, { rank: r });
      if (rec.active) continue;
      if (rec.state === "awaiting" || (rec.state === "left" && (r === this.opts.self || this.hub.isConnected(r)))) {
        todo.push(r);
        continue;
      }
      throw new InvalidRequest(
        `activate: rank ${r} is ${rec.state}${rec.reason ? ` (${rec.reason})` : ""}; only ranks in state awaiting can be activated — start a replacement with \`serve --rank ${r} ... --join\``,
        { rank: r, state: rec.state },
      );
    }
    if (todo.length > 0) {
      const until = Date.now() + LINK_WAIT_MS;
      for (;;) {
        const notYet = todo.filter((r) => r !== this.opts.self && !this.hub.isConnected(r));
        if (notYet.length === 0) break;
        if (Date.now() > until) throw new NotReady(`activate: rank${notYet.length > 1 ? "s" : ""} ${notYet.join(", ")} did not connect to rank 0 within ${LINK_WAIT_MS} ms`, { ranks: notYet });
        await sleep(20);
      }
      for (const r of todo) {
        const rec = m.get(r);
        if (!rec || (rec.state !== "awaiting" && rec.state !== "left")) throw new NotReady(`activate: rank ${r} changed state to ${rec?.state} meanwhile`);
      }
      const epoch = m.update(todo.map((r) => ({ rank: r, state: "healthy" as const, active: true })));
      this.log.info(`activated rank${todo.length > 1 ? "s" : ""} ${todo.join(", ")} (epoch ${epoch}; active: ${m.activeRanks().join(", ")})`);
    }
    await this.waitApplied(30_000);
    return this.answer();
  }

  /** POST /membership/deactivate: removes ranks gracefully (state "left"). */
  async deactivate(v: unknown): Promise<Record<string, unknown>> {
    const ranks = this.parseRanks(v, "deactivate");
    const self = this.opts.self;
    if (ranks.includes(self)) throw new InvalidRequest(`deactivate: rank ${self} is the coordinator and cannot leave (stop the world instead)`, { rank: self });
    for (const r of ranks) {
      if (!this.membership.get(r)) throw new InvalidRequest(`deactivate: rank ${r} has not registered`, { rank: r });
    }
    this.markRemoved(ranks, "left", "deactivated (POST /membership/deactivate)");
    await this.waitApplied(30_000);
    return this.answer();
  }

  /** POST /groups: defines a named group (idempotent; a different member list is a conflict). */
  defineGroup(nameV: unknown, ranksV: unknown): Record<string, unknown> {
    if (typeof nameV !== "string" || nameV.length === 0 || nameV.length > 256) {
      throw new InvalidRequest('groups: "name" must be a string of 1..256 characters');
    }
    if (nameV === "world") throw new InvalidRequest('groups: "world" is the group of all active ranks and cannot be redefined');
    const ranks = this.parseRanks(ranksV, `group ${JSON.stringify(nameV)}`);
    const prev = this.membership.groupDef(nameV);
    if (prev) {
      if (prev.length !== ranks.length || prev.some((r, i) => r !== ranks[i])) {
        throw new Conflict(`group ${JSON.stringify(nameV)} already has ranks [${prev.join(", ")}]; refusing [${ranks.join(", ")}]`, {
          name: nameV,
          ranks: prev,
        });
      }
      return { name: nameV, ranks: prev };
    }
    this.membership.defineGroup(nameV, ranks);
    this.log.info(`group ${JSON.stringify(nameV)} = ranks ${ranks.join(", ")}`);
    this.pushView();
    return { name: nameV, ranks };
  }
}

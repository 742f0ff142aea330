// A rank's side of fault tolerance (every rank, rank 0 included, has one): applies the views
// rank 0 pushes, answers each with {t:"view_ack", epoch, retry} once the ops that involve
// removed ranks have settled (retry = the ops whose part failed here and wait for a re-issue),
// reports data-plane failures to rank 0 ({t:"suspect"}), answers pings, and hands rank 0's
// re-issues ({t:"retry", opId, d | error}) to the collective runner waiting for them, and runs
// the data-plane link checks rank 0 asks for ({t:"linkcheck"}: a tiny barrier with one peer).
// See coordinator.ts for rank 0's side.
import { apiErrorFromJSON, MasterLost, NotReady, Timeout } from "../errors";
import type { Logger } from "../util/log";
import type { CollectiveRunner, RetryHooks } from "./collective";
import type { GoDecision } from "./matcher";
import type { Membership, MembershipView } from "./membership";
import { applyViewDelta, type ViewDelta } from "./view-delta";

/** How this rank talks to rank 0 (the control link; in-process on rank 0 itself). */
export interface CoordinatorChannel {
  send(msg: Record<string, unknown>): void;
  request(msg: Record<string, unknown>, timeoutMs: number): Promise<Record<string, unknown>>;
}

interface RetryWaiter {
  resolve: (d: GoDecision) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** How long a view ack waits for the ops touching removed ranks to settle (peerDown fails them at once). */
const SETTLE_WAIT_MS = 3000;
const EARLY_MAX = 256;

export class Participant implements RetryHooks {
  private channel: CoordinatorChannel | null = null;
  private waiters = new Map<string, RetryWaiter>();
  private early = new Map<string, Record<string, unknown>>();
  private ackScheduled = false;
  /** Why rank 0 is lost (this rank can't take part any more), or null. */
  masterLost: string | null = null;
  /** Runs a data-plane barrier among `ranks` (set by the service). */
  runLinkCheck: ((ranks: number[], opId: bigint, timeoutMs: number) => Promise<void>) | null = null;

  constructor(
    private rank: number,
    private membership: Membership,
    private runner: CollectiveRunner,
    private log: Logger,
  ) {}

  start(): void {
    this.membership.onChange(() => {
      this.scheduleAck();
      this.checkSelf();
    });
  }

  /** The channel to rank 0 is up: acknowledge the current view. */
  attach(channel: CoordinatorChannel): void {
    this.channel = channel;
    this.scheduleAck();
  }

  /** Messages rank 0 pushes. */
  onPush(msg: Record<string, unknown>): void {
    switch (msg.t) {
      case "view":
        if (msg.view) this.membership.applyView(msg.view as MembershipView);
        else if (!applyViewDelta(this.membership, msg.delta as ViewDelta)) this.fetchFullView();
        return;
      case "retry":
        this.onRetry(msg);
        return;
      case "ping":
        this.channel?.send({ t: "pong", id: msg.id });
        return;
      case "linkcheck":
        void this.linkCheck(msg);
        return;
    }
  }

  private fetchingView = false;

  /** A view delta that did not fit this rank's view (a push missed): the coordinator's full view. */
  private fetchFullView(): void {
    const ch = this.channel;
    if (!ch || this.fetchingView) return;
    this.fetchingView = true;
    ch.request({ t: "view_full" }, SETTLE_WAIT_MS)
      .then((res) => this.membership.applyView(res.view as MembershipView))
      .catch((e: Error) => this.log.warn(`full view not fetched (retried at the next push): ${e.message}`))
      .finally(() => (this.fetchingView = false));
  }

  private async linkCheck(msg: Record<string, unknown>): Promise<void> {
    const ranks = msg.ranks as number[];
    let ok = true;
    let error: string | undefined;
    try {
      if (!this.runLinkCheck) throw new Error("no data plane");
      await this.runLinkCheck(ranks, BigInt(String(msg.opId)), Number(msg.timeoutMs));
    } catch (e) {
      ok = false;
      error = (e as Error).message.slice(0, 300);
    }
    this.channel?.send({ t: "linkcheck_done", id: msg.id, ok, ...(error ? { error } : {}) });
  }

  scheduleAck(): void {
    if (this.ackScheduled) return;
    this.ackScheduled = true;
    setImmediate(() => {
      this.ackScheduled = false;
      void this.ack();
    });
  }

  private async ack(): Promise<void> {
    const m = this.membership;
    const epoch = m.epoch;
    const inactive = new Set<number>();
    for (let r = 0; r < m.worldSize; r++) if (!m.isActive(r)) inactive.add(r);
    // Ops that involve a removed rank fail at once (peerDown); wait for them so that the ack
    // lists every op of this rank that needs a re-issue.
    await this.runner.settledInvolving(inactive, SETTLE_WAIT_MS);
    if (this.masterLost) return;
    try {
      this.channel?.send({ t: "view_ack", epoch, retry: this.runner.awaitingRetry() });
    } catch (e) {
      this.log.warn(`view ack for epoch ${epoch} not sent: ${(e as Error).message}`);
    }
  }

  // ---- RetryHooks (the collective runner) ----

  opFailed(opId: string, peer: number, why: string): void {
    const ch = this.channel;
    if (!ch || this.masterLost) return;
    if (!this.membership.isActive(peer)) {
      this.scheduleAck();
      return;
    }
    this.log.warn(`op ${opId}: data plane failed with rank ${peer}: ${why}; reporting it to rank 0`);
    ch.request({ t: "suspect", peer, why: why.slice(0, 300), opId }, 10_000).then(
      () => this.scheduleAck(),
      (e: Error) => this.log.warn(`reporting rank ${peer} to rank 0 failed: ${e.message}`),
    );
  }

  opTimedOut(opId: string, peer: number, why: string): void {
    const ch = this.channel;
    if (!ch || this.masterLost || !this.membership.isActive(peer) || !this.membership.isActive(this.rank)) return;
    ch.request({ t: "suspect", peer, why: why.slice(0, 300), opId, kind: "timeout" }, 30_000).catch((e: Error) =>
      this.log.warn(`reporting the timeout with rank ${peer} to rank 0 failed: ${e.message}`),
    );
  }

  awaitRetry(opId: string, timeoutMs: number): Promise<GoDecision> {
    if (this.masterLost) return Promise.reject(this.lostError());
    const self = this.membership.get(this.rank);
    if (!this.membership.isActive(this.rank)) return Promise.reject(this.removedError(self?.state ?? "inactive", self?.reason));
    return new Promise<GoDecision>((resolve, reject) => {
      const w: RetryWaiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(opId);
          reject(
            new Timeout(`rank ${this.rank}: op ${opId} failed and rank 0 did not re-issue it among the survivors within the call's timeout`, {
              missing_ranks: [],
            }),
          );
        }, timeoutMs),
      };
      this.waiters.set(opId, w);
      const early = this.early.get(opId);
      if (early) {
        this.early.delete(opId);
        this.onRetry(early);
      }
    });
  }

  private onRetry(msg: Record<string, unknown>): void {
    const opId = String(msg.opId);
    const w = this.waiters.get(opId);
    if (!w) {
      this.early.set(opId, msg);
      if (this.early.size > EARLY_MAX) this.early.delete(this.early.keys().next().value as string);
      return;
    }
    this.waiters.delete(opId);
    clearTimeout(w.timer);
    if (msg.d) {
      w.resolve(msg.d as GoDecision);
      return;
    }
    const e = (msg.error ?? {}) as { status?: number; code?: string; message?: string; details?: Record<string, unknown> };
    w.reject(apiErrorFromJSON(e.status ?? 503, { error: { code: e.code ?? "peer_failed", message: e.message ?? "re-issue failed", ...(e.details ?? {}) } }));
  }

  private rejectAll(err: () => Error): void {
    for (const [id, w] of this.waiters) {
      this.waiters.delete(id);
      clearTimeout(w.timer);
      w.reject(err());
    }
  }

  private removedError(state: string, reason?: string): Error {
    return new NotReady(`rank ${this.rank} was removed from the world (state ${state}${reason ? `: ${reason}` : ""})`, { state });
  }

  private lostError(): Error {
    return new MasterLost(`rank ${this.rank}: no coordinator: ${this.masterLost}`);
  }

  /** This rank was removed (failed / left): calls waiting for a re-issue end now. */
  private checkSelf(): void {
    if (this.membership.isActive(this.rank) || this.waiters.size === 0) return;
    const rec = this.membership.get(this.rank);
    this.rejectAll(() => this.removedError(rec?.state ?? "inactive", rec?.reason));
  }

  /** Rank 0 is gone (link closed or heartbeat timeout): final for this process. */
  lost(why: string): void {
    if (this.masterLost) return;
    this.masterLost = why;
    this.rejectAll(() => this.lostError());
  }
}

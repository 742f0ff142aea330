// Runs one collective call for a rank: CallDesc -> agreement via rank 0 -> an executor's
// attempts on the data plane (tensor-collective.ts, buffer-collective.ts), re-issued among the
// survivors when a peer fails -> result. Knows nothing of HTTP or JSON (routes decode/encode).
import type { DataPlane, NativeBuffer } from "../native/types";
import { NativeError } from "../native/types";
import type { CollectiveOp, DTypeName, RedOpName } from "../ops/table";
import { ApiError, Internal, InvalidRequest, PeerFailed, Timeout, TooLarge } from "../errors";
import type { Metrics } from "../util/metrics";
import type { Agreement } from "./agreement";
import type { CallDesc, GoDecision } from "./matcher";
import type { Membership } from "./membership";
import { tensorExecutor } from "./tensor-collective";

export interface CollectiveCall {
  op: CollectiveOp;
  group: string;
  tag: string | null;
  timeoutMs: number;
  redop: RedOpName | null;
  /** The root (reduce/gather dst, broadcast/scatter src) as a global rank; REST gives a group rank. */
  rootGlobal: number | null;
  dtype: DTypeName | null;
  /** This rank's tensor shape, or the shape of one block for list inputs. */
  shape: number[] | null;
  /** Elements per block (-1: unknown here, e.g. scatter on a non-root rank). */
  count: number;
  /** Decoded input (list inputs concatenated in group order). */
  send: NativeBuffer | null;
  /** List inputs: the global rank each block is for, in send order (= active ranks when decoded). */
  blockRanks?: number[];
  /** alltoall: each block's shape, send order. */
  blockShapes?: number[][];
  /** performance.now() when the request arrived. */
  startedAt: number;
  /** Aborts when the caller went away: an undecided call is withdrawn (see Agreement.join). */
  signal?: AbortSignal;
}

export interface ResultTensor {
  dtype: DTypeName;
  shape: number[];
  bytes: Uint8Array;
}

export type ResultValue = ResultTensor | (ResultTensor | null)[] | null;

/** One attempt's outcome: the result and the native buffers it views (release after encoding). */
export interface Attempt<R> {
  result: R;
  owned: NativeBuffer[];
}

/**
 * Runs one attempt of a decided op on the data plane. The tensor executor is
 * CollectiveRunner.execute; buffers have theirs (control/buffer-collective.ts).
 */
export interface Executor<R> {
  attempt(d: GoDecision, timeoutMs: number): Promise<Attempt<R>>;
  /** A failed attempt leaves every member's inputs intact: rank 0 may re-issue among survivors. */
  reissuable: boolean;
}

export interface CollectiveResult<R = ResultValue> {
  op: CollectiveOp;
  seq: number;
  result: R;
  activeRanks: number[];
  contributors: number[];
  failedRanks: number[];
  agreeMs: number;
  dataMs: number;
  /** Named groups: the global rank of each group rank. */
  groupRanks?: number[];
  /** Native buffers the result views; release after encoding. */
  owned: NativeBuffer[];
}

/** What this rank tells rank 0 about its call (matched against the other members'). */
function callDesc(call: CollectiveCall): CallDesc {
  const desc: CallDesc = {
    op: call.op,
    group: call.group,
    tag: call.tag,
    dtype: call.dtype,
    count: call.count,
    shape: call.shape,
    root: call.rootGlobal,
    redop: call.redop,
    timeoutMs: call.timeoutMs,
  };
  if (call.op === "alltoall") {
    desc.shapes = call.blockShapes;
    if (call.blockRanks) desc.blockRanks = call.blockRanks;
  }
  return desc;
}

/** What the runner needs from the fault-tolerance side (control/participant.ts). */
export interface RetryHooks {
  /** This rank's part of op `opId` failed because `peer` failed or broke its link: tell rank 0. */
  opFailed(opId: string, peer: number, why: string): void;
  /** Rank 0's re-issue of op `opId` among the survivors (rejects with the reason it can't be). */
  awaitRetry(opId: string, timeoutMs: number): Promise<GoDecision>;
  /** This rank's part timed out waiting for `peer` (maybe a partition: rank 0 checks the link). */
  opTimedOut(opId: string, peer: number, why: string): void;
}

/** A collective this rank took part in whose outcome rank 0 may ask about (retry bookkeeping). */
export interface RetryItem {
  opId: string;
  seq: number;
  group: string;
  tag: string | null;
  desc: CallDesc;
  /** The members of that op (global ranks). */
  ranks: number[];
}

interface OpEntry extends RetryItem {
  /** running: on the data plane; failed: waiting for rank 0's re-issue. */
  state: "running" | "failed";
  settled: Promise<void>;
  settle: () => void;
}

export class CollectiveRunner {
  /** Ops decided for this rank and not finished (running, or failed and awaiting a re-issue). */
  private entries = new Map<string, OpEntry>();
  hooks: RetryHooks | null = null;

  constructor(
    private rank: number,
    private dataPlane: DataPlane,
    private membership: Membership,
    private agreement: Agreement,
    private metrics: Metrics,
  ) {}

  /** Resolves once every running op that involves one of `ranks` has settled (or after maxMs). */
  settledInvolving(ranks: Set<number>, maxMs: number): Promise<void> {
    const waits = [...this.entries.values()].filter((e) => e.state === "running" && e.ranks.some((r) => ranks.has(r))).map((e) => e.settled);
    if (waits.length === 0) return Promise.resolve();
    let timer: ReturnType<typeof setTimeout> | undefined;
    return Promise.race([Promise.all(waits).then(() => {}), new Promise<void>((r) => (timer = setTimeout(r, maxMs)))]).finally(() => clearTimeout(timer));
  }

  /** Ops decided for this rank and not finished (the dashboard's "in flight on the data plane"). */
  inFlight(): { seq: number; group: string; tag: string | null; op: string; ranks: number[]; state: "running" | "failed" }[] {
    return [...this.entries.values()].map((e) => ({ seq: e.seq, group: e.group, tag: e.tag, op: e.desc.op, ranks: e.ranks, state: e.state }));
  }

  /** Ops whose part failed here and that wait for rank 0's re-issue (sent with every view ack). */
  awaitingRetry(): RetryItem[] {
    return [...this.entries.values()]
      .filter((e) => e.state === "failed")
      .map(({ opId, seq, group, tag, desc, ranks }) => ({ opId, seq, group, tag, desc, ranks }));
  }

  private register(d: GoDecision, call: CollectiveCall, desc: CallDesc): OpEntry {
    let settle!: () => void;
    const settled = new Promise<void>((r) => (settle = r));
    const e: OpEntry = { opId: d.opId, seq: d.seq, group: call.group, tag: call.tag, desc, ranks: d.ranks, state: "running", settled, settle };
    this.entries.set(d.opId, e);
    return e;
  }

  /** A call on tensors decoded into native memory: results land in fresh native buffers. */
  run(call: CollectiveCall): Promise<CollectiveResult> {
    return this.runWith(call, tensorExecutor(this.rank, this.dataPlane, this.membership, call));
  }

  /**
   * One collective call, whatever holds its data: agreement via rank 0, the executor's attempts
   * (re-issued among the survivors when a peer fails), metrics and /debug/recent.
   */
  async runWith<R>(call: CollectiveCall, exec: Executor<R>): Promise<CollectiveResult<R>> {
    const desc = callDesc(call);
    /** The members this call expected (failed_ranks = those of them found failed meanwhile). */
    const expected = this.membership.groupRanks(call.group); // a cached list, replaced (never changed) by a new view
    const epoch = this.membership.epoch;
    let seq: number | null = null;
    let agreeMs: number | null = null;
    const t0 = performance.now();
    try {
      const first = await this.agreement.join(desc, call.signal);
      seq = first.seq;
      agreeMs = performance.now() - t0;
      const { d, outcome } = await this.attempts(call, desc, first, exec);
      const out: CollectiveResult<R> = {
        op: call.op,
        seq: d.seq,
        ...outcome,
        activeRanks: [],
        contributors: [],
        failedRanks: [],
        agreeMs,
        dataMs: performance.now() - t0 - agreeMs,
      };
      this.finishMembers(out, call.group, d.ranks, this.membership.epoch === epoch ? null : expected);
      this.record(call, d.seq, call.dtype ?? d.dtype ?? null, null, t0, agreeMs);
      return out;
    } catch (e) {
      const err = toApiError(e, this.rank, call.op, seq);
      this.record(call, seq ?? ((err.details.seq as number | undefined) ?? null), call.dtype, err, t0, agreeMs);
      throw err;
    }
  }

  /** Attempts of the op until one succeeds, re-issued by rank 0 while a failed peer is to blame. */
  private async attempts<R>(call: CollectiveCall, desc: CallDesc, first: GoDecision, exec: Executor<R>): Promise<{ d: GoDecision; outcome: Attempt<R> }> {
    const deadline = call.startedAt + call.timeoutMs;
    let d = first;
    for (;;) {
      const entry = this.register(d, call, desc);
      try {
        const outcome = await exec.attempt(d, Math.max(1000, Math.round(deadline - performance.now())));
        this.entries.delete(entry.opId);
        entry.settle();
        return { d, outcome };
      } catch (e) {
        const peer = retryablePeer(e, d, this.rank);
        if (peer === null || !exec.reissuable || !this.hooks || deadline - performance.now() < 1) {
          this.entries.delete(entry.opId);
          entry.settle();
          const late = timedOutPeer(e, d, this.rank);
          if (late !== null) this.hooks?.opTimedOut(d.opId, late, (e as Error).message);
          throw e;
        }
        // Stay registered as "failed": the next view ack lists this op and rank 0 re-issues
        // it among the survivors whose part failed too (new op id, same inputs).
        entry.state = "failed";
        entry.settle();
        const next = this.hooks.awaitRetry(d.opId, Math.max(1, deadline - performance.now()));
        this.hooks.opFailed(d.opId, peer, (e as Error).message);
        try {
          d = await next;
        } finally {
          this.entries.delete(entry.opId);
        }
      }
    }
  }

  /** Metrics and the /debug/recent entry of a finished call (err null: it succeeded). */
  private record(call: CollectiveCall, seq: number | null, dtype: DTypeName | null, err: ApiError | null, t0: number, agreeMs: number | null): void {
    const now = performance.now();
    const inBytes = call.send?.byteLength ?? 0;
    const elapsedMs = now - call.startedAt;
    this.metrics.op(call.op, err ? err.code : "ok", inBytes, elapsedMs / 1000);
    this.metrics.recent({
      seq,
      op: call.op,
      group: call.group,
      tag: call.tag,
      dtype,
      count: call.count >= 0 ? call.count : null,
      bytes: inBytes,
      started_at: Date.now() - elapsedMs,
      elapsed_ms: round3(elapsedMs),
      agree_ms: agreeMs === null ? null : round3(agreeMs),
      data_ms: agreeMs === null ? null : round3(now - t0 - agreeMs),
      outcome: err ? err.code : "ok",
      ...(err ? { message: err.message } : {}),
    });
  }

  /**
   * Fills active_ranks / contributors / failed_ranks. For a named group (POST /groups) they are
   * group ranks and active_ranks has one entry per group rank; otherwise global ranks and slots.
   */
  private finishMembers(out: CollectiveResult<unknown>, group: string, ranks: number[], expected: number[] | null): void {
    const m = this.membership;
    // inactive now and not removed gracefully (a deactivated rank "left"; it did not fail).
    // expected is null when the view did not change during the call (nobody can have failed):
    // every rank runs this per collective, so no O(world) scan then, let alone O(world^2)
    const failed = expected === null ? [] : expected.filter((r) => !m.isActive(r) && m.get(r)?.state !== "left" && !ranks.includes(r));
    const def = m.groupDef(group);
    if (!def) {
      out.activeRanks = m.activeMask();
      out.contributors = ranks.slice();
      out.failedRanks = failed;
      return;
    }
    out.activeRanks = def.map((r) => (m.isActive(r) ? 1 : 0));
    out.contributors = ranks.map((r) => def.indexOf(r));
    out.failedRanks = failed.map((r) => def.indexOf(r));
    out.groupRanks = def.slice();
  }
}

/**
 * The peer a data-plane failure names, when re-running the op among the survivors may help:
 * the peer failed, was marked down, or broke its link. null otherwise (timeouts, bad input,
 * a closed data plane).
 */
/** The peer a data-plane timeout (ETIMEOUT) names, if it is another member of the op. */
function timedOutPeer(e: unknown, d: GoDecision, me: number): number | null {
  if (!(e instanceof NativeError || (e instanceof Error && e.name === "NativeError"))) return null;
  const ne = e as NativeError;
  const peer = ne.failedPeer;
  if (ne.code !== "ETIMEOUT" || peer === null || peer < 0 || peer === me || !d.ranks.includes(peer)) return null;
  return peer;
}

function retryablePeer(e: unknown, d: GoDecision, me: number): number | null {
  if (!(e instanceof NativeError || (e instanceof Error && e.name === "NativeError"))) return null;
  const ne = e as NativeError;
  if (ne.code !== "EPEER" && ne.code !== "EPROTO" && ne.code !== "EIO") return null;
  const peer = ne.failedPeer;
  if (peer === null || peer < 0 || peer === me || !d.ranks.includes(peer)) return null;
  return peer;
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** Maps data-plane failures (NativeError) and anything unexpected to typed API errors. */
export function toApiError(e: unknown, rank: number, op: string, seq: number | null): ApiError {
  if (e instanceof ApiError) return e;
  const at = `rank ${rank}: ${op}${seq !== null ? ` (seq ${seq})` : ""}`;
  if (e instanceof NativeError || (e instanceof Error && e.name === "NativeError")) {
    const ne = e as NativeError;
    const peer = ne.failedPeer ?? null;
    const details: Record<string, unknown> = { native_code: ne.code };
    if (seq !== null) details.seq = seq;
    if (peer !== null && peer >= 0) details.failed_ranks = [peer];
    switch (ne.code) {
      case "ETIMEOUT":
        return new Timeout(`${at}: data plane timed out: ${ne.message}`, {
          missing_ranks: peer !== null && peer >= 0 ? [peer] : [],
          ...details,
        });
      case "EPEER":
      case "EPROTO":
      case "EIO":
      case "ECANCELED":
        return new PeerFailed(`${at}: data plane failed: ${ne.message}`, details);
      case "EINVAL":
      case "ENODEV":
        return new InvalidRequest(`${at}: data plane refused the op: ${ne.message}`, details);
      case "ENOMEM":
        return new TooLarge(`${at}: data plane out of memory: ${ne.message}`, details);
    }
  }
  const msg = e instanceof Error ? e.message : String(e);
  return new Internal(`${at}: ${msg}`);
}

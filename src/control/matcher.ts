// Agreement / matching: runs on rank 0 (the coordinator). Every rank sends it a CallDesc for
// each collective call before any bytes move; when every member of the group has joined the
// same collective, the matcher compares what each called and answers every member with the
// same decision: go (with the op_id all ranks pass to the data plane), 409 mismatch, or — when
// the earliest joiner's timeout passes first — 504 timeout naming the missing ranks.
//
// Matching rule (contract): untagged calls of a group match in arrival order: a rank's k-th
// pending call joins the group's k-th open collective. A collective that ends in 409/504 is
// removed (abandoned by every rank that joined it); ranks that had not joined owe nothing, so
// every rank's next call starts a fresh collective. Tagged calls match by (group, tag), in any
// order and several at once; a tag reused while an earlier one is still open queues the same way.
import { collectiveInfo, rootField, type CollectiveOp, type DTypeName, type RedOpName } from "../ops/table";
import type { Membership } from "./membership";

export interface CallDesc {
  op: CollectiveOp;
  group: string;
  tag: string | null;
  /** null where this rank doesn't know it (scatter on a non-root rank, barrier). */
  dtype: DTypeName | null;
  /** Elements per block (native `count`); -1 where not known or not compared (scatter non-root, alltoall). */
  count: number;
  /** Shape of this rank's tensor / of one block. */
  shape: number[] | null;
  /** alltoall: shape of the block this rank sends to each group member (group order). */
  shapes?: number[][];
  /** alltoall: the global rank each entry of `shapes` is for (when absent: the members, in order). */
  blockRanks?: number[];
  /** Global rank of the root (CollectiveCall.rootGlobal); null when unrooted. */
  root: number | null;
  redop: RedOpName | null;
  timeoutMs: number;
}

export type Decision = GoDecision | FailDecision;

export interface GoDecision {
  ok: true;
  seq: number;
  /** Decimal u64; identical on every member. */
  opId: string;
  /** Members, ascending global rank (group order). */
  ranks: number[];
  /** allgather/gather: each member's shape (group order). alltoall: shape of the block each member sends to the receiver. */
  shapes?: number[][];
  /** scatter: dtype and block shape (from the root). */
  dtype?: DTypeName;
  shape?: number[];
  /** Set when this is a re-issue among survivors of the collective with that op id. */
  retryOf?: string;
}

export interface FailDecision {
  ok: false;
  seq: number;
  status: number;
  code: "collective_mismatch" | "timeout" | "invalid_request" | "not_ready" | "peer_failed" | "cancelled";
  message: string;
  details: Record<string, unknown>;
}

export type Reply = (d: Decision) => void;

interface Joined {
  desc: CallDesc;
  reply: Reply;
  /** performance.now() by which this call wants its answer (joined + its timeout). */
  deadline: number;
}

interface OpenCollective {
  key: string;
  group: string;
  tag: string | null;
  seq: number;
  members: number[];
  joined: Map<number, Joined>;
  /** performance.now() by which every member must have joined (the earliest joiner's timeout). */
  deadline: number;
  createdAt: number;
  /** A re-issue (see retry()). */
  retryOf?: string;
}

export interface MatcherEvents {
  /** A collective was decided (for /debug and metrics on rank 0). */
  decided?: (info: { seq: number; group: string; tag: string | null; op: string; outcome: string; members: number[] }) => void;
}

export class Matcher {
  private open = new Map<string, OpenCollective[]>();
  private groupSeq = new Map<string, number>();
  private nextOpId: bigint;

  constructor(
    private membership: Membership,
    private events: MatcherEvents = {},
    /** First op id (a coordinator that took over starts past every id its predecessor could have used). */
    firstOpId = 1n,
  ) {
    this.nextOpId = firstOpId;
  }

  /** A fresh op id from the same sequence as decisions (data-plane link checks). */
  allocOpId(): string {
    return (this.nextOpId++).toString();
  }

  /** Number of collectives waiting for members (for /debug, tests). */
  pendingCount(): number {
    let n = 0;
    for (const l of this.open.values()) n += l.length;
    return n;
  }

  pending(): { group: string; tag: string | null; seq: number; members: number[]; joined: number[] }[] {
    const out = [];
    for (const list of this.open.values()) {
      for (const c of list) out.push({ group: c.group, tag: c.tag, seq: c.seq, members: c.members, joined: [...c.joined.keys()].sort((a, b) => a - b) });
    }
    return out;
  }

  join(rank: number, desc: CallDesc, reply: Reply): void {
    const key = desc.tag === null ? `u\u0000${desc.group}` : `t\u0000${desc.group}\u0000${desc.tag}`;
    let list = this.open.get(key);
    let c: OpenCollective | undefined;
    if (list) {
      for (const x of list) {
        if (!x.joined.has(rank) && isMember(x.members, rank)) {
          c = x;
          break;
        }
      }
    }
    const now = performance.now();
    if (!c) {
      const def = this.membership.groupDef(desc.group);
      if (def && !def.includes(rank)) {
        reply({
          ok: false,
          seq: 0,
          status: 400,
          code: "invalid_request",
          message: `rank ${rank} is not a member of group ${JSON.stringify(desc.group)} (ranks ${def.join(", ")})`,
          details: { rank, group_ranks: def },
        });
        return;
      }
      const members = this.membership.groupRanks(desc.group);
      if (!members.includes(rank)) {
        reply({
          ok: false,
          seq: 0,
          status: 503,
          code: "not_ready",
          message: `rank ${rank} is not an active member of group ${JSON.stringify(desc.group)} (active: ${members.join(", ")})`,
          details: { rank, active_ranks: members },
        });
        return;
      }
      const seq = (this.groupSeq.get(desc.group) ?? 0) + 1;
      this.groupSeq.set(desc.group, seq);
      c = { key, group: desc.group, tag: desc.tag, seq, members, joined: new Map(), deadline: Infinity, createdAt: now };
      if (!list) {
        list = [];
        this.open.set(key, list);
      }
      list.push(c);
    }
    const deadline = now + desc.timeoutMs;
    c.joined.set(rank, { desc, reply, deadline });
    if (c.joined.size === c.members.length) {
      this.finish(c);
      this.decide(c);
      return;
    }
    if (deadline < c.deadline) {
      c.deadline = deadline;
      this.armExpiry(deadline, now);
    }
  }

  /**
   * Takes back `rank`'s call `desc` (the very object it joined with) when its client went away
   * before the collective was decided: the call is answered 499 cancelled and can't join a
   * later collective in its place (it did: the next call's peers got its stale values, with
   * status 200). The rank's later calls of the same key move one collective up, so its k-th
   * pending call still meets the others' k-th. Returns false when the call was decided already
   * (the op runs; its answer just goes nowhere).
   */
  withdraw(rank: number, desc: CallDesc): boolean {
    const key = desc.tag === null ? `u\u0000${desc.group}` : `t\u0000${desc.group}\u0000${desc.tag}`;
    const list = this.open.get(key);
    const at = list ? list.findIndex((c) => c.joined.get(rank)?.desc === desc) : -1;
    if (!list || at < 0) return false;
    const gone = list[at]!;
    const call = gone.joined.get(rank)!;
    const touched = list.slice(at);
    for (let k = 0; k < touched.length; k++) {
      const later = touched[k + 1]?.joined.get(rank);
      if (!later) {
        touched[k]!.joined.delete(rank);
        break;
      }
      touched[k]!.joined.set(rank, later);
      touched[k + 1]!.joined.delete(rank);
    }
    safeReply(call.reply, {
      ok: false,
      seq: gone.seq,
      status: 499,
      code: "cancelled",
      message: `rank ${rank}: ${describeCall(desc)} was withdrawn: its client disconnected before every member joined`,
      details: { seq: gone.seq, rank },
    });
    const now = performance.now();
    for (const c of touched) {
      if (c.joined.size === 0) {
        this.finish(c);
        if (this.groupSeq.get(c.group) === c.seq) this.groupSeq.set(c.group, c.seq - 1); // no gap in seq
        continue;
      }
      c.deadline = Math.min(...[...c.joined.values()].map((j) => j.deadline));
      if (c.joined.size === c.members.length) {
        this.finish(c);
        this.decide(c);
      } else this.armExpiry(c.deadline, now);
    }
    return true;
  }

  /**
   * One timer for every open collective, armed at the earliest deadline: a collective that is
   * decided in time costs no timer of its own (no setTimeout/clearTimeout per call). When it
   * fires, the collectives past their deadline end in 504 and it is armed for the next one.
   */
  private expiryTimer: ReturnType<typeof setTimeout> | null = null;
  private expiryAt = Infinity;

  private armExpiry(deadline: number, now: number): void {
    if (deadline >= this.expiryAt) return;
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryAt = deadline;
    this.expiryTimer = setTimeout(this.sweep, Math.max(0, deadline - now));
    this.expiryTimer.unref?.(); // a waiting call's open request keeps the process up anyway
  }

  private readonly sweep = (): void => {
    this.expiryTimer = null;
    this.expiryAt = Infinity;
    const now = performance.now();
    const due: OpenCollective[] = [];
    let next = Infinity;
    for (const list of this.open.values()) {
      for (const c of list) {
        if (c.deadline <= now) due.push(c);
        else if (c.deadline < next) next = c.deadline;
      }
    }
    // earliest first, as separate timers would have fired
    due.sort((a, b) => a.deadline - b.deadline);
    for (const c of due) this.expire(c);
    if (next < Infinity) this.armExpiry(next, now);
  };

  /**
   * Removes ranks from every open collective (fault tolerance: they failed or left). A dropped
   * rank that had joined is told it is out; a collective whose root was dropped fails for every
   * member with 503 peer_failed; one whose remaining members have all joined is decided now.
   */
  dropRanks(ranks: number[], why = "is no longer active"): void {
    const dropped = new Set(ranks);
    for (const list of [...this.open.values()]) {
      for (const c of [...list]) {
        if (!c.members.some((r) => dropped.has(r))) continue;
        const gone = c.members.filter((r) => dropped.has(r));
        c.members = c.members.filter((r) => !dropped.has(r));
        for (const r of gone) {
          const j = c.joined.get(r);
          if (!j) continue;
          c.joined.delete(r);
          safeReply(j.reply, {
            ok: false,
            seq: c.seq,
            status: 503,
            code: "not_ready",
            message: `rank ${r} ${why}: it was removed from group ${JSON.stringify(c.group)} while its ${j.desc.op} (seq ${c.seq}) waited`,
            details: { seq: c.seq, rank: r },
          });
        }
        const first = c.joined.values().next().value as Joined | undefined;
        const root = first?.desc.root ?? null;
        if (first && root !== null && gone.includes(root)) {
          this.finish(c);
          const field = rootField(first.desc.op);
          const d: FailDecision = {
            ok: false,
            seq: c.seq,
            status: 503,
            code: "peer_failed",
            message: `${first.desc.op} (seq ${c.seq}) in group ${JSON.stringify(c.group)}: the root (${field} ${root}) ${why}`,
            details: { seq: c.seq, failed_ranks: gone },
          };
          this.events.decided?.({ seq: c.seq, group: c.group, tag: c.tag, op: first.desc.op, outcome: "peer_failed", members: c.members });
          for (const j of c.joined.values()) safeReply(j.reply, d);
          continue;
        }
        if (c.members.length === 0) {
          this.finish(c);
          continue;
        }
        if (c.joined.size === c.members.length) {
          this.finish(c);
          this.decide(c);
        }
      }
    }
  }

  /**
   * Re-issues a collective among `members` (survivors whose part of op `opId` failed): the same
   * calls, a new op id. Replies go through reply(rank, decision).
   */
  retry(opId: string, seq: number, group: string, tag: string | null, calls: Map<number, CallDesc>, reply: (rank: number, d: Decision) => void): void {
    const members = [...calls.keys()].sort((a, b) => a - b);
    const joined = new Map<number, Joined>();
    for (const r of members) joined.set(r, { desc: calls.get(r)!, reply: (d) => reply(r, d), deadline: Infinity });
    const c: OpenCollective = {
      key: `r\u0000${opId}`,
      group,
      tag,
      seq,
      members,
      joined,
      deadline: Infinity,
      createdAt: performance.now(),
      retryOf: opId,
    };
    this.decide(c);
  }

  private finish(c: OpenCollective): void {
    const list = this.open.get(c.key);
    if (!list) return;
    const i = list.indexOf(c);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.open.delete(c.key);
  }

  private expire(c: OpenCollective): void {
    if (!this.open.get(c.key)?.includes(c)) return;
    this.finish(c);
    const joinedRanks = [...c.joined.keys()].sort((a, b) => a - b);
    const missing = c.members.filter((r) => !c.joined.has(r));
    const first = c.joined.values().next().value as Joined;
    const waited = Math.round(performance.now() - c.createdAt);
    const message =
      `timeout in group ${JSON.stringify(c.group)}${c.tag !== null ? ` tag ${JSON.stringify(c.tag)}` : ""} (seq ${c.seq}): ` +
      `rank${missing.length > 1 ? "s" : ""} ${missing.join(", ")} did not call ${describeCall(first.desc)} within ` +
      `${first.desc.timeoutMs} ms (waited ${waited} ms; joined: ${joinedRanks.join(", ")})`;
    const d: FailDecision = {
      ok: false,
      seq: c.seq,
      status: 504,
      code: "timeout",
      message,
      details: { missing_ranks: missing, joined_ranks: joinedRanks, seq: c.seq },
    };
    this.events.decided?.({ seq: c.seq, group: c.group, tag: c.tag, op: first.desc.op, outcome: "timeout", members: c.members });
    for (const j of c.joined.values()) safeReply(j.reply, d);
  }

  private decide(c: OpenCollective): void {
    const ranks = c.members;
    const descs = ranks.map((r) => c.joined.get(r)!.desc);
    const failure = this.compare(c, descs);
    if (failure) {
      this.events.decided?.({ seq: c.seq, group: c.group, tag: c.tag, op: descs[0]!.op, outcome: failure.code, members: ranks });
      for (const r of ranks) safeReply(c.joined.get(r)!.reply, failure);
      return;
    }
    const opId = (this.nextOpId++).toString();
    const op = descs[0]!.op;
    this.events.decided?.({ seq: c.seq, group: c.group, tag: c.tag, op, outcome: "ok", members: ranks });
    const extra = c.retryOf !== undefined ? { retryOf: c.retryOf } : {};
    const info = collectiveInfo(op);
    if (info.input === "tensor" && info.output === "tensors") {
      // gathers: each member's own shape
      const d: GoDecision = { ok: true, seq: c.seq, opId, ranks, shapes: descs.map((x) => x.shape!), ...extra };
      for (const r of ranks) safeReply(c.joined.get(r)!.reply, d);
      return;
    }
    if (info.input_on === "root") {
      // scatter: dtype and block shape from the root
      const root = descs[0]!.root!;
      const rd = descs[ranks.indexOf(root)]!;
      const d: GoDecision = { ok: true, seq: c.seq, opId, ranks, dtype: rd.dtype!, shape: rd.shape!, ...extra };
      for (const r of ranks) safeReply(c.joined.get(r)!.reply, d);
      return;
    }
    if (info.send === "counts") {
      // alltoall: each receiver learns the shape of every block it gets
      for (let i = 0; i < ranks.length; i++) {
        const shapes = descs.map((x) => blockShapeFor(x, ranks[i]!, i));
        safeReply(c.joined.get(ranks[i]!)!.reply, { ok: true, seq: c.seq, opId, ranks, shapes, ...extra });
      }
      return;
    }
    const d: GoDecision = { ok: true, seq: c.seq, opId, ranks, ...extra };
    for (const r of ranks) safeReply(c.joined.get(r)!.reply, d);
  }

  private compare(c: OpenCollective, descs: CallDesc[]): FailDecision | null {
    const ranks = c.members;
    const first = descs[0]!;
    let same = true;
    for (let i = 1; i < descs.length && same; i++) same = sameCall(first, descs[i]!);
    const info = collectiveInfo(first.op);
    if (info.input_on === "root" && same) {
      const root = first.root!;
      const ri = ranks.indexOf(root);
      if (ri < 0) return invalidRoot(c, first, rootField(first.op), root);
      if (descs[ri]!.dtype === null) {
        return {
          ok: false,
          seq: c.seq,
          status: 400,
          code: "invalid_request",
          message: `${first.op} (seq ${c.seq}): ${rootField(first.op)} rank ${root} did not give "tensors"`,
          details: { seq: c.seq },
        };
      }
    }
    if (!same) {
      const calls = ranks.map((r, i) => ({ rank: r, call: describeCall(descs[i]!) }));
      const message =
        `collective mismatch in group ${JSON.stringify(c.group)}${c.tag !== null ? ` tag ${JSON.stringify(c.tag)}` : ""} ` +
        `(seq ${c.seq}): ` + calls.map((x) => `rank ${x.rank} called ${x.call}`).join("; ");
      return { ok: false, seq: c.seq, status: 409, code: "collective_mismatch", message, details: { calls, seq: c.seq } };
    }
    if (first.root !== null && !ranks.includes(first.root)) {
      return invalidRoot(c, first, rootField(first.op), first.root);
    }
    if (info.send === "counts") {
      for (let i = 0; i < descs.length; i++) {
        const br = descs[i]!.blockRanks;
        const fits = br ? ranks.every((r) => br.includes(r)) : descs[i]!.shapes!.length === ranks.length;
        if (!fits) {
          return {
            ok: false,
            seq: c.seq,
            status: 400,
            code: "invalid_request",
            message: `alltoall (seq ${c.seq}): rank ${ranks[i]} gave ${descs[i]!.shapes!.length} tensors for ${ranks.length} active ranks`,
            details: { seq: c.seq },
          };
        }
      }
    }
    return null;
  }
}

function invalidRoot(c: OpenCollective, d: CallDesc, name: string, root: number): FailDecision {
  return {
    ok: false,
    seq: c.seq,
    status: 400,
    code: "invalid_request",
    message: `${d.op} (seq ${c.seq}): ${name} ${root} is not an active rank of group ${JSON.stringify(c.group)} (members: ${c.members.join(", ")})`,
    details: { seq: c.seq, members: c.members },
  };
}

/** alltoall: the shape of the block `d`'s rank sends to `to` (member index i). */
function blockShapeFor(d: CallDesc, to: number, i: number): number[] {
  if (d.blockRanks) return d.shapes![d.blockRanks.indexOf(to)]!;
  return d.shapes![i]!;
}

function safeReply(reply: Reply, d: Decision): void {
  try {
    reply(d);
  } catch {
    // a member whose link broke: it will time out locally
  }
}

/** Whether two ranks' calls agree on what the contract says must match. */
function sameCall(a: CallDesc, b: CallDesc): boolean {
  if (a.op !== b.op || a.root !== b.root) return false;
  switch (a.op) {
    case "barrier":
      return true;
    case "scatter":
      // non-root ranks don't know dtype/count; the root's call defines them
      return a.dtype === null || b.dtype === null || (a.dtype === b.dtype && a.count === b.count);
    case "alltoall":
      return a.dtype === b.dtype;
    default:
      return a.dtype === b.dtype && a.count === b.count && a.redop === b.redop;
  }
}

/** Human-readable call, for mismatch messages: allreduce(float32, count 4, op sum). */
export function describeCall(d: CallDesc): string {
  const parts: string[] = [];
  if (d.dtype) parts.push(d.dtype);
  if (collectiveInfo(d.op).send === "counts" && d.shapes) parts.push(`counts [${d.shapes.map((s) => s.reduce((a, b) => a * b, 1)).join(", ")}]`);
  else if (d.count >= 0 && d.op !== "barrier") parts.push(`count ${d.count}`);
  if (d.redop) parts.push(`op ${d.redop}`);
  if (d.root !== null) parts.push(`${rootField(d.op)} ${d.root}`);
  if (d.tag !== null) parts.push(`tag ${JSON.stringify(d.tag)}`);
  return `${d.op}(${parts.join(", ")})`;
}

/**
 * Whether `rank` is in `members` (ascending global ranks, as every member list here is): a
 * binary search, since each of a world's joins asks it once (includes() made matching
 * O(world^2) per collective).
 */
function isMember(members: readonly number[], rank: number): boolean {
  let lo = 0;
  let hi = members.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const m = members[mid]!;
    if (m === rank) return true;
    if (m < rank) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

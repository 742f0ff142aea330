// Runs one collective call for a rank: CallDesc -> agreement via rank 0 -> native op(s) on the
// data plane -> result buffers. Knows nothing of HTTP or JSON (routes decode/encode around it).
import type { DataPlane, NativeBuffer, NativeOp } from "../native/types";
import { NativeError } from "../native/types";
import { dtypeInfo, type DTypeName, type RedOpName } from "../ops/table";
import { ApiError, Internal, InvalidRequest, NotReady, PeerFailed, Timeout, TooLarge } from "../server/errors";
import type { CollectiveOp } from "../server/schemas";
import type { Metrics } from "../util/metrics";
import type { Agreement } from "./agreement";
import type { CallDesc, GoDecision } from "./matcher";
import type { Membership } from "./membership";

export interface CollectiveCall {
  op: CollectiveOp;
  group: string;
  tag: string | null;
  timeoutMs: number;
  redop: RedOpName | null;
  root: number | null;
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
}

export interface ResultTensor {
  dtype: DTypeName;
  shape: number[];
  bytes: Uint8Array;
}

export type ResultValue = ResultTensor | (ResultTensor | null)[] | null;

export interface CollectiveResult {
  op: CollectiveOp;
  seq: number;
  result: ResultValue;
  activeRanks: number[];
  contributors: number[];
  failedRanks: number[];
  agreeMs: number;
  dataMs: number;
  /** Native buffers the result views; release after encoding. */
  owned: NativeBuffer[];
}

function prod(shape: number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export class CollectiveRunner {
  constructor(
    private rank: number,
    private dataPlane: DataPlane,
    private membership: Membership,
    private agreement: Agreement,
    private metrics: Metrics,
    private device: number = -1,
  ) {}

  async run(call: CollectiveCall): Promise<CollectiveResult> {
    const desc: CallDesc = {
      op: call.op,
      group: call.group,
      tag: call.tag,
      dtype: call.dtype,
      count: call.count,
      shape: call.shape,
      root: call.root,
      redop: call.redop,
      timeoutMs: call.timeoutMs,
    };
    if (call.op === "alltoall") desc.shapes = call.blockShapes;
    const inBytes = call.send?.byteLength ?? 0;
    let seq: number | null = null;
    let agreeMs: number | null = null;
    const t0 = performance.now();
    try {
      const d = await this.agreement.join(desc);
      seq = d.seq;
      const t1 = performance.now();
      agreeMs = t1 - t0;
      if (call.blockRanks && !sameRanks(call.blockRanks, d.ranks)) {
        throw new NotReady(
          `${call.op} (seq ${d.seq}): the active ranks changed while the call was decoded (${call.blockRanks.join(",")} -> ${d.ranks.join(",")}); retry`,
        );
      }
      const remaining = Math.max(1000, Math.round(call.timeoutMs - (t1 - call.startedAt)));
      const out = await this.execute(call, d, remaining);
      const t2 = performance.now();
      out.agreeMs = agreeMs;
      out.dataMs = t2 - t1;
      const elapsed = (t2 - call.startedAt) / 1000;
      this.metrics.op(call.op, "ok", inBytes, elapsed);
      this.metrics.recent({
        seq: d.seq,
        op: call.op,
        group: call.group,
        tag: call.tag,
        dtype: call.dtype ?? d.dtype ?? null,
        count: call.count >= 0 ? call.count : null,
        bytes: inBytes,
        started_at: Date.now() - (t2 - call.startedAt),
        elapsed_ms: round3(t2 - call.startedAt),
        agree_ms: round3(agreeMs),
        data_ms: round3(t2 - t1),
        outcome: "ok",
      });
      return out;
    } catch (e) {
      const err = toApiError(e, this.rank, call.op, seq);
      const now = performance.now();
      this.metrics.op(call.op, err.code, inBytes, (now - call.startedAt) / 1000);
      this.metrics.recent({
        seq: seq ?? ((err.details.seq as number | undefined) ?? null),
        op: call.op,
        group: call.group,
        tag: call.tag,
        dtype: call.dtype,
        count: call.count >= 0 ? call.count : null,
        bytes: inBytes,
        started_at: Date.now() - (now - call.startedAt),
        elapsed_ms: round3(now - call.startedAt),
        agree_ms: agreeMs === null ? null : round3(agreeMs),
        data_ms: agreeMs === null ? null : round3(now - t0 - agreeMs),
        outcome: err.code,
        message: err.message,
      });
      throw err;
    }
  }

  private alloc(bytes: number, owned: NativeBuffer[]): NativeBuffer {
    let b: NativeBuffer;
    try {
      b = this.dataPlane.alloc(Math.max(bytes, 1));
    } catch (e) {
      throw new TooLarge(`rank ${this.rank}: could not allocate ${bytes} bytes: ${(e as Error).message}`);
    }
    owned.push(b);
    return b;
  }

  private async execute(call: CollectiveCall, d: GoDecision, timeoutMs: number): Promise<CollectiveResult> {
    const ranks = d.ranks;
    const n = ranks.length;
    const me = ranks.indexOf(this.rank);
    const owned: NativeBuffer[] = [];
    const mask = this.membership.activeMask();
    const base = {
      op: call.op,
      seq: d.seq,
      activeRanks: mask,
      contributors: ranks,
      failedRanks: [] as number[],
      agreeMs: 0,
      dataMs: 0,
      owned,
    };
    const opId = BigInt(d.opId);
    const native = (op: Omit<NativeOp, "opId" | "ranks" | "timeoutMs" | "dtype"> & { dtype?: DTypeName }) =>
      this.runNative({ dtype: call.dtype ?? d.dtype ?? "uint8", ...op, opId, ranks, timeoutMs }, call.op);
    const send = call.send;
    const slotList = (blocks: (ResultTensor | null)[]): (ResultTensor | null)[] => {
      const out = new Array<ResultTensor | null>(this.membership.worldSize).fill(null);
      for (let j = 0; j < n; j++) out[ranks[j]!] = blocks[j]!;
      return out;
    };

    try {
      switch (call.op) {
        case "barrier":
          // Agreement already proved every member entered: nothing left to move.
          return { ...base, result: null };

        case "allreduce": {
          if (n > 1 && call.count > 0) {
            await native({ kind: "allreduce", redop: call.redop!, count: call.count, send: send!, recv: send! });
          }
          return { ...base, result: { dtype: call.dtype!, shape: call.shape!, bytes: send!.bytes } };
        }

        case "reduce": {
          const isRoot = this.rank === call.root;
          let out = send!;
          if (n > 1 && call.count > 0) {
            const recv = isRoot ? this.alloc(send!.byteLength, owned) : undefined;
            await native({ kind: "reduce", redop: call.redop!, root: call.root!, count: call.count, send: send!, recv });
            if (recv) out = recv;
          }
          return { ...base, result: isRoot ? { dtype: call.dtype!, shape: call.shape!, bytes: out.bytes.subarray(0, send!.byteLength) } : null };
        }

        case "broadcast": {
          if (n > 1 && call.count > 0) {
            const isRoot = this.rank === call.root;
            await native({ kind: "broadcast", root: call.root!, count: call.count, send: isRoot ? send! : undefined, recv: send! });
          }
          return { ...base, result: { dtype: call.dtype!, shape: call.shape!, bytes: send!.bytes } };
        }

        case "allgather":
        case "gather": {
          const isRoot = call.op === "allgather" || this.rank === call.root;
          const blockBytes = send!.byteLength;
          let recv: NativeBuffer | undefined;
          if (isRoot) recv = this.alloc(blockBytes * n, owned);
          if (n > 1 && call.count > 0) {
            await native({ kind: call.op, root: call.op === "gather" ? call.root! : undefined, count: call.count, send: send!, recv });
          } else if (recv) {
            recv.bytes.set(send!.bytes.subarray(0, blockBytes), me * blockBytes);
          }
          if (!recv) return { ...base, result: null };
          const blocks = ranks.map((_, j) => ({
            dtype: call.dtype!,
            shape: d.shapes?.[j] ?? call.shape!,
            bytes: recv!.bytes.subarray(j * blockBytes, (j + 1) * blockBytes),
          }));
          return { ...base, result: slotList(blocks) };
        }

        case "scatter": {
          const dtype = d.dtype!;
          const shape = d.shape!;
          const count = prod(shape);
          const blockBytes = count * dtypeInfo(dtype).bytes;
          const isRoot = this.rank === call.root;
          const recv = this.alloc(blockBytes, owned);
          if (n > 1 && count > 0) {
            await native({ kind: "scatter", dtype, root: call.root!, count, send: isRoot ? send! : undefined, recv });
          } else if (isRoot) {
            recv.bytes.set(send!.bytes.subarray(me * blockBytes, (me + 1) * blockBytes));
          }
          return { ...base, result: { dtype, shape, bytes: recv.bytes.subarray(0, blockBytes) } };
        }

        case "reduce_scatter": {
          const blockBytes = call.count * dtypeInfo(call.dtype!).bytes;
          if (n === 1 || call.count === 0) {
            return { ...base, result: { dtype: call.dtype!, shape: call.shape!, bytes: send!.bytes.subarray(0, blockBytes) } };
          }
          const recv = this.alloc(blockBytes, owned);
          await native({ kind: "reduce_scatter", redop: call.redop!, count: call.count, send: send!, recv });
          return { ...base, result: { dtype: call.dtype!, shape: call.shape!, bytes: recv.bytes.subarray(0, blockBytes) } };
        }

        case "alltoall": {
          const isz = dtypeInfo(call.dtype!).bytes;
          const sendCounts = call.blockShapes!.map(prod);
          const recvShapes = d.shapes!;
          const recvCounts = recvShapes.map(prod);
          const total = recvCounts.reduce((a, b) => a + b, 0);
          const recv = this.alloc(total * isz, owned);
          if (n > 1) {
            await native({ kind: "alltoall", count: 0, sendCounts, recvCounts, send: send!, recv });
          } else {
            recv.bytes.set(send!.bytes.subarray(0, total * isz));
          }
          let off = 0;
          const blocks = recvShapes.map((shape, j) => {
            const len = recvCounts[j]! * isz;
            const t = { dtype: call.dtype!, shape, bytes: recv.bytes.subarray(off, off + len) };
            off += len;
            return t;
          });
          return { ...base, result: slotList(blocks) };
        }
      }
    } catch (e) {
      for (const b of owned) b.release();
      owned.length = 0;
      throw e;
    }
  }

  private async runNative(op: NativeOp, what: string): Promise<void> {
    if (this.device >= 0) {
      // REST tensors are staged in host memory; GPU buffers arrive with /buffers.
    }
    await this.dataPlane.run(op).catch((e) => {
      throw toApiError(e, this.rank, what, null);
    });
  }
}

function sameRanks(a: number[], b: number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
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

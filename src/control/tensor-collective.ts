// The executor of collectives on tensors decoded into native memory (JSON and octet-stream
// bodies): one attempt of a decided op, results in fresh native buffers. Inputs stay intact
// (allreduce and reduce run out of place), so rank 0 may re-issue a failed attempt among the
// survivors with the same inputs. One step per collective (buffer-collective.ts has the other
// executor).
import { NotReady, TooLarge } from "../errors";
import type { DataPlane, NativeBuffer, NativeOp } from "../native/types";
import { dtypeInfo, type CollectiveOp, type DTypeName } from "../ops/table";
import type { CollectiveCall, Executor, ResultTensor, ResultValue } from "./collective";
import type { GoDecision } from "./matcher";
import type { Membership } from "./membership";

/** What one step needs: the decided op, this rank's input for its members, allocation. */
interface Step {
  call: CollectiveCall;
  d: GoDecision;
  /** The input for d's members (a list input repacked when members dropped out). */
  send: NativeBuffer | null;
  /** alltoall: the shape of each block of `send`. */
  blockShapes?: number[][];
  /** Members, and this rank's index among them. */
  n: number;
  me: number;
  isRoot: boolean;
  /** A native buffer owned by the attempt (released after encoding, or on failure). */
  alloc(bytes: number): NativeBuffer;
  /** Runs the native op among d's members (dtype: the call's unless given). */
  native(op: Omit<NativeOp, "opId" | "ranks" | "timeoutMs" | "dtype"> & { dtype?: DTypeName }): Promise<void>;
  /** Blocks in member order -> one entry per group rank (null for the others). */
  slotList(blocks: (ResultTensor | null)[]): (ResultTensor | null)[];
}

type StepFn = (x: Step) => Promise<ResultValue>;

function prod(shape: number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function tensor(x: Step, bytes: Uint8Array): ResultTensor {
  return { dtype: x.call.dtype!, shape: x.call.shape!, bytes };
}

const steps: Record<CollectiveOp, StepFn> = {
  // Agreement already proved every member entered: nothing left to move.
  barrier: async () => null,

  async allreduce(x) {
    // Out of place: the input stays intact, so a re-issue among survivors can use it again
    // (the ring copies send -> recv up front either way).
    const send = x.send!;
    let out = send;
    if (x.n > 1 && x.call.count > 0) {
      out = x.alloc(send.byteLength);
      await x.native({ kind: "allreduce", redop: x.call.redop!, count: x.call.count, send, recv: out });
    }
    return tensor(x, out.bytes.subarray(0, send.byteLength));
  },

  async reduce(x) {
    const send = x.send!;
    let out = send;
    if (x.n > 1 && x.call.count > 0) {
      const recv = x.isRoot ? x.alloc(send.byteLength) : undefined;
      await x.native({ kind: "reduce", redop: x.call.redop!, root: x.call.rootGlobal!, count: x.call.count, send, recv });
      if (recv) out = recv;
    }
    return x.isRoot ? tensor(x, out.bytes.subarray(0, send.byteLength)) : null;
  },

  async broadcast(x) {
    // The root only reads its buffer; the others' values are ignored: a re-issue can reuse both.
    const send = x.send!;
    if (x.n > 1 && x.call.count > 0) {
      await x.native({ kind: "broadcast", root: x.call.rootGlobal!, count: x.call.count, send: x.isRoot ? send : undefined, recv: send });
    }
    return tensor(x, send.bytes);
  },

  allgather: (x) => gatherTo(x, "allgather"),
  gather: (x) => gatherTo(x, "gather"),

  async scatter(x) {
    const dtype = x.d.dtype!;
    const shape = x.d.shape!;
    const count = prod(shape);
    const blockBytes = count * dtypeInfo(dtype).bytes;
    const recv = x.alloc(blockBytes);
    if (x.n > 1 && count > 0) {
      await x.native({ kind: "scatter", dtype, root: x.call.rootGlobal!, count, send: x.isRoot ? x.send! : undefined, recv });
    } else if (x.isRoot) {
      recv.bytes.set(x.send!.bytes.subarray(x.me * blockBytes, (x.me + 1) * blockBytes));
    }
    return { dtype, shape, bytes: recv.bytes.subarray(0, blockBytes) };
  },

  async reduce_scatter(x) {
    const blockBytes = x.call.count * dtypeInfo(x.call.dtype!).bytes;
    if (x.n === 1 || x.call.count === 0) return tensor(x, x.send!.bytes.subarray(0, blockBytes));
    const recv = x.alloc(blockBytes);
    await x.native({ kind: "reduce_scatter", redop: x.call.redop!, count: x.call.count, send: x.send!, recv });
    return tensor(x, recv.bytes.subarray(0, blockBytes));
  },

  async alltoall(x) {
    const isz = dtypeInfo(x.call.dtype!).bytes;
    const sendCounts = x.blockShapes!.map(prod);
    const recvShapes = x.d.shapes!;
    const recvCounts = recvShapes.map(prod);
    const total = recvCounts.reduce((a, b) => a + b, 0);
    const recv = x.alloc(total * isz);
    if (x.n > 1) await x.native({ kind: "alltoall", count: 0, sendCounts, recvCounts, send: x.send!, recv });
    else recv.bytes.set(x.send!.bytes.subarray(0, total * isz));
    let off = 0;
    const blocks = recvShapes.map((shape, j) => {
      const len = recvCounts[j]! * isz;
      const t = { dtype: x.call.dtype!, shape, bytes: recv.bytes.subarray(off, off + len) };
      off += len;
      return t;
    });
    return x.slotList(blocks);
  },
};

async function gatherTo(x: Step, kind: "allgather" | "gather"): Promise<ResultValue> {
  const send = x.send!;
  const blockBytes = send.byteLength;
  const recv = kind === "allgather" || x.isRoot ? x.alloc(blockBytes * x.n) : undefined;
  if (x.n > 1 && x.call.count > 0) {
    await x.native({ kind, root: kind === "gather" ? x.call.rootGlobal! : undefined, count: x.call.count, send, recv });
  } else if (recv) {
    recv.bytes.set(send.bytes.subarray(0, blockBytes), x.me * blockBytes);
  }
  if (!recv) return null;
  const blocks = x.d.ranks.map((_, j) => ({
    dtype: x.call.dtype!,
    shape: x.d.shapes?.[j] ?? x.call.shape!,
    bytes: recv.bytes.subarray(j * blockBytes, (j + 1) * blockBytes),
  }));
  return x.slotList(blocks);
}

/** Results from this size up live in JS memory (wrapJs); smaller ones come from the native pool. */
export const JS_RESULT_MIN_BYTES = 1 << 20;

function allocOwned(dataPlane: DataPlane, rank: number, bytes: number, owned: NativeBuffer[]): NativeBuffer {
  let b: NativeBuffer;
  try {
    // Large results in JS memory: an octet-stream answer sends them without copying them out.
    b = bytes >= JS_RESULT_MIN_BYTES && dataPlane.wrapJs ? dataPlane.wrapJs(new Uint8Array(bytes)) : dataPlane.alloc(Math.max(bytes, 1));
  } catch (e) {
    throw new TooLarge(`rank ${rank}: could not allocate ${bytes} bytes: ${(e as Error).message}`);
  }
  owned.push(b);
  return b;
}

function sameRanks(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((r, i) => r === b[i]);
}

/**
 * The list input (scatter root, reduce_scatter, alltoall) for the members of `d`: the blocks
 * were laid out for call.blockRanks; when ranks dropped out since (failure, re-issue among
 * survivors), the blocks of the remaining members are packed into a new buffer.
 */
function listInput(call: CollectiveCall, d: GoDecision, alloc: (bytes: number) => NativeBuffer): { send: NativeBuffer | null; blockShapes?: number[][] } {
  const from = call.blockRanks;
  if (!from || !call.send || sameRanks(from, d.ranks)) return { send: call.send, blockShapes: call.blockShapes };
  if (!d.ranks.every((r) => from.includes(r))) {
    throw new NotReady(`${call.op} (seq ${d.seq}): the active ranks changed while the call was decoded (${from.join(",")} -> ${d.ranks.join(",")}); retry`);
  }
  const isz = dtypeInfo(call.dtype!).bytes;
  const sizes = from.map((_, i) => (call.blockShapes ? prod(call.blockShapes[i]!) : call.count) * isz);
  const offsets: number[] = [];
  let off = 0;
  for (const b of sizes) {
    offsets.push(off);
    off += b;
  }
  const picks = d.ranks.map((r) => from.indexOf(r));
  const out = alloc(picks.reduce((a, i) => a + sizes[i]!, 0));
  let at = 0;
  for (const i of picks) {
    out.bytes.set(call.send.bytes.subarray(offsets[i]!, offsets[i]! + sizes[i]!), at);
    at += sizes[i]!;
  }
  return { send: out, blockShapes: call.blockShapes ? picks.map((i) => call.blockShapes![i]!) : undefined };
}

/** The executor of a tensor call on `rank`. */
export function tensorExecutor(rank: number, dataPlane: DataPlane, membership: Membership, call: CollectiveCall): Executor<ResultValue> {
  return {
    reissuable: true,
    async attempt(d, timeoutMs) {
      const ranks = d.ranks;
      const owned: NativeBuffer[] = [];
      const alloc = (bytes: number) => allocOwned(dataPlane, rank, bytes, owned);
      const opId = BigInt(d.opId);
      try {
        const { send, blockShapes } = listInput(call, d, alloc);
        const step: Step = {
          call,
          d,
          send,
          blockShapes,
          n: ranks.length,
          me: ranks.indexOf(rank),
          isRoot: rank === call.rootGlobal,
          alloc,
          native: (op) => dataPlane.run({ dtype: call.dtype ?? d.dtype ?? "uint8", ...op, opId, ranks, timeoutMs }),
          slotList(blocks) {
            const out = new Array<ResultTensor | null>(membership.groupSize(call.group)).fill(null);
            for (let j = 0; j < ranks.length; j++) out[membership.toGroupRank(call.group, ranks[j]!)] = blocks[j]!;
            return out;
          },
        };
        return { result: await steps[call.op](step), owned };
      } catch (e) {
        for (const b of owned) b.release();
        throw e;
      }
    },
  };
}

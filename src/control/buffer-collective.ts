// The executor of collectives on registered buffers ({"buffer": id} bodies): one attempt of a
// decided op, in place on the rank's buffers (host or device). CollectiveRunner.runWith runs it
// like the tensor executor: same agreement, re-issue among survivors, metrics, /debug/recent.
// The result shapes: allreduce: the input buffer (or "out"); broadcast: the input buffer. reduce: the input on the root (or
// "out"). allgather, gather: [N, ...input] in "out" or a new buffer. scatter, reduce_scatter:
// one block; alltoall: [N, ...block] (or [total] for uneven blocks); "buffer" of a list op
// holds [N, ...block], block i for group rank i.
import { NotReady, InvalidRequest } from "../errors";
import type { DataPlane, NativeOp } from "../native/types";
import { collectiveInfo, type CollectiveOp, type DTypeName } from "../ops/table";
import { numel } from "../tensor/codec";
import type { BufferEntry, BufferRegistry } from "./buffers";
import type { CollectiveCall, Executor } from "./collective";
import type { GoDecision } from "./matcher";

export interface BufferCall {
  call: CollectiveCall;
  /** "buffer": the input (null where the op takes none here, e.g. scatter off the root). */
  input: BufferEntry | null;
  /** "out": where the result goes (null: a new buffer, or in place). */
  out: BufferEntry | null;
}

/** What one step needs: the decided op, this rank's part, and where results go. */
interface Step {
  bc: BufferCall;
  d: GoDecision;
  isRoot: boolean;
  /** Elements per block (the native `count`). */
  count: number;
  blockShape: number[];
  /** Runs the native op among d.ranks. */
  run(o: Omit<NativeOp, "opId" | "ranks" | "timeoutMs" | "dtype">): Promise<void>;
  /** "out" (checked against `shape`) or a new buffer of `shape` on the input's device. */
  resultBuffer(shape: number[]): BufferEntry;
}

type StepFn = (x: Step) => Promise<BufferEntry | null>;

const steps: Record<CollectiveOp, StepFn> = {
  async allreduce(x) {
    // In place, or into "out" (out of place: the engine reads every input where it lies and
    // writes the sum once, no snapshot of the input first).
    const input = x.bc.input!;
    const recv = x.bc.out ? x.resultBuffer(input.shape) : input;
    if (x.count > 0) await x.run({ kind: "allreduce", redop: x.bc.call.redop!, count: x.count, send: input.buf, recv: recv.buf });
    return recv;
  },
  async broadcast(x) {
    const input = x.bc.input!;
    if (x.count > 0) await x.run({ kind: "broadcast", root: x.bc.call.rootGlobal!, count: x.count, send: x.isRoot ? input.buf : undefined, recv: input.buf });
    return input;
  },
  async reduce(x) {
    const { input, out, call } = x.bc;
    const recv = x.isRoot ? (out ? x.resultBuffer(input!.shape) : input!) : null;
    if (x.count > 0) await x.run({ kind: "reduce", redop: call.redop!, root: call.rootGlobal!, count: x.count, send: input!.buf, recv: recv?.buf });
    return recv;
  },
  allgather: (x) => gatherTo(x, "allgather"),
  gather: (x) => gatherTo(x, "gather"),
  async scatter(x) {
    const recv = x.resultBuffer(x.blockShape);
    const send = x.isRoot ? x.bc.input!.buf : undefined;
    if (x.count > 0) await x.run({ kind: "scatter", root: x.bc.call.rootGlobal!, count: x.count, send, recv: recv.buf });
    return recv;
  },
  async reduce_scatter(x) {
    const recv = x.resultBuffer(x.blockShape);
    if (x.count > 0) await x.run({ kind: "reduce_scatter", redop: x.bc.call.redop!, count: x.count, send: x.bc.input!.buf, recv: recv.buf });
    return recv;
  },
  async alltoall(x) {
    const ranks = x.d.ranks;
    const recvShapes = x.d.shapes ?? ranks.map(() => x.blockShape);
    const recvCounts = recvShapes.map((s) => numel(s));
    const total = recvCounts.reduce((a, b) => a + b, 0);
    const sameBlocks = recvShapes.every((s) => sameList(s, x.blockShape));
    const recv = x.resultBuffer(sameBlocks ? [ranks.length, ...x.blockShape] : [total]);
    const sendCounts = ranks.map(() => x.count);
    await x.run({ kind: "alltoall", count: 0, sendCounts, recvCounts, send: x.bc.input!.buf, recv: recv.buf });
    return recv;
  },
  async barrier() {
    return null;
  },
};

async function gatherTo(x: Step, kind: "allgather" | "gather"): Promise<BufferEntry | null> {
  const input = x.bc.input!;
  const recv = kind === "allgather" || x.isRoot ? x.resultBuffer([x.d.ranks.length, ...input.shape]) : null;
  const root = kind === "gather" ? x.bc.call.rootGlobal! : undefined;
  if (x.count > 0) await x.run({ kind, root, count: x.count, send: input.buf, recv: recv?.buf });
  return recv;
}

function sameList(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * The executor of `bc` on `rank`. In-place ops (allreduce, reduce) may leave a failed
 * attempt's input half reduced, so they are not re-issued; the others are.
 */
export function bufferExecutor(reg: BufferRegistry, dataPlane: DataPlane, rank: number, bc: BufferCall): Executor<BufferEntry | null> {
  const { call, input, out } = bc;
  const info = collectiveInfo(call.op);
  return {
    reissuable: call.op !== "allreduce" && call.op !== "reduce",
    async attempt(d, timeoutMs) {
      const n = d.ranks.length;
      if (info.input === "tensors" && input && input.shape[0] !== n) {
        throw new NotReady(
          `${call.op} (seq ${d.seq}): the members changed since the call was decoded (${(call.blockRanks ?? []).join(",")} -> ${d.ranks.join(",")}); retry`,
        );
      }
      const dtype: DTypeName = (input?.dtype ?? d.dtype)!;
      const blockShape = info.input_on === "root" ? d.shape! : (call.shape ?? []);
      const created: BufferEntry[] = [];
      const step: Step = {
        bc,
        d,
        isRoot: call.rootGlobal === rank,
        count: numel(blockShape),
        blockShape,
        run: (o) => dataPlane.run({ ...o, dtype, opId: BigInt(d.opId), ranks: d.ranks, timeoutMs }),
        resultBuffer(shape) {
          if (out) {
            if (out.dtype !== dtype || numel(out.shape) !== numel(shape)) {
              throw new InvalidRequest(`${call.op}: "out" buffer ${out.id} is ${out.dtype}${JSON.stringify(out.shape)}; the result is ${dtype}${JSON.stringify(shape)}`);
            }
            return out;
          }
          const e = reg.create(dtype, shape, input?.device ?? reg.parseDevice(undefined));
          created.push(e);
          return e;
        },
      };
      try {
        return { result: await steps[call.op](step), owned: [] };
      } catch (e) {
        for (const c of created) reg.delete(c.id);
        throw e;
      }
    },
  };
}

// mr_run_packed's argument blocks (moonring.h MR_RUN_ARG_*) for NativeDataPlane.runBlocking: u64
// arrays whose addresses are taken once, written as u32 halves from numbers (no BigInt per
// field). Each block remembers the fields of the op it holds: a caller whose ops differ from
// earlier ones only in their ids (the native bench: a barrier, then the timed op; a training
// loop's allreduce, one op object reused or a new one per step) skips the encoding, which was
// ~0.2-0.3 us of a 1-rank 8-byte op (bench/NOTES.md E33, E38).
import { ptr } from "bun:ffi";
import * as abi from "./abi";
import { collectiveCode, dtypeInfo, redopInfo } from "../ops/table";
import { NativeError, type NativeBuffer, type NativeOp } from "./types";

/** The refusal of an op id that is a number but no unsigned integer below 2^53. */
export function badOpId(rank: number, op: NativeOp): NativeError {
  return new NativeError(`rank ${rank}: ${op.kind} op ${op.opId}: an op id is an unsigned integer below 2^53 (or a bigint)`, "EINVAL");
}

/** Blocks kept: the ops a caller alternates between (the bench: 2). */
const RUN_ARGS_BLOCKS = 4;

/** The blocks of one data plane: encode(op) picks the one holding op, else rewrites the oldest. */
export class RunArgsCache {
  private readonly blocks: RunArgs[] = [];
  private next = 0;
  /** mr_run_bind's cell: the address of the block encode() returned last, as u32 halves. */
  private readonly cell = new Uint32Array(2);
  readonly cellAddress = ptr(this.cell);

  constructor(
    private readonly rank: number,
    private readonly worldSizeMax: number,
  ) {}

  /** The block to pass for `op` (`maskOf`: its group bitset), written, and the cell pointed at it. */
  encode(op: NativeOp, maskOf: (op: NativeOp) => BigUint64Array): RunArgs {
    const blocks = this.blocks;
    for (let i = 0; i < blocks.length; i++) {
      const block = blocks[i]!;
      if (block.holds(op)) {
        block.refresh(op);
        return this.point(block);
      }
    }
    let block = blocks[this.next];
    if (block === undefined) blocks.push((block = new RunArgs(this.rank, this.worldSizeMax)));
    this.next = (this.next + 1) % RUN_ARGS_BLOCKS;
    block.encodeAll(op, maskOf(op));
    return this.point(block);
  }

  private point(block: RunArgs): RunArgs {
    this.cell[0] = block.addressLow;
    this.cell[1] = block.addressHigh;
    return block;
  }
}

class RunArgs {
  private readonly words = new BigUint64Array(new ArrayBuffer(8 * abi.MR_RUN_ARGS));
  private readonly halves = new Uint32Array(this.words.buffer);
  /** The block's address, for mr_run_packed (an ArrayBuffer's memory does not move). */
  readonly address = ptr(this.words);
  readonly addressLow = this.address >>> 0;
  readonly addressHigh = (this.address - this.addressLow) / 0x1_0000_0000;
  /** alltoall's counts (2 x worldSizeMax u64, as u32 halves): send counts, then recv counts. */
  private readonly counts: Uint32Array;
  private readonly countsAddress: number;

  // The fields of the op last encoded (valid: false: nothing to reuse).
  private valid = false;
  private kind = "";
  private dtype = "";
  private redop: string | undefined;
  /** The ranks array as passed, whether it was frozen (then identity suffices), its values. */
  private ranks: readonly number[] | null = null;
  private ranksFrozen = false;
  private ranksCopy: number[] = [];
  /** The group bitset the block points at: referenced here so its memory lives as long. */
  private mask: BigUint64Array | null = null;
  private root: number | undefined;
  private send: NativeBuffer | undefined;
  private recv: NativeBuffer | undefined;
  private count = 0;
  private timeoutMs = 0;

  constructor(
    private readonly rank: number,
    private readonly worldSizeMax: number,
  ) {
    this.counts = new Uint32Array(new ArrayBuffer(16 * worldSizeMax));
    this.countsAddress = ptr(this.counts);
  }

  /** Writes what may differ in an op this block holds: its id, and alltoall's counts (arrays change in place). */
  refresh(op: NativeOp): void {
    if (op.kind === "alltoall") this.putCounts(op);
    this.putOpId(op);
  }

  /** The ticket mr_run_packed left for a failed op (0n: it failed before it had one). */
  get ticket(): bigint {
    return this.words[abi.MR_RUN_ARG_TICKET]!;
  }

  /** `op` has the fields this block was written from, its id aside (buffers by identity, ranks
   *  by value: a frozen ranks array by identity). */
  holds(op: NativeOp): boolean {
    return (
      this.valid &&
      op.kind === this.kind &&
      op.dtype === this.dtype &&
      op.redop === this.redop &&
      this.sameRanks(op.ranks) &&
      op.root === this.root &&
      op.send === this.send &&
      op.recv === this.recv &&
      op.count === this.count &&
      op.timeoutMs === this.timeoutMs
    );
  }

  private sameRanks(ranks: readonly number[]): boolean {
    if (ranks === this.ranks && this.ranksFrozen) return true;
    const copy = this.ranksCopy;
    if (ranks.length !== copy.length) return false;
    for (let i = 0; i < copy.length; i++) if (ranks[i] !== copy[i]) return false;
    return true;
  }

  /** Writes every field of `op` (`mask`: its group bitset). */
  encodeAll(op: NativeOp, mask: BigUint64Array): void {
    this.valid = false; // a throw below leaves nothing to reuse
    const { send, recv } = op;
    if (mask !== this.mask) {
      this.put(abi.MR_RUN_ARG_RANKS, ptr(mask));
      this.mask = mask;
    }
    this.put(abi.MR_RUN_ARG_KIND, collectiveCode(op.kind));
    this.put(abi.MR_RUN_ARG_DTYPE, dtypeInfo(op.dtype).code);
    this.put(abi.MR_RUN_ARG_REDOP, op.redop ? redopInfo(op.redop).code : 0);
    this.put(abi.MR_RUN_ARG_ROOT, op.root ?? 0);
    this.put(abi.MR_RUN_ARG_SEND, send ? Number(send.address) : 0);
    this.put(abi.MR_RUN_ARG_RECV, recv ? Number(recv.address) : 0);
    this.put(abi.MR_RUN_ARG_COUNT, op.count);
    this.put(abi.MR_RUN_ARG_COUNTS, op.kind === "alltoall" ? this.putCounts(op) : 0);
    this.put(abi.MR_RUN_ARG_DEVICE, send?.device ?? recv?.device ?? -1);
    this.put(abi.MR_RUN_ARG_TIMEOUT_MS, op.timeoutMs);
    this.putOpId(op);
    this.valid = true;
    this.kind = op.kind;
    this.dtype = op.dtype;
    this.redop = op.redop;
    this.ranks = op.ranks;
    this.ranksFrozen = Object.isFrozen(op.ranks);
    this.ranksCopy = op.ranks.slice();
    this.root = op.root;
    this.send = send;
    this.recv = recv;
    this.count = op.count;
    this.timeoutMs = op.timeoutMs;
  }

  /** The op id: a number as u32 halves (no BigInt conversion), a bigint as it is. */
  private putOpId(op: NativeOp): void {
    const id = op.opId;
    if (typeof id === "bigint") {
      this.words[abi.MR_RUN_ARG_OP_ID] = id;
    } else if (Number.isSafeInteger(id) && id >= 0) {
      this.put(abi.MR_RUN_ARG_OP_ID, id);
    } else {
      throw badOpId(this.rank, op);
    }
  }

  /** Field i = v (an integer below 2^53, or -1 as the i64 device). */
  private put(i: number, v: number): void {
    const lo = v >>> 0;
    this.halves[2 * i] = lo;
    this.halves[2 * i + 1] = v < 0 ? 0xffffffff : (v - lo) / 0x1_0000_0000;
  }

  /** alltoall's per-rank counts (only the group's entries: the engine reads no others); returns their address. */
  private putCounts(op: NativeOp): number {
    const sendCounts = op.sendCounts ?? [];
    const recvCounts = op.recvCounts ?? [];
    if (sendCounts.length !== op.ranks.length || recvCounts.length !== op.ranks.length) {
      throw new NativeError(`rank ${this.rank}: alltoall op ${op.opId}: need one send and recv count per rank`, "EINVAL");
    }
    for (let i = 0; i < op.ranks.length; i++) {
      this.putCount(op, op.ranks[i]!, sendCounts[i]!);
      this.putCount(op, this.worldSizeMax + op.ranks[i]!, recvCounts[i]!);
    }
    return this.countsAddress;
  }

  private putCount(op: NativeOp, at: number, v: number): void {
    if (!Number.isSafeInteger(v) || v < 0 || at >= 2 * this.worldSizeMax) {
      throw new NativeError(`rank ${this.rank}: alltoall op ${op.opId}: bad count ${v}`, "EINVAL");
    }
    const lo = v >>> 0;
    this.counts[2 * at] = lo;
    this.counts[2 * at + 1] = (v - lo) / 0x1_0000_0000;
  }
}

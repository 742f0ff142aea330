// The data plane over libmoonring: one native engine per rank. run() submits an op (mr_submit)
// and returns a Promise settled when the op completes: a Worker blocked in mr_wait
// (completion-waiter.ts) posts to this thread, which drains the native completion queue with
// mr_poll (no native thread ever calls into JS, and no JS thread spins). The Worker keeps the
// process alive only while ops are in flight.
import { ptr, toArrayBuffer, type Pointer } from "bun:ffi";
import { rmSync } from "node:fs";
import { MR_RANK_WORDS, statusCodes } from "./abi";
import { native, statusName } from "./ffi";
import { collectiveCode, dtypeInfo, redopInfo } from "../ops/table";
import {
  NativeError,
  type DataPlane,
  type DataPlaneOptions,
  type NativeBuffer,
  type NativeOp,
  type SharedLocation,
  jsOwnedMemory,
  type DataPlaneLinks,
  type TrafficRecord,
} from "./types";
import { WORLD_SIZE_MAX } from "../limits";
import { RunArgsCache, badOpId } from "./run-args";

/** u64 words of mr_submit's group bitset (moonring.h MR_RANK_WORDS). */
const rankWords = MR_RANK_WORDS;

type ErrorCode = NativeError["code"];

/** A failed op's status -> its MR_E* name (EBUSY is "not done", never a failure: EIO then). */
function codeOf(status: number): ErrorCode {
  const name = statusName(status);
  return name in statusCodes && name !== "EBUSY" ? (name as ErrorCode) : "EIO";
}

/** (peer, link kind) pairs one /metrics scrape reads at most: every slot over two kinds. */
const TRAFFIC_RECORDS_MAX = 2 * WORLD_SIZE_MAX;
const linkKindNames = new Map<number, string>();
/** mr_link_kind_name, remembered. */
function linkKindName(kind: number): string {
  let name = linkKindNames.get(kind);
  if (name === undefined) {
    const buf = new Uint8Array(32);
    const len = Number(native.mr_link_kind_name(kind, buf, buf.length)); // size_t: a bigint
    name = len > 0 ? new TextDecoder().decode(buf.subarray(0, Math.min(len, buf.length))) : `kind${kind}`;
    linkKindNames.set(kind, name);
  }
  return name;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const messageBuf = new Uint8Array(1024);
const locateName = new Uint8Array(128);
const locateOffset = new BigUint64Array(1);

/** The calling thread's last native error message. */
export function lastError(): string {
  const len = Number(native.mr_last_error(messageBuf, messageBuf.length));
  return decoder.decode(messageBuf.subarray(0, Math.min(len, messageBuf.length)));
}

export function hostId(): bigint {
  return BigInt(native.mr_host_id());
}

const pollBatch = 64;
/** How long submit() may block for the completion of a lone op (0 = never). */
const syncWaitMs = Math.max(0, Number(process.env.MOONRING_SYNC_WAIT_MS ?? 1) || 0);

/** mr_op_status of an op still running (MR_EBUSY). */
const statusBusy = -9;

/**
 * The largest host buffer: JavaScriptCore's largest ArrayBuffer (4 GiB). toArrayBuffer() past it
 * aborts the whole process (SIGABRT), so a bigger request is refused before anything is mapped.
 */
export const HOST_BUFFER_BYTES_MAX = 2 ** 32;

/** Host buffers up to this size are recycled (mr_alloc/mr_free are syscalls). */
const poolBytesMax = 1 << 20;
const poolPerClassMax = 16;

interface Pending {
  resolve: () => void;
  reject: (e: unknown) => void;
  /** Keeps the op's buffers (and the counts array) alive and unreleased until completion. */
  buffers: HostOrDeviceBuffer[];
  counts: BigUint64Array | null;
  /** The op itself: its buffers stay referenced (even foreign NativeBuffer objects). */
  op: NativeOp;
}

function checkHostBytes(byteLength: number, what: string): void {
  if (byteLength <= HOST_BUFFER_BYTES_MAX) return;
  throw new NativeError(
    `${what} of ${byteLength} bytes: host buffers are at most ${HOST_BUFFER_BYTES_MAX} bytes (4 GiB, the JS runtime's largest ArrayBuffer); use a CUDA buffer or several host buffers`,
    "ENOMEM",
  );
}

class HostOrDeviceBuffer implements NativeBuffer {
  /** Ops in flight using this buffer: release() waits for them. */
  inflight = 0;
  private releaseRequested = false;
  private released = false;

  constructor(
    private readonly owner: NativeDataPlane,
    readonly bytes: Uint8Array,
    readonly address: bigint,
    readonly byteLength: number,
    readonly device: number,
    readonly capacity: number,
  ) {}

  release(): void {
    if (this.released) return;
    this.releaseRequested = true;
    if (this.inflight > 0) return; // freed when the last op using it completes
    this.released = true;
    this.owner.freeBuffer(this);
  }

  /** An op using it completed. */
  settle(): void {
    this.inflight--;
    if (this.inflight === 0 && this.releaseRequested) this.release();
  }

  get isReleased(): boolean {
    return this.released;
  }
}

/** JS memory lent to ops (wrapJs): the GC owns it; pending ops keep it referenced. */
class JsBuffer implements NativeBuffer {
  readonly address: bigint;
  readonly byteLength: number;
  readonly device = -1;

  constructor(readonly bytes: Uint8Array) {
    this.address = bytes.byteLength > 0 ? BigInt(ptr(bytes)) : 0n;
    this.byteLength = bytes.byteLength;
    jsOwnedMemory.add(bytes.buffer);
  }

  release(): void {}
}

function sizeClass(bytes: number): number {
  const page = 4096;
  let c = page;
  while (c < bytes) c *= 2;
  return c;
}

/** The data plane mr_run_bind tied this thread's mr_run_bound to (runBlocking). */
let boundPlane: NativeDataPlane | null = null;

export class NativeDataPlane implements DataPlane {
  readonly rank: number;
  readonly dataPort: number;
  readonly hostId: bigint;
  readonly worldSizeMax: number;
  private handle: number | null;
  private readonly pending = new Map<bigint, Pending>();
  private polling = false;
  private readonly tickets = new BigUint64Array(pollBatch);
  private readonly statuses = new Int32Array(pollBatch);
  private readonly pool = new Map<number, { address: number; bytes: Uint8Array }[]>();

  static open(opts: DataPlaneOptions): NativeDataPlane {
    return new NativeDataPlane(opts);
  }

  constructor(opts: DataPlaneOptions) {
    const cluster = encoder.encode(opts.clusterId);
    const token = encoder.encode(opts.token ?? "");
    const host = encoder.encode(opts.listenHost);
    const handle = native.mr_engine_create(
      opts.rank,
      opts.worldSizeMax,
      cluster,
      cluster.length,
      token,
      token.length,
      host,
      host.length,
      opts.listenPort ?? 0,
    ) as number | null;
    if (!handle) throw new NativeError(`data plane of rank ${opts.rank}: ${lastError()}`, "EINVAL");
    this.handle = handle;
    this.rank = opts.rank;
    this.worldSizeMax = opts.worldSizeMax;
    this.dataPort = native.mr_engine_data_port(handle) as number;
    this.hostId = hostId();
  }

  private engine(): number {
    if (this.handle === null) throw new NativeError(`data plane of rank ${this.rank} is closed`, "ECANCELED");
    return this.handle;
  }

  setPeer(rank: number, host: string, port: number, hostId: bigint): void {
    const h = encoder.encode(host);
    const rc = native.mr_engine_set_peer(this.engine(), rank, h, h.length, port, hostId) as number;
    if (rc !== 0) throw new NativeError(lastError(), codeOf(rc));
  }

  /** Bytes per peer and link kind since the engine started (mr_engine_traffic). */
  traffic(): TrafficRecord[] {
    const max = TRAFFIC_RECORDS_MAX;
    const out = new BigUint64Array(max * 4);
    const n = native.mr_engine_traffic(this.engine(), out, out.length) as number;
    const records: TrafficRecord[] = [];
    for (let i = 0; i < Math.min(n, max); i++) {
      const [peer, kind, tx, rx] = out.subarray(i * 4, i * 4 + 4);
      records.push({ peer: Number(peer), transport: linkKindName(Number(kind)), txBytes: Number(tx), rxBytes: Number(rx) });
    }
    return records;
  }

  peerDown(rank: number): void {
    const rc = native.mr_engine_peer_down(this.engine(), rank) as number;
    if (rc !== 0) throw new NativeError(lastError(), codeOf(rc));
  }

  links(): DataPlaneLinks {
    const buf = new Uint8Array(64 * 1024);
    const len = Number(native.mr_engine_links(this.engine(), buf, buf.length));
    return JSON.parse(decoder.decode(buf.subarray(0, len))) as DataPlaneLinks;
  }

  alloc(byteLength: number, device = -1): NativeBuffer {
    if (!Number.isSafeInteger(byteLength) || byteLength < 0) {
      throw new NativeError(`alloc: bad byte length ${byteLength}`, "EINVAL");
    }
    if (device >= 0) {
      const dptr = BigInt(native.mr_cuda_alloc(device, Math.max(byteLength, 1)));
      if (dptr === 0n) throw new NativeError(`alloc of ${byteLength} bytes on device ${device}: ${lastError()}`, "ENODEV");
      return new HostOrDeviceBuffer(this, new Uint8Array(0), dptr, byteLength, device, byteLength);
    }
    checkHostBytes(byteLength, "alloc");
    const capacity = byteLength <= poolBytesMax ? sizeClass(Math.max(byteLength, 1)) : byteLength;
    const cached = this.pool.get(capacity)?.pop();
    if (cached) {
      const bytes = cached.bytes.subarray(0, byteLength);
      bytes.fill(0);
      return new HostOrDeviceBuffer(this, bytes, BigInt(cached.address), byteLength, -1, capacity);
    }
    const address = native.mr_alloc(capacity) as Pointer | null;
    if (!address) throw new NativeError(`alloc of ${byteLength} bytes: ${lastError()}`, "ENOMEM");
    const bytes = new Uint8Array(toArrayBuffer(address, 0, capacity)).subarray(0, byteLength);
    return new HostOrDeviceBuffer(this, bytes, BigInt(address), byteLength, -1, capacity);
  }

  /**
   * Host memory in a /dev/shm file that same-host peers map (mr_alloc_shared, like
   * MPI_Alloc_mem): collectives among ranks of this host read it in place instead of with
   * process_vm_readv. Not pooled.
   */
  allocShared(byteLength: number): NativeBuffer {
    if (!Number.isSafeInteger(byteLength) || byteLength < 0) {
      throw new NativeError(`allocShared: bad byte length ${byteLength}`, "EINVAL");
    }
    checkHostBytes(byteLength, "allocShared");
    const capacity = Math.max(byteLength, 1);
    const address = native.mr_alloc_shared(capacity) as Pointer | null;
    if (!address) throw new NativeError(`allocShared of ${byteLength} bytes: ${lastError()}`, "ENOMEM");
    const bytes = new Uint8Array(toArrayBuffer(address, 0, capacity)).subarray(0, byteLength);
    const buf = new HostOrDeviceBuffer(this, bytes, BigInt(address), byteLength, -1, capacity);
    this.shared.add(buf);
    return buf;
  }

  /** Live buffers of allocShared (close() removes their files). */
  private readonly shared = new Set<HostOrDeviceBuffer>();

  wrapJs(bytes: Uint8Array): NativeBuffer {
    if (bytes.byteLength === 0) throw new NativeError("wrapJs: empty buffer", "EINVAL");
    return new JsBuffer(bytes);
  }

  /** The /dev/shm file holding a buffer of allocShared and the buffer's offset in it; else null. */
  sharedLocation(buf: NativeBuffer): SharedLocation | null {
    if (buf.device >= 0 || !(buf instanceof HostOrDeviceBuffer) || !this.shared.has(buf) || buf.isReleased) return null;
    const len = Number(native.mr_shared_locate(Number(buf.address), Math.max(buf.byteLength, 1), locateName, locateName.length, locateOffset));
    if (len === 0) return null;
    return { path: `/dev/shm/${decoder.decode(locateName.subarray(0, len))}`, offset: Number(locateOffset[0]) };
  }

  /** Called by HostOrDeviceBuffer.release() once no op uses it. */
  freeBuffer(buf: HostOrDeviceBuffer): void {
    if (buf.device >= 0) {
      native.mr_cuda_free(buf.device, buf.address);
      return;
    }
    const address = Number(buf.address);
    if (this.shared.delete(buf)) {
      native.mr_free(address, buf.capacity);
      return;
    }
    if (buf.capacity <= poolBytesMax && this.handle !== null) {
      let list = this.pool.get(buf.capacity);
      if (!list) this.pool.set(buf.capacity, (list = []));
      if (list.length < poolPerClassMax) {
        list.push({ address, bytes: new Uint8Array(buf.bytes.buffer, 0, buf.capacity) });
        return;
      }
    }
    native.mr_free(address, buf.capacity);
  }

  run(op: NativeOp): Promise<void> {
    try {
      return this.submit(op);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** mr_submit / mr_run with the op's arguments; returns the ticket (> 0) or throws. */
  private start(op: NativeOp, fn: typeof native.mr_submit): { ticket: bigint; counts: BigUint64Array | null } {
    const engine = this.engine();
    if (typeof op.opId === "number" && !(Number.isSafeInteger(op.opId) && op.opId >= 0)) {
      throw badOpId(this.rank, op);
    }
    const mask = this.maskOf(op);
    let counts: BigUint64Array | null = null;
    if (op.kind === "alltoall") {
      const sendCounts = op.sendCounts ?? [];
      const recvCounts = op.recvCounts ?? [];
      if (sendCounts.length !== op.ranks.length || recvCounts.length !== op.ranks.length) {
        throw new NativeError(`rank ${this.rank}: alltoall op ${op.opId}: need one send and recv count per rank`, "EINVAL");
      }
      counts = new BigUint64Array(2 * this.worldSizeMax);
      op.ranks.forEach((r, i) => {
        counts![r] = BigInt(sendCounts[i]!);
        counts![this.worldSizeMax + r] = BigInt(recvCounts[i]!);
      });
    }
    const send = op.send;
    const recv = op.recv;
    for (const b of [send, recv]) {
      if (b instanceof HostOrDeviceBuffer && b.isReleased) {
        throw new NativeError(`rank ${this.rank}: ${op.kind} op ${op.opId}: buffer already released`, "EINVAL");
      }
    }
    const device = send?.device ?? recv?.device ?? -1;
    const dtype = dtypeInfo(op.dtype).code;
    const redop = op.redop ? redopInfo(op.redop).code : 0;
    const ticket = BigInt(
      fn(
        engine,
        collectiveCode(op.kind),
        dtype,
        redop,
        op.opId,
        mask,
        op.root ?? 0,
        send ? Number(send.address) : null,
        recv ? Number(recv.address) : null,
        op.count,
        counts,
        device,
        op.timeoutMs,
      ),
    );
    if (ticket <= 0n) throw new NativeError(lastError(), codeOf(Number(ticket)));
    return { ticket, counts };
  }

  /** runBlocking's mr_run_packed argument block. */
  private runArgs: RunArgsCache | null = null;
  private readonly maskOfOp = (op: NativeOp): BigUint64Array => this.maskOf(op);

  /** ranks -> mr_submit's group bitset (MR_RANK_WORDS u64 words), remembered per frozen ranks array. */
  private readonly masks = new WeakMap<readonly number[], BigUint64Array>();
  private maskOf(op: NativeOp): BigUint64Array {
    const known = this.masks.get(op.ranks);
    if (known !== undefined) return known;
    const words = new Uint32Array(2 * rankWords);
    for (const r of op.ranks) {
      if (!Number.isInteger(r) || r < 0 || r >= this.worldSizeMax) {
        throw new NativeError(`rank ${this.rank}: ${op.kind} op ${op.opId}: rank ${r} is outside the world`, "EINVAL");
      }
      words[r >>> 5]! |= 1 << (r & 31); // little-endian: u32 word k is the low/high half of u64 k/2
    }
    const mask = new BigUint64Array(words.buffer);
    if (Object.isFrozen(op.ranks)) this.masks.set(op.ranks, mask);
    return mask;
  }

  /**
   * Runs the op on this thread and returns when it is done (mr_run): no engine thread, no
   * completion hop. For callers that await every op one at a time (the native bench, a
   * blocking embedder); the REST service never calls it (it would stall its event loop).
   */
  runBlocking(op: NativeOp): void {
    const engine = this.engine();
    const { send, recv } = op;
    if ((send instanceof HostOrDeviceBuffer && send.isReleased) || (recv instanceof HostOrDeviceBuffer && recv.isReleased)) {
      throw new NativeError(`rank ${this.rank}: ${op.kind} op ${op.opId}: buffer already released`, "EINVAL");
    }
    // One FFI call instead of three (mr_run's 13 arguments, a BigInt ticket): ~0.5 us less per
    // op (bench/NOTES.md E25); an op object reused with a new id is not encoded again (E33).
    const runArgs = (this.runArgs ??= new RunArgsCache(this.rank, this.worldSizeMax));
    const args = runArgs.encode(op, this.maskOfOp);
    // mr_run_bound: a call without arguments (bun:ffi allocates per argument, E36).
    if (boundPlane !== this) {
      if (native.mr_run_bind(engine, runArgs.cellAddress) !== 0) throw new NativeError(lastError(), "EINVAL");
      boundPlane = this;
    }
    const status = native.mr_run_bound();
    if (status === 0) return;
    const ticket = args.ticket;
    if (ticket === 0n) throw new NativeError(lastError(), codeOf(status));
    const error = this.opFailure(ticket, status);
    native.mr_release(this.handle, ticket);
    throw error;
  }

  private submit(op: NativeOp): Promise<void> {
    // mr_start: when every peer of a small same-host op has started it, it ran right here.
    const { ticket, counts } = this.start(op, native.mr_start);
    const done = native.mr_op_status(this.handle, ticket) as number;
    if (done !== statusBusy) {
      const error = done === 0 ? null : this.opFailure(ticket, done);
      native.mr_release(this.handle, ticket);
      return error ? Promise.reject(error) : Promise.resolve();
    }
    const { send, recv } = op;
    const buffers: HostOrDeviceBuffer[] = [];
    for (const b of [send, recv]) {
      // Buffers of this data plane are pinned until completion (release() waits for it).
      if (b instanceof HostOrDeviceBuffer && !buffers.includes(b)) {
        b.inflight++;
        buffers.push(b);
      }
    }
    const promise = new Promise<void>((resolve, reject) => {
      this.pending.set(ticket, { resolve, reject, buffers, counts, op });
      this.startPolling();
    });
    // Short ops: when this is the only op in flight, block (futex, no spinning) up to
    // syncWaitMs for its completion: the op thread wakes this thread directly instead of the
    // waiter Worker + postMessage hop (~40 us). Past that the Worker takes over. Not inside
    // submit(): the caller's pending writes (e.g. the control plane telling peers to start this
    // very op) must go out first, so it runs on the next macrotask turn.
    if (syncWaitMs > 0 && this.pending.size === 1) setImmediate(this.syncWait, ticket);
    return promise;
  }

  /**
   * Completion (P1, bench/NOTES.md E0/E2): a Worker parked in mr_wait tells this thread when
   * completions are queued; this thread drains them with mr_poll. Nothing spins: on a host with
   * fewer CPUs than busy threads a spinning JS poller starves the native threads it waits for.
   * waiterFlag[0]: 1 = told, not yet drained; [1]: 1 = stop; [2]: 1 = the waiter has stopped.
   */
  private waiter: Worker | null = null;
  private readonly waiterFlag = new Int32Array(new SharedArrayBuffer(12));

  private startPolling(): void {
    if (this.handle === null) return;
    if (!this.waiter) {
      const w = new Worker(new URL("./completion-waiter.ts", import.meta.url).href);
      w.onmessage = () => {
        this.drain();
        Atomics.store(this.waiterFlag, 0, 0);
        Atomics.notify(this.waiterFlag, 0);
      };
      w.postMessage({ handle: this.handle, sab: this.waiterFlag.buffer });
      this.waiter = w;
    }
    // Keeps the process alive only while ops are in flight (like the old poller's timers).
    if (!this.polling) {
      this.polling = true;
      this.waiter.ref();
    }
  }

  private readonly syncWait = (ticket: bigint): void => {
    if (this.handle === null || this.pending.size !== 1 || !this.pending.has(ticket)) return;
    if (native.mr_wait(this.handle, syncWaitMs)) this.drain();
  };

  private drain(): void {
    if (this.handle === null) return;
    for (let rounds = 0; rounds < 16; rounds++) {
      const n = native.mr_poll(this.handle, this.tickets, this.statuses, pollBatch) as number;
      for (let i = 0; i < n; i++) this.complete(this.tickets[i]!, this.statuses[i]!);
      if (n < pollBatch) break;
    }
    if (this.pending.size === 0 && this.polling) {
      this.polling = false;
      this.waiter?.unref();
    }
  }

  private complete(ticket: bigint, status: number): void {
    const p = this.pending.get(ticket);
    if (!p) {
      native.mr_release(this.handle, ticket);
      return;
    }
    this.pending.delete(ticket);
    let error: NativeError | null = null;
    if (status !== 0) error = this.opFailure(ticket, status);
    native.mr_release(this.handle, ticket);
    for (const b of p.buffers) b.settle();
    if (error) p.reject(error);
    else p.resolve();
  }

  private opFailure(ticket: bigint, status: number): NativeError {
    const len = Number(native.mr_op_error(this.handle, ticket, messageBuf, messageBuf.length));
    const text = decoder.decode(messageBuf.subarray(0, Math.min(len, messageBuf.length)));
    const peer = native.mr_op_failed_peer(this.handle, ticket) as number;
    return new NativeError(text || `rank ${this.rank}: op failed (${statusName(status)})`, codeOf(status), peer >= 0 ? peer : null);
  }

  /** Ops submitted and not yet settled. */
  get inFlight(): number {
    return this.pending.size;
  }

  close(): void {
    if (this.handle === null) return;
    const handle = this.handle;
    if (this.waiter) {
      Atomics.store(this.waiterFlag, 1, 1);
      Atomics.store(this.waiterFlag, 0, 0);
      Atomics.notify(this.waiterFlag, 0);
      // mr_wait returns within 50 ms; the engine must outlive the waiter's last call into it.
      for (let i = 0; i < 2000 && Atomics.load(this.waiterFlag, 2) === 0; i++) Bun.sleepSync(1);
      this.waiter.terminate();
      this.waiter = null;
    }
    if (boundPlane === this) {
      native.mr_run_bind(null, null);
      boundPlane = null;
    }
    // Stops native threads; in-flight ops end with ECANCELED (drained below).
    native.mr_engine_destroy(handle);
    this.handle = null;
    for (const [ticket, p] of this.pending) {
      for (const b of p.buffers) b.settle();
      p.reject(new NativeError(`rank ${this.rank}: op (ticket ${ticket}) canceled: data plane closed`, "ECANCELED"));
    }
    this.pending.clear();
    for (const list of this.pool.values()) for (const { address, bytes } of list) native.mr_free(address, bytes.byteLength);
    this.pool.clear();
    // Shared buffers still alive (a service stopping with buffers): remove their /dev/shm files
    // now (the memory stays mapped, here and in programs that mapped it, until unmapped).
    for (const buf of this.shared) {
      const where = this.sharedLocation(buf);
      if (where) rmSync(where.path, { force: true });
    }
  }
}

export function createDataPlane(opts: DataPlaneOptions): NativeDataPlane {
  return new NativeDataPlane(opts);
}

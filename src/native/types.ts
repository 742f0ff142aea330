// The data plane as the control plane sees it. src/native/engine.ts implements it over
// libmoonring (bun:ffi); nothing else in src/ touches bun:ffi.
import type { CollectiveName, DTypeName, RedOpName } from "../ops/table";
import type { StatusName } from "./abi";

/** Memory owned by native code (stable address); `bytes` views it. Free with release(). */
export interface NativeBuffer {
  readonly bytes: Uint8Array;
  /** Host address, or device pointer when device >= 0 (then `bytes` is empty). */
  readonly address: bigint;
  readonly byteLength: number;
  readonly device: number; // -1 = host
  release(): void;
}

/** Data-plane bytes between this rank and `peer` over links of one kind ("tcp", "shm"). */
export interface TrafficRecord {
  peer: number;
  transport: string;
  txBytes: number;
  rxBytes: number;
}

export interface NativeOp {
  kind: CollectiveName;
  dtype: DTypeName;
  redop?: RedOpName;
  /** Agreed by the group; identical on every participant. An unsigned integer: a bigint, or a
   *  number below 2^53 (which spares a caller that counts ids the BigInt arithmetic). */
  opId: bigint | number;
  /** Global ranks taking part, ascending. */
  ranks: number[];
  /** Global rank: root of rooted collectives, or the peer of send/recv. */
  root?: number;
  /** Element count, see docs/architecture.md "Native op shapes". */
  count: number;
  /** alltoall only: element counts per global rank of ranks (group order). */
  sendCounts?: number[];
  recvCounts?: number[];
  send?: NativeBuffer;
  recv?: NativeBuffer;
  timeoutMs: number;
}

/** A native failure: `code` is the MR_E* name, `failedPeer` the global rank that broke it. */
export class NativeError extends Error {
  constructor(
    message: string,
    readonly code: Exclude<StatusName, "EBUSY">,
    readonly failedPeer: number | null = null,
  ) {
    super(message);
    this.name = "NativeError";
  }
}

/** A rank's data-plane links (GET /cluster's data_plane): see mr_engine_links in moonring.h. */
export interface DataPlaneLinks {
  rank: number;
  verbs: {
    usable: boolean;
    detail: string;
    rendezvous_direct_bytes: number;
    rendezvous_staged_bytes: number;
    /** How device memory is registered with the NIC (dma-buf, nvidia-peermem), or why host staging. */
    gpu: string;
    /** Bytes RDMA-read / -written straight between device buffers (GPUDirect RDMA). */
    gpu_direct_bytes: number;
    /** Device allocations registered with the NIC so far (the registration cache's misses). */
    gpu_registrations: number;
    /** Each verbs device (NIC) in use: the bytes its queue pairs were asked to move. */
    devices: { name: string; bytes: number }[];
  };
  links: { peer: number; transport: string }[];
}

export interface DataPlane {
  readonly rank: number;
  readonly dataPort: number;
  readonly hostId: bigint;
  setPeer(rank: number, host: string, port: number, hostId: bigint): void;
  peerDown(rank: number): void;
  /** Optional: which transport carries each live link, and whether RDMA verbs is usable. */
  links?(): DataPlaneLinks;
  alloc(byteLength: number, device?: number): NativeBuffer;
  /** Optional: host memory same-host peers can map (collectives read it in place). */
  allocShared?(byteLength: number): NativeBuffer;
  /**
   * Optional: JS memory (a Uint8Array the GC owns) as a buffer ops read and write in place, e.g.
   * an HTTP body, or a result an HTTP response then sends without a copy. release() does nothing:
   * the memory lives while the Uint8Array (and an op using it) is referenced.
   */
  wrapJs?(bytes: Uint8Array): NativeBuffer;
  /** Optional: bytes sent to / received from each peer over links, by link kind (metrics). */
  traffic?(): TrafficRecord[];
  /** Optional: the file a buffer of allocShared lies in (for local programs that map it). */
  sharedLocation?(buf: NativeBuffer): SharedLocation | null;
  /** Resolves when this rank's part is done; rejects with NativeError. */
  run(op: NativeOp): Promise<void>;
  /** Optional: runs the op on the calling thread and returns when done; throws NativeError. */
  runBlocking?(op: NativeOp): void;
  close(): void;
}

/** ArrayBuffers of wrapJs() buffers: a response may send their bytes as they are (no copy). */
export const jsOwnedMemory = new WeakSet<ArrayBufferLike>();

/** A shared host buffer's place: a /dev/shm file and the buffer's byte offset in it. */
export interface SharedLocation {
  path: string;
  offset: number;
}

export interface DataPlaneOptions {
  rank: number;
  worldSizeMax: number;
  clusterId: string;
  token?: string;
  listenHost: string;
  listenPort?: number;
}

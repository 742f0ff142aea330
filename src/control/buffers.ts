// Named device (or host) buffers of one rank, for REST calls that work in place on memory that
// stays in the rank (docs/api-extensions.md "Device buffers"): POST /buffers creates one,
// collectives and p2p take {"buffer": id}, so a GiB GPU collective never crosses HTTP.
// Knows nothing of HTTP; the routes (src/server/routes/buffers.ts) decode and encode.
import { chmodSync, chownSync } from "node:fs";
import type { NativeBuffer, SharedLocation } from "../native/types";
import { dtypeInfo, type DTypeName } from "../ops/table";
import { InvalidRequest, NotFound, TooLarge } from "../errors";

/** The CUDA helpers the registry needs (src/native/cuda.ts; tests may pass fakes). */
export interface DeviceOps {
  deviceCount(): number;
  /** Why there is no device ("no CUDA device: ..."). */
  unavailableReason(): string;
  copyToDevice(device: number, dptr: bigint, bytes: Uint8Array): void;
  copyToHost(device: number, out: Uint8Array, dptr: bigint): void;
  ipcHandle(device: number, dptr: bigint): Uint8Array;
}

/**
 * Host buffers in shared memory (the native mr_alloc_shared: one /dev/shm file per buffer) that
 * a program on this host maps (GET /buffers/:id/ipc). Absent: host buffers are private memory.
 */
export interface SharedHostOps {
  alloc(bytes: number): NativeBuffer;
  locate(buf: NativeBuffer): SharedLocation | null;
  /** Group that may map the files too (mode 0660); null: the owner only (0600). */
  group: number | null;
}

export interface BufferEntry {
  id: string;
  dtype: DTypeName;
  shape: number[];
  /** -1: host memory; else the CUDA device ordinal. */
  device: number;
  byteLength: number;
  buf: NativeBuffer;
  createdAt: number;
  /** Host buffers: the /dev/shm file a local program maps, or why there is none. */
  shm: SharedLocation | { unavailable: string } | null;
}

/** A buffer's metadata as the API shows it. */
export function describe(e: BufferEntry): Record<string, unknown> {
  return { buffer: e.id, dtype: e.dtype, shape: e.shape, device: deviceName(e.device), bytes: e.byteLength };
}

export function deviceName(device: number): string {
  return device < 0 ? "cpu" : `cuda:${device}`;
}

function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export const DEFAULT_MAX_BUFFER_BYTES = 64 * 1024 ** 3;
export const BUFFERS_MAX = 4096;

export class BufferRegistry {
  private readonly entries = new Map<string, BufferEntry>();
  private serial = 1;
  private bytesInUse = 0;

  constructor(
    private readonly rank: number,
    /** Allocates `bytes` on `device` (-1: host), e.g. dataPlane.alloc. */
    private readonly alloc: (bytes: number, device: number) => NativeBuffer,
    readonly cuda: DeviceOps,
    /** Ordinal "cuda" means (launch --device cuda: rank mod device count). */
    private readonly defaultCudaDevice: () => number,
    /** Device of a buffer created without "device". */
    private readonly defaultDevice: "cpu" | "cuda",
    private readonly maxBytes = DEFAULT_MAX_BUFFER_BYTES,
    private readonly shared: SharedHostOps | null = null,
  ) {}

  /** "cpu" | "cuda" | "cuda:N" (undefined: the service's --device) -> -1 or an ordinal. */
  parseDevice(spec: string | undefined): number {
    const s = (spec ?? this.defaultDevice).trim();
    if (s === "cpu") return -1;
    const m = /^cuda(?::(\d+))?$/.exec(s);
    if (!m) throw new InvalidRequest(`device ${JSON.stringify(spec)}: expected "cpu", "cuda" or "cuda:N"`);
    const count = this.cuda.deviceCount();
    if (count === 0) throw new InvalidRequest(`device ${s}: rank ${this.rank} has no CUDA device (${this.cuda.unavailableReason()})`);
    const ordinal = m[1] === undefined ? this.defaultCudaDevice() : Number(m[1]);
    if (ordinal >= count) throw new InvalidRequest(`device ${s}: rank ${this.rank} sees ${count} CUDA device(s)`);
    return ordinal;
  }

  create(dtype: DTypeName, shape: number[], device: number): BufferEntry {
    const n = numel(shape);
    const byteLength = n * dtypeInfo(dtype).bytes;
    if (!Number.isSafeInteger(byteLength)) throw new TooLarge(`buffer of shape ${JSON.stringify(shape)} is too large`);
    if (this.bytesInUse + byteLength > this.maxBytes) {
      throw new TooLarge(`rank ${this.rank}: ${byteLength} more buffer bytes would pass the limit of ${this.maxBytes} (in use: ${this.bytesInUse})`, {
        limit_bytes: this.maxBytes,
        bytes: byteLength,
      });
    }
    if (this.entries.size >= BUFFERS_MAX) throw new TooLarge(`rank ${this.rank} holds ${BUFFERS_MAX} buffers: delete some`);
    let buf: NativeBuffer;
    let shm: BufferEntry["shm"] = null;
    try {
      if (device < 0) ({ buf, shm } = this.allocHost(Math.max(byteLength, 1)));
      else buf = this.alloc(Math.max(byteLength, 1), device);
    } catch (e) {
      throw new TooLarge(`rank ${this.rank}: could not allocate ${byteLength} bytes on ${deviceName(device)}: ${(e as Error).message}`);
    }
    const id = `r${this.rank}b${this.serial++}`;
    const entry: BufferEntry = { id, dtype, shape: [...shape], device, byteLength, buf, createdAt: Date.now(), shm };
    this.entries.set(id, entry);
    this.bytesInUse += byteLength;
    return entry;
  }

  /** Host memory: shared (a /dev/shm file) when the data plane can, else private. */
  private allocHost(bytes: number): { buf: NativeBuffer; shm: BufferEntry["shm"] } {
    if (!this.shared) return { buf: this.alloc(bytes, -1), shm: { unavailable: "this rank's data plane has no shared memory" } };
    let buf: NativeBuffer;
    try {
      buf = this.shared.alloc(bytes);
    } catch (e) {
      // e.g. /dev/shm full: the buffer still works for collectives, it just cannot be mapped.
      return { buf: this.alloc(bytes, -1), shm: { unavailable: `no shared memory for it: ${(e as Error).message}` } };
    }
    const where = this.shared.locate(buf);
    if (!where) return { buf, shm: { unavailable: "the data plane did not say where it lies" } };
    if (this.shared.group !== null) {
      try {
        chownSync(where.path, process.getuid?.() ?? -1, this.shared.group);
        chmodSync(where.path, 0o660);
      } catch (e) {
        buf.release();
        throw new Error(`cannot give group ${this.shared.group} access to ${where.path}: ${(e as Error).message}`);
      }
    }
    return { buf, shm: where };
  }

  get(id: string): BufferEntry {
    const e = this.entries.get(id);
    if (!e) throw new NotFound(`rank ${this.rank} has no buffer ${JSON.stringify(id)} (buffers are per rank: create it with POST /buffers on this rank)`);
    return e;
  }

  /** Frees the buffer (once ops still using it complete). */
  delete(id: string): BufferEntry {
    const e = this.get(id);
    this.entries.delete(id);
    this.bytesInUse -= e.byteLength;
    e.buf.release();
    return e;
  }

  list(): BufferEntry[] {
    return [...this.entries.values()];
  }

  /** host bytes -> buffer (exactly byteLength bytes). */
  write(e: BufferEntry, bytes: Uint8Array): void {
    if (bytes.byteLength !== e.byteLength) {
      throw new InvalidRequest(`buffer ${e.id} holds ${e.byteLength} bytes; got ${bytes.byteLength}`);
    }
    if (e.device < 0) e.buf.bytes.set(bytes);
    else this.cuda.copyToDevice(e.device, e.buf.address, bytes);
  }

  /** buffer -> a fresh host copy (for device buffers) or a view (host buffers). */
  read(e: BufferEntry): Uint8Array {
    if (e.device < 0) return e.buf.bytes.subarray(0, e.byteLength);
    const out = new Uint8Array(e.byteLength);
    this.cuda.copyToHost(e.device, out, e.buf.address);
    return out;
  }

  /** GET /buffers/:id/ipc of a host buffer: the /dev/shm file and offset a local program maps. */
  shmLocation(e: BufferEntry): SharedLocation {
    if (e.device >= 0) throw new InvalidRequest(`buffer ${e.id} is on ${deviceName(e.device)}: not in shared host memory`);
    const shm = e.shm;
    if (!shm || "unavailable" in shm) throw new InvalidRequest(`buffer ${e.id} cannot be mapped: ${shm ? shm.unavailable : "not in shared memory"}`);
    return shm;
  }

  /** For GET /buffers/:id/ipc of a device buffer. */
  ipc(e: BufferEntry): { handle: Uint8Array; offset: number } {
    if (e.device < 0) throw new InvalidRequest(`buffer ${e.id} is in host memory: no CUDA IPC handle`);
    // Every buffer is its own cuMemAlloc allocation: the handle names it, offset 0.
    return { handle: this.cuda.ipcHandle(e.device, e.buf.address), offset: 0 };
  }

  /** Frees everything (service stop). */
  clear(): void {
    for (const id of [...this.entries.keys()]) this.delete(id);
  }
}

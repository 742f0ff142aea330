// The mr_cuda_* entry points of libmoonring for the GPU tests and bench, through
// src/native/ffi.ts (the bun:ffi symbol table parsed from zig/include/moonring.h).
// MOONRING_LIB=path/to/libmoonring.so selects the library (scripts/gpu/run.sh sets it);
// default: the repo's zig/zig-out/lib/libmoonring.so.
import { constants, libraryPath, missingSymbols, native } from "../../src/native/ffi";

export const libPath = libraryPath;
export const MR = constants;

/** The CUDA subset of moonring.h, typed. */
export interface CudaLib {
  mr_cuda_device_count(): number;
  mr_cuda_alloc(device: number, bytes: bigint): bigint | number;
  mr_cuda_free(device: number, dptr: bigint): number;
  mr_cuda_copy_to_device(device: number, dptr: bigint, src: Uint8Array, bytes: bigint): number;
  mr_cuda_copy_to_host(device: number, dst: Uint8Array, dptr: bigint, bytes: bigint): number;
  mr_cuda_ipc_handle(device: number, dptr: bigint, handleOut: Uint8Array): number;
  mr_cuda_reduce(device: number, redop: number, dtype: number, dst: bigint, src: bigint, count: bigint): number;
}

export interface Gpu {
  lib: CudaLib;
  /** mr_last_error(), or a note when the library does not export it. */
  lastError(): string;
  /** Whether the library exports mr_last_error (messages are checked only then). */
  hasLastError: boolean;
  deviceCount: number;
  /** Why there is no device ("no CUDA device: ..."), or "" when there is one. */
  reason: string;
}

let cached: Gpu | undefined;

export function openGpu(): Gpu {
  if (cached) return cached;
  const lib = native as unknown as CudaLib;
  const hasLastError = !missingSymbols.includes("mr_last_error");
  const lastError = (): string => {
    if (!hasLastError) return "(mr_last_error is not exported by this libmoonring)";
    const buf = new Uint8Array(1024);
    const len = Number(native.mr_last_error!(buf, BigInt(buf.length)));
    return new TextDecoder().decode(buf.subarray(0, Math.min(len, buf.length)));
  };
  const deviceCount = lib.mr_cuda_device_count();
  const reason = deviceCount > 0 ? "" : lastError();
  cached = { lib, lastError, hasLastError, deviceCount, reason };
  return cached;
}

/** Throws with mr_last_error() unless rc is MR_OK. */
export function check(gpu: Gpu, rc: number, what: string): void {
  if (rc !== 0) throw new Error(`${what} failed (${rc}): ${gpu.lastError()}`);
}

/** Device memory freed by dispose(). */
export class DeviceBuffer {
  readonly dptr: bigint;
  constructor(
    readonly gpu: Gpu,
    readonly device: number,
    readonly bytes: number,
  ) {
    const dptr = BigInt(gpu.lib.mr_cuda_alloc(device, BigInt(bytes)));
    if (dptr === 0n) throw new Error(`mr_cuda_alloc(${device}, ${bytes}) failed: ${gpu.lastError()}`);
    this.dptr = dptr;
  }
  upload(data: ArrayBufferView, byteOffset = 0): void {
    if (data.byteLength === 0) return;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    check(this.gpu, this.gpu.lib.mr_cuda_copy_to_device(this.device, this.dptr + BigInt(byteOffset), bytes, BigInt(bytes.length)), "mr_cuda_copy_to_device");
  }
  download(out: ArrayBufferView, byteOffset = 0): void {
    if (out.byteLength === 0) return;
    const bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    check(this.gpu, this.gpu.lib.mr_cuda_copy_to_host(this.device, bytes, this.dptr + BigInt(byteOffset), BigInt(bytes.length)), "mr_cuda_copy_to_host");
  }
  dispose(): void {
    check(this.gpu, this.gpu.lib.mr_cuda_free(this.device, this.dptr), "mr_cuda_free");
  }
}


// The mr_cuda_* entry points of libmoonring for the GPU tests and bench.
// MOONRING_LIB=path/to/libmoonring.so selects the library (scripts/gpu/run.sh sets it);
// default: the repo's zig/zig-out/lib/libmoonring.so.
// TODO(engine): switch to src/native/ffi.ts (the symbol table parsed from moonring.h) once it
// exists; this file declares the same signatures by hand, only the CUDA subset.
import { dlopen, FFIType, type Pointer } from "bun:ffi";
import { existsSync } from "node:fs";
import { join } from "node:path";

export const repoRoot = join(import.meta.dir, "..", "..");
export const libPath = process.env.MOONRING_LIB ?? join(repoRoot, "zig", "zig-out", "lib", "libmoonring.so");

const cudaSymbols = {
  mr_cuda_device_count: { args: [], returns: FFIType.i32 },
  mr_cuda_alloc: { args: [FFIType.i32, FFIType.u64], returns: FFIType.u64 },
  mr_cuda_free: { args: [FFIType.i32, FFIType.u64], returns: FFIType.i32 },
  mr_cuda_copy_to_device: { args: [FFIType.i32, FFIType.u64, FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
  mr_cuda_copy_to_host: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.u64], returns: FFIType.i32 },
  mr_cuda_ipc_handle: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  mr_cuda_reduce: {
    args: [FFIType.i32, FFIType.u32, FFIType.u32, FFIType.u64, FFIType.u64, FFIType.u64],
    returns: FFIType.i32,
  },
} as const;
const errorSymbol = {
  mr_last_error: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.u64 },
} as const;

export type CudaLib = ReturnType<typeof dlopen<typeof cudaSymbols>>["symbols"];

export interface Gpu {
  lib: CudaLib;
  /** mr_last_error(), or a note when the library does not export it yet. */
  lastError(): string;
  /** Whether the library exports mr_last_error (the engine's; messages are checked only then). */
  hasLastError: boolean;
  deviceCount: number;
  /** Why there is no device ("no CUDA device: ..."), or "" when there is one. */
  reason: string;
}

let cached: Gpu | undefined;

export function openGpu(): Gpu {
  if (cached) return cached;
  if (!existsSync(libPath)) throw new Error(`libmoonring not found at ${libPath} (build it: zig build, or set MOONRING_LIB)`);
  const lib = dlopen(libPath, cudaSymbols).symbols;
  let lastError = () => "(mr_last_error is not exported by this libmoonring)";
  let hasLastError = false;
  try {
    const errLib = dlopen(libPath, errorSymbol).symbols;
    lastError = () => {
      const buf = new Uint8Array(1024);
      const len = Number(errLib.mr_last_error(buf, BigInt(buf.length)));
      return new TextDecoder().decode(buf.subarray(0, Math.min(len, buf.length)));
    };
    hasLastError = true;
  } catch {
    // older library without mr_last_error: keep the note
  }
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

export type { Pointer };

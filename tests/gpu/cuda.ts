// A minimal CUDA driver binding (libcuda.so.1 via bun:ffi) that loads the kernels' fatbin
// itself, to test and time kernels libmoonring's C ABI does not expose (mr_reduce2_*,
// mr_reduceN_*, mr_scale_*, mr_copy_strided) and to time with CUDA events.
// Fatbin: MOONRING_FATBIN, else moonring.fatbin beside MOONRING_LIB / zig-out/lib.
// Uses the primary context, like libmoonring, and the legacy NULL stream (so the synchronous
// copies order with the launches).
import { CString, dlopen, FFIType, ptr, type Pointer } from "bun:ffi";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { libPath } from "./lib";

const { i32, u32, u64, ptr: P } = FFIType;
const elapsed = { args: [P, u64, u64], returns: i32 } as const;

const symbols = {
  cuInit: { args: [u32], returns: i32 },
  cuDeviceGet: { args: [P, i32], returns: i32 },
  cuDevicePrimaryCtxRetain: { args: [P, i32], returns: i32 },
  cuCtxSetCurrent: { args: [u64], returns: i32 },
  cuCtxSynchronize: { args: [], returns: i32 },
  cuModuleLoadData: { args: [P, P], returns: i32 },
  cuModuleGetFunction: { args: [P, u64, P], returns: i32 },
  cuLaunchKernel: { args: [u64, u32, u32, u32, u32, u32, u32, u32, u64, P, P], returns: i32 },
  cuMemAlloc_v2: { args: [P, u64], returns: i32 },
  cuMemFree_v2: { args: [u64], returns: i32 },
  cuMemcpyHtoD_v2: { args: [u64, P, u64], returns: i32 },
  cuMemcpyDtoH_v2: { args: [P, u64, u64], returns: i32 },
  cuMemsetD8_v2: { args: [u64, u32, u64], returns: i32 },
  cuEventCreate: { args: [P, u32], returns: i32 },
  cuEventRecord: { args: [u64, u64], returns: i32 },
  cuEventSynchronize: { args: [u64], returns: i32 },
  cuEventDestroy_v2: { args: [u64], returns: i32 },
  cuGetErrorName: { args: [i32, P], returns: i32 },
  cuDeviceGetAttribute: { args: [P, i32, i32], returns: i32 },
} as const;

export const threadsPerBlock = 512; // cuda/kernels.cu: mr::kThreads
const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;

export function fatbinPath(): string {
  if (process.env.MOONRING_FATBIN) return process.env.MOONRING_FATBIN;
  return join(dirname(libPath), "moonring.fatbin");
}

/** A kernel argument: u64 (pointers, counts), f64, or raw bytes (a struct by value). */
export type Arg = { u64: bigint } | { f64: number } | { bytes: Uint8Array };

export class Cuda {
  private readonly api: ReturnType<typeof dlopen<typeof symbols>>["symbols"];
  private readonly elapsedMs: (ms: Float32Array, start: bigint, end: bigint) => number;
  private readonly module: bigint;
  private readonly functions = new Map<string, bigint>();
  readonly smCount: number;

  constructor(readonly device: number) {
    const driverPath = process.env.MOONRING_CUDA_DRIVER ?? "libcuda.so.1";
    this.api = dlopen(driverPath, symbols).symbols;
    // cuEventElapsedTime is _v2 on CUDA >= 12.8 drivers; fall back to the old name.
    try {
      const v2 = dlopen(driverPath, { cuEventElapsedTime_v2: elapsed }).symbols;
      this.elapsedMs = (ms, a, b) => v2.cuEventElapsedTime_v2(ms, a, b);
    } catch {
      const v1 = dlopen(driverPath, { cuEventElapsedTime: elapsed }).symbols;
      this.elapsedMs = (ms, a, b) => v1.cuEventElapsedTime(ms, a, b);
    }
    this.check(this.api.cuInit(0), "cuInit");
    const dev = new Int32Array(1);
    this.check(this.api.cuDeviceGet(dev, device), "cuDeviceGet");
    const ctx = new BigUint64Array(1);
    this.check(this.api.cuDevicePrimaryCtxRetain(ctx, dev[0]!), "cuDevicePrimaryCtxRetain");
    this.check(this.api.cuCtxSetCurrent(ctx[0]!), "cuCtxSetCurrent");
    const sm = new Int32Array(1);
    this.check(this.api.cuDeviceGetAttribute(sm, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev[0]!), "cuDeviceGetAttribute");
    this.smCount = sm[0]!;
    const path = fatbinPath();
    if (!existsSync(path)) throw new Error(`fatbin not found at ${path} (set MOONRING_FATBIN)`);
    const image = new Uint8Array(readFileSync(path)); // fresh, 8-byte aligned copy
    const mod = new BigUint64Array(1);
    this.check(this.api.cuModuleLoadData(mod, image), `cuModuleLoadData(${path})`);
    this.module = mod[0]!;
  }

  check(rc: number, what: string): void {
    if (rc === 0) return;
    const name = new BigUint64Array(1);
    const text = this.api.cuGetErrorName(rc, name) === 0 && name[0] ? new CString(Number(name[0]) as Pointer).toString() : "?";
    throw new Error(`${what} failed: ${text} (${rc})`);
  }

  fn(name: string): bigint {
    let f = this.functions.get(name);
    if (f === undefined) {
      const out = new BigUint64Array(1);
      this.check(this.api.cuModuleGetFunction(out, this.module, Buffer.from(`${name}\0`)), `cuModuleGetFunction(${name})`);
      f = out[0]!;
      this.functions.set(name, f);
    }
    return f;
  }

  alloc(bytes: number): bigint {
    const out = new BigUint64Array(1);
    this.check(this.api.cuMemAlloc_v2(out, BigInt(bytes)), `cuMemAlloc(${bytes})`);
    return out[0]!;
  }
  free(dptr: bigint): void {
    this.check(this.api.cuMemFree_v2(dptr), "cuMemFree");
  }
  upload(dptr: bigint, data: ArrayBufferView): void {
    if (data.byteLength === 0) return;
    this.check(this.api.cuMemcpyHtoD_v2(dptr, new Uint8Array(data.buffer, data.byteOffset, data.byteLength), BigInt(data.byteLength)), "cuMemcpyHtoD");
  }
  download(out: ArrayBufferView, dptr: bigint): void {
    if (out.byteLength === 0) return;
    this.check(this.api.cuMemcpyDtoH_v2(new Uint8Array(out.buffer, out.byteOffset, out.byteLength), dptr, BigInt(out.byteLength)), "cuMemcpyDtoH");
  }
  memset(dptr: bigint, value: number, bytes: number): void {
    this.check(this.api.cuMemsetD8_v2(dptr, value, BigInt(bytes)), "cuMemsetD8");
  }
  synchronize(): void {
    this.check(this.api.cuCtxSynchronize(), "cuCtxSynchronize");
  }

  /** Grid of a grid-stride launch, like driver.zig's gridFor (2 blocks of 512 per SM). */
  grid(items: number): number {
    return Math.max(1, Math.min(Math.ceil(items / threadsPerBlock), this.smCount * 2));
  }

  /** Launches `name` on the NULL stream with blockDim = threadsPerBlock (asynchronous). */
  launch(name: string, gridX: number, args: Arg[], gridY = 1): void {
    const storage = args.map((a) => {
      if ("u64" in a) return new BigUint64Array([a.u64]);
      if ("f64" in a) return new Float64Array([a.f64]);
      const copy = new Uint8Array(Math.ceil(a.bytes.length / 8) * 8);
      copy.set(a.bytes);
      return copy;
    });
    const params = new BigUint64Array(storage.map((s) => BigInt(ptr(s))));
    this.check(this.api.cuLaunchKernel(this.fn(name), gridX, gridY, 1, threadsPerBlock, 1, 1, 0, 0n, params, null), `cuLaunchKernel(${name})`);
  }

  /** Milliseconds of `body` on the device, between two events on the NULL stream. */
  time(body: () => void): number {
    const ev = new BigUint64Array(2);
    this.check(this.api.cuEventCreate(ev.subarray(0, 1), 0), "cuEventCreate");
    this.check(this.api.cuEventCreate(ev.subarray(1, 2), 0), "cuEventCreate");
    try {
      this.check(this.api.cuEventRecord(ev[0]!, 0n), "cuEventRecord");
      body();
      this.check(this.api.cuEventRecord(ev[1]!, 0n), "cuEventRecord");
      this.check(this.api.cuEventSynchronize(ev[1]!), "cuEventSynchronize");
      const ms = new Float32Array(1);
      this.check(this.elapsedMs(ms, ev[0]!, ev[1]!), "cuEventElapsedTime");
      return ms[0]!;
    } finally {
      this.api.cuEventDestroy_v2(ev[0]!);
      this.api.cuEventDestroy_v2(ev[1]!);
    }
  }
}

/** mr::Sources: const void* ptr[8]; uint32_t count; (72 bytes). */
export function sources(dptrs: bigint[]): Uint8Array {
  if (dptrs.length < 1 || dptrs.length > 8) throw new Error(`1..8 sources, got ${dptrs.length}`);
  const bytes = new Uint8Array(72);
  const view = new DataView(bytes.buffer);
  dptrs.forEach((d, i) => view.setBigUint64(i * 8, d, true));
  view.setUint32(64, dptrs.length, true);
  return bytes;
}

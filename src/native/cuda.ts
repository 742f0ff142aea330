// The mr_cuda_* entry points the REST device buffers need (src/control/buffers.ts), typed.
// Like everything bun:ffi, it goes through src/native/ffi.ts (symbols parsed from moonring.h).
import { native } from "./ffi";
import { lastError } from "./engine";
import { NativeError } from "./types";

let deviceCountCache: number | null = null;

/** CUDA devices this process sees (0 without a GPU or driver; cached). */
export function cudaDeviceCount(): number {
  if (deviceCountCache === null) deviceCountCache = Number(native.mr_cuda_device_count());
  return deviceCountCache;
}

/** Why there is no device ("no CUDA device: ..."), or "". */
export function cudaUnavailableReason(): string {
  return cudaDeviceCount() > 0 ? "" : lastError();
}

function check(rc: number, what: string): void {
  if (rc !== 0) throw new NativeError(`${what}: ${lastError()}`, rc === -7 ? "ENODEV" : rc === -2 ? "ENOMEM" : "EINVAL");
}

/** host -> device (bytes.byteLength bytes to dptr). */
export function copyToDevice(device: number, dptr: bigint, bytes: Uint8Array): void {
  if (bytes.byteLength === 0) return;
  check(native.mr_cuda_copy_to_device(device, dptr, bytes, BigInt(bytes.byteLength)) as number, `copy of ${bytes.byteLength} bytes to device ${device}`);
}

/** device -> host (out.byteLength bytes from dptr). */
export function copyToHost(device: number, out: Uint8Array, dptr: bigint): void {
  if (out.byteLength === 0) return;
  check(native.mr_cuda_copy_to_host(device, out, dptr, BigInt(out.byteLength)) as number, `copy of ${out.byteLength} bytes from device ${device}`);
}

/** The 64-byte CUDA IPC handle of the allocation holding dptr (cudaIpcMemHandle_t). */
export function ipcHandle(device: number, dptr: bigint): Uint8Array {
  const out = new Uint8Array(64);
  check(native.mr_cuda_ipc_handle(device, dptr, out) as number, `CUDA IPC handle on device ${device}`);
  return out;
}

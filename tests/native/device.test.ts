// Device (CUDA) buffers through the native data plane: skipped without a GPU.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { NativeDataPlane } from "../../src/native/engine";
import { native } from "../../src/native/ffi";
import { NativeError } from "../../src/native/types";

const devices = Number(native.mr_cuda_device_count());
const withGpu = devices > 0 ? test : test.skip;
let planes: NativeDataPlane[] = [];

beforeAll(() => {
  if (devices === 0) return;
  planes = [0, 1].map((rank) => new NativeDataPlane({ rank, worldSizeMax: 2, clusterId: `dev-${process.pid}`, listenHost: "127.0.0.1" }));
  planes[0]!.setPeer(1, "127.0.0.1", planes[1]!.dataPort, planes[1]!.hostId);
  planes[1]!.setPeer(0, "127.0.0.1", planes[0]!.dataPort, planes[0]!.hostId);
});

afterAll(() => {
  for (const p of planes) p.close();
});

withGpu("allreduce and allgather on device buffers", async () => {
  const count = 100_000;
  const inputs = [0, 1].map((r) => Float32Array.from({ length: count }, (_, k) => ((k * 7 + r * 13) % 101) - 50));
  const bufs = planes.map((p, r) => {
    const b = p.alloc(count * 4, 0);
    expect(b.device).toBe(0);
    expect(native.mr_cuda_copy_to_device(0, b.address, inputs[r]!, count * 4)).toBe(0);
    return b;
  });
  await Promise.all(planes.map((p, r) => p.run({ kind: "allreduce", dtype: "float32", redop: "sum", opId: 1n, ranks: [0, 1], count, send: bufs[r], recv: bufs[r], timeoutMs: 20_000 })));
  for (const b of bufs) {
    const out = new Float32Array(count);
    expect(native.mr_cuda_copy_to_host(0, out, b.address, count * 4)).toBe(0);
    for (let k = 0; k < count; k += 997) expect(out[k]).toBe(inputs[0]![k]! + inputs[1]![k]!);
  }
  const gathered = planes.map((p) => p.alloc(count * 8, 0));
  await Promise.all(planes.map((p, r) => p.run({ kind: "allgather", dtype: "float32", opId: 2n, ranks: [0, 1], count, send: bufs[r], recv: gathered[r], timeoutMs: 20_000 })));
  const out = new Float32Array(2 * count);
  expect(native.mr_cuda_copy_to_host(0, out, gathered[1]!.address, count * 8)).toBe(0);
  expect(out[5]).toBe(inputs[0]![5]! + inputs[1]![5]!);
  for (const b of [...bufs, ...gathered]) b.release();
});

withGpu("a bad device pointer fails the op with a NativeError, the rank lives", async () => {
  const bogus = { address: 0x1000n, byteLength: 16, device: 0, bytes: new Uint8Array(0), release() {} } as never;
  const err = await planes[0]!
    .run({ kind: "allreduce", dtype: "float32", redop: "sum", opId: 3n, ranks: [0], count: 4, send: bogus, recv: bogus, timeoutMs: 1000 })
    .catch((e) => e);
  expect(err).toBeInstanceOf(NativeError);
});

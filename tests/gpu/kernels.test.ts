// GPU reduction kernels through libmoonring's C ABI (mr_cuda_reduce and friends, via bun:ffi),
// for every (redop, dtype) pair of src/ops/table.json, against the CPU reference in
// ./reference.ts. Without a CUDA device the GPU tests skip, and one test checks that the library
// says why ("no CUDA device: ..."); MOONRING_GPU_REQUIRED=1 (scripts/gpu/run.sh) makes a
// missing device a failure instead.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { check, DeviceBuffer, MR, openGpu, type Gpu } from "./lib";
import { alloc, dtypes, fill, mismatches, pairs, redops, reduceRef, Rng, type DType, type RedOp } from "./reference";

const gpu: Gpu = openGpu();
const hasGpu = gpu.deviceCount > 0;
const required = process.env.MOONRING_GPU_REQUIRED === "1";
const seed = Number(process.env.MOONRING_TEST_SEED ?? Date.now() % 1_000_000);
const device = Number(process.env.MOONRING_TEST_DEVICE ?? 0);

if (!hasGpu) console.warn(`tests/gpu: GPU tests skipped: ${gpu.reason}`);
else console.log(`tests/gpu: ${gpu.deviceCount} CUDA device(s), using device ${device}, seed ${seed}`);

test("mr_cuda_device_count reports the devices, or 'no CUDA device: <why>'", () => {
  if (required) expect(gpu.reason).toBe(""); // a GPU machine must see its GPU
  if (hasGpu) return;
  expect(gpu.deviceCount).toBe(0);
  if (gpu.hasLastError) expect(gpu.reason).toStartWith("no CUDA device: ");
  // Other entry points fail cleanly (MR_ENODEV), without crashing the process.
  expect(BigInt(gpu.lib.mr_cuda_alloc(0, 1024n))).toBe(0n);
  expect(gpu.lib.mr_cuda_reduce(0, 0, 2, 0x1000n, 0x2000n, 4n)).toBe(MR.MR_ENODEV!);
});

const MR_EINVAL = MR.MR_EINVAL!;
/** Checks the thread's message when the library exports mr_last_error. */
function expectMessage(needle: string): void {
  if (gpu.hasLastError) expect(gpu.lastError()).toContain(needle);
}
const rows = 1 << 16;
const capacityBytes = rows * 8 + 256;

describe.skipIf(!hasGpu)(`mr_cuda_reduce on device ${device}`, () => {
  let dstBuf: DeviceBuffer;
  let srcBuf: DeviceBuffer;
  beforeAll(() => {
    dstBuf = new DeviceBuffer(gpu, device, capacityBytes);
    srcBuf = new DeviceBuffer(gpu, device, capacityBytes);
  });
  afterAll(() => {
    dstBuf?.dispose();
    srcBuf?.dispose();
  });

  /** dst (at element offset dstOff) = dst op src (at srcOff), checked against the reference. */
  function runCase(redop: RedOp, dtype: DType, count: number, dstOff: number, srcOff: number, rng: Rng, inPlace = false): void {
    const a = alloc(dtype, count) as any;
    const b = inPlace ? a : (alloc(dtype, count) as any);
    fill(dtype, a, rng);
    if (!inPlace) fill(dtype, b, rng);
    const expected = reduceRef(redop, dtype, a, b);
    dstBuf.upload(a, dstOff * dtype.bytes);
    const srcDptr = inPlace ? dstBuf.dptr + BigInt(dstOff * dtype.bytes) : srcBuf.dptr + BigInt(srcOff * dtype.bytes);
    if (!inPlace) srcBuf.upload(b, srcOff * dtype.bytes);
    const rc = gpu.lib.mr_cuda_reduce(device, redop.code, dtype.code, dstBuf.dptr + BigInt(dstOff * dtype.bytes), srcDptr, BigInt(count));
    check(gpu, rc, `mr_cuda_reduce(${redop.name}, ${dtype.name}, ${count})`);
    const got = alloc(dtype, count) as any;
    dstBuf.download(got, dstOff * dtype.bytes);
    const bad = mismatches(dtype, got, expected, [a, b]);
    if (bad.length > 0) {
      throw new Error(
        `${redop.name} ${dtype.name}: count ${count}, dst offset ${dstOff}, src offset ${srcOff}${inPlace ? " (in place)" : ""}, seed ${seed}:\n  ${bad.join("\n  ")}`,
      );
    }
  }

  for (const { redop, dtype } of pairs()) {
    test(`${redop.name} ${dtype.name}`, () => {
      const rng = new Rng(seed + redop.code * 100 + dtype.code);
      const lanes = 16 / dtype.bytes; // elements per 16-byte vector
      runCase(redop, dtype, rows, 0, 0, rng); // aligned, whole vectors
      runCase(redop, dtype, rows - 3, 0, 0, rng); // scalar tail
      if (lanes > 1) {
        runCase(redop, dtype, rows - 5, 1, 1, rng); // same misalignment: scalar head, then vectors
        runCase(redop, dtype, rows - 5, 1, 0, rng); // different misalignment: all scalar
      }
      runCase(redop, dtype, 1, 0, 0, rng);
      runCase(redop, dtype, lanes * 3 + 1, 2, 2, rng);
      runCase(redop, dtype, 4099, 0, 0, rng, true); // dst == src
    });
  }

  test("large counts: grid-stride loops cover every element (sum f32, 2^22 + 5 elements)", () => {
    const f32 = dtypes.find((d) => d.short === "f32")!;
    const sum = redops.find((r) => r.name === "sum")!;
    const count = (1 << 22) + 5;
    const big = [new DeviceBuffer(gpu, device, count * 4), new DeviceBuffer(gpu, device, count * 4)];
    try {
      const a = new Float32Array(count).map((_, i) => i % 1000);
      const b = new Float32Array(count).map((_, i) => (i % 7) * 0.5);
      big[0]!.upload(a);
      big[1]!.upload(b);
      check(gpu, gpu.lib.mr_cuda_reduce(device, sum.code, f32.code, big[0]!.dptr, big[1]!.dptr, BigInt(count)), "mr_cuda_reduce");
      const got = new Float32Array(count);
      big[0]!.download(got);
      const bad = mismatches(f32, got, reduceRef(sum, f32, a, b));
      expect(bad).toEqual([]);
    } finally {
      for (const buf of big) buf.dispose();
    }
  });

  test("bad arguments fail with MR_EINVAL and a message, and leave the device usable", () => {
    const f32 = dtypes.find((d) => d.short === "f32")!;
    const i32 = dtypes.find((d) => d.short === "i32")!;
    const rc = (redop: number, dtype: number, dst: bigint, src: bigint, count: number) =>
      gpu.lib.mr_cuda_reduce(device, redop, dtype, dst, src, BigInt(count));
    const bxor = redops.find((r) => r.name === "bxor")!.code;
    const avg = redops.find((r) => r.name === "avg")!.code;
    expect(rc(bxor, f32.code, dstBuf.dptr, srcBuf.dptr, 16)).toBe(MR_EINVAL);
    expectMessage("bxor");
    expect(rc(avg, i32.code, dstBuf.dptr, srcBuf.dptr, 16)).toBe(MR_EINVAL);
    expect(rc(0, f32.code, dstBuf.dptr + 2n, srcBuf.dptr, 16)).toBe(MR_EINVAL); // misaligned
    expect(rc(0, f32.code, dstBuf.dptr, srcBuf.dptr, capacityBytes)).toBe(MR_EINVAL); // past the allocation
    expectMessage("overruns");
    expect(gpu.lib.mr_cuda_reduce(device, 0, f32.code, dstBuf.dptr, 0x10000n, 16n)).toBe(MR_EINVAL); // not device memory
    expectMessage("not device memory");
    expect(gpu.lib.mr_cuda_device_count()).toBe(gpu.deviceCount);
    runCase(redops[0]!, f32, 100, 0, 0, new Rng(seed));
  });

  test("mr_cuda_ipc_handle writes a 64-byte handle", () => {
    const handle = new Uint8Array(64).fill(0xee);
    check(gpu, gpu.lib.mr_cuda_ipc_handle(device, dstBuf.dptr, handle), "mr_cuda_ipc_handle");
    expect(handle.some((x) => x !== 0xee)).toBe(true);
  });
});

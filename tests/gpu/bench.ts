// GPU micro-benchmarks (not a test): reduction kernels timed with CUDA events, the C ABI's
// mr_cuda_reduce wall-clock per call (argument checks + launch + sync), strided copy, and
// host <-> device copies through the C ABI (pageable memory).
//   bun tests/gpu/bench.ts [--json out.json] [--quick]
// Bandwidth of an elementwise reduce counts 3 x bytes (read dst, read src, write dst).
import { writeFileSync } from "node:fs";
import { Cuda } from "./cuda";
import { check, DeviceBuffer, openGpu } from "./lib";
import { dtypes, redops } from "./reference";

const args = process.argv.slice(2);
const jsonPath = args.includes("--json") ? args[args.indexOf("--json") + 1] : undefined;
const quick = args.includes("--quick");
const device = Number(process.env.MOONRING_TEST_DEVICE ?? 0);

const gpu = openGpu();
if (gpu.deviceCount === 0) {
  console.log(`bench skipped: ${gpu.reason}`);
  process.exit(0);
}
const cuda = new Cuda(device);
const results: Record<string, unknown>[] = [];
function report(row: Record<string, unknown>): void {
  results.push(row);
  console.log(JSON.stringify(row));
}

const sizes = quick ? [1 << 20, 64 << 20] : [64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30];
const dt = (short: string) => dtypes.find((d) => d.short === short)!;
const sum = redops.find((r) => r.name === "sum")!;

/** Mean device milliseconds of `launch`, repeated until ~100 ms of work after a warmup. */
function deviceMs(launch: () => void): number {
  for (let i = 0; i < 3; i++) launch();
  cuda.synchronize();
  const one = cuda.time(launch);
  const reps = Math.max(3, Math.min(1000, Math.ceil(100 / Math.max(one, 0.001))));
  return cuda.time(() => {
    for (let i = 0; i < reps; i++) launch();
  }) / reps;
}

console.log(`# device ${device}: ${cuda.smCount} SMs; sizes ${sizes.map((s) => `${s >> 10} KiB`).join(", ")}`);
const maxBytes = sizes[sizes.length - 1]!;
const a = cuda.alloc(maxBytes);
const b = cuda.alloc(maxBytes);
const c = cuda.alloc(maxBytes);
cuda.memset(a, 0, maxBytes);
cuda.memset(b, 0, maxBytes);
cuda.memset(c, 0, maxBytes);

for (const short of ["f32", "bf16", "f16", "f64", "i32", "i8"]) {
  const dtype = dt(short);
  for (const bytes of sizes) {
    const count = bytes / dtype.bytes;
    const items = Math.ceil(bytes / 16);
    const ms = deviceMs(() => cuda.launch(`mr_reduce_sum_${short}`, cuda.grid(items), [{ u64: a }, { u64: b }, { u64: BigInt(count) }]));
    report({ kernel: `mr_reduce_sum_${short}`, bytes, us: +(ms * 1000).toFixed(2), GBps: +((3 * bytes) / ms / 1e6).toFixed(1) });
    if (short === "f32" || short === "bf16") {
      const ms2 = deviceMs(() => cuda.launch(`mr_reduce2_sum_${short}`, cuda.grid(items), [{ u64: c }, { u64: a }, { u64: b }, { u64: BigInt(count) }]));
      report({ kernel: `mr_reduce2_sum_${short}`, bytes, us: +(ms2 * 1000).toFixed(2), GBps: +((3 * bytes) / ms2 / 1e6).toFixed(1) });
    }
  }
}

// mr_reduceN with 4 sources (reads 4, writes 1).
for (const bytes of sizes) {
  const count = bytes / 4;
  const srcs = new Uint8Array(72);
  const view = new DataView(srcs.buffer);
  [a, b, c, a].forEach((d, i) => view.setBigUint64(i * 8, d, true));
  view.setUint32(64, 4, true);
  const ms = deviceMs(() => cuda.launch("mr_reduceN_sum_f32", cuda.grid(count), [{ u64: c }, { bytes: srcs }, { u64: BigInt(count) }]));
  report({ kernel: "mr_reduceN_sum_f32 (4 sources)", bytes, us: +(ms * 1000).toFixed(2), GBps: +((5 * bytes) / ms / 1e6).toFixed(1) });
}

// Strided copy: pack 8 blocks from a stride of 2 blocks.
for (const bytes of sizes.filter((s) => s * 2 <= maxBytes)) {
  const block = bytes / 8;
  const gridY = 8;
  const gridX = Math.max(1, Math.floor(cuda.grid(Math.ceil(block / 16) * gridY) / gridY));
  const ms = deviceMs(() =>
    cuda.launch("mr_copy_strided", gridX, [{ u64: c }, { u64: a }, { u64: BigInt(block) }, { u64: 8n }, { u64: BigInt(block) }, { u64: BigInt(2 * block) }], gridY),
  );
  report({ kernel: "mr_copy_strided (pack 8 blocks)", bytes, us: +(ms * 1000).toFixed(2), GBps: +((2 * bytes) / ms / 1e6).toFixed(1) });
}

cuda.free(a);
cuda.free(b);
cuda.free(c);

// Through the C ABI: wall-clock per call (checks + launch + synchronize).
{
  const f32 = dt("f32");
  const bytesMax = quick ? 64 << 20 : 256 << 20;
  const x = new DeviceBuffer(gpu, device, bytesMax);
  const y = new DeviceBuffer(gpu, device, bytesMax);
  for (const bytes of [4 << 10, 1 << 20, bytesMax]) {
    const count = BigInt(bytes / 4);
    const call = () => check(gpu, gpu.lib.mr_cuda_reduce(device, sum.code, f32.code, x.dptr, y.dptr, count), "mr_cuda_reduce");
    for (let i = 0; i < 3; i++) call();
    const reps = bytes <= 1 << 20 ? 2000 : 20;
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) call();
    const us = ((performance.now() - t0) * 1000) / reps;
    report({ abi: "mr_cuda_reduce sum f32", bytes, us_per_call: +us.toFixed(2), GBps: +((3 * bytes) / us / 1e3).toFixed(1) });
  }
  const host = new Uint8Array(bytesMax);
  for (const [name, fn] of [
    ["mr_cuda_copy_to_device (pageable)", () => x.upload(host)],
    ["mr_cuda_copy_to_host (pageable)", () => x.download(host)],
  ] as const) {
    fn();
    const reps = quick ? 3 : 5;
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) fn();
    const ms = (performance.now() - t0) / reps;
    report({ abi: name, bytes: bytesMax, ms: +ms.toFixed(2), GBps: +(bytesMax / ms / 1e6).toFixed(1) });
  }
  x.dispose();
  y.dispose();
}

if (jsonPath) writeFileSync(jsonPath, JSON.stringify({ device, smCount: cuda.smCount, results }, null, 2));

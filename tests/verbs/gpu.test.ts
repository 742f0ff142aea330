// GPU tensors over RDMA verbs without host staging (docs/verbs.md "GPU memory"): device
// buffers registered with the verbs device by dma-buf (else nvidia-peermem) and read / written
// by the peers' "NICs" straight in device memory (backend/verbs_direct.zig). Ranks on one host
// with MOONRING_TRANSPORT=verbs stand in for hosts; MOONRING_CUDA_IPC=0 keeps the same-host
// CUDA IPC path out of the way.
//
// Where there is no GPU the ranks run over the fake CUDA driver (libmoonring_fakecuda.so:
// "device memory" is host memory) and the test verbs provider moves the bytes through it
// (its GPUDirect emulation, zig/src/verbs/fake_gpu.zig). On a GPU machine (or with
// MOONRING_CUDA_DRIVER set) the same tests run on the real driver:
//   MOONRING_GPU_REQUIRED=1 bun test tests/verbs/gpu.test.ts
// Values are random integers, exact in every dtype used; references in f64 here.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { launchWorld, ROOT, type LaunchedWorld } from "../support/launch-world";
import { providerMissing, verbsEnv, onSystemVerbs } from "./provider";

const FAKE_CUDA = `${ROOT}zig/zig-out/lib/libmoonring_fakecuda.so`;
const realGpu = process.env.MOONRING_CUDA_DRIVER === undefined && existsSync("/dev/nvidiactl");
const driver = process.env.MOONRING_CUDA_DRIVER ?? (realGpu ? null : FAKE_CUDA);
const missing = providerMissing() ?? (driver !== null && !existsSync(driver) ? `${driver} is not built (run zig build)` : null);
if (missing) {
  if (process.env.MOONRING_GPU_REQUIRED === "1") throw new Error(`verbs GPU tests can't run: ${missing}`);
  console.warn(`SKIP verbs GPU tests: ${missing}`);
}
const seed = Number(process.env.MOONRING_TEST_SEED ?? Date.now() % 1_000_000);

function env(extra: Record<string, string> = {}): Record<string, string> {
  const e: Record<string, string> = { ...verbsEnv(), MOONRING_CUDA_IPC: "0", MOONRING_LOG: "info", ...extra };
  if (driver !== null) e.MOONRING_CUDA_DRIVER = driver;
  return e;
}

type DType = "float32" | "int32";

function rng(s: number): (lo: number, hi: number) => number {
  let x = s >>> 0 || 1;
  return (lo, hi) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return lo + (x % (hi - lo + 1));
  };
}

function encode(dtype: DType, values: Float64Array): Uint8Array {
  return new Uint8Array((dtype === "float32" ? Float32Array.from(values) : Int32Array.from(values)).buffer);
}

function decode(dtype: DType, bytes: Uint8Array): Float64Array {
  const copy = bytes.slice().buffer;
  return Float64Array.from(dtype === "float32" ? new Float32Array(copy) : new Int32Array(copy));
}

class World {
  constructor(readonly w: LaunchedWorld) {}
  get n(): number {
    return this.w.urls.length;
  }
  async call(r: number, method: string, path: string, body?: unknown): Promise<Response> {
    const raw = body instanceof Uint8Array;
    return fetch(this.w.urls[r] + path, {
      method,
      headers: raw ? { "content-type": "application/octet-stream" } : { "content-type": "application/json", accept: "application/octet-stream" },
      body: body === undefined ? undefined : raw ? body : JSON.stringify(body),
    });
  }
  async json(r: number, method: string, path: string, body?: unknown): Promise<any> {
    const res = await fetch(this.w.urls[r] + path, { method, headers: { "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
    const out = await res.json();
    if (res.status >= 300) throw new Error(`rank ${r} ${method} ${path}: ${res.status} ${JSON.stringify(out)}`);
    return out;
  }
  async buffer(r: number, dtype: DType, shape: number[], values: Float64Array): Promise<string> {
    const res = await this.call(r, "POST", `/buffers?dtype=${dtype}&shape=${shape.join(",")}&device=cuda`, encode(dtype, values));
    const out = (await res.json()) as any;
    if (res.status !== 201) throw new Error(`rank ${r} POST /buffers: ${res.status} ${JSON.stringify(out)}`);
    return out.buffer;
  }
  async read(r: number, id: string, dtype: DType): Promise<Float64Array> {
    const res = await this.call(r, "GET", `/buffers/${id}`);
    expect(res.status).toBe(200);
    return decode(dtype, new Uint8Array(await res.arrayBuffer()));
  }
  async verbs(r: number): Promise<{ gpu: string; gpu_direct_bytes: number; gpu_registrations: number }> {
    return (await this.json(r, "GET", "/cluster")).data_plane.verbs;
  }
}

function expectValues(what: string, got: Float64Array, want: Float64Array): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) throw new Error(`${what}: element ${i} is ${got[i]}, expected ${want[i]} (seed ${seed})`);
}

type Op = "allreduce" | "allgather" | "broadcast";

/** One op on every rank, results read back and checked against references in f64. */
/** Bytes one op moves by RDMA between device buffers, summed over the ranks (reads + writes). */
function directBytes(op: Op, n: number, k: number): number {
  const bytes = 4 * k;
  return op === "allreduce" ? 2 * (n - 1) * bytes : op === "allgather" ? n * (n - 1) * bytes : (n - 1) * bytes;
}

async function directTotal(world: World): Promise<number> {
  const all = await Promise.all(Array.from({ length: world.n }, (_, r) => world.verbs(r)));
  return all.reduce((a, v) => a + v.gpu_direct_bytes, 0);
}

/** One op on every rank, results read back and checked against references in f64; `direct`:
 * the device-to-device RDMA byte count must grow by exactly the op's bytes (false: by none;
 * null: not checked, a real driver may export some allocations as dma-buf and not others). */
async function runCase(world: World, op: Op, dtype: DType, k: number, root: number, next: (lo: number, hi: number) => number, direct: boolean | null = true): Promise<void> {
  const n = world.n;
  const before = await directTotal(world);
  const inputs = Array.from({ length: n }, () => Float64Array.from({ length: k }, () => (dtype === "int32" ? next(-1_000_000, 1_000_000) : next(-50, 50))));
  const ids = await Promise.all(inputs.map((v, r) => world.buffer(r, dtype, [k], v)));
  const made = ids.map((id) => [id]);
  try {
    const redop = dtype === "int32" ? "bxor" : "sum";
    const body = (r: number) => (op === "allreduce" ? { buffer: ids[r], op: redop } : op === "broadcast" ? { buffer: ids[r], src: root } : { buffer: ids[r] });
    const answers = await Promise.all(ids.map((_, r) => world.json(r, "POST", `/collective/${op}`, body(r))));
    let want: Float64Array;
    if (op === "allreduce") want = Float64Array.from({ length: k }, (_, i) => inputs.map((v) => v[i]!).reduce((a, b) => (dtype === "int32" ? a ^ b : a + b)));
    else if (op === "broadcast") want = inputs[root]!;
    else {
      want = new Float64Array(n * k);
      inputs.forEach((v, j) => want.set(v, j * k));
    }
    if (direct !== null) expect(await directTotal(world)).toBe(before + (direct ? directBytes(op, n, k) : 0));
    for (let r = 0; r < n; r++) {
      const id = answers[r].result.buffer as string;
      if (id !== ids[r]) made[r]!.push(id);
      expectValues(`${op} ${dtype} k=${k} root=${root} rank ${r}`, await world.read(r, id, dtype), want);
    }
  } finally {
    await Promise.all(made.map((list, r) => Promise.all(list.map((id) => world.call(r, "DELETE", `/buffers/${id}`)))));
  }
}

async function runAll(world: World, salt: number, direct: boolean | null): Promise<void> {
  const next = rng(seed + salt);
  for (const k of [1, 1000, 1 << 18, 300_001]) {
    for (const dtype of ["float32", "int32"] as DType[]) await runCase(world, "allreduce", dtype, k, 0, next, direct);
    await runCase(world, "allgather", "float32", k, 0, next, direct);
    for (const root of [0, world.n - 1]) await runCase(world, "broadcast", "int32", k, root, next, direct);
  }
}

for (const n of missing ? [] : [2, 3]) {
  describe(`GPU memory over verbs, ${n} ranks (${realGpu ? "real CUDA driver" : "fake CUDA driver"}${onSystemVerbs ? ", system verbs" : ", test provider"})`, () => {
    let world: World;
    beforeAll(async () => {
      world = new World(await launchWorld(n, { args: ["--device", "cuda"], env: env() }));
    }, 90_000);
    afterAll(async () => {
      await world?.w.stop();
    });

    test("allreduce, allgather, broadcast: exact values, written straight into device memory (dma-buf)", async () => {
      // A first op registers; a real GPU without dma-buf (proprietary kernel module) and
      // without nvidia-peermem stages through host memory, says why, and must still be exact.
      await runCase(world, "allgather", "int32", 4096, 0, rng(seed), realGpu ? null : true);
      const mode = (await world.verbs(0)).gpu;
      if (!realGpu) expect(mode).toContain("dma-buf");
      const before = await directTotal(world);
      await runAll(world, n, realGpu ? null : true);
      if (realGpu) {
        const moved = (await directTotal(world)) - before;
        console.warn(`GPU memory over verbs: ${(await world.verbs(0)).gpu}; ${moved} bytes RDMA between device buffers`);
        // A driver that exports dma-buf at all does for the 1 MiB+ allocations.
        if (!(await world.verbs(0)).gpu.startsWith("host staging") || moved > 0) expect(moved).toBeGreaterThan(0);
      }
    }, 180_000);

    test.skipIf(n !== 2)("registration cache: the same buffers again register nothing; freed ones are dropped", async () => {
      if (realGpu && (await world.verbs(0)).gpu.startsWith("host staging")) return; // said above
      const regs = async () => Promise.all([0, 1].map(async (r) => (await world.verbs(r)).gpu_registrations));
      const k = 1 << 19; // 2 MiB: a whole GPU page of its own on a real driver
      const ids = await Promise.all([0, 1].map((r) => world.buffer(r, "int32", [k], new Float64Array(k).fill(r + 1))));
      const allreduce = () => Promise.all([0, 1].map((r) => world.json(r, "POST", "/collective/allreduce", { buffer: ids[r], op: "sum" })));
      const r0 = await regs();
      await allreduce();
      const r1 = await regs();
      for (let r = 0; r < 2; r++) expect(r1[r]! - r0[r]!).toBeGreaterThanOrEqual(2); // the buffer + the scratch
      await allreduce();
      await allreduce();
      const r2 = await regs();
      // The same buffer hits the cache; only the per-op scratch (a new allocation) registers.
      for (let r = 0; r < 2; r++) expect(r2[r]! - r1[r]!).toBe(2);
      for (let r = 0; r < 2; r++) expectValues(`allreduce x3 rank ${r}`, await world.read(r, ids[r]!, "int32"), new Float64Array(k).fill(12));
      await Promise.all([0, 1].map((r) => world.call(r, "DELETE", `/buffers/${ids[r]}`)));
      const again = await Promise.all([0, 1].map((r) => world.buffer(r, "int32", [k], new Float64Array(k).fill(r))));
      await Promise.all([0, 1].map((r) => world.json(r, "POST", "/collective/allreduce", { buffer: again[r], op: "sum" })));
      const r3 = await regs();
      // Even where the new buffer reuses the old address, it is registered anew.
      for (let r = 0; r < 2; r++) expect(r3[r]! - r2[r]!).toBe(2);
      for (let r = 0; r < 2; r++) expectValues(`after re-allocation rank ${r}`, await world.read(r, again[r]!, "int32"), new Float64Array(k).fill(1));
      await Promise.all([0, 1].map((r) => world.call(r, "DELETE", `/buffers/${again[r]}`)));
    }, 60_000);
  });
}

describe.skipIf(missing !== null || realGpu)("GPU memory over verbs: fallbacks (fake CUDA driver)", () => {
  test("no dma-buf, no nvidia-peermem: host staging, said once in the log and in /cluster, values exact", async () => {
    const world = new World(await launchWorld(2, { args: ["--device", "cuda"], env: env({ MOONRING_FAKEVERBS_DMABUF: "0", MOONRING_IB_PEERMEM: "0" }) }));
    try {
      await runCase(world, "allreduce", "float32", 1000, 0, rng(seed), false);
      await runCase(world, "broadcast", "int32", 1000, 1, rng(seed + 1), false);
      for (let r = 0; r < 2; r++) {
        const v = await world.verbs(r);
        expect(v.gpu).toContain("host staging");
        expect(v.gpu).toContain("ibv_reg_dmabuf_mr failed (errno 95)");
        expect(v.gpu_direct_bytes).toBe(0);
      }
      const said = world.w.stderrText().split("\n").filter((l) => l.includes("GPU memory not registered"));
      expect(said.length).toBe(2); // once per rank
    } finally {
      await world.w.stop();
    }
  }, 90_000);

  test("dma-buf refused, nvidia-peermem loaded: ibv_reg_mr on device memory", async () => {
    const world = new World(await launchWorld(2, { args: ["--device", "cuda"], env: env({ MOONRING_FAKEVERBS_DMABUF: "0", MOONRING_FAKEVERBS_PEERMEM: "1", MOONRING_IB_PEERMEM: "1" }) }));
    try {
      await runCase(world, "allreduce", "int32", 5000, 0, rng(seed + 2));
      await runCase(world, "allgather", "float32", 777, 0, rng(seed + 3));
      for (let r = 0; r < 2; r++) {
        const v = await world.verbs(r);
        expect(v.gpu).toContain("nvidia-peermem");
        expect(v.gpu_direct_bytes).toBeGreaterThan(0);
      }
    } finally {
      await world.w.stop();
    }
  }, 90_000);
});

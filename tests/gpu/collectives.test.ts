// Collectives on device buffers over REST (docs/api-extensions.md "Device buffers"): 2 rank
// processes (`launch --nproc 2 --device cuda`, rank r on GPU r mod count), every collective x
// float32 / bfloat16 / int32 / float16 x roots 0 and 1 x 1, 1000 and 1 Mi elements per block,
// random integer data (every result exact in every dtype), references computed here in f64.
// Results are read back from the buffers (in place, or the result buffer the answer names).
// With two GPUs and a real driver the device ops take the CUDA IPC direct path (checked
// through the rank logs: no "use host staging" line); over the fake driver
// (scripts/gpu/fake-check.sh) they fall back to host staging, which this also checks.
// Last, a Python process maps a buffer with GET /buffers/:id/ipc into PyTorch (zero copy).
// Without a CUDA device: skipped ("no CUDA device"); MOONRING_GPU_REQUIRED=1 fails instead.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { dtypeInfo, type DTypeName, type RedOpName } from "../../src/ops/table";
import { fromBFloat16Bits, fromFloat16Bits, toBFloat16Bits, toFloat16Bits } from "../../src/tensor/half";
import { launchWorld, ROOT, type LaunchedWorld } from "../support/launch-world";
import { openGpu } from "./lib";

const gpu = openGpu();
const hasGpu = gpu.deviceCount > 0;
const fakeDriver = process.env.MOONRING_CUDA_DRIVER !== undefined;
const seed = Number(process.env.MOONRING_TEST_SEED ?? Date.now() % 1_000_000);
if (!hasGpu) console.warn(`tests/gpu/collectives: skipped: no CUDA device (${gpu.reason})`);

// MOONRING_GPU_RANKS=4 on a 4-GPU machine (the in-place buffer / p2p tests need exactly 2).
const N = Number(process.env.MOONRING_GPU_RANKS ?? 2);
const sizes = [1, 1000, 1 << 20];
const dtypes: { dtype: DTypeName; redop: RedOpName }[] = [
  { dtype: "float32", redop: "sum" },
  { dtype: "bfloat16", redop: "avg" },
  { dtype: "int32", redop: "bxor" },
  { dtype: "float16", redop: "max" },
];

class Rng {
  private s: number;
  constructor(s: number) {
    this.s = s >>> 0 || 1;
  }
  int(lo: number, hi: number): number {
    // xorshift32
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return lo + (this.s % (hi - lo + 1));
  }
}

function encode(dtype: DTypeName, values: Float64Array): Uint8Array {
  const bytes = new Uint8Array(values.length * dtypeInfo(dtype).bytes);
  const dv = new DataView(bytes.buffer);
  values.forEach((v, i) => {
    if (dtype === "float32") dv.setFloat32(i * 4, v, true);
    else if (dtype === "int32") dv.setInt32(i * 4, v, true);
    else if (dtype === "bfloat16") dv.setUint16(i * 2, toBFloat16Bits(v), true);
    else dv.setUint16(i * 2, toFloat16Bits(v), true);
  });
  return bytes;
}

function decode(dtype: DTypeName, bytes: Uint8Array): Float64Array {
  const n = bytes.byteLength / dtypeInfo(dtype).bytes;
  const out = new Float64Array(n);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < n; i++) {
    if (dtype === "float32") out[i] = dv.getFloat32(i * 4, true);
    else if (dtype === "int32") out[i] = dv.getInt32(i * 4, true);
    else if (dtype === "bfloat16") out[i] = fromBFloat16Bits(dv.getUint16(i * 2, true));
    else out[i] = fromFloat16Bits(dv.getUint16(i * 2, true));
  }
  return out;
}

/** The reduction of `values` (one per rank, group order), as the kernels define it. */
function red(redop: RedOpName, values: number[]): number {
  const fold = (f: (a: number, b: number) => number) => values.reduce(f);
  switch (redop) {
    case "sum":
      return fold((a, b) => a + b);
    case "avg":
      return fold((a, b) => a + b) / values.length;
    case "max":
      return fold((a, b) => Math.max(a, b));
    case "bxor":
      return fold((a, b) => a ^ b);
    default:
      throw new Error(`no reference for ${redop}`);
  }
}

/** Element-wise reference over every rank's input from `offset`, rounded to the dtype. */
function reduceRef(dtype: DTypeName, redop: RedOpName, inputs: Float64Array[], offset: number, k: number): Float64Array {
  const exact = Float64Array.from({ length: k }, (_, i) => red(redop, inputs.map((v) => v[offset + i]!)));
  return decode(dtype, encode(dtype, exact));
}

let world: LaunchedWorld | null = null;

async function call(r: number, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(world!.urls[r] + path, {
    method,
    headers: body instanceof Uint8Array ? { "content-type": "application/octet-stream", ...headers } : { "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : body instanceof Uint8Array ? body : JSON.stringify(body),
  });
}

async function json(r: number, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  const res = await call(r, method, path, body);
  const out = (await res.json()) as Record<string, unknown>;
  if (res.status >= 300) throw new Error(`rank ${r} ${method} ${path}: ${res.status} ${JSON.stringify(out)}`);
  return out;
}

async function createBuffer(r: number, dtype: DTypeName, shape: number[], values: Float64Array): Promise<string> {
  const q = `dtype=${dtype}&shape=${shape.join(",")}&device=cuda`;
  const res = await call(r, "POST", `/buffers?${q}`, encode(dtype, values));
  const out = (await res.json()) as { buffer: string; device: string };
  if (res.status !== 201) throw new Error(`rank ${r} POST /buffers: ${res.status} ${JSON.stringify(out)}`);
  expect(out.device).toBe(`cuda:${r % gpu.deviceCount}`); // launch --device cuda: rank r on GPU r mod count
  return out.buffer;
}

async function readBuffer(r: number, id: string, dtype: DTypeName): Promise<Float64Array> {
  const res = await call(r, "GET", `/buffers/${id}`, undefined, { accept: "application/octet-stream" });
  expect(res.status).toBe(200);
  expect(res.headers.get("x-moonring-dtype")).toBe(dtype);
  return decode(dtype, new Uint8Array(await res.arrayBuffer()));
}

function expectValues(what: string, got: Float64Array, want: Float64Array): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) throw new Error(`${what}: element ${i} is ${got[i]}, expected ${want[i]} (seed ${seed})`);
  }
}

type Op = "allreduce" | "reduce" | "broadcast" | "allgather" | "gather" | "scatter" | "reduce_scatter" | "alltoall";
const rooted: Op[] = ["reduce", "broadcast", "gather", "scatter"];
const ops: Op[] = ["allreduce", "reduce", "broadcast", "allgather", "gather", "scatter", "reduce_scatter", "alltoall"];
const listOps: Op[] = ["scatter", "reduce_scatter", "alltoall"];

/** Runs one case on both ranks and checks every rank's result. */
async function runCase(op: Op, dtype: DTypeName, redop: RedOpName, k: number, root: number, rng: Rng): Promise<void> {
  const what = `${op} ${dtype} ${redop} k=${k} root=${root}`;
  const isList = listOps.includes(op);
  const per = isList ? N * k : k;
  const inputs = Array.from({ length: N }, () => {
    const v = new Float64Array(per);
    for (let i = 0; i < per; i++) v[i] = dtype === "int32" ? rng.int(-1000000, 1000000) : rng.int(-50, 50);
    return v;
  });
  const shape = isList ? [N, k] : [k];
  const ids = await Promise.all(inputs.map((v, r) => createBuffer(r, dtype, shape, v)));
  const made: string[][] = ids.map((id) => [id]);
  try {
    const body = (r: number): Record<string, unknown> => {
      const b: Record<string, unknown> = { buffer: ids[r] };
      if (op === "allreduce" || op === "reduce" || op === "reduce_scatter") b.op = redop;
      if (op === "reduce" || op === "gather") b.dst = root;
      if (op === "broadcast" || op === "scatter") b.src = root;
      return b;
    };
    const answers = await Promise.all(ids.map((_, r) => json(r, "POST", `/collective/${op}`, body(r))));
    for (let r = 0; r < N; r++) {
      const res = answers[r]!.result as { buffer: string; shape: number[]; device: string } | null;
      const noResult = (op === "reduce" || op === "gather") && r !== root;
      if (noResult) {
        expect(res).toBeNull();
        if (op === "reduce") expectValues(`${what} rank ${r} (input unchanged)`, await readBuffer(r, ids[r]!, dtype), inputs[r]!);
        continue;
      }
      expect(res).not.toBeNull();
      if (res!.buffer !== ids[r]) made[r]!.push(res!.buffer);
      expect(res!.device).toBe(`cuda:${r % gpu.deviceCount}`);
      let want: Float64Array;
      switch (op) {
        case "allreduce":
        case "reduce":
          want = reduceRef(dtype, redop, inputs, 0, k);
          expect(res!.buffer).toBe(ids[r]!); // in place
          break;
        case "broadcast":
          want = inputs[root]!;
          expect(res!.buffer).toBe(ids[r]!);
          break;
        case "allgather":
        case "gather":
          want = new Float64Array(N * k);
          for (let j = 0; j < N; j++) want.set(inputs[j]!, j * k);
          expect(res!.shape).toEqual([N, k]);
          break;
        case "scatter":
          want = inputs[root]!.slice(r * k, (r + 1) * k);
          break;
        case "reduce_scatter":
          want = reduceRef(dtype, redop, inputs, r * k, k);
          break;
        case "alltoall":
          want = new Float64Array(N * k);
          for (let j = 0; j < N; j++) want.set(inputs[j]!.slice(r * k, (r + 1) * k), j * k);
          break;
      }
      expectValues(`${what} rank ${r}`, await readBuffer(r, res!.buffer, dtype), want);
    }
  } finally {
    await Promise.all(made.map((list, r) => Promise.all(list.map((id) => call(r, "DELETE", `/buffers/${id}`)))));
  }
}

describe.skipIf(!hasGpu)(`collectives on device buffers, ${N} ranks over REST`, () => {
  beforeAll(async () => {
    world = await launchWorld(N, { args: ["--device", "cuda"], env: { MOONRING_LOG: "info" } });
  }, 90_000);
  afterAll(async () => {
    await world?.stop();
  });

  for (const op of ops) {
    test(
      op,
      async () => {
        const rng = new Rng(seed + op.length * 7919);
        for (const { dtype, redop } of dtypes) {
          for (const k of sizes) {
            for (const root of rooted.includes(op) ? [0, N - 1] : [0]) await runCase(op, dtype, redop, k, root, rng);
          }
        }
      },
      120_000,
    );
  }

  test.skipIf(N !== 2)("allgather into an existing out buffer; p2p send/recv between buffers; errors", async () => {
    const a = await Promise.all([0, 1].map((r) => createBuffer(r, "float32", [3], new Float64Array([r, r + 1, r + 2]))));
    const outs = await Promise.all([0, 1].map((r) => createBuffer(r, "float32", [6], new Float64Array(6))));
    const res = await Promise.all([0, 1].map((r) => json(r, "POST", "/collective/allgather", { buffer: a[r], out: outs[r] })));
    for (let r = 0; r < N; r++) {
      expect((res[r]!.result as { buffer: string }).buffer).toBe(outs[r]!);
      expectValues("allgather out", await readBuffer(r, outs[r]!, "float32"), new Float64Array([0, 1, 2, 1, 2, 3]));
    }
    const [sent, got] = await Promise.all([json(0, "POST", "/p2p/send", { buffer: a[0], dst: 1 }), json(1, "POST", "/p2p/recv", { buffer: a[1], src: 0 })]);
    expect(sent.ok).toBe(true);
    expect((got.result as { buffer: string }).buffer).toBe(a[1]!);
    expectValues("p2p recv into a buffer", await readBuffer(1, a[1]!, "float32"), new Float64Array([0, 1, 2]));
    // JSON view, 404 for an unknown id, 400 for a wrong-sized PUT.
    const view = await json(1, "GET", `/buffers/${a[1]}`);
    expect(view.data).toEqual([0, 1, 2]);
    expect((await call(0, "GET", "/buffers/nope")).status).toBe(404);
    expect((await call(0, "PUT", `/buffers/${a[0]}`, { data: [1, 2] })).status).toBe(400);
    for (let r = 0; r < N; r++) {
      await call(r, "DELETE", `/buffers/${a[r]}`);
      await call(r, "DELETE", `/buffers/${outs[r]}`);
    }
  }, 60_000);

  test("device ops took the CUDA IPC direct path (unless the fake driver or one GPU)", () => {
    const log = world!.stderrText();
    const staged = log.split("\n").filter((l) => l.includes("use host staging"));
    if (fakeDriver) {
      // Fake "device memory" can't cross processes: the ranks say so once and stage.
      expect(staged.length).toBeGreaterThan(0);
      return;
    }
    expect(staged).toEqual([]);
  });

  const python = Bun.which("python3");
  const torchOk =
    !fakeDriver && python !== null && Bun.spawnSync([python, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"]).exitCode === 0;
  test.skipIf(!torchOk)("PyTorch maps a buffer through GET /buffers/:id/ipc (zero copy, both ways)", async () => {
    const values = new Float64Array(4096).map((_, i) => (i % 100) - 50);
    const id = await createBuffer(1, "float32", [64, 64], values);
    const ipc = await json(1, "GET", `/buffers/${id}/ipc`);
    expect(Buffer.from(ipc.handle as string, "base64").byteLength).toBe(64);
    const proc = Bun.spawnSync([python!, `${ROOT}tests/gpu/ipc_read.py`, world!.urls[1]!, id, "--add", "1"], { stderr: "pipe" });
    if (proc.exitCode !== 0) throw new Error(`ipc_read.py failed: ${proc.stderr.toString()}`);
    const seen = JSON.parse(proc.stdout.toString().trim().split("\n").pop()!) as { dtype: string; shape: number[]; sum: number; head: number[] };
    expect(seen.dtype).toBe("float32");
    expect(seen.shape).toEqual([64, 64]);
    expect(seen.sum).toBe(values.reduce((a, b) => a + b, 0));
    expect(seen.head).toEqual([...values.slice(0, 8)]);
    // The Python side added 1 in place: the rank sees it.
    expectValues("after the Python add", await readBuffer(1, id, "float32"), values.map((v) => v + 1));
    await call(1, "DELETE", `/buffers/${id}`);
  }, 60_000);
});

// `bench --via rest --rest-mode shm`: each rank's tensors live in shared host buffers
// (docs/api-extensions.md "Shared host buffers") that this process maps and fills in place, as a
// local program would; every timed call is POST /collective/{op} {"buffer": id, "out"?: id},
// so only metadata crosses HTTP. Results are checked where they lie, in the mapped buffers.
import { checkOutput, fillSend, hasOutput, viewOf } from "./pattern";
import { restPoint, restResult } from "./rest-point";
import type { BenchOp, BenchResult } from "./spec";
import type { RunConfig } from "./runner";

interface Mapped {
  id: string;
  bytes: Uint8Array;
}

/** The job's bearer token (RestRunner chose it); set for the duration of shmPoint. */
let token = "";

function auth(): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}

async function api(url: string, method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(url + path, {
    method,
    headers: body === undefined ? auth() : { "content-type": "application/json", ...auth() },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${url}${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** A host buffer of `shape` on the rank, mapped here (Bun.mmap of its /dev/shm file). */
async function mappedBuffer(url: string, dtype: string, shape: number[]): Promise<Mapped> {
  const { buffer } = await api(url, "POST", "/buffers", { dtype, shape, device: "cpu" });
  const ipc = await api(url, "GET", `/buffers/${buffer}/ipc`);
  const file = Bun.mmap(ipc.path, { shared: true });
  return { id: buffer, bytes: file.subarray(ipc.offset, ipc.offset + ipc.bytes) };
}

/** The buffers of one rank for one op: input (null: scatter off the root) and result (null: in place / none). */
function shapesFor(op: BenchOp, n: number, part: number, count: number, rank: number, root: number): { input: number[] | null; out: number[] | null } {
  switch (op) {
    case "allreduce":
      return { input: [count], out: [count] }; // out of place, like the native bench
    case "broadcast":
    case "reduce":
    case "sendrecv":
      return { input: [count], out: null };
    case "allgather":
      return { input: [part], out: [n, part] };
    case "gather":
      return { input: [part], out: rank === root ? [n, part] : null };
    case "scatter":
      return { input: rank === root ? [n, part] : null, out: [part] };
    case "reduce_scatter":
      return { input: [n, part], out: [part] };
    case "alltoall":
      return { input: [n, part], out: [n, part] };
    case "barrier":
      return { input: null, out: null };
  }
}

const ROOT_FIELD: Partial<Record<BenchOp, string>> = { reduce: "dst", gather: "dst", broadcast: "src", scatter: "src" };
const REDOP_OPS = new Set<BenchOp>(["allreduce", "reduce", "reduce_scatter"]);

export async function shmPoint(c: RunConfig, urls: string[], op: BenchOp, size: number, jobToken = ""): Promise<BenchResult | null> {
  token = jobToken;
  if (op === "sendrecv") return null; // p2p on buffers is not a collective: body mode only
  const p = restPoint(c, op, size);
  if (!p) return null;
  const { n, isz, shape, iters, tables, ctx } = p;
  const inputs: (Mapped | null)[] = [];
  const outs: (Mapped | null)[] = [];
  const bodies: string[] = [];
  try {
    for (let r = 0; r < n; r++) {
      const s = shapesFor(op, n, shape.part, shape.count, r, c.root);
      inputs.push(s.input ? await mappedBuffer(urls[r]!, c.dtype, s.input) : null);
      outs.push(s.out ? await mappedBuffer(urls[r]!, c.dtype, s.out) : null);
      const body: Record<string, unknown> = { timeout_ms: c.timeoutMs };
      if (inputs[r]) body.buffer = inputs[r]!.id;
      if (outs[r]) body.out = outs[r]!.id;
      if (REDOP_OPS.has(op)) body.op = c.redop;
      const rootField = ROOT_FIELD[op];
      if (rootField) body[rootField] = c.root;
      bodies.push(JSON.stringify(body));
    }
    // The same values as body mode: scatter's list is built like an allgather input.
    const fill = () => {
      for (let r = 0; r < n; r++) {
        const input = inputs[r];
        if (!input) continue;
        const elems = input.bytes.byteLength / isz;
        fillSend({ ...ctx(r), op: op === "scatter" ? "allgather" : op }, viewOf(c.dtype, input.bytes, elems), tables);
      }
    };
    const headers = { "content-type": "application/json", ...auth() };
    const call = (r: number) =>
      fetch(`${urls[r]}/collective/${op}`, { method: "POST", headers, body: bodies[r] }).then(async (res) => {
        if (!res.ok) throw new Error(`rank ${r} ${op} on buffers: ${res.status} ${await res.text()}`);
        await res.arrayBuffer();
      });
    const times: number[] = [];
    const calls: number[] = [];
    const once = async (record: boolean) => {
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: n }, async (_, r) => {
          await call(r);
          if (record) calls.push((performance.now() - t0) * 1000);
        }),
      );
      if (record) times.push((performance.now() - t0) * 1000);
    };
    fill();
    for (let it = 0; it < c.warmup; it++) await once(false);
    for (let it = 0; it < iters; it++) await once(true);
    let wrong: number | null = null;
    if (c.check !== "none" && op !== "barrier") {
      fill(); // in-place ops changed the inputs
      await once(false);
      wrong = 0;
      for (let r = 0; r < n; r++) {
        if (!hasOutput(op, r, c.root)) continue;
        const where = outs[r] ?? inputs[r]!;
        wrong += checkOutput(ctx(r), viewOf(c.dtype, where.bytes, shape.recvElems), tables);
      }
    }
    return restResult(c, op, p, "shm", times, calls, wrong);
  } finally {
    for (let r = 0; r < n; r++) {
      for (const b of [inputs[r], outs[r]]) if (b) await api(urls[r]!, "DELETE", `/buffers/${b.id}`).catch(() => {});
    }
  }
}

// Shared host buffers (docs/api-extensions.md "Shared host buffers"): a program on the rank's
// host maps a "device":"cpu" buffer from GET /buffers/:id/ipc, fills it, every rank runs a
// collective on {"buffer": id}, and the program reads the result in place. Rank 0's program is
// this Bun process (Bun.mmap), rank 1's is python3 with numpy (np.memmap to fill, Python mmap +
// np.frombuffer to read; tests/support/shm_map.py). References in f64, exact integers.
// Then: the errors (bad ids, wrong sizes, deleted buffers, another uid), who may map (0600 by
// default, 0660 for --shm-group), and no /dev/shm file outliving its rank (kill -9 included).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, statSync } from "node:fs";
import { launchWorld, pidAlive, ROOT, type LaunchedWorld } from "../support/launch-world";
import { sleep } from "../../src/util/net";

interface Ipc {
  buffer: string;
  device: string;
  kind: string;
  path: string;
  offset: number;
  bytes: number;
  dtype: string;
  shape: number[];
  rank: number;
  pid: number;
}

const N = 2;
let world: LaunchedWorld;
let python = "";

beforeAll(async () => {
  // numpy in the project-local venv (created once, reused): scripts/python-env.sh
  const venv = Bun.spawnSync(["sh", `${ROOT}scripts/python-env.sh`, "client"], { stderr: "inherit" });
  if (venv.exitCode !== 0) throw new Error("scripts/python-env.sh client failed");
  python = venv.stdout.toString().trim();
  world = await launchWorld(N);
}, 300_000);

afterAll(async () => {
  await world?.stop();
});

async function call(r: number, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(world.urls[r] + path, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

async function createBuffer(r: number, shape: number[], dtype = "float32"): Promise<string> {
  const { status, json } = await call(r, "POST", "/buffers", { dtype, shape, device: "cpu" });
  if (status !== 201) throw new Error(`rank ${r} POST /buffers: ${status} ${JSON.stringify(json)}`);
  return json.buffer;
}

async function ipcOf(r: number, id: string): Promise<Ipc> {
  const { status, json } = await call(r, "GET", `/buffers/${id}/ipc`);
  if (status !== 200) throw new Error(`rank ${r} GET /buffers/${id}/ipc: ${status} ${JSON.stringify(json)}`);
  return json as Ipc;
}

// ---- the two local programs ----

function bunView(ipc: Ipc): Float32Array {
  // The whole file (MAP_SHARED), then the buffer's bytes from `offset`.
  const file = Bun.mmap(ipc.path, { shared: true });
  return new Float32Array(file.buffer, file.byteOffset + ipc.offset, ipc.bytes / 4);
}

function py(args: string[]): string {
  const p = Bun.spawnSync([python, `${ROOT}tests/support/shm_map.py`, ...args], { stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`shm_map.py ${args[0]}: ${p.stderr.toString()}`);
  return p.stdout.toString().trim();
}

/** Rank 0: Bun.mmap; rank 1: numpy. */
function fill(r: number, ipc: Ipc, values: number[]): void {
  if (r === 0) bunView(ipc).set(values);
  else expect(py(["fill", JSON.stringify(ipc), JSON.stringify(values)])).toBe("ok");
}

function readBack(r: number, ipc: Ipc): number[] {
  if (r === 0) return [...bunView(ipc)];
  return JSON.parse(py(["read", JSON.stringify(ipc)])) as number[];
}

// ---- every collective on mapped buffers ----

const COUNT = 6;
/** Rank r's input: distinct exact integers per rank. */
const input = (r: number, n = COUNT) => Array.from({ length: n }, (_, i) => (r + 1) * 100 + i * 3 - 7);
const sum = (a: number[], b: number[]) => a.map((x, i) => x + b[i]!);
const rows = (v: number[]) => [v.slice(0, COUNT / 2), v.slice(COUNT / 2)];

interface Case {
  op: string;
  body: (r: number) => Record<string, unknown>;
  inShape: number[];
  /** Result shape per rank (null: no result on that rank), and where it lands. */
  outShape: ((r: number) => number[] | null) | null;
  want: (r: number) => number[] | null;
}

const x = [input(0), input(1)];
const CASES: Case[] = [
  { op: "allreduce", body: () => ({ op: "sum" }), inShape: [COUNT], outShape: null, want: () => sum(x[0]!, x[1]!) },
  { op: "allreduce", body: () => ({ op: "min" }), inShape: [COUNT], outShape: () => [COUNT], want: () => x[0]!.map((v, i) => Math.min(v, x[1]![i]!)) },
  { op: "broadcast", body: () => ({ src: 1 }), inShape: [COUNT], outShape: null, want: () => x[1]! },
  { op: "reduce", body: () => ({ op: "max", dst: 0 }), inShape: [COUNT], outShape: null, want: (r) => (r === 0 ? x[0]!.map((v, i) => Math.max(v, x[1]![i]!)) : null) },
  { op: "allgather", body: () => ({}), inShape: [COUNT], outShape: () => [N, COUNT], want: () => [...x[0]!, ...x[1]!] },
  { op: "gather", body: () => ({ dst: 1 }), inShape: [COUNT], outShape: (r) => (r === 1 ? [N, COUNT] : null), want: (r) => (r === 1 ? [...x[0]!, ...x[1]!] : null) },
  { op: "scatter", body: () => ({ src: 0 }), inShape: [N, COUNT / 2], outShape: () => [COUNT / 2], want: (r) => rows(x[0]!)[r]! },
  {
    op: "reduce_scatter",
    body: () => ({ op: "sum" }),
    inShape: [N, COUNT / 2],
    outShape: () => [COUNT / 2],
    want: (r) => sum(rows(x[0]!)[r]!, rows(x[1]!)[r]!),
  },
  { op: "alltoall", body: () => ({}), inShape: [N, COUNT / 2], outShape: () => [N, COUNT / 2], want: (r) => [...rows(x[0]!)[r]!, ...rows(x[1]!)[r]!] },
];

describe("shared host buffers: a local program maps them (Bun on rank 0, numpy on rank 1)", () => {
  test("the ipc answer: a /dev/shm file of this rank, owner-only, that the rank sees writes to", async () => {
    const id = await createBuffer(1, [2, 3]);
    const ipc = await ipcOf(1, id);
    expect(ipc).toEqual({
      buffer: id,
      device: "cpu",
      kind: "shm",
      path: expect.stringMatching(/^\/dev\/shm\/moonring-arena-\d+-\d+$/),
      offset: 0,
      bytes: 24,
      dtype: "float32",
      shape: [2, 3],
      rank: 1,
      pid: world.pids[1]!,
    });
    const st = statSync(ipc.path);
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.uid).toBe(process.getuid!());
    fill(1, ipc, [1.5, -2, 3, 4, 5, 6.25]);
    const { json } = await call(1, "GET", `/buffers/${id}`); // the rank reads what numpy wrote
    expect(json.data).toEqual([1.5, -2, 3, 4, 5, 6.25]);
    // and numpy sees what the rank wrote
    expect((await call(1, "PUT", `/buffers/${id}`, { data: [7, 8, 9, 10, 11, 12] })).status).toBe(200);
    expect(readBack(1, ipc)).toEqual([7, 8, 9, 10, 11, 12]);
    expect((await call(1, "DELETE", `/buffers/${id}`)).status).toBe(200);
  }, 60_000);

  for (const c of CASES) {
    test(`${c.op}${c.outShape ? " into out" : ""}: filled through the mapping, run on {"buffer": id}, read in place`, async () => {
      const ins = await Promise.all([0, 1].map((r) => createBuffer(r, c.inShape)));
      const outs = await Promise.all([0, 1].map((r) => (c.outShape?.(r) ? createBuffer(r, c.outShape(r)!) : Promise.resolve(null))));
      const inIpc = await Promise.all([0, 1].map((r) => ipcOf(r, ins[r]!)));
      for (const r of [0, 1]) fill(r, inIpc[r]!, x[r]!);
      const answers = await Promise.all(
        [0, 1].map((r) => call(r, "POST", `/collective/${c.op}`, { buffer: ins[r], ...(outs[r] ? { out: outs[r] } : {}), ...c.body(r) })),
      );
      for (const r of [0, 1]) {
        expect(answers[r]!.status).toBe(200);
        const want = c.want(r);
        const resultId = outs[r] ?? ins[r]!;
        if (want === null) {
          expect(answers[r]!.json.result).toBeNull();
          continue;
        }
        expect(answers[r]!.json.result.buffer).toBe(resultId);
        const ipc = outs[r] ? await ipcOf(r, outs[r]!) : inIpc[r]!;
        expect(readBack(r, ipc)).toEqual(want);
      }
      // reduce's non-root buffer is unchanged
      if (c.op === "reduce") expect(readBack(1, inIpc[1]!)).toEqual(x[1]!);
      for (const r of [0, 1]) {
        await call(r, "DELETE", `/buffers/${ins[r]}`);
        if (outs[r]) await call(r, "DELETE", `/buffers/${outs[r]}`);
      }
    }, 60_000);
  }

  test("int64 allreduce on mapped buffers (numpy on both ranks' files)", async () => {
    const ids = await Promise.all([0, 1].map((r) => createBuffer(r, [3], "int64")));
    const ipcs = await Promise.all([0, 1].map((r) => ipcOf(r, ids[r]!)));
    const vals = [
      [2 ** 40, -5, 7],
      [3, 9, -(2 ** 33)],
    ];
    for (const r of [0, 1]) expect(py(["fill", JSON.stringify(ipcs[r]), JSON.stringify(vals[r])])).toBe("ok");
    const answers = await Promise.all([0, 1].map((r) => call(r, "POST", "/collective/allreduce", { buffer: ids[r], op: "sum" })));
    for (const r of [0, 1]) {
      expect(answers[r]!.status).toBe(200);
      expect(JSON.parse(py(["read", JSON.stringify(ipcs[r])]))).toEqual([2 ** 40 + 3, 4, 7 - 2 ** 33]);
      await call(r, "DELETE", `/buffers/${ids[r]}`);
    }
  }, 60_000);
});

describe("shared host buffers: errors", () => {
  test("bad ids: 404 naming the id", async () => {
    const { status, json } = await call(0, "GET", "/buffers/r0b999999/ipc");
    expect(status).toBe(404);
    expect(json.error.message).toContain("r0b999999");
    const run = await call(0, "POST", "/collective/allreduce", { buffer: "nope" });
    expect(run.status).toBe(404);
  });

  test("wrong sizes: a write of the wrong byte count, and ranks whose buffers differ", async () => {
    const id = await createBuffer(0, [4]);
    const put = await fetch(`${world.urls[0]}/buffers/${id}`, { method: "PUT", headers: { "content-type": "application/octet-stream" }, body: new Uint8Array(12) });
    expect(put.status).toBe(400);
    expect(((await put.json()) as any).error.message).toContain("16");
    const other = await createBuffer(1, [5]);
    const answers = await Promise.all([
      call(0, "POST", "/collective/allreduce", { buffer: id, timeout_ms: 20_000 }),
      call(1, "POST", "/collective/allreduce", { buffer: other, timeout_ms: 20_000 }),
    ]);
    for (const a of answers) {
      expect(a.status).toBe(409);
      expect(a.json.error.code).toBe("collective_mismatch");
    }
    const bad = await call(0, "POST", "/buffers", { dtype: "float32", shape: [-1], device: "cpu" });
    expect(bad.status).toBe(400);
    await call(0, "DELETE", `/buffers/${id}`);
    await call(1, "DELETE", `/buffers/${other}`);
  }, 60_000);

  test("a deleted buffer: 404 for ipc and collectives, its file is gone, a mapping keeps its bytes", async () => {
    const id = await createBuffer(0, [4]);
    const ipc = await ipcOf(0, id);
    const view = bunView(ipc);
    view.set([1, 2, 3, 4]);
    expect((await call(0, "DELETE", `/buffers/${id}`)).status).toBe(200);
    expect(existsSync(ipc.path)).toBe(false);
    expect([...view]).toEqual([1, 2, 3, 4]); // still mapped here: no SIGBUS, just detached
    expect((await call(0, "GET", `/buffers/${id}/ipc`)).status).toBe(404);
    expect((await call(0, "POST", "/collective/allreduce", { buffer: id })).status).toBe(404);
  });

  test.skipIf(process.getuid?.() !== 0 || !existsSync("/usr/bin/setpriv"))("another uid cannot map it (EACCES)", async () => {
    const id = await createBuffer(0, [4]);
    const ipc = await ipcOf(0, id);
    const p = Bun.spawnSync(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "sh", "-c", 'exec 3<>"$0"', ipc.path], { stderr: "pipe" });
    expect(p.exitCode).not.toBe(0);
    expect(p.stderr.toString()).toMatch(/Permission denied/);
    await call(0, "DELETE", `/buffers/${id}`);
  });
});

function arenaFilesOf(pid: number): string[] {
  return readdirSync("/dev/shm").filter((n) => n.startsWith(`moonring-arena-${pid}-`));
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

describe("shared host buffers: access and lifetime", () => {
  test.skipIf(process.getuid?.() !== 0 || !existsSync("/usr/bin/setpriv"))("--shm-group: 0660 files of that group; its members map them, others cannot", async () => {
    const w = await launchWorld(1, { args: ["--shm-group", "65534"] });
    try {
      const res = await fetch(`${w.urls[0]}/buffers`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ dtype: "float32", shape: [4], device: "cpu" }) });
      const id = ((await res.json()) as any).buffer;
      const ipc = (await (await fetch(`${w.urls[0]}/buffers/${id}/ipc`)).json()) as Ipc;
      const st = statSync(ipc.path);
      expect(st.mode & 0o777).toBe(0o660);
      expect(st.gid).toBe(65534);
      const open = (gid: number) => Bun.spawnSync(["setpriv", "--reuid=65534", `--regid=${gid}`, "--clear-groups", "--", "sh", "-c", 'exec 3<>"$0"', ipc.path], { stderr: "pipe" });
      expect(open(65534).exitCode).toBe(0);
      expect(open(12345).exitCode).not.toBe(0);
    } finally {
      await w.stop();
    }
    for (const pid of w.pids) expect(arenaFilesOf(pid)).toEqual([]);
  }, 120_000);

  test("kill -9 of a rank holding buffers: its files go (its launcher removes them)", async () => {
    const ids = await Promise.all([0, 1].map(() => createBuffer(1, [1024])));
    const pid = world.pids[1]!;
    expect(arenaFilesOf(pid).length).toBeGreaterThanOrEqual(ids.length);
    process.kill(pid, "SIGKILL");
    await waitFor(`rank 1 (pid ${pid}) to exit`, () => !pidAlive(pid));
    await waitFor(`the files of pid ${pid} to go`, () => arenaFilesOf(pid).length === 0);
  }, 60_000);

  test("without a launcher: the next engine start on the host removes a killed process's files", async () => {
    const holder = Bun.spawn([process.execPath, `${ROOT}tests/support/shm-holder.ts`, "hold"], { stdout: "pipe", stderr: "inherit" });
    const reader = holder.stdout.getReader();
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error("shm-holder exited early");
      text += new TextDecoder().decode(value);
    }
    const path = text.trim();
    expect(path).toStartWith(`/dev/shm/moonring-arena-${holder.pid}-`);
    holder.kill("SIGKILL");
    await holder.exited;
    expect(existsSync(path)).toBe(true); // nobody removed it yet
    const starter = Bun.spawnSync([process.execPath, `${ROOT}tests/support/shm-holder.ts`, "engine"], { stderr: "inherit" });
    expect(starter.exitCode).toBe(0);
    expect(existsSync(path)).toBe(false);
  }, 60_000);

  test("a stopped world leaves no files", async () => {
    await createBuffer(0, [16]);
    const pid = world.pids[0]!;
    expect(arenaFilesOf(pid).length).toBeGreaterThan(0);
    await world.stop();
    expect(arenaFilesOf(pid)).toEqual([]);
  }, 60_000);
});

// One rank of `bench --via native`: opens the data plane straight from src/native/engine.ts (no
// HTTP, no control plane), learns its peers from the parent, then times ops on command.
//   bun src/bench/native-worker.ts RANK N CLUSTER_ID LISTEN_HOST DEVICE
// Protocol: src/bench/protocol.ts (JSON lines; stdin from the parent, stdout to it).
//
// Op ids: every rank runs the same sequence of steps (the parent sends every worker the same
// commands), and each step takes the next value c of a per-process counter, so a step's id
// is the same on every rank without any exchange: collectives use c * 256, the send of rank s
// in a sendrecv step uses c * 256 + s + 1 (its receiver computes the same from s).
import { nativeDataPlaneFactory } from "../server/dataplane";
import type { DataPlane, NativeBuffer, NativeOp } from "../native/types";
import { dtypeInfo, type DTypeName } from "../ops/table";
import { checkOutput, fillSend, hasOutput, poison, tablesFor, viewOf, type CheckContext, type Tables } from "./pattern";
import { parseLine, type ParentMsg, type WorkerMsg } from "./protocol";
import { hasInPlace, pointShape, type PointShape } from "./spec";

const [rankText, nText, clusterId, listenHost, deviceText] = process.argv.slice(2);
const rank = Number(rankText);
const n = Number(nText);
// --device cuda: rank r on GPU r mod count (like launch --device cuda), so 2 ranks use 2 GPUs.
const device = deviceText === "cuda" ? rank % Math.max(1, (await import("../native/cuda")).cudaDeviceCount()) : -1;

function send(msg: WorkerMsg): void {
  process.stdout.write(JSON.stringify(msg) + "\n");
}

let dp: DataPlane;
try {
  // Experiment knob (bench/NOTES.md): MOONRING_BENCH_ENGINE=/path/engine.ts benchmarks a
  // prototype of src/native/engine.ts (same createDataPlane export) without touching it.
  const proto = process.env.MOONRING_BENCH_ENGINE;
  const factory = proto
    ? ((await import(proto)) as { createDataPlane: (o: Parameters<Awaited<ReturnType<typeof nativeDataPlaneFactory>>>[0]) => DataPlane }).createDataPlane
    : await nativeDataPlaneFactory();
  dp = await factory({ rank, worldSizeMax: n, clusterId: clusterId ?? "moonring-bench", listenHost: listenHost ?? "127.0.0.1" });
} catch (e) {
  send({ ev: "error", rank, message: `rank ${rank}: opening the native data plane failed: ${(e as Error).message}` });
  process.exit(1);
}
send({ ev: "ready", rank, dataPort: dp.dataPort, hostId: dp.hostId.toString(), pid: process.pid });

// Frozen: the data plane remembers its ranks mask.
const ranks = Object.freeze(Array.from({ length: n }, (_, r) => r)) as number[];

// Experiment knob (bench/NOTES.md): MOONRING_BENCH_COMPLETION=wait blocks this (otherwise idle)
// JS thread in mr_wait until the op completes, then drains completions at once, instead of
// letting engine.ts's poller spin on setImmediate. It reaches into NativeDataPlane's private
// handle/poller, so it only measures what a blocking completion path would give.
// How a timed op is driven: "blocking" (default where the data plane has it: the op runs on
// this thread, mr_run), "async" (mr_submit + completion, as the REST service does) or "wait"
// (mr_submit + this thread parked in mr_wait).
const completion = process.env.MOONRING_BENCH_COMPLETION ?? (dp.runBlocking ? "blocking" : "async");
// Blocking runs return nothing (no promise, no microtask turn, nothing allocated per op: a
// young-generation GC every few hundred ops was a 0.3-1 ms stall in the timed region, E25).
let runOp = (op: NativeOp): Promise<void> | void => dp.run(op);
// Ranks that drive ops on their own thread spin on shared memory: bind rank r's thread to CPU
// r mod CPUs, as Open MPI binds its ranks to cores by default (MOONRING_BENCH_BIND=none: don't).
// Two unbound ranks land on one CPU now and then and take turns for whole sizes (E19).
// More ranks than CPUs (oversubscribed) too: unbound, 4 ranks on 2 CPUs took 40-60 us per
// 8-byte op against 14-17 bound (E30); compare-mpi binds Open MPI's ranks the same way then.
const cpus = Math.max(1, (await import("node:os")).availableParallelism());
if (completion === "blocking" && (process.env.MOONRING_BENCH_BIND ?? "core") !== "none") {
  const { native } = await import("../native/ffi");
  const cpu = rank % cpus;
  if (native.mr_pin_thread(cpu) !== 0) process.stderr.write(`bench: rank ${rank}: could not bind to CPU ${cpu}; running unbound\n`);
}
if (completion === "blocking" && dp.runBlocking) {
  const runBlocking = dp.runBlocking.bind(dp);
  runOp = runBlocking;
}
if (completion === "wait") {
  const { native } = await import("../native/ffi");
  const inner = dp as unknown as { handle: number | null; pollOnce: () => void; inFlight: number };
  runOp = (op) => {
    const p = dp.run(op);
    for (let i = 0; i < 1_000_000 && inner.inFlight > 0 && inner.handle !== null; i++) {
      if (native.mr_wait(inner.handle, 100)) inner.pollOnce();
    }
    return p;
  };
}
// Op ids are numbers (a BigInt counter allocated two BigInts per op, ~35 ns, E35).
let counter = 1;
const nextStep = () => counter++;

// Buffers grow to the largest point seen and are reused (like mpi_bench.c's two arrays).
let sendBuf: NativeBuffer | null = null;
let recvBuf: NativeBuffer | null = null;
// Host buffers come from allocShared (peers of this host read them in place, as with
// MPI_Alloc_mem) unless MOONRING_BENCH_SHARED=0.
const sharedBuffers = device < 0 && process.env.MOONRING_BENCH_SHARED !== "0" && dp.allocShared !== undefined;
function ensure(buf: NativeBuffer | null, bytes: number): NativeBuffer {
  const want = Math.max(bytes, 64);
  if (buf && buf.byteLength >= want) return buf;
  buf?.release();
  if (sharedBuffers) {
    try {
      return dp.allocShared!(want);
    } catch (e) {
      // /dev/shm full or unusable: plain memory (peers then read it with process_vm_readv).
      process.stderr.write(`bench: rank ${rank}: ${(e as Error).message}; using plain buffers\n`);
    }
  }
  return dp.alloc(want, device >= 0 ? device : undefined);
}

const barrierOp: NativeOp = { kind: "barrier", dtype: "uint8", opId: 0, ranks, count: 0, timeoutMs: 0 };
/** A data-plane barrier (one op object reused). Awaits only when the op ran asynchronously. */
function barrier(timeoutMs: number): Promise<void> | void {
  if (n === 1) return;
  barrierOp.opId = nextStep() * 256;
  barrierOp.timeoutMs = timeoutMs;
  return runOp(barrierOp);
}

/** `bytes` of `buf` from byte `offset` on, as a buffer of its own (in-place blocks); never released on its own. */
function slice(buf: NativeBuffer, offset: number, bytes: number): NativeBuffer {
  return {
    bytes: buf.device >= 0 ? buf.bytes : buf.bytes.subarray(offset, offset + bytes),
    address: buf.address + BigInt(offset),
    byteLength: bytes,
    device: buf.device,
    release() {},
  };
}

/**
 * The send and recv buffers of a point. In place as nccl-tests runs it: recv = send (allreduce,
 * reduce; broadcast always), send = recv + rank's block (allgather, gather), recv = send + rank's
 * block (reduce_scatter, scatter).
 */
function pointBuffers(op: string, shape: PointShape, isz: number, inPlace: boolean): { send: NativeBuffer; recv: NativeBuffer } {
  const s = sendBuf!;
  const r = recvBuf!;
  if (!inPlace) return { send: s, recv: r };
  const block = shape.part * isz;
  switch (op) {
    case "allreduce":
    case "reduce":
      return { send: r, recv: r };
    case "allgather":
    case "gather":
      return { send: slice(r, rank * block, block), recv: r };
    case "scatter":
    case "reduce_scatter":
      return { send: s, recv: slice(s, rank * block, block) };
  }
  return { send: s, recv: r };
}

/** One step of the op; both buffers are ready. */
function stepRunner(op: string, dtype: DTypeName, redop: string, root: number, shape: PointShape, timeoutMs: number, s: NativeBuffer, r: NativeBuffer): () => Promise<unknown> | void {
  const base = { dtype, ranks, timeoutMs };
  const isRoot = rank === root;
  // One op object per point, its id bumped per step (no allocation per timed op).
  const make = (o: Omit<NativeOp, "opId" | "ranks" | "timeoutMs" | "dtype">) => {
    const op = { ...base, ...o, opId: 0 } as NativeOp;
    return () => {
      op.opId = nextStep() * 256;
      return runOp(op);
    };
  };
  switch (op) {
    case "allreduce":
      return make({ kind: "allreduce", redop: redop as NativeOp["redop"], count: shape.count, send: s, recv: r });
    case "reduce":
      return make({ kind: "reduce", redop: redop as NativeOp["redop"], root, count: shape.count, send: s, recv: isRoot ? r : undefined });
    case "broadcast":
      // In place, like MPI_Bcast: the root sends from the buffer every rank receives into.
      return make({ kind: "broadcast", root, count: shape.count, send: isRoot ? r : undefined, recv: r });
    case "allgather":
      return make({ kind: "allgather", count: shape.part, send: s, recv: r });
    case "gather":
      return make({ kind: "gather", root, count: shape.part, send: s, recv: isRoot ? r : undefined });
    case "scatter":
      return make({ kind: "scatter", root, count: shape.part, send: isRoot ? s : undefined, recv: r });
    case "reduce_scatter":
      return make({ kind: "reduce_scatter", redop: redop as NativeOp["redop"], count: shape.part, send: s, recv: r });
    case "alltoall": {
      const counts = ranks.map(() => shape.part);
      return make({ kind: "alltoall", count: shape.part, sendCounts: counts, recvCounts: counts, send: s, recv: r });
    }
    case "sendrecv": {
      const next = (rank + 1) % n;
      const prev = (rank - 1 + n) % n;
      return () => {
        const c = nextStep() * 256;
        return Promise.all([
          dp.run({ ...base, kind: "send", root: next, count: shape.count, send: s, opId: c + rank + 1 }),
          dp.run({ ...base, kind: "recv", root: prev, count: shape.count, recv: r, opId: c + prev + 1 }),
        ]);
      };
    }
    case "barrier":
      return () => barrier(timeoutMs);
  }
  throw new Error(`unknown op ${op}`);
}

async function point(m: Extract<ParentMsg, { cmd: "point" }>): Promise<WorkerMsg> {
  const isz = dtypeInfo(m.dtype).bytes;
  const shape = pointShape(m.op, m.size, n, isz);
  // Broadcast runs in place in the recv buffer: the root's input lives there.
  sendBuf = ensure(sendBuf, shape.sendElems * isz);
  recvBuf = ensure(recvBuf, Math.max(shape.recvElems, m.op === "broadcast" ? shape.count : 0) * isz);
  // Host buffers are filled and checked in place; device buffers through host staging copies
  // (src/native/cuda.ts), outside the timed region.
  const host = device < 0;
  const inPlace = m.inPlace === true && hasInPlace(m.op);
  const { send: sendNB, recv: recvNB } = pointBuffers(m.op, shape, isz, inPlace);
  const check = m.check;
  const ctx: CheckContext = { op: m.op, dtype: m.dtype, redop: m.redop, n, rank, root: m.root, shape };
  const tables: Tables | null = check !== "none" && m.op !== "barrier" ? tablesFor(m.dtype, m.redop, n) : null;
  const sendBytes = shape.sendElems * isz;
  const recvElems = Math.max(shape.recvElems, m.op === "broadcast" ? shape.count : 0);
  const stageSend = host ? sendNB.bytes : new Uint8Array(Math.max(sendBytes, 8));
  const stageRecv = host ? recvNB.bytes : new Uint8Array(Math.max(recvElems * isz, 8));
  const cuda = host ? null : await import("../native/cuda");
  const toDevice = (buf: NativeBuffer, stage: Uint8Array, bytes: number) => cuda?.copyToDevice(device, buf.address, stage.subarray(0, bytes));
  const sendView = () => viewOf(m.dtype, stageSend, shape.sendElems);
  const recvView = () => viewOf(m.dtype, stageRecv, recvElems);
  const bcastRoot = m.op === "broadcast" && rank === m.root;
  const poisonRecv = () => {
    poison(stageRecv.subarray(0, shape.recvElems * isz));
    toDevice(recvNB, stageRecv, shape.recvElems * isz);
  };
  const prepare = () => {
    if (!tables) return;
    if (bcastRoot) {
      fillSend(ctx, recvView(), tables);
      toDevice(recvNB, stageRecv, recvElems * isz);
    } else {
      // in place, send and recv overlap: poison first, then the input over it
      poisonRecv();
      fillSend(ctx, sendView(), tables);
      toDevice(sendNB, stageSend, sendBytes);
    }
  };
  const verify = () => {
    if (!tables || !hasOutput(m.op, rank, m.root)) return 0;
    if (cuda) cuda.copyToHost(device, stageRecv.subarray(0, recvElems * isz), recvNB.address);
    return checkOutput(ctx, recvView(), tables);
  };
  prepare();
  const step = stepRunner(m.op, m.dtype, m.redop, m.root, shape, m.timeoutMs, sendNB, recvNB);
  const { times, timed, wrong: wrongTimed } = await timeIterations(m, step, { inPlace, bcastRoot, prepare, poisonRecv, verify });
  let wrong = wrongTimed;
  if (check === "once") {
    prepare();
    await barrier(m.timeoutMs);
    await step();
    wrong = verify();
  }
  return { ev: "point", rank, timesUs: Array.from(times.subarray(0, timed)), wrong };
}

/** The timed iterations of a point (after a GC and a JIT idle): each op's time (sync barrier), or
 * the mean over all (free-running); `wrong` counts the errors of check "every". */
async function timeIterations(
  m: Extract<ParentMsg, { cmd: "point" }>,
  step: ReturnType<typeof stepRunner>,
  io: { inPlace: boolean; bcastRoot: boolean; prepare: () => void; poisonRecv: () => void; verify: () => number },
): Promise<{ times: Float64Array; timed: number; wrong: number | null }> {
  let wrong: number | null = m.check === "none" ? null : 0;
  // Preallocated: no array growth inside the timed loop.
  const times = new Float64Array(Math.max(1, m.iters));
  let timed = 0;

  // Collect now, outside the timed loop (which allocates next to nothing): the point's setup
  // (fill, check tables, messages) filled the young generation, and its collection would
  // otherwise land in a timed iteration (0.2-11 ms stalls, E25). Open MPI's C has no GC.
  Bun.gc(true);
  // Idle a moment: the JIT compiles on its own threads, which share this thread's priority
  // under `chrt -f` and get no CPU while both ranks spin (the op path then stays in the
  // interpreter: 15 us per 8-byte op instead of 1.3, E24). Compiled here, not mid-loop.
  await Bun.sleep(jitIdleMs);
  if (m.sync === "barrier") {
    for (let it = -m.warmup; it < m.iters; it++) {
      // in place the last step overwrote the input: lay it out again
      if (m.check === "every" && it >= 0 && !io.bcastRoot) (io.inPlace ? io.prepare : io.poisonRecv)();
      const b = barrier(m.timeoutMs);
      if (b) await b;
      const t0 = performance.now();
      const p = step();
      if (p) await p;
      const dt = performance.now() - t0;
      if (it >= 0) {
        times[timed++] = dt * 1000;
        if (m.check === "every") wrong! += io.verify();
      }
    }
    // Untimed: no rank goes on to its next JS (the point's JSON, ~0.5 ms) while a rank that
    // shares its CPU (more ranks than CPUs) is still in the last timed op: under chrt the
    // finished one would hold the CPU, the last op took 0.6-0.9 ms at 4 ranks on 2 CPUs (E39).
    const b = barrier(m.timeoutMs);
    if (b) await b;
  } else {
    for (let it = 0; it < m.warmup; it++) await step();
    await barrier(m.timeoutMs);
    const t0 = performance.now();
    for (let it = 0; it < m.iters; it++) {
      const p = step();
      if (p) await p;
    }
    times[timed++] = ((performance.now() - t0) * 1000) / Math.max(1, m.iters);
  }
  return { times, timed, wrong };
}

let warmed = false;
const jitIdleMs = Number(process.env.MOONRING_BENCH_JIT_IDLE_MS ?? 20);
// Untimed iterations of the timed loop before the first point, in rounds of warmupRoundIters:
// the op path reaches its top JIT tier (FTL) only after some 30-50k calls, and each round's GC
// and idle (timeIterations) let the JIT threads finish what the round asked for (E34).
const runtimeWarmupIters = Number(process.env.MOONRING_BENCH_RUNTIME_WARMUP ?? 32_000);
const warmupRoundIters = 2000;
for await (const line of console) {
  const m = parseLine<ParentMsg>(line);
  if (!m) continue;
  try {
    if (m.cmd === "peers") {
      for (const p of m.peers) if (p.rank !== rank) dp.setPeer(p.rank, p.host, p.port, BigInt(p.hostId));
      send({ ev: "peered", rank });
    } else if (m.cmd === "point") {
      if (!warmed) {
        // Before the first point, JIT-compile the op path: otherwise the first size of every
        // run times the compiler (E21, E34). Open MPI's C needs no such warm-up.
        warmed = true;
        const warmup = { ...m, size: Math.min(m.size, 1024), iters: warmupRoundIters, warmup: 0, check: "none" as const };
        for (let done = 0; done < runtimeWarmupIters; done += warmupRoundIters) await point(warmup);
      }
      send(await point(m));
    } else if (m.cmd === "exit") {
      break;
    }
  } catch (e) {
    const err = e as Error & { code?: string };
    send({ ev: "error", rank, message: err.message.startsWith("rank ") ? err.message : `rank ${rank}: ${err.message}`, code: err.code });
  }
}
(sendBuf as NativeBuffer | null)?.release();
(recvBuf as NativeBuffer | null)?.release();
dp.close();
process.exit(0);

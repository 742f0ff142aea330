// Device buffers over REST (docs/api-extensions.md "Device buffers"):
//   POST   /buffers {dtype, shape, device?: "cpu"|"cuda"|"cuda:N", data?|b64?}  (or octet-stream
//          with ?dtype=&shape=&device=)  -> {buffer, dtype, shape, device, bytes}
//   GET    /buffers                      -> {buffers: [...]}
//   GET    /buffers/:id                  -> JSON tensor + metadata (?format=b64), or raw bytes with
//                                           Accept: application/octet-stream
//   PUT    /buffers/:id                  {data|b64} or raw bytes: overwrite in place
//   DELETE /buffers/:id
//   GET    /buffers/:id/ipc              -> device: {handle (base64 cudaIpcMemHandle_t), offset, ...};
//                                           host: {kind: "shm", path (/dev/shm file), offset, bytes, ...}
// Collectives and p2p take {"buffer": id} instead of "tensor"/"tensors" and work in place
// (bufferCollective, bufferSend, bufferRecv below, called from the collective / p2p routes):
// results land in buffers and answers carry buffer ids, never the data.
import type { Context, Hono } from "hono";
import { z } from "zod";
import { BufferRegistry, describe, deviceName, type BufferEntry, type DeviceOps, type SharedHostOps } from "../../control/buffers";
import { toApiError } from "../../control/collective";
import type { CallDesc } from "../../control/matcher";
import type { Ticket } from "../../control/sequencer";
import type { NativeOp } from "../../native/types";
import { dtypeInfo, redopRejection, type DTypeName, type RedOpName } from "../../ops/table";
import { checkShape, encodeTensor, numel, writeTensor, type JsonTensor } from "../../tensor/codec";
import { checkContentLength, isOctetStream, jsonResponse, octetParam, readJson, wantsOctetStream } from "../body";
import { InvalidRequest, NotReady } from "../../errors";
import { DEFAULT_TIMEOUT_MS, dtypeSchema, MAX_TIMEOUT_MS, parseOrThrow, redopSchema, type CollectiveOp } from "../schemas";
import type { RankService } from "../service";
import { requireReady } from "./collective";
import { cudaDeviceFor } from "../../util/local-rank";

// ---- the registry of a service (created on first use) ----

const registries = new WeakMap<RankService, Promise<BufferRegistry>>();

const noCuda = (why: string): DeviceOps => ({
  deviceCount: () => 0,
  unavailableReason: () => why,
  copyToDevice: () => {
    throw new InvalidRequest(why);
  },
  copyToHost: () => {
    throw new InvalidRequest(why);
  },
  ipcHandle: () => {
    throw new InvalidRequest(why);
  },
});

async function loadDeviceOps(): Promise<DeviceOps> {
  try {
    const m = await import(new URL("../../native/cuda.ts", import.meta.url).href);
    return {
      deviceCount: m.cudaDeviceCount,
      unavailableReason: m.cudaUnavailableReason,
      copyToDevice: m.copyToDevice,
      copyToHost: m.copyToHost,
      ipcHandle: m.ipcHandle,
    };
  } catch (e) {
    return noCuda(`no CUDA device: the native library is not available (${(e as Error).message})`);
  }
}

/** Host buffers in /dev/shm files when the data plane can make them (the native one can). */
function sharedHostOps(svc: RankService): SharedHostOps | null {
  const dp = svc.dataPlane;
  if (!dp.allocShared || !dp.sharedLocation) return null;
  return {
    alloc: (bytes) => dp.allocShared!(bytes),
    locate: (buf) => dp.sharedLocation!(buf),
    group: svc.config.shmGroup ?? null,
  };
}

export function registryOf(svc: RankService): Promise<BufferRegistry> {
  let r = registries.get(svc);
  if (!r) {
    r = loadDeviceOps().then(
      (cuda) =>
        new BufferRegistry(
          svc.rank,
          (bytes, device) => svc.dataPlane.alloc(bytes, device >= 0 ? device : undefined),
          cuda,
          // --device cuda: GPU LOCAL_RANK (torchrun), else rank, mod the devices this process sees.
          () => cudaDeviceFor(svc.localRank, cuda.deviceCount()),
          svc.config.device,
          undefined,
          sharedHostOps(svc),
        ),
    );
    registries.set(svc, r);
  }
  return r;
}

// ---- /buffers ----

export const createSchema = z.strictObject({
  dtype: dtypeSchema,
  shape: z.array(z.number().int().min(0)),
  device: z.string().optional(),
  data: z.unknown().optional(),
  b64: z.string().optional(),
});

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

function parseShapeText(text: string): number[] {
  const t = text.trim();
  if (t === "") return [];
  if (t.startsWith("[")) {
    try {
      return JSON.parse(t) as number[];
    } catch {
      throw new InvalidRequest(`shape ${JSON.stringify(text)} is not a list`);
    }
  }
  return t.split(",").map((x) => (/^\s*\d+\s*$/.test(x) ? Number(x) : NaN));
}

async function readOctet(c: Context, svc: RankService, expected: number): Promise<Uint8Array> {
  checkContentLength(c, svc.config.maxBodyBytes);
  const got = new Uint8Array(await c.req.arrayBuffer());
  if (got.byteLength !== expected) {
    throw new InvalidRequest(`octet-stream body has ${got.byteLength} bytes but the buffer holds ${expected}`, {
      expected_bytes: expected,
      got_bytes: got.byteLength,
    });
  }
  return got;
}

/** JSON data/b64 of `t` -> host bytes of exactly `bytes`. */
function encodeInput(t: JsonTensor, bytes: number, where: string): Uint8Array {
  const host = new Uint8Array(bytes);
  writeTensor(t, host, where);
  return host;
}

export function buffersRoutes(app: Hono, svc: RankService): void {
  app.post("/buffers", async (c) => {
    const reg = await registryOf(svc);
    const limit = svc.config.maxTensorBytes;
    if (isOctetStream(c)) {
      const meta = parseOrThrow(
        createSchema,
        { dtype: octetParam(c, "dtype"), shape: parseShapeText(octetParam(c, "shape") ?? ""), device: octetParam(c, "device") },
        "query",
      );
      const bytes = checkShape(meta, "buffer", Number.MAX_SAFE_INTEGER);
      const device = reg.parseDevice(meta.device);
      const data = await readOctet(c, svc, bytes);
      const e = reg.create(meta.dtype, meta.shape, device);
      try {
        reg.write(e, data);
      } catch (err) {
        reg.delete(e.id);
        throw err;
      }
      return c.json(describe(e), 201);
    }
    const body = parseOrThrow(createSchema, await readJson(c, svc.config.maxBodyBytes));
    const hasValues = body.data !== undefined || body.b64 !== undefined;
    const bytes = checkShape(body, "buffer", hasValues ? limit : Number.MAX_SAFE_INTEGER);
    const device = reg.parseDevice(body.device);
    // Values first (a 400 allocates nothing); no values: zeros.
    const host = hasValues ? encodeInput(body as JsonTensor, bytes, "buffer") : null;
    const e = reg.create(body.dtype, body.shape, device);
    try {
      if (host) reg.write(e, host);
      else if (device >= 0) zeroDevice(reg, e);
    } catch (err) {
      reg.delete(e.id);
      throw err;
    }
    return c.json(describe(e), 201);
  });

  app.get("/buffers", async (c) => {
    const reg = await registryOf(svc);
    return c.json({ rank: svc.rank, buffers: reg.list().map(describe) });
  });

  app.get("/buffers/:id", async (c) => {
    const reg = await registryOf(svc);
    const e = reg.get(c.req.param("id"));
    const bytes = reg.read(e);
    if (wantsOctetStream(c)) {
      return new Response(e.device < 0 ? bytes.slice() : bytes, {
        headers: {
          "content-type": "application/octet-stream",
          "x-moonring-buffer": e.id,
          "x-moonring-dtype": e.dtype,
          "x-moonring-shape": e.shape.join(","),
          "x-moonring-device": deviceName(e.device),
        },
      });
    }
    const format = c.req.query("format") === "b64" ? "b64" : "data";
    return c.json({ ...describe(e), ...encodeTensor(e.dtype, e.shape, bytes, format) });
  });

  app.put("/buffers/:id", async (c) => {
    const reg = await registryOf(svc);
    const e = reg.get(c.req.param("id"));
    if (isOctetStream(c)) {
      reg.write(e, await readOctet(c, svc, e.byteLength));
      return c.json(describe(e));
    }
    const raw = await readJson(c, svc.config.maxBodyBytes);
    const body = parseOrThrow(createSchema.partial(), raw) as Partial<JsonTensor> & { device?: string };
    if (body.dtype !== undefined && body.dtype !== e.dtype) throw new InvalidRequest(`buffer ${e.id} is ${e.dtype}, not ${body.dtype}`);
    if (body.shape !== undefined && numel(body.shape) !== numel(e.shape)) {
      throw new InvalidRequest(`buffer ${e.id} has shape ${JSON.stringify(e.shape)}; got ${JSON.stringify(body.shape)}`);
    }
    if (body.data === undefined && body.b64 === undefined) throw new InvalidRequest(`PUT /buffers/${e.id}: give "data" or "b64"`);
    reg.write(e, encodeInput({ dtype: e.dtype, shape: e.shape, data: body.data, b64: body.b64 }, e.byteLength, "buffer"));
    return c.json(describe(e));
  });

  app.delete("/buffers/:id", async (c) => {
    const reg = await registryOf(svc);
    const e = reg.delete(c.req.param("id"));
    return c.json({ ...describe(e), deleted: true });
  });

  app.get("/buffers/:id/ipc", async (c) => {
    const reg = await registryOf(svc);
    const e = reg.get(c.req.param("id"));
    if (e.device < 0) {
      // A host buffer: its /dev/shm file, which np.memmap / mmap / torch.frombuffer map.
      const { path, offset } = reg.shmLocation(e);
      return c.json({ buffer: e.id, device: "cpu", kind: "shm", path, offset, bytes: e.byteLength, dtype: e.dtype, shape: e.shape, rank: svc.rank, pid: process.pid });
    }
    const { handle, offset } = reg.ipc(e);
    return c.json({
      ...describe(e),
      kind: "cuda_ipc",
      handle: b64(handle),
      offset,
      device_index: e.device,
      rank: svc.rank,
      pid: process.pid,
    });
  });
}

function zeroDevice(reg: BufferRegistry, e: BufferEntry): void {
  const chunk = new Uint8Array(Math.min(e.byteLength, 64 << 20));
  for (let off = 0; off < e.byteLength; off += chunk.byteLength) {
    const len = Math.min(chunk.byteLength, e.byteLength - off);
    reg.cuda.copyToDevice(e.device, e.buf.address + BigInt(off), chunk.subarray(0, len));
  }
}

// ---- collectives and p2p on buffers ----

/** True when a JSON body names a buffer instead of carrying tensors. */
export function usesBuffer(raw: unknown): boolean {
  return typeof raw === "object" && raw !== null && !Array.isArray(raw) && ("buffer" in raw || "out" in raw);
}

export const bufferCallSchema = z.strictObject({
  buffer: z.string().min(1).optional(),
  out: z.string().min(1).optional(),
  op: redopSchema.optional(),
  dst: z.number().int().min(0).optional(),
  src: z.number().int().min(0).optional(),
  group: z.string().min(1).max(256).optional(),
  tag: z.string().max(256).optional(),
  timeout_ms: z.number().int().min(1).max(MAX_TIMEOUT_MS).optional(),
  format: z.enum(["data", "b64"]).optional(), // accepted as on tensor calls; results here are buffers
});

const ROOT_FIELD: Partial<Record<CollectiveOp, "dst" | "src">> = { reduce: "dst", gather: "dst", broadcast: "src", scatter: "src" };
const REDOP_OPS = new Set<CollectiveOp>(["allreduce", "reduce", "reduce_scatter"]);
/** Ops whose buffer holds one block per rank: shape [N, ...block]. */
const LIST_OPS = new Set<CollectiveOp>(["scatter", "reduce_scatter", "alltoall"]);

function sameList(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * POST /collective/{op} with {"buffer": id, "out"?: id, ...}: runs in place on the rank's
 * buffers. allreduce, broadcast: the buffer is input and result. reduce: the result replaces
 * the buffer on dst (or goes to "out"). allgather, gather: "buffer" is the input; the result
 * [N, ...shape] goes to "out" (or a new buffer). scatter, reduce_scatter, alltoall: "buffer"
 * has shape [N, ...block] (block i for rank i); the result goes to "out" (or a new buffer).
 */
export async function bufferCollective(svc: RankService, op: CollectiveOp, raw: unknown, startedAt: number, ticket: Ticket, signal?: AbortSignal): Promise<Response> {
  requireReady(svc);
  const reg = await registryOf(svc);
  const body = parseOrThrow(bufferCallSchema, raw);
  const timeoutMs = body.timeout_ms ?? DEFAULT_TIMEOUT_MS;
  const tag = body.tag ?? null;
  const redop: RedOpName | null = REDOP_OPS.has(op) ? (body.op ?? "sum") : null;
  const rootField = ROOT_FIELD[op];
  let root: number | null = null;
  if (rootField) {
    const r = body[rootField];
    if (r === undefined) throw new InvalidRequest(`${op}: "${rootField}" is required`);
    if (r >= svc.membership.worldSize) throw new InvalidRequest(`${rootField} ${r} is out of range for world size ${svc.membership.worldSize}`);
    if (!svc.membership.isActive(r)) throw new InvalidRequest(`${rootField} ${r} is not an active rank`);
    root = r;
  }
  const isRoot = root === svc.rank;
  const input = body.buffer !== undefined ? reg.get(body.buffer) : null;
  const out = body.out !== undefined ? reg.get(body.out) : null;
  const needsInput = !(op === "scatter" && !isRoot);
  if (needsInput && !input) throw new InvalidRequest(`${op}: "buffer" (a buffer id from POST /buffers) is required`);
  if (input && out && input.device !== out.device) {
    throw new InvalidRequest(`"buffer" is on ${deviceName(input.device)} but "out" on ${deviceName(out.device)}: one device per call`);
  }
  const active = svc.membership.activeRanks();
  const desc: CallDesc = { op, group: body.group ?? "world", tag, dtype: null, count: -1, shape: null, root, redop, timeoutMs };
  if (input) {
    desc.dtype = input.dtype;
    desc.shape = input.shape;
    desc.count = numel(input.shape);
    if (LIST_OPS.has(op)) {
      if (input.shape.length === 0 || input.shape[0] !== active.length) {
        throw new InvalidRequest(`${op}: buffer ${input.id} must have shape [${active.length}, ...] (one block per active rank); it has ${JSON.stringify(input.shape)}`);
      }
      desc.shape = input.shape.slice(1);
      desc.count = numel(desc.shape);
      if (op === "alltoall") {
        desc.shapes = active.map(() => desc.shape!);
        desc.count = -1;
      }
    }
    if (redop) {
      const why = redopRejection(redop, input.dtype);
      if (why) throw new InvalidRequest(why);
    }
  }

  // Arrival order, then the agreement (sends its join synchronously).
  const wait = tag === null ? svc.sequencer.turn(ticket) : null;
  if (wait) await svc.sequencer.bounded(wait, timeoutMs);
  const joined = svc.agreement.join(desc, signal);
  svc.sequencer.finish(ticket);
  let created: BufferEntry | null = null;
  let bytes = 0;
  try {
    const d = await joined;
    const ranks = d.ranks;
    const n = ranks.length;
    if (LIST_OPS.has(op) && input && input.shape[0] !== n) {
      throw new NotReady(`${op} (seq ${d.seq}): the active ranks changed while the call was decoded (${active.join(",")} -> ${ranks.join(",")}); retry`);
    }
    const dtype: DTypeName = (input?.dtype ?? d.dtype)!;
    const isz = dtypeInfo(dtype).bytes;
    const blockShape: number[] = op === "scatter" ? d.shape! : (desc.shape ?? []);
    const count = numel(blockShape);
    /** The result buffer: "out" (checked) or a new one of `shape` on the input's device. */
    const resultBuffer = (shape: number[]): BufferEntry => {
      if (out) {
        if (out.dtype !== dtype || numel(out.shape) !== numel(shape)) {
          throw new InvalidRequest(`${op}: "out" buffer ${out.id} is ${out.dtype}${JSON.stringify(out.shape)}; the result is ${dtype}${JSON.stringify(shape)}`);
        }
        return out;
      }
      created = reg.create(dtype, shape, input?.device ?? reg.parseDevice(undefined));
      return created;
    };
    const remaining = Math.max(1000, Math.round(timeoutMs - (performance.now() - startedAt)));
    const run = async (o: Omit<NativeOp, "opId" | "ranks" | "timeoutMs" | "dtype">): Promise<void> => {
      await svc.dataPlane.run({ ...o, dtype, opId: BigInt(d.opId), ranks, timeoutMs: remaining }).catch((e) => {
        throw toApiError(e, svc.rank, `${op} (buffer)`, d.seq);
      });
    };
    let result: BufferEntry | null = null;
    switch (op) {
      case "allreduce":
        if (count > 0) await run({ kind: "allreduce", redop: redop!, count, send: input!.buf, recv: input!.buf });
        result = input;
        break;
      case "broadcast":
        if (count > 0) await run({ kind: "broadcast", root: root!, count, send: isRoot ? input!.buf : undefined, recv: input!.buf });
        result = input;
        break;
      case "reduce": {
        const recv = isRoot ? (out ? resultBuffer(input!.shape) : input!) : null;
        if (count > 0) await run({ kind: "reduce", redop: redop!, root: root!, count, send: input!.buf, recv: recv?.buf });
        result = recv;
        break;
      }
      case "allgather":
      case "gather": {
        const recv = op === "allgather" || isRoot ? resultBuffer([n, ...input!.shape]) : null;
        if (count > 0) await run({ kind: op, root: op === "gather" ? root! : undefined, count, send: input!.buf, recv: recv?.buf });
        result = recv;
        break;
      }
      case "scatter": {
        const recv = resultBuffer(blockShape);
        if (count > 0) await run({ kind: "scatter", root: root!, count, send: isRoot ? input!.buf : undefined, recv: recv.buf });
        result = recv;
        break;
      }
      case "reduce_scatter": {
        const recv = resultBuffer(blockShape);
        if (count > 0) await run({ kind: "reduce_scatter", redop: redop!, count, send: input!.buf, recv: recv.buf });
        result = recv;
        break;
      }
      case "alltoall": {
        const recvShapes = d.shapes ?? ranks.map(() => blockShape);
        const recvCounts = recvShapes.map((s) => numel(s));
        const total = recvCounts.reduce((a, b) => a + b, 0);
        const sameBlocks = recvShapes.every((s) => sameList(s, blockShape));
        const recv = resultBuffer(sameBlocks ? [n, ...blockShape] : [total]);
        if (n > 0) {
          await run({ kind: "alltoall", count: 0, sendCounts: ranks.map(() => count), recvCounts, send: input!.buf, recv: recv.buf });
        }
        result = recv;
        break;
      }
      case "barrier":
        break;
    }
    bytes = input?.byteLength ?? 0;
    svc.metrics.op(op, "ok", bytes, (performance.now() - startedAt) / 1000);
    void isz;
    return jsonResponse({
      op,
      seq: d.seq,
      result: result ? describe(result) : null,
      active_ranks: svc.membership.activeMask(),
      failed_ranks: [],
      contributors: ranks,
      elapsed_ms: Math.round((performance.now() - startedAt) * 1000) / 1000,
    });
  } catch (e) {
    if (created) reg.delete((created as BufferEntry).id);
    const err = toApiError(e, svc.rank, op, null);
    svc.metrics.op(op, err.code, bytes, (performance.now() - startedAt) / 1000);
    throw err;
  }
}

const sendSchema = z.strictObject({ buffer: z.string().min(1), dst: z.number().int().min(0), tag: z.string().max(256).optional(), timeout_ms: bufferCallSchema.shape.timeout_ms });
const recvSchema = z.strictObject({ buffer: z.string().min(1), src: z.number().int().min(0), tag: z.string().max(256).optional(), timeout_ms: bufferCallSchema.shape.timeout_ms });

/** POST /p2p/send {"buffer": id, dst, tag?}: sends the buffer's contents (any device). */
export async function bufferSend(c: Context, svc: RankService, raw: unknown, startedAt: number, ticket: Ticket): Promise<Response> {
  requireReady(svc);
  const reg = await registryOf(svc);
  const body = parseOrThrow(sendSchema, raw);
  const e = reg.get(body.buffer);
  const timeoutMs = body.timeout_ms ?? DEFAULT_TIMEOUT_MS;
  const tag = body.tag ?? "";
  const wait = svc.sequencer.turn(ticket);
  if (wait) await svc.sequencer.bounded(wait, timeoutMs);
  const pending = svc.p2p.send(body.dst, tag, e.dtype, e.shape, e.buf, timeoutMs); // numbers the message synchronously
  svc.sequencer.finish(ticket);
  await pending;
  svc.metrics.op("send", "ok", e.byteLength, (performance.now() - startedAt) / 1000);
  return c.json({ ok: true, dst: body.dst, tag, buffer: e.id, elapsed_ms: Math.round((performance.now() - startedAt) * 1000) / 1000 });
}

/** POST /p2p/recv {"buffer": id, src, tag?}: receives into the buffer (same dtype and size). */
export async function bufferRecv(c: Context, svc: RankService, raw: unknown, startedAt: number): Promise<Response> {
  requireReady(svc);
  const reg = await registryOf(svc);
  const body = parseOrThrow(recvSchema, raw);
  const e = reg.get(body.buffer);
  const got = await svc.p2p.recv(body.src, body.tag ?? "", body.timeout_ms ?? DEFAULT_TIMEOUT_MS);
  try {
    if (got.dtype !== e.dtype || got.byteLength !== e.byteLength) {
      throw new InvalidRequest(
        `p2p recv: rank ${body.src} sent ${got.dtype}${JSON.stringify(got.shape)} but buffer ${e.id} is ${e.dtype}${JSON.stringify(e.shape)}; the message is dropped`,
      );
    }
    reg.write(e, got.buf.bytes.subarray(0, got.byteLength));
  } finally {
    got.buf.release();
  }
  svc.metrics.op("recv", "ok", e.byteLength, (performance.now() - startedAt) / 1000);
  return c.json({ result: describe(e), src: body.src, tag: body.tag ?? "", elapsed_ms: Math.round((performance.now() - startedAt) * 1000) / 1000 });
}

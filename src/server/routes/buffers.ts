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
import { bufferExecutor } from "../../control/buffer-collective";
import type { CollectiveCall } from "../../control/collective";
import type { Ticket } from "../../control/sequencer";
import { collectiveInfo, redopRejection, type CollectiveOp } from "../../ops/table";
import { checkShape, encodedTensorCharsMax, encodeTensor, numel, writeTensor, type JsonTensor } from "../../tensor/codec";
import { checkContentLength, isOctetStream, jsonResponse, octetParam, readJson, wantsOctetStream } from "../body";
import { InvalidRequest, TooLarge } from "../../errors";
import { DEFAULT_TIMEOUT_MS, dtypeSchema, MAX_TIMEOUT_MS, parseOrThrow, redopSchema } from "../schemas";
import type { BuffersFacade } from "./facade";
import { baseCall, requireReady } from "./collective";
import { cudaDeviceFor } from "../../util/local-rank";

// ---- the registry of a service (created on first use) ----

const registries = new WeakMap<BuffersFacade, Promise<BufferRegistry>>();

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
function sharedHostOps(svc: BuffersFacade): SharedHostOps | null {
  const dp = svc.dataPlane;
  if (!dp.allocShared || !dp.sharedLocation) return null;
  return {
    alloc: (bytes) => dp.allocShared!(bytes),
    locate: (buf) => dp.sharedLocation!(buf),
    group: svc.config.shmGroup ?? null,
  };
}

export function registryOf(svc: BuffersFacade): Promise<BufferRegistry> {
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

async function readOctet(c: Context, svc: BuffersFacade, expected: number): Promise<Uint8Array> {
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

export function buffersRoutes(app: Hono, svc: BuffersFacade): void {
  app.post("/buffers", (c) => createBuffer(svc, c));

  app.get("/buffers", async (c) => {
    const reg = await registryOf(svc);
    return c.json({ rank: svc.rank, buffers: reg.list().map(describe) });
  });

  app.get("/buffers/:id", async (c) => {
    const reg = await registryOf(svc);
    const e = reg.get(c.req.param("id"));
    if (wantsOctetStream(c)) {
      const bytes = reg.read(e);
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
    // the JSON form is built whole on the event loop: past the body limit, the client must take the bytes
    const chars = encodedTensorCharsMax(e.dtype, e.byteLength, format);
    if (chars > svc.config.maxBodyBytes) {
      throw new TooLarge(
        `buffer ${e.id} (${e.byteLength} bytes) as JSON (${format}) could take up to ${chars} bytes, over the limit of ${svc.config.maxBodyBytes} bytes: ` +
          `read it with Accept: application/octet-stream`,
        { limit_bytes: svc.config.maxBodyBytes, encoded_bytes_max: chars, bytes: e.byteLength, accept: "application/octet-stream" },
      );
    }
    return c.json({ ...describe(e), ...encodeTensor(e.dtype, e.shape, reg.read(e), format) });
  });

  app.put("/buffers/:id", (c) => overwriteBuffer(svc, c));

  app.delete("/buffers/:id", async (c) => {
    const reg = await registryOf(svc);
    const e = reg.delete(c.req.param("id"));
    return c.json({ ...describe(e), deleted: true });
  });

  app.get("/buffers/:id/ipc", (c) => shareBuffer(svc, c));
}

/** GET /buffers/:id/ipc: how another process of this host maps the buffer (a CUDA IPC handle, or the /dev/shm file). */
async function shareBuffer(svc: BuffersFacade, c: Context): Promise<Response> {
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
}

/** PUT /buffers/:id: new values in place (same dtype and element count). */
async function overwriteBuffer(svc: BuffersFacade, c: Context): Promise<Response> {
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
}

/** POST /buffers: a new buffer from JSON values or raw bytes (zeros without values). */
async function createBuffer(svc: BuffersFacade, c: Context): Promise<Response> {
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

/**
 * POST /collective/{op} with {"buffer": id, "out"?: id, ...}: runs in place on the rank's
 * buffers through the same runner as tensor bodies (control/buffer-collective.ts says where
 * each op's result goes). dst/src are group ranks, as for tensors.
 */
export async function bufferCollective(svc: BuffersFacade, op: CollectiveOp, raw: unknown, startedAt: number, ticket: Ticket, signal?: AbortSignal): Promise<Response> {
  requireReady(svc);
  const reg = await registryOf(svc);
  const body = parseOrThrow(bufferCallSchema, raw);
  const info = collectiveInfo(op);
  const call = baseCall(svc, op, body, startedAt);
  call.signal = signal;
  const input = body.buffer !== undefined ? reg.get(body.buffer) : null;
  const out = body.out !== undefined ? reg.get(body.out) : null;
  const needsInput = info.input_on === "all" || call.rootGlobal === svc.rank;
  if (needsInput && !input) throw new InvalidRequest(`${op}: "buffer" (a buffer id from POST /buffers) is required`);
  if (input && out && input.device !== out.device) {
    throw new InvalidRequest(`"buffer" is on ${deviceName(input.device)} but "out" on ${deviceName(out.device)}: one device per call`);
  }
  if (input) describeInput(svc, call, input);
  // Arrival order, then the runner (sends its join synchronously).
  const wait = call.tag === null ? svc.sequencer.turn(ticket) : null;
  if (wait) await svc.sequencer.bounded(wait, call.timeoutMs);
  const pending = svc.collectives.runWith(call, bufferExecutor(reg, svc.dataPlane, svc.rank, { call, input, out }));
  svc.sequencer.finish(ticket);
  const res = await pending;
  return jsonResponse({
    op,
    seq: res.seq,
    result: res.result ? describe(res.result) : null,
    active_ranks: res.activeRanks,
    failed_ranks: res.failedRanks,
    contributors: res.contributors,
    ...(res.groupRanks ? { group: { name: call.group, ranks: res.groupRanks } } : {}),
    elapsed_ms: Math.round((performance.now() - startedAt) * 1000) / 1000,
  });
}

/** The call's data from its input buffer; a list op's buffer is [members, ...block]. */
function describeInput(svc: BuffersFacade, call: CollectiveCall, input: BufferEntry): void {
  const info = collectiveInfo(call.op);
  call.dtype = input.dtype;
  call.shape = input.shape;
  call.count = numel(input.shape);
  call.send = input.buf;
  if (info.input === "tensors") {
    const members = svc.membership.groupRanks(call.group);
    if (input.shape.length === 0 || input.shape[0] !== members.length) {
      throw new InvalidRequest(`${call.op}: buffer ${input.id} must have shape [${members.length}, ...] (one block per active rank); it has ${JSON.stringify(input.shape)}`);
    }
    call.shape = input.shape.slice(1);
    call.count = numel(call.shape);
    call.blockRanks = members.slice();
    if (info.send === "counts") {
      call.blockShapes = members.map(() => call.shape!);
      call.count = -1;
    }
  }
  if (call.redop) {
    const why = redopRejection(call.redop, input.dtype);
    if (why) throw new InvalidRequest(why);
  }
}

const sendSchema = z.strictObject({ buffer: z.string().min(1), dst: z.number().int().min(0), tag: z.string().max(256).optional(), timeout_ms: bufferCallSchema.shape.timeout_ms });
const recvSchema = z.strictObject({ buffer: z.string().min(1), src: z.number().int().min(0), tag: z.string().max(256).optional(), timeout_ms: bufferCallSchema.shape.timeout_ms });

/** POST /p2p/send {"buffer": id, dst, tag?}: sends the buffer's contents (any device). */
export async function bufferSend(c: Context, svc: BuffersFacade, raw: unknown, startedAt: number, ticket: Ticket): Promise<Response> {
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
export async function bufferRecv(c: Context, svc: BuffersFacade, raw: unknown, startedAt: number): Promise<Response> {
  requireReady(svc);
  const reg = await registryOf(svc);
  const body = parseOrThrow(recvSchema, raw);
  const e = reg.get(body.buffer);
  const got = await svc.p2p.recv(body.src, body.tag ?? "", body.timeout_ms ?? DEFAULT_TIMEOUT_MS, c.req.raw.signal);
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

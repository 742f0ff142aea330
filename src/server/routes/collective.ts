// POST /collective/{op}: body -> metadata (zod) -> tensor bytes into native memory (codec)
// -> CollectiveRunner (agreement + data plane) -> response in the request's format.
//
// Extension: a single-tensor body may be raw little-endian bytes (Content-Type:
// application/octet-stream) with metadata in query parameters or x-moonring-* headers
// (dtype, shape "2,3", op, dst/src, group, tag, timeout_ms); the answer is then raw bytes too
// (see docs/api-extensions.md).
import type { Context, Hono } from "hono";
import type { CollectiveCall, CollectiveResult, ResultTensor, ResultValue } from "../../control/collective";
import { jsOwnedMemory, type NativeBuffer } from "../../native/types";
import { collectiveInfo, collectiveOps, redopRejection, type CollectiveOp, type DTypeName, type RedOpName } from "../../ops/table";
import { checkShape, encodeTensor, numel, writeTensor, type JsonTensor, type WireFormat } from "../../tensor/codec";
import { InvalidRequest, NotReady, TooLarge } from "../../errors";
import { checkContentLength, isOctetStream, jsonResponse, octetParam, readBodyInto, readJson, wantsOctetStream, type BodySource } from "../body";
import { collectiveSchemas, DEFAULT_TIMEOUT_MS, formatIssues, quickCollectiveBody } from "../schemas";
import { bufferCollective, usesBuffer } from "./buffers";
import type { BuffersFacade, CollectiveFacade, Readiness } from "./facade";

const opSet = new Set<string>(collectiveOps);

export function requireReady(svc: Readiness): void {
  if (svc.ready) return;
  throw svc.unavailable(); // 503 not_ready (awaiting, failed, left) or master_lost
}

export function collectiveRoutes(app: Hono, svc: CollectiveFacade): void {
  app.post("/collective/:op", (c) => handleCollective(svc, c.req.param("op"), c));
}

/**
 * POST /collective/{op}. `src` is the Hono context, or the bare Request when service.ts's fast
 * path serves the call without Hono (JSON bodies only: octet-stream bodies need the context).
 */
export async function handleCollective(svc: CollectiveFacade, op: string, src: Context | Request): Promise<Response> {
  const startedAt = performance.now();
  if (!opSet.has(op)) {
    throw new InvalidRequest(`unknown collective ${JSON.stringify(op)}; expected one of ${collectiveOps.join(", ")}`);
  }
  requireReady(svc);
  svc.admitCall(); // 429 past the cap, before the body is read
  const owned: NativeBuffer[] = [];
  const ticket = svc.sequencer.take();
  try {
    const octet = isOctetStream(src);
    const raw = octet ? null : await readJson(src, svc.config.maxBodyBytes);
    // {"buffer": id}: in place on a device/host buffer of POST /buffers (routes/buffers.ts)
    const signal = src instanceof Request ? src.signal : src.req.raw.signal;
    if (collectiveInfo(op as CollectiveOp).input !== "none" && usesBuffer(raw)) return await bufferCollective(svc, op as CollectiveOp, raw, startedAt, ticket, signal);
    const { call, format } = octet
      ? await decodeOctet(src, svc, op as CollectiveOp, startedAt, owned)
      : decodeJson(raw, svc, op as CollectiveOp, startedAt, owned);
    // untagged calls keep arrival order; tagged ones match by tag and needn't wait
    const wait = call.tag === null ? svc.sequencer.turn(ticket) : null;
    if (wait) await svc.sequencer.bounded(wait, call.timeoutMs);
    call.signal = signal;
    const pending = svc.collectives.run(call); // sends its join synchronously
    svc.sequencer.finish(ticket);
    const res = await pending;
    owned.push(...res.owned);
    if (format === "octet" || wantsOctetStream(src)) return octetResponse(res, startedAt);
    return jsonResponse({
      op: res.op,
      seq: res.seq,
      result: encodeResult(res.result, format),
      active_ranks: res.activeRanks,
      failed_ranks: res.failedRanks,
      contributors: res.contributors,
      ...(res.groupRanks ? { group: { name: call.group, ranks: res.groupRanks } } : {}),
      elapsed_ms: Math.round((performance.now() - startedAt) * 1000) / 1000,
    });
  } finally {
    svc.finishCall();
    svc.sequencer.finish(ticket);
    for (const b of owned) b.release();
  }
}

function encodeResult(r: ResultValue, format: WireFormat): unknown {
  if (r === null) return null;
  const f = format === "octet" ? "b64" : format;
  if (Array.isArray(r)) return r.map((t) => (t ? encodeTensor(t.dtype, t.shape, t.bytes, f) : null));
  return encodeTensor(r.dtype, r.shape, r.bytes, f);
}

function octetResponse(res: CollectiveResult, startedAt: number): Response {
  const headers: Record<string, string> = {
    "content-type": "application/octet-stream",
    "x-moonring-op": res.op,
    "x-moonring-seq": String(res.seq),
    "x-moonring-active-ranks": res.activeRanks.join(","),
    "x-moonring-contributors": res.contributors.join(","),
    "x-moonring-failed-ranks": res.failedRanks.join(","),
    "x-moonring-elapsed-ms": String(Math.round((performance.now() - startedAt) * 1000) / 1000),
  };
  const r = res.result;
  if (r === null) {
    headers["x-moonring-result"] = "null";
    return new Response(null, { status: 200, headers });
  }
  if (!Array.isArray(r)) {
    headers["x-moonring-result"] = "tensor";
    headers["x-moonring-dtype"] = r.dtype;
    headers["x-moonring-shape"] = r.shape.join(",");
    // A result in JS memory goes out as it is; native memory is released after this call: copy.
    return new Response(jsOwnedMemory.has(r.bytes.buffer) ? r.bytes : r.bytes.slice(), { status: 200, headers });
  }
  headers["x-moonring-result"] = "list";
  const present = r.filter((t): t is ResultTensor => t !== null);
  headers["x-moonring-dtype"] = present[0]?.dtype ?? "";
  headers["x-moonring-shapes"] = JSON.stringify(r.map((t) => (t ? t.shape : null)));
  const total = present.reduce((a, t) => a + t.bytes.byteLength, 0);
  // Blocks back to back in one JS-memory result (allgather, gather): send that span, no copy.
  const first = present[0]?.bytes;
  const contiguous =
    first !== undefined &&
    jsOwnedMemory.has(first.buffer) &&
    present.every((t, i) => t.bytes.buffer === first.buffer && (i === 0 || t.bytes.byteOffset === present[i - 1]!.bytes.byteOffset + present[i - 1]!.bytes.byteLength));
  if (contiguous) return new Response(new Uint8Array(first.buffer, first.byteOffset, total), { status: 200, headers });
  const out = new Uint8Array(total);
  let off = 0;
  for (const t of present) {
    out.set(t.bytes, off);
    off += t.bytes.byteLength;
  }
  return new Response(out, { status: 200, headers });
}

function alloc(svc: CollectiveFacade, bytes: number, owned: NativeBuffer[]): NativeBuffer {
  let b: NativeBuffer;
  try {
    b = svc.dataPlane.alloc(Math.max(bytes, 1));
  } catch (e) {
    throw new TooLarge(`rank ${svc.rank}: could not allocate ${bytes} bytes: ${(e as Error).message}`);
  }
  owned.push(b);
  return b;
}

/** Checks a root (a rank of the call's group, as REST gives it) and returns its global rank. */
function toRootGlobal(svc: BuffersFacade, op: CollectiveOp, rootGroup: number | undefined, group: string): number {
  const m = svc.membership;
  const field = collectiveInfo(op).root!;
  if (rootGroup === undefined) throw new InvalidRequest(`${op}: "${field}" is required`);
  const root = rootGroup;
  const def = m.groupDef(group);
  const size = m.groupSize(group);
  const where = def ? `group ${JSON.stringify(group)} of ${size} ranks` : `world size ${size}`;
  if (root >= size) throw new InvalidRequest(`${field} ${root} is out of range for ${where}`, { [field]: root });
  const global = m.toGlobal(group, root);
  if (!m.isActive(global)) {
    const rec = m.get(global);
    const state = rec ? `state ${rec.state}${rec.reason ? `: ${rec.reason}` : ""}` : "not registered";
    throw new InvalidRequest(`${field} ${root}${def ? ` (global rank ${global})` : ""} is not an active rank (${state})`, { [field]: root, state: rec?.state ?? null });
  }
  return global;
}

function checkRedop(redop: RedOpName, dtype: DTypeName): void {
  const why = redopRejection(redop, dtype);
  if (why) throw new InvalidRequest(why);
}

/** Decodes a JSON collective body into a call whose inputs live in native memory. */
export function decodeJson(
  raw: unknown,
  svc: CollectiveFacade,
  op: CollectiveOp,
  startedAt: number,
  owned: NativeBuffer[],
): { call: CollectiveCall; format: WireFormat } {
  let data = raw;
  if (!quickCollectiveBody(op, raw)) {
    const parsed = collectiveSchemas[op].safeParse(raw);
    if (!parsed.success) {
      throw new InvalidRequest(formatIssues(parsed.error.issues, "body"), {
        issues: parsed.error.issues.slice(0, 10).map((i) => ({ path: i.path.join("."), message: i.message })),
      });
    }
    data = parsed.data;
  }
  const body = data as {
    tensor?: JsonTensor;
    tensors?: (JsonTensor | null)[];
    op?: RedOpName;
    dst?: number;
    src?: number;
    group?: string;
    tag?: string;
    timeout_ms?: number;
    format?: "data" | "b64";
  };
  const maxT = svc.config.maxTensorBytes;
  const call = baseCall(svc, op, body, startedAt);
  let format: WireFormat = body.format ?? "data";

  if (body.tensor) {
    const t = body.tensor;
    const bytes = checkShape(t, "tensor", maxT);
    const buf = alloc(svc, bytes, owned);
    format = writeTensor(t, buf.bytes.subarray(0, bytes), "tensor");
    call.dtype = t.dtype;
    call.shape = t.shape;
    call.count = numel(t.shape);
    call.send = buf;
    if (call.redop) checkRedop(call.redop, t.dtype);
    return { call, format };
  }

  const info = collectiveInfo(op);
  if (info.input === "none") return { call, format };
  if (info.input_on === "root" && call.rootGlobal !== svc.rank) return { call, format }; // e.g. scatter's non-src ranks send nothing

  const list = body.tensors;
  if (!list) throw new InvalidRequest(info.input_on === "root" ? `${op}: ${info.root} rank ${call.rootGlobal} must give "tensors" (one per rank)` : `${op}: "tensors" is required`);
  return { call, format: decodeList(svc, call, list, owned) ?? format };
}

/**
 * A list input ("tensors", one per group rank; null for inactive members) -> one native buffer,
 * blocks of the active members in group order. Returns the first block's wire format.
 */
function decodeList(svc: CollectiveFacade, call: CollectiveCall, list: (JsonTensor | null)[], owned: NativeBuffer[]): WireFormat | null {
  const { op } = call;
  const info = collectiveInfo(op);
  const maxT = svc.config.maxTensorBytes;
  let format: WireFormat | null = null;
  const ranks = svc.membership.groupRanks(call.group);
  const index = svc.membership.listIndexForActive(list.length, call.group);
  const size = svc.membership.groupSize(call.group);
  if (!index) {
    throw new InvalidRequest(
      `tensors has ${list.length} entries; expected ${size} (one per rank${svc.membership.groupDef(call.group) ? ` of group ${JSON.stringify(call.group)}` : ""})` +
        (ranks.length !== size ? ` or ${ranks.length} (one per active rank)` : ""),
      { expected: size, got: list.length },
    );
  }
  const blocks = index.map((i, j) => {
    const t = list[i];
    if (!t) throw new InvalidRequest(`tensors[${i}] is null but rank ${ranks[j]} is active`);
    return { t, where: `tensors[${i}]` };
  });
  const first = blocks[0]!.t;
  let total = 0;
  const sizes = blocks.map(({ t, where }) => {
    if (t.dtype !== first.dtype) throw new InvalidRequest(`${where}: dtype ${t.dtype} differs from tensors[${index[0]}] (${first.dtype}); all must match`);
    if (info.send !== "counts" && !sameShape(t.shape, first.shape)) {
      throw new InvalidRequest(`${where}: shape ${JSON.stringify(t.shape)} differs from ${JSON.stringify(first.shape)}; ${op} needs equal shapes`);
    }
    const b = checkShape(t, where, maxT);
    total += b;
    return b;
  });
  if (total > maxT) throw new TooLarge(`tensors total ${total} bytes, over the tensor limit of ${maxT} bytes`, { limit_bytes: maxT, bytes: total });
  const buf = alloc(svc, total, owned);
  let off = 0;
  blocks.forEach(({ t, where }, j) => {
    const f = writeTensor(t, buf.bytes.subarray(off, off + sizes[j]!), where);
    if (j === 0) format = f;
    off += sizes[j]!;
  });
  call.dtype = first.dtype;
  call.shape = first.shape;
  call.count = numel(first.shape);
  call.send = buf;
  call.blockRanks = ranks;
  if (info.send === "counts") {
    call.blockShapes = blocks.map(({ t }) => t.shape);
    call.count = -1;
  }
  if (call.redop) checkRedop(call.redop, first.dtype);
  return format;
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

const OCTET_OPS = collectiveOps.filter((op) => collectiveInfo(op).octet);

async function decodeOctet(
  c: BodySource,
  svc: CollectiveFacade,
  op: CollectiveOp,
  startedAt: number,
  owned: NativeBuffer[],
): Promise<{ call: CollectiveCall; format: WireFormat }> {
  if (!collectiveInfo(op).octet) {
    throw new InvalidRequest(`application/octet-stream bodies carry one tensor: ${OCTET_OPS.join(", ")}; use JSON for ${op}`);
  }
  checkContentLength(c, svc.config.maxBodyBytes);
  const meta: Record<string, unknown> = {};
  const dtype = octetParam(c, "dtype");
  const shapeText = octetParam(c, "shape");
  if (dtype === undefined) throw new InvalidRequest('octet-stream body: give "dtype" as a query parameter or x-moonring-dtype header');
  if (shapeText === undefined) throw new InvalidRequest('octet-stream body: give "shape" (e.g. 2,3; empty for a scalar) as a query parameter or x-moonring-shape header');
  let shape: unknown;
  const st = shapeText.trim();
  if (st.startsWith("[")) {
    try {
      shape = JSON.parse(st);
    } catch {
      throw new InvalidRequest(`shape ${JSON.stringify(shapeText)} is not a list`);
    }
  } else {
    shape = st === "" ? [] : st.split(",").map((x) => (/^\s*\d+\s*$/.test(x) ? Number(x) : NaN));
  }
  meta.tensor = { dtype, shape, data: [] };
  for (const k of ["op", "group", "tag"]) {
    const v = octetParam(c, k);
    if (v !== undefined) meta[k] = v;
  }
  for (const k of ["dst", "src", "timeout_ms"]) {
    const v = octetParam(c, k);
    if (v !== undefined) meta[k] = /^\d+$/.test(v) ? Number(v) : v;
  }
  const parsed = collectiveSchemas[op].safeParse(meta);
  if (!parsed.success) throw new InvalidRequest(formatIssues(parsed.error.issues, "query"));
  const body = parsed.data as { tensor: JsonTensor; op?: RedOpName; dst?: number; src?: number; group?: string; tag?: string; timeout_ms?: number };
  const t = body.tensor;
  const bytes = checkShape(t, "tensor", svc.config.maxTensorBytes);
  const call = baseCall(svc, op, body, startedAt);
  call.dtype = t.dtype;
  call.shape = t.shape;
  call.count = numel(t.shape);
  if (call.redop) checkRedop(call.redop, t.dtype);
  const buf = alloc(svc, bytes, owned);
  await readBodyInto(c, buf, bytes);
  call.send = buf;
  return { call, format: "octet" };
}

/**
 * The call's metadata common to JSON, octet-stream and {"buffer": id} bodies; the caller fills
 * in the data. The root (dst/src) comes as a group rank and is kept as a global rank.
 */
export function baseCall(
  svc: BuffersFacade,
  op: CollectiveOp,
  body: { op?: RedOpName; dst?: number; src?: number; group?: string; tag?: string; timeout_ms?: number },
  startedAt: number,
): CollectiveCall {
  const info = collectiveInfo(op);
  const call: CollectiveCall = {
    op,
    group: body.group ?? "world",
    tag: body.tag ?? null,
    timeoutMs: body.timeout_ms ?? DEFAULT_TIMEOUT_MS,
    redop: info.reduces ? (body.op ?? "sum") : null,
    rootGlobal: null,
    dtype: null,
    shape: null,
    count: -1,
    send: null,
    startedAt,
  };
  if (info.root) call.rootGlobal = toRootGlobal(svc, op, body[info.root], call.group);
  return call;
}

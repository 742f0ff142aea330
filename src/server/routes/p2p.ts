// POST /p2p/send, /p2p/recv (metadata over the control plane, bytes over the data plane).
import type { Context, Hono } from "hono";
import type { NativeBuffer } from "../../native/types";
import { dtypeInfo } from "../../ops/table";
import { checkShape, encodeTensor, numel, writeTensor, type JsonTensor } from "../../tensor/codec";
import { InvalidRequest, TooLarge } from "../../errors";
import { isOctetStream, octetParam, readBodyInto, readJson, wantsOctetStream, checkContentLength } from "../body";
import { DEFAULT_TIMEOUT_MS, p2pRecvSchema, p2pSendSchema, parseOrThrow } from "../schemas";
import type { P2pFacade } from "./facade";
import { bufferRecv, bufferSend, usesBuffer } from "./buffers";
import { requireReady } from "./collective";

export function p2pRoutes(app: Hono, svc: P2pFacade): void {
  app.post("/p2p/send", (c) => counted(svc, () => p2pSend(svc, c)));
  app.post("/p2p/recv", (c) => counted(svc, () => p2pRecv(svc, c)));
}

/** POST /p2p/send: a JSON or octet-stream tensor, or {"buffer": id}, to rank dst. */
async function p2pSend(svc: P2pFacade, c: Context): Promise<Response> {
  const startedAt = performance.now();
  requireReady(svc);
  const ticket = svc.sequencer.take();
  let buf: NativeBuffer | null = null;
  let dst: number;
  let tag: string;
  let timeoutMs: number;
  let dtype: JsonTensor["dtype"];
  let shape: number[];
  try {
    if (isOctetStream(c)) {
      checkContentLength(c, svc.config.maxBodyBytes);
      const shapeText = (octetParam(c, "shape") ?? "").trim();
      const meta = {
        tensor: {
          dtype: octetParam(c, "dtype"),
          shape: shapeText === "" ? [] : shapeText.startsWith("[") ? safeJson(shapeText) : shapeText.split(",").map(Number),
          data: [],
        },
        dst: numOrText(octetParam(c, "dst")),
        tag: octetParam(c, "tag"),
        timeout_ms: numOrText(octetParam(c, "timeout_ms")),
      };
      const body = parseOrThrow(p2pSendSchema, meta, "query");
      const bytes = checkShape(body.tensor, "tensor", svc.config.maxTensorBytes);
      buf = allocOr413(svc, bytes);
      await readBodyInto(c, buf, bytes);
      ({ dst, dtype, shape } = { dst: body.dst, dtype: body.tensor.dtype, shape: body.tensor.shape });
      tag = body.tag ?? "";
      timeoutMs = body.timeout_ms ?? DEFAULT_TIMEOUT_MS;
    } else {
      const raw = await readJson(c, svc.config.maxBodyBytes);
      if (usesBuffer(raw)) return await bufferSend(c, svc, raw, startedAt, ticket); // {"buffer": id}
      const body = parseOrThrow(p2pSendSchema, raw);
      const bytes = checkShape(body.tensor, "tensor", svc.config.maxTensorBytes);
      buf = allocOr413(svc, bytes);
      writeTensor(body.tensor as JsonTensor, buf.bytes.subarray(0, bytes), "tensor");
      ({ dst, dtype, shape } = { dst: body.dst, dtype: body.tensor.dtype, shape: body.tensor.shape });
      tag = body.tag ?? "";
      timeoutMs = body.timeout_ms ?? DEFAULT_TIMEOUT_MS;
    }
    const bytes = numel(shape) * dtypeInfo(dtype).bytes;
    const wait = svc.sequencer.turn(ticket);
    if (wait) await svc.sequencer.bounded(wait, timeoutMs);
    try {
      const pending = svc.p2p.send(dst, tag, dtype, shape, buf, timeoutMs); // numbers the message synchronously
      svc.sequencer.finish(ticket);
      await pending;
    } catch (e) {
      svc.metrics.op("send", (e as { code?: string }).code ?? "error", bytes, (performance.now() - startedAt) / 1000);
      throw e;
    }
    svc.metrics.op("send", "ok", bytes, (performance.now() - startedAt) / 1000);
    return c.json({ ok: true, dst, tag, elapsed_ms: Math.round((performance.now() - startedAt) * 1000) / 1000 });
  } finally {
    svc.sequencer.finish(ticket);
    buf?.release();
  }
}

/** POST /p2p/recv: the next tensor from rank src (JSON, octet-stream, or into {"buffer": id}). */
async function p2pRecv(svc: P2pFacade, c: Context): Promise<Response> {
  const startedAt = performance.now();
  requireReady(svc);
  const raw = await readJson(c, svc.config.maxBodyBytes);
  if (usesBuffer(raw)) return await bufferRecv(c, svc, raw, startedAt); // {"buffer": id}: in place
  const body = parseOrThrow(p2pRecvSchema, raw);
  let got;
  try {
    got = await svc.p2p.recv(body.src, body.tag ?? "", body.timeout_ms ?? DEFAULT_TIMEOUT_MS, c.req.raw.signal);
  } catch (e) {
    svc.metrics.op("recv", (e as { code?: string }).code ?? "error", 0, (performance.now() - startedAt) / 1000);
    throw e;
  }
  try {
    svc.metrics.op("recv", "ok", got.byteLength, (performance.now() - startedAt) / 1000);
    const bytes = got.buf.bytes.subarray(0, got.byteLength);
    if (wantsOctetStream(c)) {
      return new Response(bytes.slice(), {
        headers: {
          "content-type": "application/octet-stream",
          "x-moonring-dtype": got.dtype,
          "x-moonring-shape": got.shape.join(","),
          "x-moonring-src": String(body.src),
        },
      });
    }
    return c.json({
      result: encodeTensor(got.dtype, got.shape, bytes, body.format ?? "data"),
      src: body.src,
      tag: body.tag ?? "",
      elapsed_ms: Math.round((performance.now() - startedAt) * 1000) / 1000,
    });
  } finally {
    got.buf.release();
  }
}

/** Runs a p2p call counted against the pending-call cap (429 past it, before the body is read). */
async function counted(svc: P2pFacade, call: () => Promise<Response>): Promise<Response> {
  svc.admitCall();
  try {
    return await call();
  } finally {
    svc.finishCall();
  }
}

function allocOr413(svc: P2pFacade, bytes: number): NativeBuffer {
  try {
    return svc.dataPlane.alloc(Math.max(bytes, 1));
  } catch (e) {
    throw new TooLarge(`rank ${svc.rank}: could not allocate ${bytes} bytes: ${(e as Error).message}`);
  }
}

function numOrText(v: string | undefined): number | string | undefined {
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : v;
}

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    throw new InvalidRequest(`shape ${JSON.stringify(s)} is not a list`);
  }
}

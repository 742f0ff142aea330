// Request bodies: size limits (413 before reading when Content-Length says so), JSON parsing
// (400 on malformed JSON), and raw octet-stream bodies read straight into native memory.
import type { Context } from "hono";
import type { NativeBuffer } from "../native/types";
import { InvalidRequest, TooLarge } from "../errors";

/** A Hono context, or the bare Request of service.ts's fast path (POST /collective/{op}). */
export type BodySource = Context | Request;

function header(c: BodySource, name: string): string | undefined {
  return c instanceof Request ? (c.headers.get(name) ?? undefined) : c.req.header(name);
}

/** 413 when Content-Length says the body is over the limit; returns the header (if any). */
export function checkContentLength(c: BodySource, maxBodyBytes: number): string | undefined {
  const len = header(c, "content-length");
  if (len !== undefined && Number(len) > maxBodyBytes) {
    throw new TooLarge(`request body of ${len} bytes is over the limit of ${maxBodyBytes} bytes`, {
      limit_bytes: maxBodyBytes,
      bytes: Number(len),
    });
  }
  return len;
}

export async function readJson(c: BodySource, maxBodyBytes: number): Promise<unknown> {
  const known = checkContentLength(c, maxBodyBytes) !== undefined;
  let text: string;
  try {
    text = c instanceof Request ? (known ? await c.text() : await readCapped(c, maxBodyBytes)) : known ? await c.req.text() : await readCapped(c.req.raw, maxBodyBytes);
  } catch (e) {
    if (e instanceof TooLarge) throw e;
    throw new InvalidRequest(`could not read the request body: ${(e as Error).message}`);
  }
  if (text.length === 0) return {};
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new InvalidRequest(`malformed JSON: ${(e as Error).message}`);
  }
}

/** Reads a body of unknown length (chunked), refusing it once it passes the limit. */
async function readCapped(req: Request, maxBodyBytes: number): Promise<string> {
  const body = req.body;
  if (!body) return "";
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBodyBytes) {
      await reader.cancel().catch(() => {});
      throw new TooLarge(`request body is over the limit of ${maxBodyBytes} bytes`, { limit_bytes: maxBodyBytes });
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}

export function isOctetStream(c: BodySource): boolean {
  const ct = header(c, "content-type");
  return ct !== undefined && ct.startsWith("application/octet-stream");
}

export function wantsOctetStream(c: BodySource): boolean {
  const a = header(c, "accept");
  return a !== undefined && a.startsWith("application/octet-stream");
}

const SMALL_BODY_BYTES = 256 * 1024;

/** Streams the body into `target` (exactly target.byteLength bytes expected). */
export async function readBodyInto(c: BodySource, target: NativeBuffer, expected: number): Promise<void> {
  const req = c instanceof Request ? c : c.req.raw;
  const len = header(c, "content-length");
  if (len !== undefined && Number(len) <= SMALL_BODY_BYTES) {
    // small bodies: one read is cheaper than a stream reader
    const got = new Uint8Array(await req.arrayBuffer());
    if (got.byteLength !== expected) {
      throw new InvalidRequest(`octet-stream body has ${got.byteLength} bytes but dtype and shape need ${expected}`, {
        expected_bytes: expected,
        got_bytes: got.byteLength,
      });
    }
    target.bytes.set(got);
    return;
  }
  const body = req.body;
  let off = 0;
  if (body) {
    const reader = body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (off + value.byteLength > expected) {
        await reader.cancel().catch(() => {});
        throw new InvalidRequest(`octet-stream body is longer than dtype and shape need (${expected} bytes)`, {
          expected_bytes: expected,
        });
      }
      target.bytes.set(value, off);
      off += value.byteLength;
    }
  }
  if (off !== expected) {
    throw new InvalidRequest(`octet-stream body has ${off} bytes but dtype and shape need ${expected}`, {
      expected_bytes: expected,
      got_bytes: off,
    });
  }
}

/** Metadata of an octet-stream request: query parameter, else x-moonring-<name> header. */
export function octetParam(c: BodySource, name: string): string | undefined {
  if (c instanceof Request) return queryOf(c).get(name) ?? c.headers.get(`x-moonring-${name.replace(/_/g, "-")}`) ?? undefined;
  return c.req.query(name) ?? c.req.header(`x-moonring-${name.replace(/_/g, "-")}`);
}

/** The query of a bare Request, parsed once per request. */
const queries = new WeakMap<Request, URLSearchParams>();
function queryOf(req: Request): URLSearchParams {
  let q = queries.get(req);
  if (!q) {
    const i = req.url.indexOf("?");
    q = new URLSearchParams(i < 0 ? "" : req.url.slice(i + 1));
    queries.set(req, q);
  }
  return q;
}

/** A JSON response as Hono's c.json makes it (Content-Type: application/json), without a Context. */
export function jsonResponse(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

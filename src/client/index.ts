// moonring TypeScript client (package export "moonring/client").
//
// Tensors are TypedArrays: float32 -> Float32Array, float64 -> Float64Array, int8/int16/int32
// -> Int8Array/Int16Array/Int32Array, uint8 -> Uint8Array, int64 -> BigInt64Array, bool ->
// Uint8Array (0/1), float16 and bfloat16 -> Uint16Array holding the raw bit patterns (exact).
// For float16/bfloat16 use toFloat16()/toBFloat16() to build bit patterns from numbers
// (round to nearest even) and fromFloat16()/fromBFloat16() to get a Float32Array back; or pass
// plain numbers to tensor("float16", [...]) which converts for you.
//
// On the wire the client sends little-endian bytes as base64 (exact for every dtype) by default;
// wire: "json" uses JSON `data` lists, wire: "octet" raw application/octet-stream bodies for the
// single-tensor ops (allreduce, reduce, broadcast, allgather, gather, p2p send/recv).
// Errors are MoonringError with the contract's `code` (invalid_request, collective_mismatch,
// too_large, not_ready, timeout, ...), HTTP `status` and `details` (e.g. missing_ranks).
import { dtypes, storageArray, type DTypeName, type RedOpName } from "../ops/table";
import { fromBFloat16Bits, fromFloat16Bits, toBFloat16Bits, toFloat16Bits } from "../tensor/half";

export type DType = DTypeName;
export type RedOp = RedOpName;

export type TypedArrayFor<D extends DType> = D extends "float32"
  ? Float32Array
  : D extends "float64"
    ? Float64Array
    : D extends "int64"
      ? BigInt64Array
      : D extends "int32"
        ? Int32Array
        : D extends "int16"
          ? Int16Array
          : D extends "int8"
            ? Int8Array
            : D extends "float16" | "bfloat16"
              ? Uint16Array
              : Uint8Array;

export type AnyTypedArray = Float32Array | Float64Array | BigInt64Array | Int32Array | Int16Array | Int8Array | Uint16Array | Uint8Array;

export interface Tensor<D extends DType = DType> {
  dtype: D;
  shape: number[];
  data: TypedArrayFor<D>;
}

const ITEM = Object.fromEntries(dtypes.map((d) => [d.name, d.bytes])) as Record<DType, number>;
const CTOR = Object.fromEntries(dtypes.map((d) => [d.name, storageArray(d.name)])) as Record<DType, { new (n: number): AnyTypedArray; new (b: ArrayBuffer, o: number, n: number): AnyTypedArray }>;

export function toFloat16(values: ArrayLike<number>): Uint16Array {
  return Uint16Array.from(Array.from(values), toFloat16Bits);
}
export function fromFloat16(bits: Uint16Array): Float32Array {
  return Float32Array.from(bits, fromFloat16Bits);
}
export function toBFloat16(values: ArrayLike<number>): Uint16Array {
  return Uint16Array.from(Array.from(values), toBFloat16Bits);
}
export function fromBFloat16(bits: Uint16Array): Float32Array {
  return Float32Array.from(bits, fromBFloat16Bits);
}

/** Builds a tensor. `values` may be a TypedArray of the right kind or plain numbers/bigints/booleans. */
export function tensor<D extends DType>(
  dtype: D,
  values: TypedArrayFor<D> | ArrayLike<number | bigint | boolean>,
  shape?: number[],
): Tensor<D> {
  let data: AnyTypedArray;
  const Ctor = CTOR[dtype];
  if (ArrayBuffer.isView(values) && values.constructor === Ctor) {
    data = values as AnyTypedArray;
  } else {
    const list = Array.from(values as ArrayLike<number | bigint | boolean>);
    if (dtype === "float16") data = Uint16Array.from(list, (v) => toFloat16Bits(Number(v)));
    else if (dtype === "bfloat16") data = Uint16Array.from(list, (v) => toBFloat16Bits(Number(v)));
    else if (dtype === "int64") data = BigInt64Array.from(list, (v) => BigInt(v as number));
    else if (dtype === "bool") data = Uint8Array.from(list, (v) => (v ? 1 : 0));
    else data = (Ctor as unknown as { from(a: unknown[], f: (v: unknown) => number): AnyTypedArray }).from(list, (v) => Number(v));
  }
  return { dtype, shape: shape ?? [data.length], data: data as TypedArrayFor<D> };
}

export class MoonringError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
    readonly url?: string,
  ) {
    super(message);
    this.name = "MoonringError";
  }
}

export interface CallOptions {
  group?: string;
  tag?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface CollectiveResponse<R> {
  op: string;
  seq: number;
  result: R;
  activeRanks: number[];
  failedRanks: number[];
  contributors: number[];
  elapsedMs: number;
}

export type Wire = "b64" | "json" | "octet";

export interface ClientOptions {
  /** Bearer token (default: process.env.MOONRING_TOKEN). */
  token?: string;
  /** Tensor encoding on the wire (default b64). */
  wire?: Wire;
  /** Extra milliseconds the HTTP request may take beyond timeoutMs (default 10000). */
  httpGraceMs?: number;
  /**
   * A Unix-domain socket of the rank (serve/launch --unix) to send every request over instead
   * of TCP; a base URL "unix:/path/to.sock" means the same.
   */
  unix?: string;
}

interface WireTensor {
  dtype: DType;
  shape: number[];
  data?: unknown[];
  b64?: string;
}

function bytesOf(t: Tensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

function checkTensor(t: Tensor): void {
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (n !== t.data.length) throw new MoonringError(0, "invalid_request", `tensor has ${t.data.length} values but shape ${JSON.stringify(t.shape)} needs ${n}`);
}

export function encode(t: Tensor, wire: Wire): WireTensor {
  checkTensor(t);
  if (wire !== "json") return { dtype: t.dtype, shape: t.shape, b64: (bytesOf(t) as unknown as { toBase64(): string }).toBase64() };
  let data: unknown[];
  if (t.dtype === "int64") data = Array.from(t.data as BigInt64Array, (v) => v.toString());
  else if (t.dtype === "bool") data = Array.from(t.data as Uint8Array, (v) => v !== 0);
  else if (t.dtype === "float16") data = Array.from(t.data as Uint16Array, (v) => jsonFloat(fromFloat16Bits(v)));
  else if (t.dtype === "bfloat16") data = Array.from(t.data as Uint16Array, (v) => jsonFloat(fromBFloat16Bits(v)));
  else if (t.dtype === "float32" || t.dtype === "float64") data = Array.from(t.data as Float64Array, jsonFloat);
  else data = Array.from(t.data as Int32Array);
  return { dtype: t.dtype, shape: t.shape, data };
}

function jsonFloat(v: number): number | string {
  return Number.isFinite(v) ? v : Number.isNaN(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity";
}

/** A tensor over `bytes`: a view when it may keep them (owned, aligned for the dtype), else a copy. */
function fromBytes(dtype: DType, shape: number[], bytes: Uint8Array, owned = false): Tensor {
  const Ctor = CTOR[dtype];
  if (owned && bytes.byteOffset % ITEM[dtype] === 0) {
    return { dtype, shape, data: new Ctor(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength / ITEM[dtype]) as TypedArrayFor<DType> };
  }
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  const data = new Ctor(copy.buffer, 0, copy.byteLength / ITEM[dtype]);
  return { dtype, shape, data: data as TypedArrayFor<DType> };
}

export function decode(w: WireTensor): Tensor {
  if (w.b64 !== undefined) return fromBytes(w.dtype, w.shape, (Uint8Array as unknown as { fromBase64(s: string): Uint8Array }).fromBase64(w.b64));
  const list = w.data ?? [];
  const num = (v: unknown) => (v === "NaN" ? NaN : v === "Infinity" ? Infinity : v === "-Infinity" ? -Infinity : Number(v));
  switch (w.dtype) {
    case "int64":
      return { dtype: w.dtype, shape: w.shape, data: BigInt64Array.from(list, (v) => BigInt(v as string)) };
    case "bool":
      return { dtype: w.dtype, shape: w.shape, data: Uint8Array.from(list, (v) => (v ? 1 : 0)) };
    case "float16":
      return { dtype: w.dtype, shape: w.shape, data: Uint16Array.from(list, (v) => toFloat16Bits(num(v))) };
    case "bfloat16":
      return { dtype: w.dtype, shape: w.shape, data: Uint16Array.from(list, (v) => toBFloat16Bits(num(v))) };
    default: {
      const Ctor = CTOR[w.dtype] as unknown as { from(a: unknown[], f: (v: unknown) => number): AnyTypedArray };
      return { dtype: w.dtype, shape: w.shape, data: Ctor.from(list, num) as TypedArrayFor<DType> };
    }
  }
}

/**
 * The secret `moonring launch` keeps for a job of this user on this host (docs/api-extensions.md
 * "Security"), for a rank URL on loopback; undefined elsewhere (browsers, other hosts, no file).
 */
function launchToken(baseUrl: string): string | undefined {
  try {
    const u = new URL(baseUrl);
    if (!/^(127\.[0-9.]+|localhost|\[::1\])$/.test(u.hostname) || !u.port || typeof require !== "function") return undefined;
    const { readFileSync } = require("node:fs") as typeof import("node:fs");
    const { tmpdir } = require("node:os") as typeof import("node:os");
    const dir = `${process.env.XDG_RUNTIME_DIR || tmpdir()}/moonring-${process.getuid?.()}`;
    const token = readFileSync(`${dir}/launch-${u.port}.token`, "utf8").trim();
    return /^[0-9a-f]{64}$/.test(token) ? token : undefined;
  } catch {
    return undefined;
  }
}

type Result1 = Tensor;
type ResultList = (Tensor | null)[];

export class MoonringClient {
  readonly baseUrl: string;
  private token: string | undefined;
  readonly wire: Wire;
  private graceMs: number;

  /** Added to every fetch: keep-alive (one pooled connection per rank, no handshake per call), unix socket. */
  private readonly transport: { keepalive: true; unix?: string };

  constructor(baseUrl: string, opts: ClientOptions = {}) {
    const unix = opts.unix ?? (baseUrl.startsWith("unix:") ? baseUrl.slice(5) : undefined);
    if (unix !== undefined) baseUrl = "http://localhost";
    this.transport = unix === undefined ? { keepalive: true } : { keepalive: true, unix };
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.token = opts.token ?? (typeof process !== "undefined" ? process.env.MOONRING_TOKEN || launchToken(baseUrl) : undefined);
    this.wire = opts.wire ?? "b64";
    this.graceMs = opts.httpGraceMs ?? 10_000;
  }

  private headers(contentType?: string): Record<string, string> {
    const h: Record<string, string> = {};
    if (contentType) h["content-type"] = contentType;
    if (this.token) h.authorization = `Bearer ${this.token}`;
    return h;
  }

  private signal(opts: CallOptions): AbortSignal | undefined {
    const t = AbortSignal.timeout((opts.timeoutMs ?? 30_000) + this.graceMs);
    return opts.signal ? AbortSignal.any([opts.signal, t]) : t;
  }

  private async check(res: Response, url: string): Promise<void> {
    if (res.ok) return;
    const text = await res.text();
    let e: { code?: string; message?: string } & Record<string, unknown> = {};
    try {
      e = (JSON.parse(text) as { error: typeof e }).error ?? {};
    } catch {
      e = { code: "internal", message: text.slice(0, 200) };
    }
    const { code, message, ...details } = e;
    throw new MoonringError(res.status, code ?? "internal", message ?? `HTTP ${res.status}`, details, url);
  }

  /** POST JSON and return the parsed body (throws MoonringError on non-2xx). */
  async post<T = unknown>(path: string, body: unknown, opts: CallOptions = {}): Promise<T> {
    const url = this.baseUrl + path;
    const res = await fetch(url, { ...this.transport, method: "POST", headers: this.headers("application/json"), body: JSON.stringify(body), signal: this.signal(opts) });
    await this.check(res, url);
    return (await res.json()) as T;
  }

  async get<T = unknown>(path: string): Promise<T> {
    const url = this.baseUrl + path;
    const res = await fetch(url, { ...this.transport, headers: this.headers() });
    await this.check(res, url);
    return (await res.json()) as T;
  }

  health(): Promise<{ status: string; rank: number; world_size: number; ready: boolean; pid: number; state: string }> {
    return this.get("/health");
  }
  cluster(): Promise<{ epoch: number; world_size: number; active_ranks: number[]; ranks: { rank: number; url: string; state: string }[] }> {
    return this.get("/cluster");
  }
  async metrics(): Promise<string> {
    const res = await fetch(this.baseUrl + "/metrics", { ...this.transport, headers: this.headers() });
    await this.check(res, this.baseUrl + "/metrics");
    return res.text();
  }

  /** Waits until /health says ready (polling). */
  async waitReady(timeoutMs = 60_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      try {
        const res = await fetch(this.baseUrl + "/health", { ...this.transport, headers: this.headers() });
        if (res.status === 200) return;
      } catch {
        // not up yet
      }
      if (Date.now() > until) throw new MoonringError(503, "not_ready", `${this.baseUrl} not ready after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Any collective, with the full response (seq, active ranks, contributors, timing). */
  async run<R = unknown>(op: string, args: Record<string, unknown>, opts: CallOptions = {}): Promise<CollectiveResponse<R>> {
    const body: Record<string, unknown> = { ...args };
    if (opts.group !== undefined) body.group = opts.group;
    if (opts.tag !== undefined) body.tag = opts.tag;
    if (opts.timeoutMs !== undefined) body.timeout_ms = opts.timeoutMs;
    const single = body.tensor as Tensor | undefined;
    if (this.wire === "octet" && single && ["allreduce", "reduce", "broadcast", "allgather", "gather"].includes(op)) {
      return this.runOctet<R>(op, body, single, opts);
    }
    if (single) body.tensor = encode(single, this.wire);
    if (Array.isArray(body.tensors)) body.tensors = (body.tensors as (Tensor | null)[]).map((t) => (t ? encode(t, this.wire) : null));
    if (this.wire !== "json" && !single && !body.tensors) body.format = "b64";
    const r = await this.post<{ op: string; seq: number; result: unknown; active_ranks: number[]; failed_ranks?: number[]; contributors?: number[]; elapsed_ms: number }>(
      `/collective/${op}`,
      body,
      opts,
    );
    return {
      op: r.op,
      seq: r.seq,
      result: decodeResult(r.result) as R,
      activeRanks: r.active_ranks,
      failedRanks: r.failed_ranks ?? [],
      contributors: r.contributors ?? [],
      elapsedMs: r.elapsed_ms,
    };
  }

  private async runOctet<R>(op: string, body: Record<string, unknown>, t: Tensor, opts: CallOptions): Promise<CollectiveResponse<R>> {
    checkTensor(t);
    const q = new URLSearchParams({ dtype: t.dtype, shape: t.shape.join(",") });
    for (const k of ["op", "dst", "src", "group", "tag", "timeout_ms"]) if (body[k] !== undefined) q.set(k, String(body[k]));
    const url = `${this.baseUrl}/collective/${op}?${q}`;
    const res = await fetch(url, { ...this.transport, method: "POST", headers: this.headers("application/octet-stream"), body: bytesOf(t), signal: this.signal(opts) });
    await this.check(res, url);
    const bytes = new Uint8Array(await res.arrayBuffer());
    const kind = res.headers.get("x-moonring-result");
    let result: unknown = null;
    if (kind === "tensor") {
      const shapeText = res.headers.get("x-moonring-shape") ?? "";
      // the response's own buffer: a view of it, no copy
      result = fromBytes(res.headers.get("x-moonring-dtype") as DType, shapeText === "" ? [] : shapeText.split(",").map(Number), bytes, true);
    } else if (kind === "list") {
      const dtype = res.headers.get("x-moonring-dtype") as DType;
      const shapes = JSON.parse(res.headers.get("x-moonring-shapes") ?? "[]") as (number[] | null)[];
      let off = 0;
      result = shapes.map((s) => {
        if (!s) return null;
        const len = s.reduce((a, b) => a * b, 1) * ITEM[dtype];
        const out = fromBytes(dtype, s, bytes.subarray(off, off + len), true); // views where aligned
        off += len;
        return out;
      });
    }
    const list = (h: string | null) => (h ? h.split(",").map(Number) : []);
    return {
      op,
      seq: Number(res.headers.get("x-moonring-seq")),
      result: result as R,
      activeRanks: list(res.headers.get("x-moonring-active-ranks")),
      failedRanks: [],
      contributors: list(res.headers.get("x-moonring-contributors")),
      elapsedMs: Number(res.headers.get("x-moonring-elapsed-ms")),
    };
  }

  async allreduce<D extends DType>(t: Tensor<D>, op: RedOp = "sum", opts: CallOptions = {}): Promise<Tensor<D>> {
    return (await this.run<Tensor<D>>("allreduce", { tensor: t, op }, opts)).result;
  }
  async reduce<D extends DType>(t: Tensor<D>, dst: number, op: RedOp = "sum", opts: CallOptions = {}): Promise<Tensor<D> | null> {
    return (await this.run<Tensor<D> | null>("reduce", { tensor: t, dst, op }, opts)).result;
  }
  async broadcast<D extends DType>(t: Tensor<D>, src: number, opts: CallOptions = {}): Promise<Tensor<D>> {
    return (await this.run<Tensor<D>>("broadcast", { tensor: t, src }, opts)).result;
  }
  async allgather(t: Tensor, opts: CallOptions = {}): Promise<ResultList> {
    return (await this.run<ResultList>("allgather", { tensor: t }, opts)).result;
  }
  async gather(t: Tensor, dst: number, opts: CallOptions = {}): Promise<ResultList | null> {
    return (await this.run<ResultList | null>("gather", { tensor: t, dst }, opts)).result;
  }
  /** On src give the N tensors; elsewhere pass null. */
  async scatter(tensors: Tensor[] | null, src: number, opts: CallOptions = {}): Promise<Result1> {
    return (await this.run<Result1>("scatter", tensors ? { src, tensors } : { src }, opts)).result;
  }
  async reduceScatter(tensors: Tensor[], op: RedOp = "sum", opts: CallOptions = {}): Promise<Result1> {
    return (await this.run<Result1>("reduce_scatter", { tensors, op }, opts)).result;
  }
  async alltoall(tensors: Tensor[], opts: CallOptions = {}): Promise<ResultList> {
    return (await this.run<ResultList>("alltoall", { tensors }, opts)).result;
  }
  async barrier(opts: CallOptions = {}): Promise<void> {
    await this.run("barrier", {}, opts);
  }

  /** Resolves once rank dst has the data. */
  async send(t: Tensor, dst: number, opts: { tag?: string; timeoutMs?: number } = {}): Promise<void> {
    const body: Record<string, unknown> = { tensor: encode(t, this.wire === "json" ? "json" : "b64"), dst };
    if (opts.tag !== undefined) body.tag = opts.tag;
    if (opts.timeoutMs !== undefined) body.timeout_ms = opts.timeoutMs;
    await this.post("/p2p/send", body, opts);
  }

  async recv(src: number, opts: { tag?: string; timeoutMs?: number } = {}): Promise<Tensor> {
    const body: Record<string, unknown> = { src, format: this.wire === "json" ? "data" : "b64" };
    if (opts.tag !== undefined) body.tag = opts.tag;
    if (opts.timeoutMs !== undefined) body.timeout_ms = opts.timeoutMs;
    const r = await this.post<{ result: WireTensor }>("/p2p/recv", body, opts);
    return decode(r.result);
  }
}

function decodeResult(r: unknown): unknown {
  if (r === null || r === undefined) return null;
  if (Array.isArray(r)) return r.map((t) => (t ? decode(t as WireTensor) : null));
  return decode(r as WireTensor);
}

/** Plain numbers of a tensor (float16/bfloat16 decoded; int64 as bigint). */
export function values(t: Tensor): (number | bigint)[] {
  if (t.dtype === "float16") return Array.from(t.data as Uint16Array, fromFloat16Bits);
  if (t.dtype === "bfloat16") return Array.from(t.data as Uint16Array, fromBFloat16Bits);
  return Array.from(t.data as Float64Array);
}

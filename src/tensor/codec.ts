// Tensor codec: JSON `data` / `b64` / raw bytes <-> little-endian bytes in (native) memory.
// Values are checked here, element by element, without zod (zod sees metadata only).
// int64 is exact (BigInt); NaN/±Infinity are the strings "NaN", "Infinity", "-Infinity";
// float16/bfloat16 round to nearest even from the float64 value.
import { dtypeInfo, storageArray, type DTypeName } from "../ops/table";
import { InvalidRequest, TooLarge } from "../errors";
import { fromBFloat16Bits, fromFloat16Bits, toBFloat16Bits, toFloat16Bits } from "./half";

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("moonring needs a little-endian host");
}

export type WireFormat = "data" | "b64" | "octet";

export interface TensorMeta {
  dtype: DTypeName;
  shape: number[];
}

/** A tensor as it appears in JSON: {dtype, shape, data} or {dtype, shape, b64}. */
export interface JsonTensor {
  dtype: DTypeName;
  shape: number[];
  data?: unknown;
  b64?: string;
}

const MAX_DIMS = 32;

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Checks a shape (zod already checked types) and the byte limit; returns the byte length. */
export function checkShape(meta: TensorMeta, where: string, maxTensorBytes: number): number {
  if (meta.shape.length > MAX_DIMS) throw new InvalidRequest(`${where}: shape has more than ${MAX_DIMS} dimensions`);
  const n = numel(meta.shape);
  if (!Number.isSafeInteger(n)) throw new TooLarge(`${where}: shape ${JSON.stringify(meta.shape)} is too large`);
  const bytes = n * dtypeInfo(meta.dtype).bytes;
  if (bytes > maxTensorBytes) {
    throw new TooLarge(`${where}: ${bytes} bytes is over the tensor limit of ${maxTensorBytes} bytes`, {
      limit_bytes: maxTensorBytes,
      bytes,
    });
  }
  return bytes;
}

const INT_RANGES: Record<string, [number, number]> = {
  int8: [-128, 127],
  uint8: [0, 255],
  int16: [-32768, 32767],
  int32: [-2147483648, 2147483647],
};
const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
const DECIMAL = /^[+-]?\d+$/;
const FLOAT_TEXT = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function floatValue(v: unknown, where: string, i: number): number {
  if (typeof v === "number") return v;
  if (typeof v === "string") {
    if (v === "NaN" || v === "nan") return NaN;
    if (v === "Infinity" || v === "+Infinity" || v === "inf" || v === "+inf") return Infinity;
    if (v === "-Infinity" || v === "-inf") return -Infinity;
    if (FLOAT_TEXT.test(v)) return Number(v);
  }
  throw new InvalidRequest(
    `${where}.data[${i}]: expected a number or "NaN"/"Infinity"/"-Infinity", got ${preview(v)}`,
  );
}

function intValue(v: unknown, dtype: string, where: string, i: number): number {
  let n: number;
  if (typeof v === "number") n = v;
  else if (typeof v === "string" && DECIMAL.test(v)) n = Number(v);
  else if (typeof v === "boolean") n = v ? 1 : 0;
  else throw new InvalidRequest(`${where}.data[${i}]: expected an integer for ${dtype}, got ${preview(v)}`);
  const [lo, hi] = INT_RANGES[dtype]!;
  if (!Number.isInteger(n) || n < lo || n > hi) {
    throw new InvalidRequest(`${where}.data[${i}]: ${preview(v)} is not an integer in ${dtype} range [${lo}, ${hi}]`);
  }
  return n;
}

function int64Value(v: unknown, where: string, i: number): bigint {
  let b: bigint;
  if (typeof v === "string" && DECIMAL.test(v)) b = BigInt(v);
  else if (typeof v === "number" && Number.isSafeInteger(v)) b = BigInt(v);
  else if (typeof v === "number" && Number.isInteger(v)) {
    // JSON.parse already rounded it (9007199254740993 reads as 9007199254740992): refuse rather
    // than compute with a value the caller did not send.
    throw new InvalidRequest(
      `${where}.data[${i}]: an integer beyond ±(2^53 - 1) loses precision as a JSON number (this one reads as ${preview(v)}); send int64 values that large as decimal strings ("9007199254740993")`,
    );
  }
  else if (typeof v === "boolean") b = v ? 1n : 0n;
  else throw new InvalidRequest(`${where}.data[${i}]: expected an int64 (integer number or decimal string), got ${preview(v)}`);
  if (b < I64_MIN || b > I64_MAX) throw new InvalidRequest(`${where}.data[${i}]: ${preview(v)} is out of int64 range`);
  return b;
}

function boolValue(v: unknown, where: string, i: number): number {
  if (v === true || v === 1) return 1;
  if (v === false || v === 0) return 0;
  throw new InvalidRequest(`${where}.data[${i}]: expected true or false, got ${preview(v)}`);
}

/** A short quote of a bad value; never walks into lists or objects (data may nest 100k deep). */
function preview(v: unknown): string {
  if (Array.isArray(v)) return `a list of ${v.length}`;
  if (v !== null && typeof v === "object") return "an object";
  const s = typeof v === "string" ? JSON.stringify(v.length > 40 ? v.slice(0, 40) : v) : String(v);
  return typeof v === "string" && v.length > 40 ? s.slice(0, -1) + '..."' : s;
}

/** Typed view of `bytes` for `dtype` (bytes.byteOffset must be aligned to the item size). */
function typedView(dtype: DTypeName, bytes: Uint8Array) {
  const { buffer, byteOffset } = bytes;
  return new (storageArray(dtype))(buffer, byteOffset, bytes.byteLength / dtypeInfo(dtype).bytes);
}

/** Writes the JSON `data` list (flat, row-major) into `target` (exactly numel * itemsize bytes). */
export function writeData(dtype: DTypeName, data: unknown, target: Uint8Array, where: string): void {
  if (!Array.isArray(data)) {
    // A scalar may be given bare: {"shape": [], "data": 3}
    if (data !== null && typeof data !== "object" && target.byteLength === dtypeInfo(dtype).bytes) {
      data = [data];
    } else {
      throw new InvalidRequest(`${where}.data: expected a flat list of values`);
    }
  }
  const list = data as unknown[];
  const n = target.byteLength / dtypeInfo(dtype).bytes;
  if (list.length !== n) {
    throw new InvalidRequest(`${where}: data has ${list.length} values but shape needs ${n}`, {
      expected_count: n,
      got_count: list.length,
    });
  }
  switch (dtype) {
    case "float32":
    case "float64": {
      const view = typedView(dtype, target) as Float32Array | Float64Array;
      for (let i = 0; i < n; i++) {
        const v = list[i];
        view[i] = typeof v === "number" ? v : floatValue(v, where, i);
      }
      return;
    }
    case "float16": {
      const F16 = (globalThis as unknown as { Float16Array?: Float32ArrayConstructor }).Float16Array;
      if (F16) {
        const view = new F16(target.buffer, target.byteOffset, n);
        for (let i = 0; i < n; i++) {
          const v = list[i];
          view[i] = typeof v === "number" ? v : floatValue(v, where, i);
        }
      } else {
        const view = typedView(dtype, target) as Uint16Array;
        for (let i = 0; i < n; i++) view[i] = toFloat16Bits(floatValue(list[i], where, i));
      }
      return;
    }
    case "bfloat16": {
      const view = typedView(dtype, target) as Uint16Array;
      for (let i = 0; i < n; i++) view[i] = toBFloat16Bits(floatValue(list[i], where, i));
      return;
    }
    case "int8":
    case "uint8":
    case "int16":
    case "int32": {
      const view = typedView(dtype, target) as Int32Array;
      const [lo, hi] = INT_RANGES[dtype]!;
      for (let i = 0; i < n; i++) {
        const v = list[i];
        view[i] = typeof v === "number" && Number.isInteger(v) && v >= lo && v <= hi ? v : intValue(v, dtype, where, i);
      }
      return;
    }
    case "int64": {
      const view = typedView(dtype, target) as BigInt64Array;
      for (let i = 0; i < n; i++) view[i] = int64Value(list[i], where, i);
      return;
    }
    case "bool": {
      for (let i = 0; i < n; i++) target[i] = boolValue(list[i], where, i);
      return;
    }
  }
}


/** Writes base64 `text` into `target`; its decoded length must be exactly target.byteLength. */
export function writeB64(text: unknown, target: Uint8Array, where: string): void {
  if (typeof text !== "string") throw new InvalidRequest(`${where}.b64: expected a base64 string`);
  let res: { read: number; written: number };
  try {
    res = (target as unknown as { setFromBase64(s: string): { read: number; written: number } }).setFromBase64(text);
  } catch (e) {
    throw new InvalidRequest(`${where}.b64: not valid base64 (${(e as Error).message})`);
  }
  const decodedLen = base64DecodedLength(text);
  if (res.written !== target.byteLength || decodedLen !== target.byteLength) {
    throw new InvalidRequest(
      `${where}: b64 holds ${decodedLen} bytes but dtype and shape need ${target.byteLength}`,
      { expected_bytes: target.byteLength, got_bytes: decodedLen },
    );
  }
}

function base64DecodedLength(text: string): number {
  let len = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c !== 61 /* = */ && c !== 32 && c !== 10 && c !== 13 && c !== 9) len++;
  }
  return Math.floor((len * 3) / 4);
}

/** Writes a JSON tensor's values (data or b64) into `target`. */
export function writeTensor(t: JsonTensor, target: Uint8Array, where: string): "data" | "b64" {
  const hasData = t.data !== undefined;
  const hasB64 = t.b64 !== undefined;
  if (hasData === hasB64) {
    throw new InvalidRequest(`${where}: give exactly one of "data" or "b64"`);
  }
  if (hasB64) {
    writeB64(t.b64, target, where);
    return "b64";
  }
  writeData(t.dtype, t.data, target, where);
  return "data";
}

/** Bytes -> JSON values (flat list). */
export function readData(dtype: DTypeName, bytes: Uint8Array): (number | string | boolean)[] {
  const n = bytes.byteLength / dtypeInfo(dtype).bytes;
  const aligned = bytes.byteOffset % dtypeInfo(dtype).bytes === 0 ? bytes : bytes.slice();
  switch (dtype) {
    case "float32":
    case "float64":
      return floatList(typedView(dtype, aligned) as Float32Array);
    case "float16": {
      const F16 = (globalThis as unknown as { Float16Array?: Float32ArrayConstructor }).Float16Array;
      if (F16) return floatList(new F16(aligned.buffer, aligned.byteOffset, n));
      const view = typedView(dtype, aligned) as Uint16Array;
      const out = new Array<number | string>(n);
      for (let i = 0; i < n; i++) out[i] = floatOut(fromFloat16Bits(view[i]!));
      return out;
    }
    case "bfloat16": {
      const view = typedView(dtype, aligned) as Uint16Array;
      const out = new Array<number | string>(n);
      for (let i = 0; i < n; i++) out[i] = floatOut(fromBFloat16Bits(view[i]!));
      return out;
    }
    case "int64": {
      const view = typedView(dtype, aligned) as BigInt64Array;
      const out = new Array<string>(n);
      for (let i = 0; i < n; i++) out[i] = view[i]!.toString();
      return out;
    }
    case "bool": {
      const out = new Array<boolean>(n);
      for (let i = 0; i < n; i++) out[i] = aligned[i] !== 0;
      return out;
    }
    default:
      return Array.from(typedView(dtype, aligned) as Int32Array);
  }
}

function floatList(view: Float32Array | Float64Array): (number | string)[] {
  const out = Array.from(view) as (number | string)[];
  for (let i = 0; i < out.length; i++) {
    const v = out[i] as number;
    if (v - v !== 0) out[i] = floatOut(v);
  }
  return out;
}

function floatOut(v: number): number | string {
  if (v - v === 0) return v;
  return v !== v ? "NaN" : v > 0 ? "Infinity" : "-Infinity";
}

/** Widest JSON text of one element, its comma included ("-2.2250738585072014e-308,", "\"-9223372036854775808\","). */
const JSON_ELEMENT_CHARS_MAX: Record<DTypeName, number> = {
  float16: 25,
  bfloat16: 25,
  float32: 25,
  float64: 25,
  int8: 5,
  uint8: 4,
  int16: 7,
  int32: 12,
  int64: 23,
  bool: 6,
};

/** Upper bound of the text encodeTensor makes for these bytes (exact for b64), without making it. */
export function encodedTensorCharsMax(dtype: DTypeName, byteLength: number, format: WireFormat): number {
  if (format === "b64") return 4 * Math.ceil(byteLength / 3);
  return (byteLength / dtypeInfo(dtype).bytes) * JSON_ELEMENT_CHARS_MAX[dtype];
}

/** A tensor as JSON in the request's format (`b64` in -> `b64` out). */
export function encodeTensor(dtype: DTypeName, shape: number[], bytes: Uint8Array, format: WireFormat): JsonTensor {
  if (format === "b64") return { dtype, shape, b64: (bytes as unknown as { toBase64(): string }).toBase64() };
  return { dtype, shape, data: readData(dtype, bytes) };
}

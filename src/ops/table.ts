// The op x dtype table (src/ops/table.json) as TypeScript: names, codes, validation.
// The same JSON generates the Zig enums and the CUDA kernel instantiations at build time.
import table from "./table.json" with { type: "json" };

export type DTypeKind = "float" | "int" | "bool";
import type { CollectiveName, DTypeName, RedOpName } from "./names";

export type { CollectiveName, DTypeName, RedOpName };
/** The collectives of POST /collective/{op} (point to point is not one: table.json "rest"). */
export type CollectiveOp = Exclude<CollectiveName, "send" | "recv">;

export interface DTypeInfo { name: DTypeName; short: string; code: number; bytes: number; kind: DTypeKind }
export interface RedOpInfo { name: RedOpName; code: number; kinds: DTypeKind[] }

export const dtypes: readonly DTypeInfo[] = table.dtypes as DTypeInfo[];
export const redops: readonly RedOpInfo[] = table.redops as RedOpInfo[];
/** Where a collective's part is present: on every member, or on the root only. */
export type Presence = "all" | "root";
/** One rank's native buffer in elements: count, count x members, alltoall's counts, nothing. */
export type NativeShape = "count" | "count_n" | "counts" | "none";

/** What a collective is (table.json "collective_fields" says what each field means). */
export interface CollectiveInfo {
  name: CollectiveName;
  code: number;
  rest: boolean;
  root: "dst" | "src" | null;
  reduces: boolean;
  input: "tensor" | "tensors" | "none";
  input_on: Presence;
  output: "tensor" | "tensors" | "none";
  output_on: Presence;
  octet: boolean;
  send: NativeShape;
  send_on: Presence;
  recv: NativeShape;
  recv_on: Presence;
  /** The send buffer may be omitted: the data is read from recv (broadcast in place). */
  send_in_recv: boolean;
  /** The links path's algorithm file (zig/src/algo/<algorithm>.zig, registered in algorithms.zig). */
  algorithm: string;
  /** The same-host board backend / the CUDA IPC direct backend runs it. */
  board: boolean;
  cuda_direct: boolean;
  /** What each rank gets (API docs). */
  summary: string;
}

export const collectives: readonly CollectiveInfo[] = table.collectives as CollectiveInfo[];

export const dtypeNames = dtypes.map((d) => d.name) as [DTypeName, ...DTypeName[]];
export const redopNames = redops.map((r) => r.name) as [RedOpName, ...RedOpName[]];

const dtypeByName = new Map(dtypes.map((d) => [d.name, d]));
const redopByName = new Map(redops.map((r) => [r.name, r]));
const collectiveByName = new Map(collectives.map((c) => [c.name, c]));

export function dtypeInfo(name: DTypeName): DTypeInfo {
  const info = dtypeByName.get(name);
  if (!info) throw new Error(`unknown dtype ${name}`);
  return info;
}

/** The typed arrays dtypes are stored in. */
export type StorageArray = Float32Array | Float64Array | Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | Uint32Array | BigInt64Array | BigUint64Array;
export interface StorageArrayCtor {
  new (n: number): StorageArray;
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): StorageArray;
}

/** By kind and element bytes; 16-bit floats are stored as raw Uint16 bits, bool as Uint8. */
const STORAGE: Record<DTypeKind | "uint", Record<number, StorageArrayCtor>> = {
  float: { 2: Uint16Array, 4: Float32Array, 8: Float64Array },
  int: { 1: Int8Array, 2: Int16Array, 4: Int32Array, 8: BigInt64Array as unknown as StorageArrayCtor },
  uint: { 1: Uint8Array, 2: Uint16Array, 4: Uint32Array, 8: BigUint64Array as unknown as StorageArrayCtor },
  bool: { 1: Uint8Array },
};

function storageOf(d: DTypeInfo): StorageArrayCtor {
  // an int dtype named uint* is unsigned (uint8, ...)
  const ctor = STORAGE[d.kind === "int" && d.name.startsWith("uint") ? "uint" : d.kind][d.bytes];
  if (!ctor) throw new Error(`src/ops/table.json: no typed array for ${d.kind} dtype ${d.name} of ${d.bytes} bytes`);
  return ctor;
}

const storageByName = new Map(dtypes.map((d) => [d.name, storageOf(d)]));

/** The typed array a dtype's elements are stored in, from the table's kind and bytes (codec, client, bench). */
export function storageArray(name: DTypeName): StorageArrayCtor {
  const ctor = storageByName.get(name);
  if (!ctor) throw new Error(`unknown dtype ${name}`);
  return ctor;
}

export function redopInfo(name: RedOpName): RedOpInfo {
  const info = redopByName.get(name);
  if (!info) throw new Error(`unknown reduce op ${name}`);
  return info;
}

export function collectiveInfo(name: CollectiveName): CollectiveInfo {
  const info = collectiveByName.get(name);
  if (!info) throw new Error(`unknown collective ${name}`);
  return info;
}

export function collectiveCode(name: CollectiveName): number {
  return collectiveInfo(name).code;
}

/** The REST field naming a collective's root ("dst" or "src"; "dst" for unrooted ones). */
export function rootField(name: CollectiveName): "dst" | "src" {
  return collectiveInfo(name).root ?? "dst";
}

/** The collectives of POST /collective/{op}, in table order. */
export const collectiveOps = collectives.filter((c) => c.rest).map((c) => c.name as CollectiveOp);

/** null when `redop` is defined for `dtype`, else why not (for a 400 message). */
export function redopRejection(redop: RedOpName, dtype: DTypeName): string | null {
  const kind = dtypeInfo(dtype).kind;
  if (redopInfo(redop).kinds.includes(kind)) return null;
  if (redop === "avg") return `reduce op avg needs a floating dtype, got ${dtype}`;
  return `reduce op ${redop} is not defined for ${kind} dtype ${dtype}`;
}

// zod schemas for request metadata. Tensor values (`data`, `b64`) are NOT checked by zod:
// the codec writes them straight into native memory. Schemas are built once at module load
// (no per-call compilation); /openapi.json is generated from them.
import { z } from "zod";
import { collectiveInfo, collectiveOps, dtypeNames, redopNames, type CollectiveInfo, type CollectiveOp } from "../ops/table";
import { InvalidRequest } from "../errors";
import { WORLD_SIZE_MAX } from "../limits";

export const DEFAULT_TIMEOUT_MS = 30_000;
export const MAX_TIMEOUT_MS = 24 * 3600 * 1000;

export const dtypeSchema = z.enum(dtypeNames).meta({ description: "element type" });
export const redopSchema = z.enum(redopNames).meta({
  description: "reduce op: sum, prod, min, max, avg (floating dtypes), band, bor, bxor (integer and bool dtypes)",
});

export const tensorSchema = z
  .strictObject({
    dtype: dtypeSchema,
    shape: z.array(z.number().int().min(0)).meta({ description: "dimensions; [] is a scalar" }),
    data: z
      .unknown()
      .optional()
      .meta({
        description:
          'flat row-major values; int64 as numbers or decimal strings (returned as strings); "NaN", "Infinity", "-Infinity" for non-finite floats; true/false for bool',
        type: "array",
        items: { type: ["number", "string", "boolean"] },
      }),
    b64: z.string().optional().meta({ description: "little-endian bytes, base64 (instead of data); a request with b64 gets b64 back" }),
  })
  .meta({ id: "Tensor" });

const rank = z.number().int().min(0);
const common = {
  group: z.string().min(1).max(256).optional().meta({ description: 'matching group (default "world")' }),
  tag: z.string().max(256).optional().meta({ description: "match across ranks by tag instead of by call order" }),
  timeout_ms: z.number().int().min(1).max(MAX_TIMEOUT_MS).optional().meta({ description: `default ${DEFAULT_TIMEOUT_MS}` }),
  format: z
    .enum(["data", "b64"])
    .optional()
    .meta({ description: "extension: result encoding when this rank sends no tensor (scatter on non-src ranks); otherwise the input's encoding is used" }),
};
const tensorList = z
  .array(tensorSchema.nullable())
  .meta({ description: "one tensor per rank (index = rank); null allowed for inactive slots" });

/** A collective's body schema, from what the table says it is (root field, reduce op, inputs). */
function collectiveSchema(info: CollectiveInfo): z.ZodObject {
  const fields: Record<string, z.ZodType> = {};
  if (info.input === "tensor") fields.tensor = tensorSchema;
  if (info.input === "tensors") {
    fields.tensors = info.input_on === "root" ? tensorList.optional().meta({ description: `N tensors, on ${info.root} only` }) : tensorList;
  }
  if (info.root) fields[info.root] = rank;
  if (info.reduces) fields.op = redopSchema.optional();
  return z.strictObject({ ...fields, ...common });
}

export const collectiveSchemas = Object.fromEntries(
  collectiveOps.map((op) => [op, collectiveSchema(collectiveInfo(op))]),
) as Record<CollectiveOp, z.ZodObject>;

export type { CollectiveOp };

// ---- fast check of the common single-tensor bodies ----
// A body that passes quickCollectiveBody() is exactly one the zod schema accepts, unchanged (no
// unknown keys to strip): the route uses it as is and skips zod. Anything else (lists, extra
// keys, any doubt) goes through zod, which also words the errors.
const dtypeSet = new Set<string>(dtypeNames);
const redopSet = new Set<string>(redopNames);
/** Single-tensor (and no-tensor) bodies: the keys their schema has. */
const QUICK_KEYS: Partial<Record<CollectiveOp, ReadonlySet<string>>> = Object.fromEntries(
  collectiveOps
    .filter((op) => collectiveInfo(op).input !== "tensors")
    .map((op) => [op, new Set(Object.keys(collectiveSchemas[op].shape))]),
);

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype;
}

function isIndex(v: unknown): boolean {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function quickTensor(t: unknown): boolean {
  if (!isPlainObject(t)) return false;
  for (const k in t) if (k !== "dtype" && k !== "shape" && k !== "data" && k !== "b64") return false;
  if (typeof t.dtype !== "string" || !dtypeSet.has(t.dtype)) return false;
  const shape = t.shape;
  if (!Array.isArray(shape)) return false;
  for (let i = 0; i < shape.length; i++) if (!isIndex(shape[i])) return false;
  return t.b64 === undefined || typeof t.b64 === "string";
}

export function quickCollectiveBody(op: CollectiveOp, raw: unknown): boolean {
  const keys = QUICK_KEYS[op];
  if (!keys || !isPlainObject(raw)) return false;
  for (const k in raw) if (!keys.has(k)) return false;
  if (keys.has("tensor") && !quickTensor(raw.tensor)) return false;
  if (raw.op !== undefined && (typeof raw.op !== "string" || !redopSet.has(raw.op))) return false;
  if (keys.has("dst") && !isIndex(raw.dst)) return false;
  if (keys.has("src") && !isIndex(raw.src)) return false;
  const g = raw.group;
  if (g !== undefined && (typeof g !== "string" || g.length < 1 || g.length > 256)) return false;
  if (raw.tag !== undefined && (typeof raw.tag !== "string" || raw.tag.length > 256)) return false;
  const t = raw.timeout_ms;
  if (t !== undefined && (typeof t !== "number" || !Number.isSafeInteger(t) || t < 1 || t > MAX_TIMEOUT_MS)) return false;
  return raw.format === undefined || raw.format === "data" || raw.format === "b64";
}
export { collectiveOps };

export const p2pSendSchema = z.strictObject({
  tensor: tensorSchema,
  dst: rank,
  tag: z.string().max(256).optional(),
  timeout_ms: common.timeout_ms,
});
export const p2pRecvSchema = z.strictObject({
  src: rank,
  tag: z.string().max(256).optional(),
  timeout_ms: common.timeout_ms,
  format: z.enum(["data", "b64"]).optional().meta({ description: "extension: result encoding (default data)" }),
});

// ---- responses (documentation) ----
export const collectiveResponseSchema = z
  .object({
    op: z.string(),
    seq: z.number().int(),
    result: z.union([tensorSchema, z.array(tensorSchema.nullable()), z.null()]),
    active_ranks: z.array(z.number().int()),
    failed_ranks: z.array(z.number().int()),
    contributors: z.array(z.number().int()),
    group: z
      .object({ name: z.string(), ranks: z.array(z.number().int()) })
      .optional()
      .meta({ description: "calls on a named group: the group and its global ranks" }),
    elapsed_ms: z.number(),
  })
  .meta({ id: "CollectiveResponse" });

export const errorSchema = z
  .object({
    error: z.looseObject({
      code: z.enum(["invalid_request", "unauthorized", "not_found", "collective_mismatch", "too_large", "too_many_requests", "cancelled", "not_ready", "timeout", "peer_failed", "master_lost", "conflict", "internal"]),
      message: z.string(),
    }),
  })
  .meta({ id: "Error" });

/** Parses with a prebuilt schema; zod issues become one readable 400 message. */
export function parseOrThrow<T extends z.ZodType>(schema: T, value: unknown, where = "body"): z.output<T> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  throw new InvalidRequest(formatIssues(r.error.issues, where), {
    issues: r.error.issues.slice(0, 10).map((i) => ({ path: i.path.join("."), message: i.message })),
  });
}

export function formatIssues(issues: readonly z.core.$ZodIssue[], where: string): string {
  return issues
    .slice(0, 5)
    .map((i) => {
      const path = i.path.length ? i.path.map(String).join(".") : where;
      if (i.code === "invalid_value" && i.path[i.path.length - 1] === "dtype") {
        return `${path}: unknown dtype; expected one of ${dtypeNames.join(", ")}`;
      }
      if (i.code === "invalid_value" && i.path[i.path.length - 1] === "op") {
        return `${path}: unknown reduce op; expected one of ${redopNames.join(", ")}`;
      }
      return `${path}: ${i.message}`;
    })
    .join("; ");
}

// ---- membership and groups (docs/api-extensions.md) ----
export const membershipChangeSchema = z
  .strictObject({ ranks: z.array(rank).min(1).max(WORLD_SIZE_MAX).meta({ description: "global ranks" }) })
  .meta({ id: "MembershipChange" });
export const membershipAnswerSchema = z
  .object({ epoch: z.number().int(), active_ranks: z.array(z.number().int()).meta({ description: "0/1 per slot" }) })
  .meta({ id: "MembershipAnswer" });
export const groupSchema = z
  .strictObject({
    name: z.string().min(1).max(256).meta({ description: 'group name ("world" is reserved)' }),
    ranks: z.array(rank).min(1).max(WORLD_SIZE_MAX).meta({ description: "global ranks; group rank i = the i-th smallest" }),
  })
  .meta({ id: "Group" });

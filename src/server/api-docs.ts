// What /openapi.json says about each route, keyed by "METHOD /hono/path" exactly as the route
// registers. openapi.ts walks the app's routes (app.routes) and looks each one up here, so the
// document lists what the app serves and nothing else; request schemas are the ones the routes
// parse with. A route missing here still appears (marked x-moonring-undocumented) and
// tests/unit/openapi.test.ts fails until it is described.
import { z } from "zod";
import { p2pOfferSchema, registerSchema } from "../control/wire";
import { collectiveInfo } from "../ops/table";
import { bufferCallSchema, createSchema as createBufferSchema } from "./routes/buffers";
import {
  collectiveOps,
  collectiveResponseSchema,
  collectiveSchemas,
  groupSchema,
  membershipAnswerSchema,
  membershipChangeSchema,
  p2pRecvSchema,
  p2pSendSchema,
  tensorSchema,
  type CollectiveOp,
} from "./schemas";

export interface ResponseDoc {
  description: string;
  /** JSON body schema (output); none: the description says it all. */
  schema?: z.ZodType;
  /** Another content type than JSON (text/plain, text/html, text/event-stream, octet-stream). */
  contentType?: string;
  /** Also answers application/octet-stream (Accept: application/octet-stream). */
  octet?: boolean;
}

export interface RouteDoc {
  operationId: string;
  summary: string;
  description?: string;
  tag: "collectives" | "p2p" | "buffers" | "membership" | "operations" | "internal";
  /** Path parameters: name -> description (the names come from the route's path). */
  params?: Record<string, string>;
  query?: Record<string, { description: string; schema: Record<string, unknown> }>;
  body?: { schema: z.ZodType; octet?: string; optional?: boolean };
  responses: Record<string, ResponseDoc>;
  /** Error statuses this route answers with the Error schema. */
  errors?: number[];
  /** No bearer token needed (probes). */
  public?: boolean;
}

/** A route whose path parameter takes a fixed set of values gets one document path per value. */
export interface ExpandedRouteDoc {
  param: string;
  values: readonly string[];
  doc: (value: string) => RouteDoc;
}

const rankIndex = z.number().int().min(0);
const intList = z.array(z.number().int());

// ---- responses (documentation only: what the routes answer) ----
export const bufferInfoSchema = z
  .object({
    buffer: z.string().meta({ description: "buffer id: pass it as {\"buffer\": id} to collectives and p2p" }),
    dtype: z.string(),
    shape: z.array(z.number().int()),
    device: z.string().meta({ description: '"cpu" or "cuda:N"' }),
    bytes: z.number().int(),
  })
  .meta({ id: "BufferInfo" });
const bufferWithValues = bufferInfoSchema.extend({ data: tensorSchema.shape.data, b64: tensorSchema.shape.b64 });
const deviceBufferIpc = bufferInfoSchema.extend({
  kind: z.literal("cuda_ipc"),
  handle: z.string().meta({ description: "cudaIpcMemHandle_t, base64" }),
  offset: z.number().int(),
  device_index: z.number().int(),
  rank: z.number().int(),
  pid: z.number().int(),
});
const hostBufferIpc = bufferInfoSchema.extend({
  device: z.literal("cpu"),
  kind: z.literal("shm"),
  path: z.string().meta({ description: "the /dev/shm file to map (mode 0600, or 0660 with serve --shm-group)" }),
  offset: z.number().int().meta({ description: "byte offset of the buffer in the file" }),
  rank: z.number().int(),
  pid: z.number().int(),
});
const bufferIpc = z.union([deviceBufferIpc, hostBufferIpc]);
const bufferCollectiveAnswer = z
  .object({
    op: z.string(),
    seq: z.number().int(),
    result: bufferInfoSchema.nullable().meta({ description: "the buffer that holds the result (out, or buffer in place); null where this rank gets none" }),
    active_ranks: intList,
    failed_ranks: intList,
    contributors: intList,
    elapsed_ms: z.number(),
  })
  .meta({ id: "BufferCollectiveResponse" });
const collectiveAnswer = z.union([collectiveResponseSchema, bufferCollectiveAnswer]);
const sendAnswer = z.object({ ok: z.literal(true), dst: z.number().int(), tag: z.string(), buffer: z.string().optional(), elapsed_ms: z.number() });
const recvAnswer = z.object({
  result: z.union([tensorSchema, bufferInfoSchema]).meta({ description: "the tensor, or with {\"buffer\": id} the buffer it landed in" }),
  src: z.number().int(),
  tag: z.string(),
  elapsed_ms: z.number(),
});
export const namedGroupSchema = z
  .object({
    name: z.string(),
    ranks: intList.meta({ description: "global ranks, ascending: group rank i = ranks[i]" }),
    size: z.number().int(),
    active_ranks: intList.meta({ description: "0/1 per member" }),
    group_rank: z.number().int().nullable().meta({ description: "this rank's index in the group; null when not a member" }),
  })
  .meta({ id: "NamedGroup" });
// With MOONRING_TOKEN set, a caller without it gets status, ready and state only.
const healthAnswer = z.looseObject({
  status: z.enum(["ok", "starting", "failed", "left"]),
  rank: z.number().int().optional(),
  world_size: z.number().int().optional(),
  ready: z.boolean(),
  pid: z.number().int().optional(),
  state: z.string(),
  epoch: z.number().int().optional(),
  error: z.string().optional(),
});
const livenessAnswer = z.object({ live: z.boolean(), rank: z.number().int().optional(), state: z.string(), pid: z.number().int().optional(), error: z.string().optional() });
const clusterAnswer = z
  .looseObject({
    epoch: z.number().int(),
    world_size: z.number().int(),
    active_ranks: intList,
    ranks: z.array(
      z.looseObject({
        rank: z.number().int(),
        url: z.string().nullable(),
        state: z.string(),
        active: z.boolean(),
        pid: z.number().int().nullable(),
        reason: z.string().optional(),
      }),
    ),
    groups: z.record(z.string(), intList),
    data_plane: z
      .object({
        rank: z.number().int(),
        verbs: z
          .object({
            usable: z.boolean(),
            detail: z.string(),
            rendezvous_direct_bytes: z.number().int(),
            rendezvous_staged_bytes: z.number().int(),
            gpu: z.string(),
            gpu_direct_bytes: z.number().int(),
            gpu_registrations: z.number().int(),
            devices: z.array(z.object({ name: z.string(), bytes: z.number().int() })),
          })
          .meta({
            description:
              "RDMA verbs on this rank: the device in use, or why not; bytes received zero-copy (RDMA read into the posted receive) and staged (into the stash); how GPU memory is registered (dma-buf, nvidia-peermem) or why device ops use host staging, and the bytes moved by RDMA straight between device buffers; each NIC in use (several: large messages striped over them) and the bytes its queue pairs moved",
          }),
        links: z
          .array(z.object({ peer: z.number().int(), transport: z.string() }))
          .meta({ description: "this rank's live data-plane links: the transport (tcp, shm, verbs) to each peer it has exchanged data with" }),
      })
      .optional()
      .meta({ description: "this rank's data plane (native engines only)" }),
  })
  .meta({ id: "Cluster" });
const anyJson = z.looseObject({});

const COMMON_ERRORS = [400, 401, 413, 503];
// 404: a {"buffer": id} body naming no buffer of this rank; 429: the rank holds its limit of
// pending calls; 499: the client went away first (nobody reads it; listed for completeness).
const COLLECTIVE_ERRORS = [400, 401, 404, 409, 413, 429, 499, 503, 504];

const COLLECTIVE_SUMMARIES = Object.fromEntries(collectiveOps.map((op) => [op, collectiveInfo(op).summary])) as Record<CollectiveOp, string>;

function collectiveDoc(op: string): RouteDoc {
  const o = op as CollectiveOp;
  const schema = collectiveInfo(o).input === "none" ? collectiveSchemas[o] : z.union([collectiveSchemas[o], bufferCallSchema]);
  return {
    operationId: op,
    tag: "collectives",
    summary: `${op}: ${COLLECTIVE_SUMMARIES[o]}`,
    description:
      "Every rank of the group makes the same call. Untagged calls match in arrival order per group; tagged calls by (group, tag). " +
      'Extensions: {"buffer": id} (and "out") instead of tensors works in place on buffers of POST /buffers; ' +
      "single-tensor ops also accept application/octet-stream bodies (metadata in query or x-moonring-* headers) and answer in kind.",
    body: { schema, octet: "the tensor's little-endian bytes; dtype, shape and the call's fields in the query or x-moonring-* headers" },
    responses: { "200": { description: "done on this rank", schema: collectiveAnswer, octet: true } },
    errors: COLLECTIVE_ERRORS,
  };
}

export const expandedRouteDocs: Record<string, ExpandedRouteDoc> = {
  "POST /collective/:op": { param: "op", values: collectiveOps, doc: collectiveDoc },
};

const bufferId = { id: "buffer id (from POST /buffers)" };

export const routeDocs: Record<string, RouteDoc> = {
  "GET /health": {
    operationId: "health",
    tag: "operations",
    public: true,
    summary: "readiness: 200 once rendezvous is complete and this rank is an active member, 503 before and after",
    responses: { "200": { description: "ready", schema: healthAnswer }, "503": { description: "not ready (starting, awaiting, failed, left)", schema: healthAnswer } },
  },
  "GET /livez": {
    operationId: "liveness",
    tag: "operations",
    public: true,
    summary: "liveness: 200 unless this rank can never serve again (removed as failed, rendezvous failed, coordinator lost): restart it then",
    responses: {
      "200": { description: "alive (also while starting, awaiting activation or left)", schema: livenessAnswer },
      "503": { description: "failed for good; error says why", schema: livenessAnswer },
    },
  },
  "GET /cluster": {
    operationId: "cluster",
    tag: "operations",
    summary: "membership: epoch, world_size, active_ranks, every rank's state, named groups",
    responses: { "200": { description: "membership as this rank knows it", schema: clusterAnswer } },
    errors: [401],
  },
  "GET /metrics": {
    operationId: "metrics",
    tag: "operations",
    summary: "Prometheus text exposition (version 0.0.4)",
    responses: { "200": { description: "metrics", contentType: "text/plain" } },
    errors: [401],
  },
  "GET /debug/recent": {
    operationId: "debug_recent",
    tag: "operations",
    summary: "the last collectives on this rank (seq, op, sizes, timing, outcome); rank 0 adds those pending",
    query: { limit: { description: "at most this many (1..1000, default 100)", schema: { type: "integer", minimum: 1, maximum: 1000 } } },
    responses: { "200": { description: "newest first", schema: anyJson } },
    errors: [401],
  },
  "GET /openapi.json": {
    operationId: "openapi",
    tag: "operations",
    summary: "this document (OpenAPI 3.1), generated from the app's routes",
    responses: { "200": { description: "OpenAPI 3.1", schema: anyJson } },
    errors: [401],
  },
  "GET /docs": {
    operationId: "api_reference",
    tag: "operations",
    summary: "the API reference: this document as an HTML page (no external assets)",
    responses: { "200": { description: "HTML", contentType: "text/html" } },
    errors: [401],
  },
  "GET /dashboard": {
    operationId: "dashboard",
    tag: "operations",
    summary: "the live dashboard (HTML); ?token=T stores the token in an HttpOnly cookie and redirects here",
    query: { token: { description: "the bearer token, for browsers (kept in the moonring_token cookie)", schema: { type: "string" } } },
    responses: { "200": { description: "HTML", contentType: "text/html" }, "303": { description: "token stored: redirect to /dashboard" } },
    errors: [401],
  },
  "GET /dashboard/app.js": {
    operationId: "dashboard_script",
    tag: "operations",
    summary: "the dashboard's script",
    responses: { "200": { description: "JavaScript", contentType: "text/javascript" } },
    errors: [401],
  },
  "GET /dashboard/state": {
    operationId: "dashboard_state",
    tag: "operations",
    summary: "one dashboard snapshot: ranks, membership events, collectives in flight, recent ops, failures",
    responses: { "200": { description: "snapshot", schema: anyJson } },
    errors: [401],
  },
  "GET /dashboard/events": {
    operationId: "dashboard_events",
    tag: "operations",
    summary: "dashboard snapshots as Server-Sent Events (event: snapshot): at once on membership changes, else every 500 ms",
    responses: { "200": { description: "event stream", contentType: "text/event-stream" } },
    errors: [401],
  },
  "POST /p2p/send": {
    operationId: "p2p_send",
    tag: "p2p",
    summary: "send a tensor to rank dst; returns once the receiver has the data",
    body: { schema: z.union([p2pSendSchema, bufferCallSchema]), octet: "the tensor's bytes; dtype, shape, dst, tag, timeout_ms in the query or x-moonring-* headers" },
    responses: { "200": { description: "delivered", schema: sendAnswer } },
    errors: COLLECTIVE_ERRORS,
  },
  "POST /p2p/recv": {
    operationId: "p2p_recv",
    tag: "p2p",
    summary: "receive the next tensor from rank src (same tag: in order)",
    body: { schema: z.union([p2pRecvSchema, bufferCallSchema]) },
    responses: { "200": { description: "the tensor", schema: recvAnswer, octet: true } },
    errors: COLLECTIVE_ERRORS,
  },
  "POST /membership/activate": {
    operationId: "membership_activate",
    tag: "membership",
    summary: "admit ranks waiting in state awaiting (serve --join); answers once every active rank applied the new view",
    body: { schema: membershipChangeSchema },
    responses: { "200": { description: "the new view", schema: membershipAnswerSchema } },
    errors: [400, 401, 409, 503, 504],
  },
  "POST /membership/deactivate": {
    operationId: "membership_deactivate",
    tag: "membership",
    summary: "remove ranks gracefully (state left; not rank 0); answers once every active rank applied the new view",
    body: { schema: membershipChangeSchema },
    responses: { "200": { description: "the new view", schema: membershipAnswerSchema } },
    errors: [400, 401, 409, 503, 504],
  },
  "POST /groups": {
    operationId: "group_define",
    tag: "membership",
    summary: "define a named group (each member calls it; any rank may; idempotent; other ranks for the same name: 409)",
    body: { schema: groupSchema },
    responses: { "200": { description: "the group", schema: namedGroupSchema } },
    errors: [400, 401, 409, 503],
  },
  "GET /groups": {
    operationId: "groups",
    tag: "membership",
    summary: "the named groups",
    responses: { "200": { description: "every named group", schema: z.object({ groups: z.array(namedGroupSchema) }) } },
    errors: [401],
  },
  "GET /groups/:name": {
    operationId: "group",
    tag: "membership",
    summary: "one named group",
    params: { name: "group name" },
    responses: { "200": { description: "the group", schema: namedGroupSchema } },
    errors: [401, 404],
  },
  "POST /buffers": {
    operationId: "buffer_create",
    tag: "buffers",
    summary: "allocate a buffer on this rank (cpu or cuda:N), zeros or the given values",
    body: { schema: createBufferSchema, octet: "the values' bytes; dtype, shape, device in the query or x-moonring-* headers" },
    responses: { "201": { description: "created", schema: bufferInfoSchema } },
    errors: [400, 401, 413],
  },
  "GET /buffers": {
    operationId: "buffers",
    tag: "buffers",
    summary: "this rank's buffers",
    responses: { "200": { description: "every buffer", schema: z.object({ rank: z.number().int(), buffers: z.array(bufferInfoSchema) }) } },
    errors: [401],
  },
  "GET /buffers/:id": {
    operationId: "buffer_read",
    tag: "buffers",
    summary: "a buffer's values (JSON, ?format=b64; 413 past max_body_bytes) or raw bytes with Accept: application/octet-stream",
    params: bufferId,
    query: { format: { description: "data (default) or b64", schema: { type: "string", enum: ["data", "b64"] } } },
    responses: { "200": { description: "metadata and values", schema: bufferWithValues, octet: true } },
    errors: [401, 404, 413],
  },
  "PUT /buffers/:id": {
    operationId: "buffer_write",
    tag: "buffers",
    summary: "overwrite a buffer in place (data or b64, or raw bytes)",
    params: bufferId,
    body: { schema: createBufferSchema.partial(), octet: "exactly the buffer's bytes" },
    responses: { "200": { description: "written", schema: bufferInfoSchema } },
    errors: [400, 401, 404, 413],
  },
  "DELETE /buffers/:id": {
    operationId: "buffer_delete",
    tag: "buffers",
    summary: "free a buffer",
    params: bufferId,
    responses: { "200": { description: "deleted", schema: bufferInfoSchema.extend({ deleted: z.literal(true) }) } },
    errors: [401, 404],
  },
  "GET /buffers/:id/ipc": {
    operationId: "buffer_ipc",
    tag: "buffers",
    summary: "what a process on this host needs to map the buffer: a CUDA IPC handle (device) or a /dev/shm file (host)",
    params: bufferId,
    responses: { "200": { description: "the handle", schema: bufferIpc } },
    errors: [400, 401, 404],
  },
  "POST /internal/rendezvous/register": {
    operationId: "internal_register",
    tag: "internal",
    summary: "rank service to rank 0: register for rendezvous",
    body: { schema: registerSchema },
    responses: { "200": { description: "registered", schema: anyJson } },
    errors: [400, 401, 404, 409],
  },
  "GET /internal/rendezvous/table": {
    operationId: "internal_table",
    tag: "internal",
    summary: "rank service to rank 0: the rendezvous table (long poll)",
    query: { wait_ms: { description: "wait up to this long for a complete table (0..30000)", schema: { type: "integer", minimum: 0, maximum: 30000 } } },
    responses: { "200": { description: "the table", schema: anyJson } },
    errors: [401, 404],
  },
  "POST /internal/rendezvous/ready": {
    operationId: "internal_ready",
    tag: "internal",
    summary: "rank service to rank 0: this rank connected its data plane",
    query: { wait_ms: { description: "wait up to this long for every rank (0..30000)", schema: { type: "integer", minimum: 0, maximum: 30000 } } },
    body: { schema: z.object({ rank: rankIndex }) },
    responses: { "200": { description: "the world's state", schema: anyJson } },
    errors: [400, 401, 404],
  },
  "GET /internal/whoami": {
    operationId: "internal_whoami",
    tag: "internal",
    summary: "rank service to rank service: this process (rank, instance, phase, coordinator); a coordinator looks for restarted ranks with it",
    responses: { "200": { description: "this process", schema: anyJson } },
    errors: [401],
  },
  "POST /internal/follow": {
    operationId: "internal_follow",
    tag: "internal",
    summary: "coordinator to a restarted rank still in rendezvous: register with the running world at `url` instead",
    body: { schema: z.object({ url: z.string() }) },
    responses: { "200": { description: "whether this rank follows (only while in rendezvous)", schema: anyJson } },
    errors: [400, 401],
  },
  "POST /internal/p2p/offer": {
    operationId: "internal_p2p_offer",
    tag: "internal",
    summary: "rank service to rank service: a p2p message is ready to be pulled",
    body: { schema: p2pOfferSchema },
    responses: { "200": { description: "accepted", schema: z.object({ ok: z.literal(true) }) } },
    errors: [...COMMON_ERRORS, 404, 504], // 504: no matching recv within timeout_ms
  },
};

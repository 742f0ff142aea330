// /openapi.json, generated from the zod schemas (z.toJSONSchema), built once on first request.
import { z } from "zod";
import {
  collectiveOps,
  collectiveResponseSchema,
  collectiveSchemas,
  errorSchema,
  groupSchema,
  membershipAnswerSchema,
  membershipChangeSchema,
  p2pRecvSchema,
  p2pSendSchema,
} from "./schemas";

/** Shared schemas (those with a meta id) land in components.schemas; refs point there. */
let components: Record<string, unknown> = {};

function js(schema: z.ZodType, io: "input" | "output" = "input"): Record<string, unknown> {
  const out = z.toJSONSchema(schema, { io, unrepresentable: "any" }) as Record<string, unknown>;
  delete out.$schema;
  const defs = out.$defs as Record<string, Record<string, unknown>> | undefined;
  delete out.$defs;
  delete out.id;
  for (const [name, def] of Object.entries(defs ?? {})) {
    delete def.id;
    components[name] = rewriteRefs(def);
  }
  return rewriteRefs(out) as Record<string, unknown>;
}

function rewriteRefs<T>(v: T): T {
  if (Array.isArray(v)) return v.map(rewriteRefs) as T;
  if (v && typeof v === "object") {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      o[k] = k === "$ref" && typeof x === "string" ? x.replace("#/$defs/", "#/components/schemas/") : rewriteRefs(x);
    }
    return o as T;
  }
  return v;
}

const ERRORS: Record<string, string> = {
  "400": "invalid_request: malformed JSON, unknown dtype/op, data length != product(shape), root out of range, list of wrong length, avg on integers, bitwise op on floats",
  "401": "unauthorized: MOONRING_TOKEN is set and the bearer token is missing or wrong",
  "409": "collective_mismatch: ranks made different calls at the same point; details.calls names each rank and its call",
  "413": "too_large: body or tensor over the configured limit",
  "503": "not_ready: before rendezvous completes, or this rank is awaiting / failed / left; peer_failed: a peer the call needed failed (root, p2p peer); master_lost: rank 0 is lost",
  "504": "timeout: not every rank arrived within timeout_ms; details.missing_ranks",
};

function errorResponses(): Record<string, unknown> {
  const schema = js(errorSchema, "output");
  return Object.fromEntries(
    Object.entries(ERRORS).map(([status, description]) => [status, { description, content: { "application/json": { schema } } }]),
  );
}

const DESCRIPTIONS: Record<string, string> = {
  allreduce: "the reduction of all ranks' tensors, on every rank",
  reduce: "dst gets the reduction; others get null",
  broadcast: "every rank gets src's tensor (non-src ranks send a tensor of the same dtype and shape)",
  allgather: "list of N tensors, index j = rank j's tensor",
  gather: "dst gets the list of N tensors; others null",
  scatter: "rank r gets tensors[r] of src (tensors given on src only)",
  reduce_scatter: "rank r gets the reduction over ranks of tensors[r]",
  alltoall: "list of N: index j = rank j's tensors[r] (sizes may differ)",
  barrier: "null, once every rank has entered",
};

export function buildOpenApi(): Record<string, unknown> {
  components = {};
  const paths: Record<string, unknown> = {};
  const responseSchema = js(collectiveResponseSchema, "output");
  for (const op of collectiveOps) {
    paths[`/collective/${op}`] = {
      post: {
        operationId: op,
        summary: `${op}: ${DESCRIPTIONS[op]}`,
        description:
          "Every rank of the group makes the same call. Untagged calls match in arrival order per group; tagged calls by (group, tag). " +
          "Extension: single-tensor ops also accept application/octet-stream bodies (metadata in query or x-moonring-* headers) and answer in kind.",
        requestBody: { required: true, content: { "application/json": { schema: js(collectiveSchemas[op]) } } },
        responses: { "200": { description: "done on this rank", content: { "application/json": { schema: responseSchema } } }, ...errorResponses() },
      },
    };
  }
  paths["/p2p/send"] = {
    post: {
      operationId: "p2p_send",
      summary: "send a tensor to rank dst; returns once the receiver has the data",
      requestBody: { required: true, content: { "application/json": { schema: js(p2pSendSchema) } } },
      responses: { "200": { description: '{"ok": true}' }, ...errorResponses() },
    },
  };
  paths["/p2p/recv"] = {
    post: {
      operationId: "p2p_recv",
      summary: "receive the next tensor from rank src (same tag: in order)",
      requestBody: { required: true, content: { "application/json": { schema: js(p2pRecvSchema) } } },
      responses: { "200": { description: '{"result": tensor}' }, ...errorResponses() },
    },
  };
  for (const action of ["activate", "deactivate"] as const) {
    paths[`/membership/${action}`] = {
      post: {
        operationId: `membership_${action}`,
        summary:
          action === "activate"
            ? "admit ranks waiting in state awaiting (serve --join); answers once every active rank applied the new view"
            : "remove ranks gracefully (state left; not rank 0); answers once every active rank applied the new view",
        requestBody: { required: true, content: { "application/json": { schema: js(membershipChangeSchema) } } },
        responses: { "200": { description: "the new view", content: { "application/json": { schema: js(membershipAnswerSchema, "output") } } }, ...errorResponses() },
      },
    };
  }
  paths["/groups"] = {
    post: {
      operationId: "group_define",
      summary: "define a named group (each member calls it; any rank may; idempotent, other ranks for the same name: 409)",
      requestBody: { required: true, content: { "application/json": { schema: js(groupSchema) } } },
      responses: { "200": { description: "{name, ranks, size, active_ranks, group_rank}" }, ...errorResponses() },
    },
    get: { operationId: "groups", summary: "the named groups", responses: { "200": { description: "{groups: [...]}" } } },
  };
  paths["/groups/{name}"] = {
    get: { operationId: "group", summary: "one named group", responses: { "200": { description: "{name, ranks, size, active_ranks, group_rank}" }, "404": { description: "no such group" } } },
  };
  paths["/health"] = {
    get: {
      operationId: "health",
      summary: "200 once rendezvous is complete, 503 with ready:false before; pid, state, rank, world_size",
      responses: { "200": { description: "ready" }, "503": { description: "not ready" } },
    },
  };
  paths["/cluster"] = { get: { operationId: "cluster", summary: "membership: epoch, world_size, active_ranks, ranks", responses: { "200": { description: "membership" } } } };
  paths["/metrics"] = { get: { operationId: "metrics", summary: "Prometheus text metrics", responses: { "200": { description: "text/plain" } } } };
  paths["/debug/recent"] = { get: { operationId: "debug_recent", summary: "the last collectives on this rank (seq, op, sizes, timing, outcome)", responses: { "200": { description: "recent" } } } };
  paths["/openapi.json"] = { get: { operationId: "openapi", summary: "this document", responses: { "200": { description: "OpenAPI 3.1" } } } };
  return {
    openapi: "3.1.0",
    info: {
      title: "moonring rank service",
      version: "1",
      description: "Collective communication as a service. Contract: docs/api-contract.md; extensions: docs/api-extensions.md.",
    },
    components: {
      schemas: components,
      securitySchemes: { bearer: { type: "http", scheme: "bearer", description: "required on every route but /health when MOONRING_TOKEN is set" } },
    },
    paths,
  };
}
